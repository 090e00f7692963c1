"""Training-step benchmarks of whole vanilla networks, fused vs eager vs torch.compile, against the
goals of issues 7 and 8 (a thin caller of `tat-ext bench --part model`, which measures every
variant in one run from the same weights):

- "resnet50": a vanilla TAT ResNet-50 (tat_ext.models.vanilla_resnet, w = 0, small-input stem):
  fused step throughput >= 1.15x eager and >= 1.0x torch.compile of the eager net; activation
  memory <= 0.65x eager's (bytes saved for backward on the CPU, where the allocator's peak is not
  observable; peak memory on CUDA);
- "digits99": the 99-layer 16-channel conv net at the digits' 8x8 (64x16x8x8 activations):
  fused step time <= 0.9x eager's;
- and for the fused conv (issue 16; "fused-conv", CPU fp32): ResNet-50 step >= 1.25x eager's
  throughput and no_grad forward >= 1.3x, digits99 step <= 0.8x eager's time.

    python bench/bench_train.py [--device cpu|cuda] [--threads N] [--out DIR] [--workloads ...]

Prints tat-ext bench's tables, then one verdict line per goal; results in OUT/<workload>/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from tat_ext.cli import main as tat_ext_main

_DIGITS99 = ["--model", "conv-chain", "--depth", "99", "--width", "16", "--resolution", "8",
             "--batch", "64", "--dtype", "float32", "--layout", "nchw,channels_last"]
WORKLOADS = {  # tat-ext bench flags per device type
    "resnet50": dict(cpu=["--model", "vanilla-resnet", "--depth", "50", "--width", "8",
                          "--resolution", "16", "--batch", "32", "--dtype", "float32",
                          "--layout", "nchw,channels_last"],
                     cuda=["--model", "vanilla-resnet", "--depth", "50", "--width", "64",
                           "--resolution", "32", "--batch", "128", "--dtype", "bfloat16",
                           "--layout", "channels_last"]),
    "digits99": dict(cpu=_DIGITS99, cuda=_DIGITS99),  # the size, on either device
}


def verdicts(workload: str, record: dict, device: str) -> list:
    """(goal, measured, met) for one measured configuration."""
    v, x = record["variants"], record["speedup"]
    where = f"{workload} {record['dtype']} {record['layout']}"
    conv = _fused_conv_verdicts(workload, record, where)
    if workload == "digits99":
        ratio = v["fused"]["step"]["median_ms"] / v["eager"]["step"]["median_ms"]
        return [(f"{where}: fused step <= 0.9x eager", f"{ratio:.2f}x", ratio <= 0.9)] + conv
    memory = "peak_bytes" if device.startswith("cuda") else "saved_bytes"
    mem = v["fused"][memory] / v["eager"][memory] if v["eager"][memory] else float("nan")
    out = [(f"{where}: fused >= 1.15x eager throughput", f"{x['fused_vs_eager']['step']:.2f}x",
            x["fused_vs_eager"]["step"] >= 1.15),
           (f"{where}: fused {memory.replace('_', ' ')} <= 0.65x eager", f"{mem:.2f}x", mem <= 0.65)]
    if "fused_vs_compile" in x:
        out.append((f"{where}: fused >= 1.0x torch.compile", f"{x['fused_vs_compile']['step']:.2f}x",
                     x["fused_vs_compile"]["step"] >= 1.0))
    return out + conv


def _fused_conv_verdicts(workload: str, record: dict, where: str) -> list:
    """The fused conv's goals (issue 16), when the run measured it."""
    if "fused-conv" not in record["variants"]:
        return []
    x = record["speedup"]["fused-conv_vs_eager"]
    if workload == "digits99":
        ratio = 1 / x["step"]
        return [(f"{where}: fused-conv step <= 0.8x eager", f"{ratio:.2f}x", ratio <= 0.8)]
    return [(f"{where}: fused-conv >= 1.25x eager throughput", f"{x['step']:.2f}x",
             x["step"] >= 1.25),
            (f"{where}: fused-conv no_grad forward >= 1.3x eager", f"{x['forward_no_grad']:.2f}x",
             x["forward_no_grad"] >= 1.3)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default="bench-train")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated, from {', '.join(WORKLOADS)}")
    args = ap.parse_args(argv)
    lines = []
    for name in args.workloads.split(","):
        if name not in WORKLOADS:
            ap.error(f"argument --workloads: unknown {name!r}; one of {', '.join(WORKLOADS)}")
        out = os.path.join(args.out, name)
        flags = WORKLOADS[name]["cuda" if args.device.startswith("cuda") else "cpu"]
        extra = ["--threads", str(args.threads)] if args.threads else []
        code = tat_ext_main(["bench", "--part", "model", "--device", args.device, "--no-plots",
                             "--no-progress", "--out", out, *flags, *extra])
        if code:
            return code
        with open(os.path.join(out, "bench.json")) as f:
            for record in json.load(f)["model"]:
                lines += verdicts(name, record, args.device)
    print("\n## goals")
    for goal, measured, met in lines:
        print(f"{'met   ' if met else 'MISSED'}  {goal}: {measured}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
