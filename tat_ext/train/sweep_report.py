"""The depth sweep's report: per (method, depth) the chosen learning rate and its test accuracy,
how many rates trained at all, the tables of ``sweep.md`` and the figure ``sweep.png``.

Rules (also printed in the report):

- a run's score is its final validation accuracy, 0 if it diverged (non-finite loss);
- the chosen rate of a (method, depth) has the highest mean score over the seeds (ties: the
  first rate of the grid); its test accuracy is the mean ± sample standard deviation over those
  seeds' runs (diverged runs have no test accuracy and are counted separately);
- a rate *trained at all* when every seed's run finished with validation accuracy above
  :data:`TRAINED_THRESHOLD` (50%; chance is 10% on 10 classes) without diverging.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tat_ext.train.sweep_grid import METHODS, RunSpec, SweepSettings, depth_plan, layers_of, trelu_eta
from tat_ext.utils.files import write_text_atomic
from tat_ext.utils.plots import figure, save_png

__all__ = ["TRAINED_THRESHOLD", "Cell", "RateSummary", "aggregate", "format_report", "format_summary", "plot_sweep",
           "write_report"]

TRAINED_THRESHOLD = 0.5


@dataclass(frozen=True)
class RateSummary:
    """The runs of one (method, depth, learning rate) over the seeds."""

    lr: float
    seeds: int  # runs the grid asks for
    finished: int  # runs done or diverged
    diverged: int
    trained: int  # finished runs with validation accuracy > TRAINED_THRESHOLD
    score: Optional[float]  # mean final validation accuracy over finished runs, diverged = 0
    test_accs: Tuple[float, ...]  # of the runs that did not diverge
    seconds: Optional[float]  # mean wall seconds per finished run

    @property
    def trained_at_all(self) -> bool:
        return self.finished == self.seeds and self.trained == self.seeds

    @property
    def test_mean(self) -> Optional[float]:
        return statistics.fmean(self.test_accs) if self.test_accs else None

    @property
    def test_std(self) -> Optional[float]:
        return statistics.stdev(self.test_accs) if len(self.test_accs) > 1 else None


@dataclass(frozen=True)
class Cell:
    """One (method, depth): its plan, TAT's η and slope, and every rate's summary."""

    method: str
    depth: int
    layers: int
    blocks: Tuple[int, ...]
    eta: Optional[float]
    slope: Optional[float]
    rates: Tuple[RateSummary, ...]

    @property
    def chosen(self) -> Optional[RateSummary]:
        scored = [r for r in self.rates if r.score is not None]
        return max(scored, key=lambda r: r.score) if scored else None  # max keeps the first of equals

    @property
    def rates_trained(self) -> int:
        return sum(r.trained_at_all for r in self.rates)

    @property
    def complete(self) -> bool:
        return all(r.finished == r.seeds for r in self.rates)


def _summarize(lr: float, seeds: int, records: Sequence[Dict[str, Any]]) -> RateSummary:
    done = [r for r in records if r["status"] == "done"]
    diverged = sum(r["status"] == "diverged" for r in records)
    scores = [r["val_acc"] for r in done] + [0.0] * diverged
    seconds = [r["seconds"] for r in records]
    return RateSummary(lr, seeds, len(records), diverged, sum(r["val_acc"] > TRAINED_THRESHOLD for r in done),
                       statistics.fmean(scores) if scores else None, tuple(r["test_acc"] for r in done),
                       statistics.fmean(seconds) if seconds else None)


def aggregate(settings: SweepSettings, records: Dict[str, Dict[str, Any]]) -> List[Cell]:
    """One :class:`Cell` per (method, depth) of ``settings`` (a SweepSettings), depth-major."""
    from tat_ext.transform import solve_trelu  # deferred: SciPy

    cells = []
    for depth in settings.depths:
        blocks = depth_plan(depth)
        layers = layers_of(blocks)
        for method in settings.methods:
            rates = []
            for lr in settings.lrs:
                keys = [RunSpec(method, depth, float(lr), s).key for s in range(settings.seeds)]
                rates.append(_summarize(float(lr), settings.seeds, [records[k] for k in keys if k in records]))
            eta = slope = None
            if METHODS[method].activation == "trelu":
                eta = trelu_eta(layers, settings.eta)
                slope = solve_trelu(layers, eta=eta).slope
            cells.append(Cell(method, depth, layers, blocks, eta, slope, tuple(rates)))
    return cells


# -- sweep.md -------------------------------------------------------------------------------------------


def _pct(value: Optional[float], std: Optional[float] = None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _lr(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _summary_cell(cell: Cell) -> str:
    chosen = cell.chosen
    if chosen is None:
        return "not run"
    test = _pct(chosen.test_mean, chosen.test_std)
    notes = []
    if chosen.diverged:
        notes.append(f"{chosen.diverged} diverged")
    if not cell.complete:
        notes.append("incomplete")
    return (f"{test} (lr {_lr(chosen.lr)}, {cell.rates_trained}/{len(cell.rates)})"
            + (f" [{', '.join(notes)}]" if notes else ""))


def format_summary(settings, cells: Sequence[Cell]) -> str:
    """The main table: per depth and method the test accuracy at the chosen rate, the rate, and
    how many rates trained at all (markdown)."""
    lines = [f"Test accuracy (%) at the learning rate chosen on the validation part, mean ± std over "
             f"{_count(settings.seeds, 'seed')}; then the chosen rate and how many of the "
             f"{len(settings.lrs)} rates trained at all.", ""]
    by_key = {(c.method, c.depth): c for c in cells}
    rows = []
    for depth in settings.depths:
        first = by_key[(settings.methods[0], depth)]
        star = any(c.eta is not None and c.eta != settings.eta for c in cells if c.depth == depth)
        rows.append([f"{depth} ({first.layers}){' *' if star else ''}"]
                    + [_summary_cell(by_key[(m, depth)]) for m in settings.methods])
    lines += _table(["depth (layers)"] + [METHODS[m].label for m in settings.methods], rows)
    lowered = sorted({(c.layers, c.eta) for c in cells if c.eta is not None and c.eta != settings.eta})
    if lowered:
        lines += ["", "\\* " + "; ".join(f"{layers} layers cannot reach η = {settings.eta:g}: TAT uses η = {eta:g}"
                                         for layers, eta in lowered)
                  + " (the largest reachable η, ReLU's own, rounded down to two decimals; TAT is then close "
                    "to EOC ReLU)."]
    return "\n".join(lines)


def _count(n: int, noun: str, plural: Optional[str] = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def format_report(settings, cells: Sequence[Cell], invocations: Sequence[Dict[str, Any]],
                  examples: Dict[str, int]) -> str:
    """The markdown of ``sweep.md``: settings, machine, rules and three tables."""
    base = settings.base.resolved()
    n_lrs, seeds = len(settings.lrs), settings.seeds
    lines = [f"# Depth sweep: {', '.join(METHODS[m].label for m in settings.methods)} on {base.data}", ""]
    runs = len(settings.depths) * len(settings.methods) * n_lrs * seeds
    lines += [f"{runs} runs: depths {', '.join(map(str, settings.depths))} × {_count(len(settings.methods), 'method')} "
              f"× {_count(n_lrs, 'learning rate')} ({', '.join(_lr(x) for x in settings.lrs)}) × "
              f"{_count(seeds, 'seed')} ({', '.join(map(str, range(seeds)))}). "
              f"Every run: width {base.width}, {_count(base.epochs, 'epoch')}, {base.optimizer} with "
              f"{base.schedule} schedule, batch {base.batch_size}, weight decay {base.weight_decay:g}, "
              f"label smoothing {base.label_smoothing:g}; trained on {examples['fit']} examples (the "
              f"training split minus {examples['validation']} held out for validation), tested on "
              f"{examples['test']}.", ""]
    if invocations:
        total = sum(i["wall_seconds"] for i in invocations)
        last = invocations[-1]
        lines += [f"- Command: `{last.get('command', '(in-process call)')}`",
                  f"- Machine: {last.get('cpu', '?')}, {last.get('cores', '?')} cores; torch {last.get('torch', '?')}, "
                  f"python {last.get('python', '?')}; {_count(last['workers'], 'worker process', 'worker processes')} × "
                  f"{_count(last['threads'], 'torch thread')}",
                  f"- Started {invocations[0]['started']}; wall time {total / 60:.1f} min in "
                  f"{_count(len(invocations), 'invocation')}", ""]
    lines += ["## Test accuracy at the chosen learning rate", "", format_summary(settings, cells), "", "## Rules", "",
              "- Depth: nonlinear layers on the deepest path (docs/math.md). A depth D maps to "
              "B = round((D − 1)/3) bottleneck blocks, 3B + 1 layers (the standard ResNet-50/101/200 plans for "
              "D = 50/100/200); the same plan for every method. Vanilla nets: no shortcuts, no normalization, "
              "delta-orthogonal init; ResNet+BN: ResNet-V2 with BatchNorm and shortcuts.",
              f"- Learning rate: per method and depth, the rate with the highest mean final validation "
              f"accuracy over the seeds (a diverged run counts as 0); validation examples are every "
              f"{settings.validation_every}th training example of each class, never used for training; the "
              f"test split is used only for the reported accuracy.",
              f"- Trained at all: every seed's run ended with validation accuracy above "
              f"{TRAINED_THRESHOLD:.0%} (chance: 10%) without diverging (non-finite loss).", "",
              "## Per method and depth", ""]
    rows = []
    for c in cells:
        chosen = c.chosen
        trained_runs = sum(r.trained for r in c.rates)
        planned = sum(r.seeds for r in c.rates)
        rows.append([METHODS[c.method].label, str(c.depth), str(c.layers), ",".join(map(str, c.blocks)),
                     "–" if c.eta is None else f"{c.eta:g}", "–" if c.slope is None else f"{c.slope:.4f}",
                     "–" if chosen is None else _lr(chosen.lr), f"{c.rates_trained}/{len(c.rates)}",
                     f"{trained_runs}/{planned}", _pct(None if chosen is None else chosen.score),
                     "–" if chosen is None else _pct(chosen.test_mean, chosen.test_std),
                     "–" if chosen is None or chosen.seconds is None else f"{chosen.seconds:.0f}"])
    lines += _table(["method", "depth", "layers", "blocks", "η", "slope", "chosen lr", "rates trained",
                     "runs trained", "val acc %", "test acc %", "s/run"], rows)
    lines += ["", "## Validation accuracy per learning rate", "",
              "Mean final validation accuracy (%) over the seeds (diverged runs count as 0); `div` when every "
              "seed diverged; `k/n` when only k of the n seeds trained at all; the chosen rate in bold.", ""]
    rows = []
    for c in cells:
        row = [METHODS[c.method].label, str(c.depth)]
        for r in c.rates:
            if r.finished == 0:
                text = "–"
            elif r.diverged == r.finished:
                text = "div"
            else:
                text = _pct(r.score) + ("" if r.trained == r.seeds else f" ({r.trained}/{r.seeds})")
            row.append(f"**{text}**" if c.chosen is r else text)
        rows.append(row)
    lines += _table(["method", "depth"] + [_lr(x) for x in settings.lrs], rows)
    return "\n".join(lines) + "\n"


# -- sweep.png ------------------------------------------------------------------------------------------


def plot_sweep(path: str, settings, cells: Sequence[Cell]) -> None:
    """Test accuracy at the chosen rate against depth (mean ± std band, chosen rate written at each
    point) and the number of rates that trained at all, one line per method; atomically."""
    from matplotlib.ticker import MaxNLocator

    fig = figure(figsize=(12, 4.6), dpi=110)
    acc_ax, rate_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    layers = sorted({c.layers for c in cells})
    for i, method in enumerate(settings.methods):
        mine = sorted((c for c in cells if c.method == method), key=lambda c: c.layers)
        points = [(c.layers, c.chosen) for c in mine if c.chosen is not None and c.chosen.test_mean is not None]
        if points:
            x = [p[0] for p in points]
            mean = [100 * p[1].test_mean for p in points]
            std = [100 * (p[1].test_std or 0.0) for p in points]
            line, = acc_ax.plot(x, mean, "-o", markersize=4, label=METHODS[method].label)
            acc_ax.fill_between(x, [max(0.0, m - s) for m, s in zip(mean, std)],  # accuracies stay in [0, 100]
                                [min(100.0, m + s) for m, s in zip(mean, std)],
                                color=line.get_color(), alpha=0.2, linewidth=0)
            for (xi, summary), yi in zip(points, mean):
                acc_ax.annotate(_lr(summary.lr), (xi, yi), textcoords="offset points", xytext=(4, -11 - 9 * i),
                                fontsize=7, color=line.get_color())
        offset = (i - (len(settings.methods) - 1) / 2) * 0.04  # side by side on the log axis
        rate_ax.plot([c.layers * 10 ** offset for c in mine], [c.rates_trained for c in mine], "-s", markersize=5,
                     label=METHODS[method].label)
    for ax in (acc_ax, rate_ax):
        ax.set_xscale("log")
        ax.set_xticks(layers)
        ax.set_xticklabels([str(x) for x in layers])
        ax.minorticks_off()
        ax.set_xlabel("depth (nonlinear layers)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    acc_ax.set_ylabel("test accuracy (%) at the chosen learning rate")
    acc_ax.set_ylim(top=100.5)
    acc_ax.set_title(f"mean ± std over {_count(settings.seeds, 'seed')}; chosen rate at each point", fontsize=9)
    rate_ax.set_ylabel(f"learning rates that trained (of {len(settings.lrs)})")
    rate_ax.set_ylim(-0.3, len(settings.lrs) + 0.3)
    rate_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.margins(x=0.08)
    rate_ax.set_title(f"trained at all: every seed > {TRAINED_THRESHOLD:.0%} validation accuracy", fontsize=9)
    base = settings.base.resolved()
    fig.suptitle(f"{base.data}: width {base.width}, {base.epochs} epochs, {base.optimizer}, batch "
                 f"{base.batch_size}; rates {', '.join(_lr(x) for x in settings.lrs)}", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def write_report(out: str, settings, records: Dict[str, Dict[str, Any]], invocations: Sequence[Dict[str, Any]],
                 examples: Dict[str, int]) -> None:
    """``out/sweep.md`` and ``out/sweep.png`` from the finished runs of ``settings``' grid."""
    cells = aggregate(settings, records)
    text = format_report(settings, cells, invocations, examples)
    write_text_atomic(os.path.join(out, "sweep.md"), text)
    plot_sweep(os.path.join(out, "sweep.png"), settings, cells)
