"""K-FAC's step time against Adam's (issue 14 item 5), on the depth-50 digits net and a vanilla
ResNet-50, with the curvature updated every step and every 10 steps.

A K-FAC step is forward + MC-Fisher backward (on curvature steps) + backward + update; every
``inverse_update_period`` steps it also recomputes the damped inverses. The script times the steps
(mean over ``--steps`` after ``--warmup``, inverse recomputations excluded; the three optimizers'
steps interleaved) and one inverse recomputation of all layers separately, and reports the
amortized step time step + inverse / inverse_period. Adam is torch.optim.Adam on the same model
and batch.

Example (the committed bench/results/kfac_cost.md)::

    OMP_NUM_THREADS=1 python bench/kfac_cost.py --out bench/results/kfac_cost.json --steps 10 --warmup 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, Optional

import torch

from tat_ext.models import vanilla_resnet
from tat_ext.optim import KFAC
from tat_ext.optim.step import classification_step
from tat_ext.utils.files import atomic_write

# (label, builder kwargs, batch, input side, input channels)
NETS = {
    "digits-50": (dict(depth=50, num_classes=10, width=8, in_channels=1, small_input=True, input_size=8), 128, 8, 1),
    "resnet-50": (dict(depth=50, num_classes=10, width=64, in_channels=3, small_input=True, input_size=32), 16, 32, 3),
}


def _step_fn(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor) -> Callable[[], None]:
    return lambda: classification_step(model, opt, x, y)


def measure(net: str, steps: int, warmup: int, inverse_period: int = 50, batch: Optional[int] = None) -> Dict[str, Any]:
    """Adam and K-FAC (curvature every step, every 10) on one model shape and batch (default: the
    net's), their steps interleaved (one of each in turn), so load changes hit all three alike."""
    kwargs, default_batch, side, channels = NETS[net]
    batch = batch or default_batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, side, side, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    runs: Dict[str, Any] = {}
    for name in ("adam", "kfac_c1", "kfac_c10"):
        torch.manual_seed(0)
        model = vanilla_resnet(activation="trelu", **kwargs)
        if name == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), 1e-4)
        else:  # inverses are timed apart: a period longer than the run keeps them out of the steps
            opt = KFAC(model, 1e-5, curvature_update_period=1 if name == "kfac_c1" else 10,
                       inverse_update_period=10 ** 9, burnin_steps=0)
        runs[name] = (opt, _step_fn(model, opt, x, y), [])
    for _ in range(warmup):
        for _, fn, _ in runs.values():
            fn()
    steps = max(steps, 10) // 10 * 10  # whole curvature periods: the mean holds curvature steps in proportion
    for _ in range(steps):
        for _, fn, times in runs.values():
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    opt = runs["kfac_c1"][0]
    start = time.perf_counter()
    for factors in opt.factors:
        factors.invert(opt.damping)
    inverse = time.perf_counter() - start
    row: Dict[str, Any] = {"net": net, "batch": batch, "input": f"{channels}x{side}x{side}", "steps": steps,
                           "layers": len(opt.factors), "inverse_ms": 1e3 * inverse,
                           "diagonal_factors": sum(f.a_sum.dim() == 1 for f in opt.factors)
                           + sum(f.g_sum.dim() == 1 for f in opt.factors)}
    for name, (_, _, times) in runs.items():
        row[f"{name}_ms"] = 1e3 * statistics.mean(times)
    row["kfac_c10_i50_ms"] = row["kfac_c10_ms"] + row["inverse_ms"] / inverse_period
    return row


def write_report(meta: Dict[str, Any], out: str) -> str:
    """``out`` (JSON) and the Markdown table next to it; returns the table."""
    atomic_write(out, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    lines = ["# K-FAC step time against Adam (CPU)", "", *(f"Command: `{c}`  " for c in meta["commands"]),
             f"Machine: {meta['machine']}; {meta['threads']} torch thread(s); torch {meta['torch']}; {meta['date']}. "
             "The three optimizers of a row were timed in one process, their steps interleaved, so load changes "
             "hit all three alike: compare the ratios rather than the absolute times. "
             "Goal of issue 14: at most 1.5x Adam at curvature period 10 and inverse period 50.",
             "", "| net | batch | Adam ms | K-FAC, curvature every step: ms (×Adam) | curvature every 10: ms (×Adam) "
                 "| one inverse update ms | curvature 10 + inverses 50, amortized: ms (×Adam) |",
             "|---|---|---|---|---|---|---|"]
    for r in meta["rows"]:
        a = r["adam_ms"]
        lines.append(f"| {r['net']} ({r['layers']} layers, {r['diagonal_factors']} diagonal factors) | {r['batch']} "
                     f"| {a:.0f} | {r['kfac_c1_ms']:.0f} ({r['kfac_c1_ms'] / a:.2f}) | {r['kfac_c10_ms']:.0f} "
                     f"({r['kfac_c10_ms'] / a:.2f}) | {r['inverse_ms']:.0f} | {r['kfac_c10_i50_ms']:.0f} "
                     f"({r['kfac_c10_i50_ms'] / a:.2f}) |")
    lines += ["", "Nets: tat_ext.models.vanilla_resnet(50) with TReLU and the small-input stem; digits-50: width 8 on "
              "1x8x8 inputs (its flatten head, dim A = 16,385, has a diagonal A); resnet-50: the standard width 64 on "
              "3x32x32 inputs (the last stage's 3x3 convs, dim A = 4,609 > max_factor_dim 4096, and its flatten head have diagonal A). "
              "K-FAC: MC Fisher, so a curvature step adds a backward to the pre-activations and the factor products."]
    text = "\n".join(lines) + "\n"
    atomic_write(os.path.splitext(out)[0] + ".md", lambda f: f.write(text.encode()))
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file; the Markdown table goes next to it")
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, help="one batch size for every net (default: each net's)")
    parser.add_argument("--merge", help="only combine these JSON files of earlier runs (comma-separated) into --out")
    args = parser.parse_args(argv)
    if args.merge:
        parts = [json.load(open(path)) for path in args.merge.split(",")]
        meta = {**parts[0], "commands": [c for p in parts for c in p.get("commands", [p.get("command")])],
                "rows": [r for p in parts for r in p["rows"]]}
        print(write_report(meta, args.out))
        return 0
    rows = []
    for net in args.nets.split(","):
        rows.append(measure(net, args.steps, args.warmup, batch=args.batch))
        print(json.dumps(rows[-1]), flush=True)
    command = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python bench/kfac_cost.py --nets {args.nets} "
               f"--steps {args.steps} --warmup {args.warmup}" + (f" --batch {args.batch}" if args.batch else ""))
    load = os.getloadavg()[0]
    meta = {"commands": [command], "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} "
                                              "at the end of the run",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    print(write_report(meta, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
