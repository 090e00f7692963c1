"""The main job: the same deep vanilla network trained with TAT (TReLU) and with Edge-of-Chaos ReLU,
test accuracies side by side (``tat-ext compare``; ``bash scripts/demo.sh`` runs it)."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import List, Sequence, Tuple, Union

from tat_ext.train.config import Diverged, TrainConfig
from tat_ext.train.loop import TrainResult, train

__all__ = ["COMPARE_DEFAULTS", "compare", "format_table"]

# A ResNet-101-shaped vanilla net (100 nonlinear layers) on the embedded 8x8 digits.
COMPARE_DEFAULTS = TrainConfig(model="vanilla_resnet", depth=101, data="digits")
_LABELS = {"trelu": "TAT (TReLU)", "relu": "EOC ReLU"}


Outcome = Union[TrainResult, Diverged]


def compare(base: TrainConfig, activations: Sequence[str] = ("trelu", "relu"), *,
            progress: bool = True) -> List[Tuple[str, Outcome]]:
    """Train ``base`` once per activation (same seed, data, schedule); returns (activation,
    outcome) pairs. With ``base.out`` each run writes to ``out/<activation>``. A run that
    diverges is reported as its :class:`Diverged`; an interrupted run ends the comparison."""
    outcomes: List[Tuple[str, Outcome]] = []
    for activation in activations:
        out = None if base.out is None else os.path.join(base.out, activation)
        config = dataclasses.replace(base, activation=activation, out=out)
        print(f"\n== {_LABELS.get(activation, activation)}", flush=True)
        started = time.perf_counter()
        try:
            result = train(config, progress=progress)
        except Diverged as error:
            outcomes.append((activation, error))
            print(f"{activation}: {error}", flush=True)
            continue
        result.resolved["wall_seconds"] = time.perf_counter() - started
        outcomes.append((activation, result))
        if result.interrupted:
            break
    return outcomes


def format_table(base: TrainConfig, outcomes: Sequence[Tuple[str, Outcome]]) -> str:
    """The runs side by side: activation, slope, final and best test accuracy, test loss, time."""
    c = base.resolved()
    lines = [f"{c.model} depth {c.depth} (width {c.width}) on {c.data}, {c.epochs} epochs, "
             f"{c.optimizer} lr {c.lr:g}, batch {c.batch_size}, seed {c.seed}",
             f"{'activation':<14} {'slope':>8} {'test acc':>9} {'best':>7} {'test loss':>10} {'time':>8}"]
    for activation, r in outcomes:
        label = _LABELS.get(activation, activation)
        if isinstance(r, Diverged):
            lines.append(f"{label:<14} {'-':>8} {'diverged':>9}")
            continue
        act = r.resolved.get("activation", {})
        slope = f"{act['slope']:.4f}" if "slope" in act else "-"
        if not r.history:
            lines.append(f"{label:<14} {slope:>8} {'-':>9}")
            continue
        best = max(row["test_acc"] for row in r.history)
        lines.append(f"{label:<14} {slope:>8} "
                     f"{r.test_acc:>9.2%} {best:>7.2%} {r.test_loss:>10.4f} "
                     f"{r.resolved.get('wall_seconds', 0.0):>7.0f}s")
    return "\n".join(lines)
