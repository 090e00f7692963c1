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
import multiprocessing
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from tat_ext import _validate, datasets
from tat_ext.errors import RunError, UserError
from tat_ext.train.config import Diverged, TrainConfig, TrainError
from tat_ext.train.loop import evaluate, train
from tat_ext.train.sweep_grid import RunSpec, SweepSettings, layers_of
from tat_ext.train.sweep_report import write_report
from tat_ext.utils.files import ensure_writable_dir, remove_stale_temporaries, write_json_atomic
from tat_ext.utils.machine import environment
from tat_ext.utils.progress import progress_bar

__all__ = ["SweepResult", "WorkerDied", "run_sweep"]


_STATE, _TABLE, _PLOT = "sweep.json", "sweep.md", "sweep.png"
_FORMAT = "tat-ext-sweep/1"


class WorkerDied(RunError):
    """A worker process ended without reporting its run (killed, out of memory, ...)."""


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
        raise TrainError("--out", f"{out} exists and is not a directory")
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
        raise TrainError("--out", f"{path} is unreadable ({type(error).__name__}: {error}); it was left as it is; "
                         "use another --out") from None
    current = json.loads(json.dumps(settings.identity()))  # as JSON gives it back
    diff = [f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in sorted(set(saved) | set(current))
            if saved.get(k) != current.get(k)]
    if diff:
        raise TrainError("--out", f"{path} holds a sweep with other settings ({'; '.join(diff)}); use the same "
                         "settings to continue it, or another --out")
    return {"runs": state["runs"], "invocations": state["invocations"]}


def _save_state(out: str, settings: SweepSettings, state: Dict[str, Any]) -> None:
    write_json_atomic(os.path.join(out, _STATE),
                      {"format": _FORMAT, "settings": settings.identity(), "updated": _now(), **state})


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
    env = environment()
    return {"cpu": env["cpu"], "cores": os.cpu_count(), "torch": env["torch"], "python": env["python"],
            "tat_ext": env["tat_ext"]}


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z")


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
    settings.check()
    if workers is None:
        workers = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
                      // settings.threads)
    try:
        workers = _validate.integer("--workers", workers, ge=1)
    except (TypeError, ValueError) as error:
        raise TrainError("--workers", str(error)) from None
    state = _load_state(out, settings)
    runs = state["runs"]
    try:
        full, fit = _data(settings.base, settings.validation_every)
    except ValueError as error:
        raise TrainError(f"--data {settings.base.data}: {error}") from None
    if settings.base.batch_size > len(fit.train):
        raise TrainError("--batch-size", f"{settings.base.batch_size} is larger than the training part "
                         f"({len(fit.train)} examples after holding out the validation part)")
    try:
        ensure_writable_dir(out, "--out")
    except UserError as error:
        raise TrainError(error.argument, error.detail) from None
    remove_stale_temporaries(out, (_STATE, _TABLE, _PLOT))
    specs = settings.runs()
    todo = [(s, settings.config(s), settings.validation_every) for s in specs
            if runs.get(s.key, {}).get("status") not in ("done", "diverged")]
    started, started_at = time.perf_counter(), _now()
    bar = progress_bar(total=len(todo), unit="run", desc="sweep", disable=not progress)
    errors = finished = 0

    def on_done(record: Dict[str, Any]) -> None:
        nonlocal errors, finished
        finished += 1
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
            state["invocations"].append({"started": started_at, "wall_seconds": wall, "runs": finished,
                                         "workers": min(workers, len(todo)), "threads": settings.threads,
                                         "interrupted": interrupted, **_machine(), **(meta or {})})
            _save_state(out, settings, state)
        current = {s.key: runs[s.key] for s in specs if s.key in runs and runs[s.key]["status"] != "error"}
        examples = {"fit": len(fit.train), "validation": len(fit.test), "test": len(full.test)}
        write_report(out, settings, current, state["invocations"], examples)
    return SweepResult(current, errors, interrupted, wall)

