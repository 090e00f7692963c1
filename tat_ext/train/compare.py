"""The main job: the same deep vanilla network trained with TAT (TReLU) and with Edge-of-Chaos ReLU
at a few learning rates, test accuracies side by side (``tat-ext compare``; ``bash scripts/demo.sh``).

Robustness is part of the paper's claim: on the digits, a 100-layer EOC ReLU net trained about as
well as TAT at Adam lr 3e-4 but not at all at 1e-3, where TAT still trained; so the default grid
holds both rates.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import List, Sequence, Tuple, Union

from tat_ext.train.config import Diverged, TrainConfig
from tat_ext.train.loop import TrainResult, train

__all__ = ["COMPARE_DEFAULTS", "COMPARE_LRS", "compare", "format_table"]

# A ResNet-101-shaped vanilla net (100 nonlinear layers) on the embedded 8x8 digits.
COMPARE_DEFAULTS = TrainConfig(model="vanilla_resnet", depth=101, data="digits", epochs=8)
COMPARE_LRS = (3e-4, 1e-3)
_LABELS = {"trelu": "TAT (TReLU)", "relu": "EOC ReLU"}

Outcome = Union[TrainResult, Diverged]


def compare(base: TrainConfig, activations: Sequence[str] = ("trelu", "relu"),
            lrs: Sequence[float] = COMPARE_LRS, *, progress: bool = True) -> List[Tuple[str, float, Outcome]]:
    """Train ``base`` once per activation and learning rate (same seed, data and schedule);
    returns (activation, lr, outcome) triples. With ``base.out`` each run writes to
    ``out/<activation>-lr<lr>``. A run that diverges is reported as its :class:`Diverged`; an
    interrupted run ends the comparison."""
    outcomes: List[Tuple[str, float, Outcome]] = []
    for activation in activations:
        for lr in lrs:
            out = None if base.out is None else os.path.join(base.out, f"{activation}-lr{lr:g}")
            config = dataclasses.replace(base, activation=activation, lr=lr, out=out)
            print(f"\n== {_LABELS.get(activation, activation)}, lr {lr:g}", flush=True)
            started = time.perf_counter()
            try:
                result = train(config, progress=progress)
            except Diverged as error:
                outcomes.append((activation, lr, error))
                print(f"{activation}: {error}", flush=True)
                continue
            result.resolved["wall_seconds"] = time.perf_counter() - started
            outcomes.append((activation, lr, result))
            if result.interrupted:
                return outcomes
    return outcomes


def format_table(base: TrainConfig, outcomes: Sequence[Tuple[str, float, Outcome]]) -> str:
    """Final test accuracy per activation (rows) and learning rate (columns), and the time taken."""
    c = dataclasses.replace(base, lr=None).resolved()
    lrs = list(dict.fromkeys(lr for _, lr, _ in outcomes))
    activations = list(dict.fromkeys(a for a, _, _ in outcomes))
    cells = {(a, lr): o for a, lr, o in outcomes}
    lines = [f"{c.model} depth {c.depth} (width {c.width}, no shortcuts, no normalization) on {c.data}: "
             f"final test accuracy after {c.epochs} epochs, {c.optimizer}, batch {c.batch_size}, seed {c.seed}",
             f"{'activation':<14} {'slope':>7} " + " ".join(f"{'lr ' + format(lr, 'g'):>10}" for lr in lrs)
             + f" {'time':>7}"]
    for activation in activations:
        slope, seconds, row = "-", 0.0, []
        for lr in lrs:
            outcome = cells.get((activation, lr))
            if isinstance(outcome, TrainResult):
                act = outcome.resolved.get("activation", {})
                slope = f"{act['slope']:.4f}" if "slope" in act else slope
                seconds += outcome.resolved.get("wall_seconds", 0.0)
                row.append(f"{outcome.test_acc:>10.2%}" if outcome.history else f"{'-':>10}")
            else:
                row.append(f"{'diverged' if outcome is not None else '-':>10}")
        lines.append(f"{_LABELS.get(activation, activation):<14} {slope:>7} " + " ".join(row) + f" {seconds:>6.0f}s")
    return "\n".join(lines)
