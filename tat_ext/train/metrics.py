"""A run's learning curves on disk: ``metrics.jsonl`` (one JSON object per epoch) and ``curves.png``.

Both are rewritten whole, atomically, from the history stored in the checkpoint, so after a crash
and ``--resume`` they always match the checkpoint (no missing or duplicated epochs).
"""
from __future__ import annotations

import json
from typing import Dict, List, Sequence

from tat_ext.utils.files import write_text_atomic
from tat_ext.utils.plots import figure, save_png

__all__ = ["METRIC_KEYS", "plot_curves", "write_metrics"]

# The keys of every metrics.jsonl row (loss: the training objective, incl. label smoothing).
METRIC_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "samples_per_s")


def write_metrics(path: str, history: Sequence[Dict[str, float]]) -> None:
    """Write ``history`` as JSON lines, atomically."""
    write_text_atomic(path, "".join(json.dumps(row, sort_keys=False) + "\n" for row in history))


def plot_curves(path: str, history: Sequence[Dict[str, float]], title: str) -> None:
    """Loss and accuracy (train and test) against epoch, as a PNG, atomically.

    Uses matplotlib's Agg canvas directly: no GUI backend, and the caller's pyplot state is left alone.
    """
    epochs: List[int] = [row["epoch"] for row in history]
    fig = figure(figsize=(10, 4), dpi=100)
    for i, (metric, label) in enumerate((("loss", "loss"), ("acc", "accuracy"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for split, style in (("train", "-o"), ("test", "-s")):
            ax.plot(epochs, [row[f"{split}_{metric}"] for row in history], style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if metric == "loss":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
