"""The depth sweep (``tat-ext sweep``): TAT vs Edge-of-Chaos ReLU vs a ResNet with BatchNorm at
several depths and seeds, every method at every learning rate of the same grid.

**Depth** is the number of nonlinear layers on the deepest path (docs/math.md, "Depth"). A depth D
maps to B = round((D − 1) / 3) bottleneck blocks, i.e. L = 3B + 1 layers (three activations per
block plus the final one): exactly D when D − 1 is a multiple of 3, else the nearest such L
(:func:`depth_plan`). Where 3B + 2 is a standard ResNet depth the standard stage plan is used
(D = 50, 100, 200 → ResNet-50/101/200, L = 49/100/199), otherwise min(B, 4) stages with the
blocks split evenly (extra blocks to the third, second, first stage). All methods get the same
plan, width and small-input stem/head: the vanilla nets (``trelu``: TAT, ``relu``: EOC ReLU with
He-scaled delta-orthogonal init) as a chain of L conv + activation layers without shortcuts or
normalization, ``resnet`` as the ResNet-V2 with BatchNorm and shortcuts.

**TAT's η** is ``--eta`` (default 0.9) wherever a chain of L layers reaches it (0.9 needs
L >= 13); below that, the largest reachable η (ReLU's own C_f(0), reached only at slope 0)
rounded down to two decimals (:func:`trelu_eta`). TAT is then close to EOC ReLU, which is what
the method amounts to at such depths; the table marks these rows.

**Learning rates** are chosen as the paper does, per method and depth from the same grid and
budget, but on data the test set never touches: every run trains on the training split minus a
held-out validation part (:func:`tat_ext.datasets.validation_split`, every fifth training
example of each class). The chosen rate is the one with the highest mean final validation
accuracy over the seeds (a diverged run counts as 0); the reported test accuracy is that of the
same runs at the chosen rate. A rate *trained at all* when every seed ended with validation
accuracy above 50% (chance is 10%) without diverging (:mod:`tat_ext.train.sweep_report`).

**Execution**: runs go to ``--workers`` processes with ``--threads`` torch threads each, longest
first; each run is seeded by its own seed alone, so the results do not depend on the number of
workers. Every finished run is written at once, atomically, to ``OUT/sweep.json``; the same
command run again with the same OUT skips the finished runs (resume; the grid may change, the
training settings may not). At the end ``OUT/sweep.md`` (the tables) and ``OUT/sweep.png``
(test accuracy and trained rates against depth) are written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from tat_ext import datasets
from tat_ext.models.common import STANDARD_DEPTHS, stage_plan
from tat_ext.train.config import Diverged, TrainConfig, TrainError
from tat_ext.train.files import atomic_write, remove_stale_temporaries
from tat_ext.train.loop import evaluate, train

__all__ = ["DEFAULT_DEPTHS", "DEFAULT_LRS", "DEFAULT_METHODS", "METHODS", "SWEEP_DEFAULTS", "Method", "RunSpec",
           "SweepResult", "SweepSettings", "WorkerDied", "depth_plan", "layers_of", "run_sweep", "trelu_eta"]


class WorkerDied(RuntimeError):
    """A worker process ended without reporting its run (killed, out of memory, ...)."""


@dataclass(frozen=True)
class Method:
    """A compared method: its label and the model/activation a run of it trains."""

    label: str
    model: str
    activation: Optional[str]


METHODS: Dict[str, Method] = {
    "trelu": Method("TAT (TReLU)", "vanilla_resnet", "trelu"),
    "relu": Method("EOC ReLU", "vanilla_resnet", "relu"),
    "resnet": Method("ResNet+BN", "resnet", None),
}
DEFAULT_METHODS = ("trelu", "relu", "resnet")
DEFAULT_DEPTHS = (10, 25, 50, 100, 200)
DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3)  # Adam
DEFAULT_SEEDS = 3
DEFAULT_ETA = 0.9
VALIDATION_EVERY = 5
# The shared training settings: the default grid of 180 runs took 62 min with 2 workers on the
# 2-core development VM (bench/results/sweep_depth.md).
SWEEP_DEFAULTS = TrainConfig(model="vanilla_resnet", width=8, data="digits", optimizer="adam", epochs=10,
                             batch_size=128)
# Settings that each run sets itself; the others are the sweep's shared training settings.
_PER_RUN = ("model", "depth", "blocks", "activation", "eta", "lr", "seed", "out", "resume")
# Shared settings that do not change a run's result beyond rounding: may differ on resume.
_NOT_IDENTITY = ("device", "compile")
_STATE, _TABLE, _PLOT = "sweep.json", "sweep.md", "sweep.png"
_FORMAT = "tat-ext-sweep/1"
_MIN_DEPTH = 4  # one bottleneck block (3 layers) and the final activation


def depth_plan(depth: int) -> Tuple[int, ...]:
    """Bottleneck blocks per stage for ``depth`` nonlinear layers (see the module docstring).

    Raises:
        ValueError: ``depth`` < 4 (one block and the final activation).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < _MIN_DEPTH:
        raise ValueError(f"depth must be an int >= {_MIN_DEPTH} nonlinear layers, got {depth!r}")
    count = round((depth - 1) / 3)  # (depth − 1)/3 is never halfway between integers
    if 3 * count + 2 in STANDARD_DEPTHS:  # 50, 101, 152, 200 (18 and 34 are never 3B + 2)
        return stage_plan(3 * count + 2, 1).blocks
    stages = min(count, 4)
    blocks = [count // stages] * stages
    for stage in (2, 1, 0)[: count % stages]:
        blocks[stage] += 1
    return tuple(blocks)


def layers_of(blocks: Sequence[int]) -> int:
    """Nonlinear layers on the deepest path of a plan of bottleneck blocks."""
    return 3 * sum(blocks) + 1


def trelu_eta(layers: int, target: float = DEFAULT_ETA) -> float:
    """TAT's η for a chain of ``layers`` TReLU layers: ``target`` if reachable, else the largest
    reachable η (ReLU's C_f(0)) rounded down to two decimals (see the module docstring)."""
    from tat_ext.cmaps import trelu_chain_c_map

    reachable = trelu_chain_c_map(0.0, 0.0, layers)
    return target if reachable >= target else math.floor(reachable * 100) / 100


@dataclass(frozen=True)
class RunSpec:
    """One run of the grid."""

    method: str
    depth: int
    lr: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}/d{self.depth}/lr{self.lr:g}/s{self.seed}"


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep runs. ``base`` holds the shared training settings; each run sets the fields of
    ``_PER_RUN`` itself. ``seeds``: seeds 0 … seeds − 1."""

    base: TrainConfig = SWEEP_DEFAULTS
    depths: Tuple[int, ...] = DEFAULT_DEPTHS
    methods: Tuple[str, ...] = DEFAULT_METHODS
    seeds: int = DEFAULT_SEEDS
    lrs: Tuple[float, ...] = DEFAULT_LRS
    eta: float = DEFAULT_ETA
    threads: int = 1
    validation_every: int = VALIDATION_EVERY

    def check(self) -> None:
        """Raises TrainError naming the option of the first bad setting."""
        def fail(option: str, message: str) -> None:
            raise TrainError(f"{option}: {message}")

        for option, values in (("--depths", self.depths), ("--methods", self.methods), ("--lrs", self.lrs)):
            if not values:
                fail(option, "needs at least one value")
            duplicates = sorted({v for v in values if list(values).count(v) > 1}, key=str)
            if duplicates:
                fail(option, f"{', '.join(map(str, duplicates))} listed more than once")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            fail("--methods", f"unknown {', '.join(map(repr, unknown))}; choose from {', '.join(METHODS)}")
        layers: Dict[int, int] = {}
        for depth in self.depths:
            try:
                plan = layers_of(depth_plan(depth))
            except ValueError as error:
                fail("--depths", str(error))
            if plan in layers:
                fail("--depths", f"{layers[plan]} and {depth} both map to {plan} nonlinear layers")
            layers[plan] = depth
        if any(isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf for lr in self.lrs):
            fail("--lrs", f"learning rates must be finite numbers > 0, got {list(self.lrs)}")
        for option, value in (("--seeds", self.seeds), ("--threads", self.threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(option, f"must be an integer >= 1, got {value!r}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0 < self.eta < 1:
            fail("--eta", f"must lie in (0, 1), got {self.eta!r}")
        for spec in self.runs()[:1]:
            self.config(spec)  # the shared settings, checked by TrainConfig

    def runs(self) -> List[RunSpec]:
        """Every run, longest first (deepest, then the BatchNorm net), so workers finish together."""
        specs = [RunSpec(m, d, float(lr), s) for d in self.depths for m in self.methods for lr in self.lrs
                 for s in range(self.seeds)]
        return sorted(specs, key=lambda r: (-r.depth, METHODS[r.method].model != "resnet"))

    def config(self, spec: RunSpec) -> TrainConfig:
        """The resolved TrainConfig of ``spec`` (raises TrainError on a bad shared setting)."""
        method, blocks = METHODS[spec.method], depth_plan(spec.depth)
        eta = trelu_eta(layers_of(blocks), self.eta) if method.activation == "trelu" else None
        return dataclasses.replace(self.base, model=method.model, depth=layers_of(blocks) + 1, blocks=blocks,
                                   activation=method.activation, eta=eta, lr=spec.lr, seed=spec.seed,
                                   out=None, resume=False).resolved()

    def identity(self) -> Dict[str, Any]:
        """The settings that decide a run's result apart from its own (method, depth, lr, seed)."""
        shared = {k: v for k, v in self.base.as_dict().items() if k not in _PER_RUN + _NOT_IDENTITY}
        shared["width"] = self.base.resolved().width
        return {**shared, "eta": self.eta, "validation_every": self.validation_every}


