"""The main job: the same deep vanilla network trained with TAT (TReLU) and with Edge-of-Chaos ReLU,
test accuracies side by side (``tat-ext compare``; ``bash scripts/demo.sh`` runs it)."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import List, Sequence

from tat_ext.train.config import TrainConfig
from tat_ext.train.loop import TrainResult, train

__all__ = ["COMPARE_DEFAULTS", "compare", "format_table"]

# A ResNet-101-shaped vanilla net (100 nonlinear layers) on the embedded 8x8 digits.
COMPARE_DEFAULTS = TrainConfig(model="vanilla_resnet", depth=101, data="digits")
_LABELS = {"trelu": "TAT (TReLU)", "relu": "EOC ReLU"}


def compare(base: TrainConfig, activations: Sequence[str] = ("trelu", "relu"), *,
            progress: bool = True) -> List[TrainResult]:
    """Train ``base`` once per activation (same seed, data, schedule). With ``base.out`` each run
    writes to ``out/<activation>``. Stops early if a run is interrupted."""
    results = []
    for activation in activations:
        out = None if base.out is None else os.path.join(base.out, activation)
        config = dataclasses.replace(base, activation=activation, out=out)
        print(f"\n== {_LABELS.get(activation, activation)}", flush=True)
        started = time.perf_counter()
        result = train(config, progress=progress)
        result.resolved["wall_seconds"] = time.perf_counter() - started
        results.append(result)
        if result.interrupted:
            break
    return results


def format_table(results: Sequence[TrainResult]) -> str:
    """The runs side by side: activation, slope, final test accuracy and loss, best test accuracy, time."""
    c = results[0].config
    lines = [f"{c.model} depth {c.depth} (width {c.width}) on {c.data}, {c.epochs} epochs, "
             f"{c.optimizer} lr {c.lr:g}, batch {c.batch_size}, seed {c.seed}",
             f"{'activation':<14} {'slope':>8} {'test acc':>9} {'best':>7} {'test loss':>10} {'time':>8}"]
    for r in results:
        act = r.resolved.get("activation", {})
        slope = f"{act['slope']:.4f}" if "slope" in act else "-"
        best = max(row["test_acc"] for row in r.history) if r.history else float("nan")
        acc = f"{r.test_acc:.2%}" if r.history else "-"
        loss = f"{r.test_loss:.4f}" if r.history else "-"
        lines.append(f"{_LABELS.get(r.config.activation, r.config.activation):<14} {slope:>8} {acc:>9} "
                     f"{best:>7.2%} {loss:>10} {r.resolved.get('wall_seconds', 0.0):>7.0f}s")
    return "\n".join(lines)
