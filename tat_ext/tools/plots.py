"""The PNG figures of a `tat-ext bench` run (matplotlib, no display needed)."""
from __future__ import annotations

import os
from typing import List

from tat_ext.utils.plots import pyplot, save_png

__all__ = ["draw"]

_COLORS = {"eager": "tab:gray", "compile": "tab:blue", "fused": "tab:red",
           "fused-compile": "tab:orange", "fused-conv": "tab:purple", "copy_": "black"}


def draw(doc: dict, out: str) -> List[str]:
    """Draw what `doc` (bench.json's content) holds; returns the paths written."""
    paths = []
    if doc["activation"]:
        paths.append(_activation_gbs(doc, os.path.join(out, "activation_gbs.png")))
    if doc["model"]:
        paths.append(_train_step(doc, os.path.join(out, "train_step.png")))
    return paths


def _activation_gbs(doc: dict, path: str) -> str:
    """fwd+bwd GB/s against size, one panel per (form, dtype, layout), a line per variant and the
    copy_ ceiling of the same size."""
    plt = pyplot()
    groups = {}
    for r in doc["activation"]:
        groups.setdefault((r["form"], r["dtype"], r["layout"]), []).append(r)
    cols = min(2, len(groups))
    rows = (len(groups) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False,
                             constrained_layout=True)
    for ax, ((form, dtype, layout), records) in zip(axes.flat, groups.items()):
        records = sorted(records, key=lambda r: r["elements"])
        sizes = [r["elements"] for r in records]
        ax.plot(sizes, [r["copy"]["gbs"] for r in records], "--", color=_COLORS["copy_"],
                label="copy_ (ceiling)")
        for name in records[0]["variants"]:
            ax.plot(sizes, [r["variants"][name]["gbs"]["fwdbwd"] or float("nan") for r in records],
                    "o-", color=_COLORS.get(name), label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("elements")
        ax.set_ylabel("fwd+bwd GB/s (minimum bytes)")
        ax.set_title(f"{form}, {dtype}, {layout}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle(f"tat-ext bench: activation on {doc['device']}", fontsize=10)
    path = save_png(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _train_step(doc: dict, path: str) -> str:
    """Step time (median, interquartile bars), saved-for-backward and peak memory per variant,
    per (dtype, layout)."""
    plt = pyplot()
    records = doc["model"]
    fig, (ax_t, ax_s, ax_p) = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    variants = list(dict.fromkeys(v for r in records for v in r["variants"]))
    width = 0.8 / len(variants)
    labels = [f"{r['dtype']}\n{r['layout']}" + (f"\n{r['optimizer']}" if r.get("optimizer", "sgd") != "sgd" else "")
              for r in records]
    for i, name in enumerate(variants):
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(records))]
        per = [r["variants"].get(name, {}) for r in records]
        step = [v.get("step") for v in per]
        med = [s["median_ms"] if s else 0.0 for s in step]
        err = [[s["median_ms"] - s["q1_ms"] if s else 0 for s in step],
               [s["q3_ms"] - s["median_ms"] if s else 0 for s in step]]
        color = _COLORS.get(name)
        ax_t.bar(xs, med, width, yerr=err, color=color, label=name, capsize=3)
        ax_s.bar(xs, [(v.get("saved_bytes") or 0) / 2 ** 20 for v in per], width, color=color,
                 label=name)
        ax_p.bar(xs, [(v.get("peak_bytes") or 0) / 2 ** 20 for v in per], width, color=color,
                 label=name)
    spec = records[0]
    peak = ("MiB peak allocated above weights and batch" if doc["settings"]["device"] != "cpu"
            else "MiB peak resident-set growth (CPU)")
    for ax, ylabel in ((ax_t, "ms per training step"), (ax_s, "MiB saved for backward"),
                       (ax_p, peak)):
        ax.set_xticks(range(len(records)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"tat-ext bench: training step of {spec['model']} depth {spec['depth']}, width "
                 f"{spec['width']}, {spec['resolution']}x{spec['resolution']}, batch "
                 f"{spec['batch']} on {doc['device']}", fontsize=10)
    path = save_png(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