@dataclass
class SweepResult:
    """The finished runs of the current grid (by :attr:`RunSpec.key`), how many failed with an
    error (retried by the next invocation), and whether the sweep was interrupted."""

    records: Dict[str, Dict[str, Any]]
    errors: int
    interrupted: bool
    wall_seconds: float


# -- one run (in a worker process or in-process) ------------------------------------------------------

_DATA: Dict[Tuple, Tuple[datasets.ImageData, datasets.ImageData]] = {}


def _data(config: TrainConfig, every: int) -> Tuple[datasets.ImageData, datasets.ImageData]:
    """The full data (for its test split) and the fit/validation split, loaded once per process."""
    key = (config.data, config.data_dir, every)
    if key not in _DATA:
        full = datasets.load(config.data, config.data_dir)
        _DATA[key] = (full, datasets.validation_split(full, every))
    return _DATA[key]


def run_one(spec: RunSpec, config: TrainConfig, every: int) -> Dict[str, Any]:
    """Train ``config`` on the fit part, validate on the held-out part, test on the test split."""
    full, fit = _data(config, every)
    started = time.perf_counter()
    record: Dict[str, Any] = {**dataclasses.asdict(spec), "layers": layers_of(config.blocks),
                              "blocks": list(config.blocks), "threads": torch.get_num_threads()}
    try:
        result = train(config, progress=False, verbose=False, handle_signals=False, data=fit)
    except Diverged as error:
        return {**record, "status": "diverged", "detail": str(error), "seconds": time.perf_counter() - started}
    device = torch.device(result.resolved["device"])
    test_loss, test_correct = evaluate(result.model, full, full.test, config=result.config, device=device)
    last = result.history[-1]
    return {**record, "status": "done", "val_acc": last["test_acc"], "val_loss": last["test_loss"],
            "test_acc": test_correct / len(full.test), "test_loss": test_loss / len(full.test),
            "train_loss": last["train_loss"], "train_acc": last["train_acc"],
            "seconds": time.perf_counter() - started, "device": str(device),
            "parameters": result.resolved["parameters"], "activation": result.resolved["activation"],
            "history": [{"epoch": h["epoch"], "train_loss": h["train_loss"], "val_acc": h["test_acc"],
                         "seconds": h["seconds"]}
                        for h in result.history]}


