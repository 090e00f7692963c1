"""The depth comparison with K-FAC, SGD (Nesterov, warm-up) and Adam on the digits (issue 14 item 4).

TAT (TReLU) vs Edge-of-Chaos ReLU vanilla nets (tat_ext.train.sweep's depth plans and models)
trained with each optimizer at each rate; every run trains on the training split minus the
held-out validation part (tat_ext.datasets.validation_split) and records validation and test
accuracy after every epoch, so accuracy can be read against steps. The rate reported per
(method, depth, optimizer) is the one whose seed-0 run has the best final validation accuracy;
its test accuracy is that of the same runs (all seeds).

Two phases on ``--workers`` processes (one torch thread each): every rate with seed 0; then, per
(method, depth, optimizer), the rate seed 0 chose with seeds 1 … ``--seeds``−1. ResNet+BN (the
anchor) runs at ``--anchor-depths`` with seed 0 only. Each finished run is appended to
OUT/kfac_depth.json at once (atomic rewrite); running the same command again skips finished runs.
A run whose loss turns non-finite or whose K-FAC factors cannot be inverted is recorded as
diverged. ``--report`` only rewrites OUT/kfac_depth.{md,png} from the JSON (and appends
OUT/kfac_depth_notes.md, the reading, when present).

Example (the committed bench/results/kfac_depth.*; 2 workers on the 2-core machine)::

    OMP_NUM_THREADS=1 python bench/kfac_depth.py --out bench/results --depths 50,100,200 --seeds 3
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from typing import Any, Dict, List

import torch

from tat_ext import datasets
from tat_ext.optim import KFAC
from tat_ext.optim.factors import CurvatureError
from tat_ext.optim.step import classification_step
from tat_ext.train.build import build_model, build_optimizer, build_schedule
from tat_ext.train.config import TrainConfig
from tat_ext.train.loop import evaluate
from tat_ext.train.sweep_grid import METHODS, depth_plan, layers_of, trelu_eta
from tat_ext.utils.files import atomic_write, write_json_atomic

NAME = "kfac_depth"
# Short runs (~80 steps): K-FAC needs a short curvature memory and frequent inverses. Damping 1e-2,
# not the recipe's 1e-3: with batch 128 (the recipe: 1024) and 1e-3 the depth-200 nets diverged or stayed
# at chance at every rate from 3e-5 to 3e-4 (bench/results/kfac_depth_damping_probe.json); with 1e-2 they trained.
KFAC_SETTINGS = dict(damping=1e-2, curvature_ema=0.9, curvature_update_period=2, inverse_update_period=10,
                     burnin_steps=5, norm_constraint=1e-3, momentum=0.9, fisher="mc")
LRS = {"kfac": (1e-4, 3e-4, 1e-3), "sgd": (3e-4, 6e-4, 1e-3), "adam": (1e-4, 3e-4, 1e-3),
       "soap": (3e-4, 1e-3, 3e-3),  # soap: heavyball.SOAP (issue 14 item 6), not in the default grid
       "sgd-head": (3e-3, 1e-2, 3e-2)}
WARMUP = {"kfac": 1, "sgd": 2, "adam": 0, "soap": 0, "sgd-head": 2}  # epochs
# "sgd-head": SGD as above with the classifier's rate scaled by HEAD_SCALE, a probe of whether the
# small-input nets' flatten head (16,384 inputs; a body layer has 64-577) limits plain SGD's rate.
HEAD_SCALE = 0.01
COLORS = {"kfac": "C0", "sgd": "C1", "adam": "C2", "soap": "C3", "sgd-head": "C4"}


def _config(method: str, depth: int, optimizer: str, lr: float, seed: int, epochs: int) -> TrainConfig:
    blocks = depth_plan(depth)
    m = METHODS[method]
    eta = trelu_eta(layers_of(blocks)) if m.activation == "trelu" else None
    return TrainConfig(model=m.model, depth=layers_of(blocks) + 1, blocks=blocks, activation=m.activation, eta=eta,
                       optimizer={"kfac": "adam", "sgd-head": "sgd"}.get(optimizer, optimizer), lr=lr, seed=seed,
                       epochs=epochs,
                       warmup_epochs=WARMUP[optimizer], batch_size=128, device="cpu").resolved()


def run(method: str, depth: int, optimizer: str, lr: float, seed: int, epochs: int) -> Dict[str, Any]:
    """One training run; per-epoch validation/test accuracy against the step count."""
    full = datasets.load("digits")
    fit = datasets.validation_split(full)
    config = _config(method, depth, optimizer, lr, seed, epochs)
    torch.manual_seed(seed)
    model, _ = build_model(config, fit)
    if optimizer == "kfac":
        opt = KFAC(model, lr, seed=seed, **KFAC_SETTINGS)
    elif optimizer == "sgd-head":
        head = [p for name, p in model.named_parameters() if name.startswith("head.")]
        body = [p for name, p in model.named_parameters() if not name.startswith("head.")]
        opt = torch.optim.SGD([{"params": body}, {"params": head, "lr": lr * HEAD_SCALE}], lr=lr, momentum=0.9,
                              nesterov=True)
    else:
        opt = build_optimizer(config, model)
    steps_per_epoch = len(fit.train) // config.batch_size
    schedule = build_schedule(config, opt, steps_per_epoch)
    order = torch.Generator().manual_seed(seed)
    history, step, started, status = [], 0, time.perf_counter(), "done"
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(fit.train), generator=order)
        losses = []
        for b in range(steps_per_epoch):
            x, y = fit.batch(fit.train, perm[b * config.batch_size:(b + 1) * config.batch_size])
            try:
                loss = classification_step(model, opt, x, y).item()
            except CurvatureError:  # K-FAC's factors became non-finite: the run diverged
                loss = math.nan
            schedule.step()
            step += 1
            losses.append(loss)
            if not math.isfinite(loss):
                break
        if not all(math.isfinite(v) for v in losses):
            status = "diverged"
            break
        _, val_correct = evaluate(model, fit, fit.test, config=config)
        _, test_correct = evaluate(model, full, full.test, config=config)
        history.append({"epoch": epoch + 1, "step": step, "train_loss": sum(losses) / len(losses),
                        "val_acc": val_correct / len(fit.test), "test_acc": test_correct / len(full.test),
                        "seconds": time.perf_counter() - started})
    last = history[-1] if history and status == "done" else {"val_acc": 0.0, "test_acc": 0.0}
    return {"method": method, "depth": depth, "layers": layers_of(depth_plan(depth)), "optimizer": optimizer,
            "lr": lr, "seed": seed, "status": status, "val_acc": last["val_acc"], "test_acc": last["test_acc"],
            "seconds": time.perf_counter() - started, "history": history}


def _key(r: Dict[str, Any]) -> str:
    return f"{r['method']}/d{r['depth']}/{r['optimizer']}/lr{r['lr']:g}/s{r['seed']}"


def _chosen(records: List[Dict[str, Any]]) -> Dict[tuple, Dict[str, Any]]:
    """Per (method, depth, optimizer): the rate whose seed-0 run has the best final validation
    accuracy (ties: the smaller rate), with every run at that rate (its other seeds) and all rates."""
    groups: Dict[tuple, Dict[float, List[Dict[str, Any]]]] = {}
    for r in records:
        groups.setdefault((r["method"], r["depth"], r["optimizer"]), {}).setdefault(r["lr"], []).append(r)
    out = {}
    for key, by_lr in groups.items():
        first = {lr: [r for r in runs if r["seed"] == 0] or runs for lr, runs in by_lr.items()}
        lr = max(first, key=lambda v: (sum(r["val_acc"] for r in first[v]) / len(first[v]), -v))
        out[key] = {"lr": lr, "runs": sorted(by_lr[lr], key=lambda r: r["seed"]), "all": by_lr}
    return out


def _steps_to(history: List[Dict[str, Any]], target: float) -> Any:
    return next((h["step"] for h in history if h["val_acc"] >= target), None)


def _mean_std(values: List[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


TARGETS = (0.5, 0.8, 0.9)


def report(state: Dict[str, Any], out: str) -> None:
    """OUT/kfac_depth.md (tables) and OUT/kfac_depth.png (validation accuracy against steps)."""
    chosen = _chosen(state["runs"])
    label = {"kfac": "K-FAC", "sgd": "SGD-Nesterov", "adam": "Adam", "soap": "SOAP",
             "sgd-head": f"SGD-Nesterov, head rate x{HEAD_SCALE:g}"}
    lines = [f"# {NAME}: TAT vs EOC ReLU with K-FAC, SGD (Nesterov, warm-up) and Adam on the digits", "",
             f"Command: `{state['command']}`  ", *(f"Merged (seed 0 only): `{c}`  " for c in state.get("merged", [])),
             f"Machine: {state['machine']}, {state['cpus']} CPUs, {state.get('workers', 1)} worker process(es), "
             f"torch {state['torch']}; started {state['started']}; the main command took "
             f"{state.get('wall_seconds', 0) / 60:.1f} min (wall); {len(state['runs'])} runs in all.  ",
             f"K-FAC settings: {state['kfac_settings']}; warm-up epochs {state['warmup_epochs']}; "
             f"{state['epochs']} epochs of batch 128.", "",
             "| depth | method | optimizer | rate (chosen) | val acc % | test acc % | every rate: final val acc % |",
             "|---|---|---|---|---|---|---|"]
    for (m, d, o), c in sorted(chosen.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        rates = ", ".join(f"{lr:g}: " + "/".join("div" if r["status"] != "done" else f"{100 * r['val_acc']:.0f}"
                                                  for r in runs) for lr, runs in sorted(c["all"].items()))
        lines.append(f"| {d} | {METHODS[m].label} | {label[o]} | {c['lr']:g} | "
                     f"{_mean_std([r['val_acc'] for r in c['runs']])} | {_mean_std([r['test_acc'] for r in c['runs']])} "
                     f"| {rates} |")
    lines += ["", "Steps to reach a validation accuracy (chosen rate, first seed; '-' = never):", "",
              "| depth | method | optimizer | " + " | ".join(f"{int(100 * t)} %" for t in TARGETS) + " |",
              "|---|---|---|" + "---|" * len(TARGETS)]
    for (m, d, o), c in sorted(chosen.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        hist = c["runs"][0]["history"]
        lines.append(f"| {d} | {METHODS[m].label} | {label[o]} | " +
                     " | ".join(str(_steps_to(hist, t) or "-") for t in TARGETS) + " |")
    text = "\n".join(lines) + "\n"
    notes = os.path.join(out, NAME + "_notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            text += "\n" + f.read()
    atomic_write(os.path.join(out, NAME + ".md"), lambda f: f.write(text.encode()))
    _plot(chosen, os.path.join(out, NAME + ".png"), label)


def _plot(chosen: Dict[tuple, Dict[str, Any]], path: str, label: Dict[str, str]) -> None:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    depths = sorted({d for _, d, _ in chosen})
    methods = sorted({m for m, _, _ in chosen}, reverse=True)
    fig = Figure(figsize=(4.5 * len(depths), 3.4 * len(methods)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(methods), len(depths), squeeze=False)
    for i, m in enumerate(methods):
        for j, d in enumerate(depths):
            ax = axes[i][j]
            if not any((m, d, o) in chosen for o in label):
                ax.axis("off")  # e.g. the ResNet+BN anchor, run at one depth only
                continue
            for o in COLORS:
                c = chosen.get((m, d, o))
                if c is None:
                    continue
                for k, r in enumerate(c["runs"]):
                    steps = [0] + [h["step"] for h in r["history"]]
                    acc = [10.0] + [100 * h["val_acc"] for h in r["history"]]  # chance at step 0
                    ax.plot(steps, acc, color=COLORS[o],
                            label=f"{label[o]} lr {c['lr']:g}" if k == 0 else None, alpha=0.8)
            ax.set_title(f"{METHODS[m].label}, depth {d}")
            ax.set_xlabel("step")
            ax.set_ylabel("validation accuracy %")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _cost(task: tuple) -> float:
    """Relative run time (measured: a K-FAC run costs ~2.3 Adam runs; time grows with depth)."""
    return task[1] * (2.3 if task[2] == "kfac" else 1.0)


def _work(task: tuple) -> Dict[str, Any]:
    torch.set_num_threads(1)
    return run(*task)


def _run_all(tasks: List[tuple], workers: int, state: Dict[str, Any], path: str, phase: str) -> None:
    """Runs ``tasks`` (longest first) on ``workers`` processes; each result is saved as it arrives."""
    tasks = sorted(tasks, key=_cost, reverse=True)
    if not tasks:
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        for i, record in enumerate(pool.imap_unordered(_work, tasks)):
            record["phase"] = phase
            state["runs"].append(record)
            state["wall_seconds"] = time.time() - state["started_at"] + state.get("earlier_seconds", 0.0)
            write_json_atomic(path, state)
            print(f"[{phase} {i + 1}/{len(tasks)}] {_key(record)}: {record['status']} val {record['val_acc']:.3f} "
                  f"test {record['test_acc']:.3f} ({record['seconds']:.0f} s)", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--depths", default="50,100,200")
    parser.add_argument("--methods", default="trelu,relu")
    parser.add_argument("--optimizers", default="kfac,sgd,adam")
    parser.add_argument("--seeds", type=int, default=3, help="seed 0 chooses the rate; the others rerun it")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lrs", default="", help="override, e.g. kfac=1e-3:3e-3,sgd=1e-3")
    parser.add_argument("--anchor-depths", default="50", help="ResNet+BN depths ('' for none); seed 0 only")
    parser.add_argument("--anchor-optimizers", default="kfac,adam")
    parser.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    parser.add_argument("--report", action="store_true", help="only rewrite the report")
    parser.add_argument("--merge", default="", help="comma-separated kfac_depth.json files of other runs (e.g. "
                        "--optimizers soap) to add to OUT's before the report; implies --report")
    args = parser.parse_args(argv)
    lrs = dict(LRS)
    for item in filter(None, args.lrs.split(",")):
        name, values = item.split("=")
        lrs[name] = tuple(float(v) for v in values.split(":"))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, NAME + ".json")
    state = json.load(open(path)) if os.path.exists(path) else {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]), "machine": platform.processor() or
        platform.machine(), "cpus": os.cpu_count(), "workers": args.workers, "torch": torch.__version__,
        "kfac_settings": KFAC_SETTINGS, "warmup_epochs": WARMUP, "lrs": lrs, "epochs": args.epochs,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "runs": []}
    if args.merge:
        args.report = True
        done = {_key(r) for r in state["runs"]}
        for other in args.merge.split(","):
            with open(other) as f:
                extra = json.load(f)
            state["runs"] += [dict(r, merged_from=extra["command"]) for r in extra["runs"] if _key(r) not in done]
            state.setdefault("merged", []).append(extra["command"])
        state["warmup_epochs"] = WARMUP
        write_json_atomic(path, state)
    if not args.report:
        state["earlier_seconds"] = state.get("wall_seconds", 0.0)
        state["started_at"] = time.time()
        done = {_key(r) for r in state["runs"]}
        todo = lambda tasks: [t for t in tasks if _key(dict(zip(("method", "depth", "optimizer", "lr", "seed"),
                                                                 t))) not in done]
        depths = [int(d) for d in args.depths.split(",")]
        rates = [(m, d, o, lr, 0, args.epochs) for d in depths for m in args.methods.split(",")
                 for o in args.optimizers.split(",") for lr in lrs[o]]
        rates += [("resnet", int(d), o, lr, 0, args.epochs) for d in filter(None, args.anchor_depths.split(","))
                  for o in args.anchor_optimizers.split(",") for lr in lrs[o]]
        _run_all(todo(rates), args.workers, state, path, "rates")
        chosen = _chosen([r for r in state["runs"] if r["seed"] == 0 and r["method"] != "resnet"])
        seeds = [(m, d, o, c["lr"], s, args.epochs) for (m, d, o), c in chosen.items() for s in range(1, args.seeds)]
        _run_all(todo(seeds), args.workers, state, path, "seeds")
        state.pop("started_at")
        write_json_atomic(path, state)
    report(state, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