def _guarded(spec: RunSpec, config: TrainConfig, every: int) -> Dict[str, Any]:
    """run_one, with any unexpected error recorded (status "error": the next invocation retries it)."""
    try:
        return run_one(spec, config, every)
    except Exception as error:  # noqa: BLE001 -- one broken run must not end a long sweep
        return {**dataclasses.asdict(spec), "status": "error", "detail": f"{type(error).__name__}: {error}"}


def _worker(tasks, results, threads: int) -> None:
    """A worker process: runs tasks until it gets None. Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    while True:
        task = tasks.get()
        if task is None:
            return
        results.put(("start", os.getpid(), task[0].key, None))
        results.put(("done", os.getpid(), task[0].key, _guarded(*task)))


def _run_in_process(tasks: Sequence[Tuple], threads: int, on_done: Callable[[Dict[str, Any]], None]) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for task in tasks:
            on_done(_guarded(*task))
    finally:
        torch.set_num_threads(previous)


def _run_in_workers(tasks: Sequence[Tuple], workers: int, threads: int,
                    on_done: Callable[[Dict[str, Any]], None]) -> None:
    """Run ``tasks`` in ``workers`` spawned processes; a worker that dies is an error naming its run."""
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch's threads
    task_queue, result_queue = context.Queue(), context.Queue()
    for task in tasks:
        task_queue.put(task)
    for _ in range(workers):
        task_queue.put(None)
    processes = [context.Process(target=_worker, args=(task_queue, result_queue, threads), daemon=True)
                 for _ in range(workers)]
    for process in processes:
        process.start()
    running: Dict[int, str] = {}
    remaining = len(tasks)
    try:
        while remaining:
            try:
                kind, pid, key, record = result_queue.get(timeout=1.0)
            except queue.Empty:
                for process in processes:
                    if process.exitcode not in (None, 0) or (process.exitcode == 0 and process.pid in running):
                        raise WorkerDied(f"a worker process died (exit code {process.exitcode}) while running "
                                           f"{running.get(process.pid, 'no run')}")
                if all(p.exitcode is not None for p in processes):
                    raise WorkerDied(f"the worker processes ended with {remaining} runs not reported")
                continue
            if kind == "start":
                running[pid] = key
            else:
                running.pop(pid, None)
                remaining -= 1
                on_done(record)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join()


# -- the sweep's state on disk ---------------------------------------------------------------------------


def _load_state(out: str, settings: SweepSettings) -> Dict[str, Any]:
    """The state in ``out/sweep.json`` (its runs and past invocations), or an empty one.

    Raises:
        TrainError: an unreadable file, or one made with other training settings.
    """
    path = os.path.join(out, _STATE)
    if os.path.exists(out) and not os.path.isdir(out):
        raise TrainError(f"--out: {out} exists and is not a directory")
    if not os.path.exists(path):
        return {"runs": {}, "invocations": []}
    try:
        with open(path) as f:
            state = json.load(f)
        if (state.get("format") != _FORMAT or not isinstance(state.get("runs"), dict)
                or not isinstance(state.get("invocations"), list)):
            raise ValueError(f"not a {_FORMAT} file")
        saved = state["settings"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise TrainError(f"--out: {path} is unreadable ({type(error).__name__}: {error}); it was left as it is; "
                         "use another --out") from None
    current = json.loads(json.dumps(settings.identity()))  # as JSON gives it back
    diff = [f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k)]
    if diff:
        raise TrainError(f"--out: {path} holds a sweep with other settings ({'; '.join(diff)}); use the same "
                         "settings to continue it, or another --out")
    return {"runs": state["runs"], "invocations": state["invocations"]}


def _save_state(out: str, settings: SweepSettings, state: Dict[str, Any]) -> None:
    state = {"format": _FORMAT, "settings": settings.identity(), "updated": _now(), **state}
    text = json.dumps(state, indent=1) + "\n"
    atomic_write(os.path.join(out, _STATE), lambda f: f.write(text.encode()))


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM ends the sweep as Ctrl-C does (finished runs kept, report written); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _machine() -> Dict[str, Any]:
    """Where the runs ran, for the report."""
    from tat_ext.tools.common import environment

    env = environment()
    return {"cpu": env["cpu"], "cores": os.cpu_count(), "torch": env["torch"], "python": env["python"],
            "tat_ext": env["tat_ext"]}


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z")


def _progress_bar(total: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="run", desc="sweep", disable=not progress, dynamic_ncols=True, file=sys.stderr)


def run_sweep(settings: SweepSettings, out: str, *, workers: Optional[int] = None, progress: bool = True,
              meta: Optional[Dict[str, Any]] = None) -> SweepResult:
    """Run every run of ``settings`` not yet recorded in ``out/sweep.json``, then write
    ``out/sweep.md`` and ``out/sweep.png`` (see the module docstring).

    Args:
        settings: the grid and the shared training settings.
        out: the sweep directory (created if missing).
        workers: parallel processes (default: the CPU cores / ``settings.threads``); 1 runs
            in this process.
        progress: a tqdm bar over the runs.
        meta: facts recorded with this invocation in sweep.json and the report (e.g. the command).

    Raises:
        TrainError: a bad setting (named by its option), an unreadable ``sweep.json``, or one
            made with other training settings; raised before anything is written.
    """
    from tat_ext.train.sweep_report import write_report

    settings.check()
    if workers is None:
        workers = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
                      // settings.threads)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TrainError(f"--workers: must be an integer >= 1, got {workers!r}")
    state = _load_state(out, settings)
    runs = state["runs"]
    try:
        full, fit = _data(settings.base, settings.validation_every)
    except ValueError as error:
        raise TrainError(f"--data {settings.base.data}: {error}") from None
    if settings.base.batch_size > len(fit.train):
        raise TrainError(f"--batch-size: {settings.base.batch_size} is larger than the training part "
                         f"({len(fit.train)} examples after holding out the validation part)")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise TrainError(f"--out: cannot create {out} ({error.strerror})") from None
    remove_stale_temporaries(out, (_STATE, _TABLE, _PLOT))
    specs = settings.runs()
    todo = [(s, settings.config(s), settings.validation_every) for s in specs
            if runs.get(s.key, {}).get("status") not in ("done", "diverged")]
    started, started_at = time.perf_counter(), _now()
    bar = _progress_bar(len(todo), progress)
    errors = 0

    def on_done(record: Dict[str, Any]) -> None:
        nonlocal errors
        key = RunSpec(record["method"], record["depth"], record["lr"], record["seed"]).key
        runs[key] = record
        errors += record["status"] == "error"
        _save_state(out, settings, state)
        shown = f"{record['val_acc']:.1%}" if record["status"] == "done" else record["status"]
        bar.set_postfix_str(f"{key}: {shown}", refresh=False)
        bar.update(1)

    interrupted = False
    try:
        with _sigterm_as_interrupt():
            if min(workers, len(todo)) == 1:
                _run_in_process(todo, settings.threads, on_done)
            elif todo:
                _run_in_workers(todo, min(workers, len(todo)), settings.threads, on_done)
    except KeyboardInterrupt:
        interrupted = True
    finally:  # also after a WorkerDied: the report shows what finished
        bar.close()
        wall = time.perf_counter() - started
        if todo:
            state["invocations"].append({"started": started_at, "wall_seconds": wall, "runs": bar.n,
                                         "workers": min(workers, len(todo)), "threads": settings.threads,
                                         "interrupted": interrupted, **_machine(), **(meta or {})})
            _save_state(out, settings, state)
        current = {s.key: runs[s.key] for s in specs if s.key in runs and runs[s.key]["status"] != "error"}
        examples = {"fit": len(fit.train), "validation": len(fit.test), "test": len(full.test)}
        write_report(out, settings, current, state["invocations"], examples)
    return SweepResult(current, errors, interrupted, wall)

