"""One training run: :func:`train` (what ``tat-ext train`` calls; usable in-process, e.g. by a sweep).

Reproducibility: the model is initialized from ``--seed``; each epoch's data order is drawn from a
dedicated generator, and each example's augmentation from (seed, epoch, example) alone
(:mod:`tat_ext.datasets.augment`), whatever ``--loader-workers``; the checkpoint stores every
generator, the optimizer and schedule, and the position in the epoch. Resuming replays exactly the
computation the interrupted run would have done, so on CPU the final weights are bitwise those of
an uninterrupted run.

Ctrl-C (SIGINT) or SIGTERM: the step in progress finishes, the state after it is saved (epoch,
batch within it, the epoch's running sums) and the run returns with ``interrupted=True`` (the CLI
exits with status 130). A second Ctrl-C aborts at once without saving.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from tat_ext import datasets
from tat_ext.errors import RunError, UserError
from tat_ext.datasets.augment import Pipeline, resolve_pipeline
from tat_ext.datasets.loader import BatchPlan, batches, make_loader
from tat_ext.train import checkpoint as ckpt_io
from tat_ext.train.build import build_model, build_optimizer, build_schedule
from tat_ext.optim.factors import CurvatureError
from tat_ext.optim.kfac import KFAC
from tat_ext.train.config import Diverged, TrainConfig, TrainError, as_train_error, flag_of
from tat_ext.train.distributed import GlobalBatchSampler, Processes, setup_processes
from tat_ext.train.metrics import plot_curves, write_metrics
from tat_ext.utils.progress import progress_bar

__all__ = ["TrainResult", "evaluate", "train"]

_EVAL_BATCH = 512


@dataclass
class TrainResult:
    """What a run produced. ``history`` holds the metrics rows (as in metrics.jsonl);
    ``test_acc``/``test_loss`` are the last completed epoch's (None before the first);
    ``model`` is the trained module (no DDP/compile wrapper)."""

    config: TrainConfig
    resolved: Dict[str, Any]
    history: List[Dict[str, float]]
    model: nn.Module
    interrupted: bool = False
    out: Optional[str] = None

    @property
    def test_acc(self) -> Optional[float]:
        return self.history[-1]["test_acc"] if self.history else None

    @property
    def test_loss(self) -> Optional[float]:
        return self.history[-1]["test_loss"] if self.history else None


@dataclass
class _EpochSums:
    """Running sums of one epoch's training steps (the partial state of an interrupted epoch)."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> Dict[str, float]:
        return {"loss": self.loss, "correct": self.correct, "count": self.count, "seconds": self.seconds}


class _StopRequest:
    """SIGINT/SIGTERM set a flag that the loop reads between steps; a second SIGINT aborts."""

    def __init__(self, enabled: bool, announce: bool) -> None:
        self.requested = False
        self._announce = announce
        self._enabled = enabled and threading.current_thread() is threading.main_thread()
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self._announce:
            print("\nstopping after this step and saving a checkpoint (Ctrl-C again aborts without saving)",
                  file=sys.stderr, flush=True)

    def __enter__(self) -> "_StopRequest":
        if self._enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _autocast(config: TrainConfig, device: torch.device):
    """bfloat16 autocast with ``--amp``, else nothing."""
    if not config.amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def evaluate(model: nn.Module, data: datasets.ImageData, split: datasets.Split, *, config: TrainConfig,
             device: torch.device = torch.device("cpu"), index: Optional[torch.Tensor] = None,
             pipeline: Optional[Pipeline] = None) -> Tuple[float, float]:
    """Summed loss (the training objective of ``config``) and number of correct predictions of
    ``model`` in eval mode on ``split[index]`` (default: the whole split), with ``config``'s
    memory format, autocast and evaluation transform (``pipeline``: default ``config``'s)."""
    if pipeline is None:
        pipeline = resolve_pipeline(data, config.augment, config.image_size, config.seed)
    plan = BatchPlan()
    loader = make_loader(split, pipeline, train=False, workers=config.loader_workers, device=device, plan=plan)
    return _evaluate_pass(model, data, split, loader, plan, config=config, device=device, index=index)


@torch.no_grad()
def _evaluate_pass(model: nn.Module, data: datasets.ImageData, split: datasets.Split, loader, plan: BatchPlan, *,
                   config: TrainConfig, device: torch.device, index: Optional[torch.Tensor]) -> Tuple[float, float]:
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    index = torch.arange(len(split)) if index is None else index
    plan.set((None, chunk) for chunk in index.split(_EVAL_BATCH))
    for images, labels in batches(loader):
        x = data.normalize(images, device, config.channels_last)
        y = labels.to(device, non_blocking=True)
        with _autocast(config, device):
            logits = model(x)
        loss += F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum().double()
    return loss.item(), correct.item()


def train(config: TrainConfig, *, progress: bool = True, verbose: bool = True,
          handle_signals: bool = True, data: Optional[datasets.ImageData] = None) -> TrainResult:
    """Run one training as ``config`` says; see the module docstring.

    Args:
        config: the settings; ``config.out=None`` writes no files.
        progress: show a tqdm progress bar (main process only).
        verbose: print one line per epoch and a final line with the test accuracy.
        handle_signals: turn SIGINT/SIGTERM into "save and return" (main thread only).
        data: train and evaluate on this instead of loading ``config.data`` (in-process callers,
            e.g. a sweep that validates on :func:`tat_ext.datasets.validation_split`); the run's
            files and header name it (its name, source and fingerprint).

    Returns:
        :class:`TrainResult`.

    Raises:
        TrainError: a user mistake (settings, device, data, output directory, checkpoint), raised
            before anything is written; the message names the flag or file.
        Diverged: the loss became non-finite (the state of the epoch is not saved).
        RunError: a file of the run could not be written (e.g. the disk is full); the previous
            checkpoint is kept. Under torchrun, :class:`~tat_ext.train.distributed.ProcessLost`:
            another process of the run stopped.
    """
    config = config.resolved()
    with as_train_error():  # the device
        procs = setup_processes(config.device)
    try:
        with procs.reporting_lost_processes():
            with as_train_error():  # the data (also an image first decoded mid-run), the sampler, the run directory
                return _Run(config, procs, progress=progress, verbose=verbose, data=data).run(handle_signals)
    finally:
        procs.close()


def _write(out: str, name: str, write: Callable[[str], None]) -> None:
    """``write(out/name)``; a failed write (e.g. a full disk) ends the run with one line naming the
    file and the OS error (the atomic write left the previous file as it was)."""
    path = os.path.join(out, name)
    try:
        write(path)
    except OSError as error:
        raise RunError(f"cannot write {path}: {error.strerror or error} (errno {error.errno}); nothing partial "
                       f"was left and the previous {name}, if any, is kept") from None


class _Run:
    def __init__(self, config: TrainConfig, procs: Processes, *, progress: bool, verbose: bool,
                 data: Optional[datasets.ImageData]) -> None:
        self.config, self.procs = config, procs
        self.progress, self.verbose = progress and procs.is_main, verbose and procs.is_main
        self.device = procs.device
        _seed_everything(config.seed)
        self.data = self._load_data() if data is None else data
        self.pipeline = resolve_pipeline(self.data, config.augment, config.image_size, config.seed)
        try:
            model, self.resolved = build_model(config, self.data, self.pipeline.image_size)
        except UserError as error:  # the builder's argument is a setting: name its flag
            flag = flag_of(error.argument)
            raise TrainError(flag or "--model", error.detail if flag else f"{config.model}: {error}") from None
        except ValueError as error:
            raise TrainError("--model", f"{config.model}: {error}") from None
        self.sampler = GlobalBatchSampler(len(self.data.train), config.batch_size, procs.rank, procs.world)
        self.resolved.update(
            world_size=procs.world, device=str(self.device), torch=str(torch.__version__),
            train_examples=len(self.data.train), test_examples=len(self.data.test),
            steps_per_epoch=len(self.sampler), image_size=self.pipeline.image_size,
            in_channels=self.data.in_channels, num_classes=self.data.num_classes,
            data={"name": self.data.name, "source": self.data.source, "fingerprint": self.data.fingerprint,
                  "augment": self.pipeline.augment, "image_size": self.pipeline.image_size})
        self.plan, self.eval_plan = BatchPlan(), BatchPlan()
        self.loader = make_loader(self.data.train, self.pipeline, train=True, workers=config.loader_workers,
                                  device=self.device, plan=self.plan)
        self.eval_loader = make_loader(self.data.test, self.pipeline, train=False, workers=config.loader_workers,
                                       device=self.device, plan=self.eval_plan)

        checkpoint = self._prepare_out()
        self.core = model.to(self.device)
        if config.channels_last:
            self.core = self.core.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(config, self.core)
        self.schedule = build_schedule(config, self.optimizer, len(self.sampler))
        self.order = torch.Generator()
        self.order.manual_seed(config.seed)
        self.epoch, self.batch, self.partial, self.history = 0, 0, _EpochSums(), []
        if checkpoint is not None:
            self._restore(checkpoint)
        self.started_over = config.resume and checkpoint is None
        if config.out is not None and procs.is_main:  # only now: every check has passed
            _write(config.out, ckpt_io.CONFIG,
                   lambda path: ckpt_io.write_config(config.out, config, self.resolved))
        self.model = self._wrap(self.core)

    # -- setup ------------------------------------------------------------------------------------

    def _load_data(self) -> datasets.ImageData:
        """``config``'s data; with --download the main process fetches it first, the others wait."""
        config, procs = self.config, self.procs

        def load(download: bool) -> datasets.ImageData:
            return datasets.load(config.data, config.data_dir, data_path=config.data_path, download=download)

        if not (config.download and procs.distributed):
            return load(config.download)
        data, failure = None, None
        if procs.is_main:
            try:
                data = load(True)
            except UserError as error:
                failure = (error.argument, error.detail)
        failure = procs.broadcast(failure)
        if failure is not None:
            raise TrainError(*failure)
        return data if procs.is_main else load(False)

    def _prepare_out(self) -> Optional[Dict[str, Any]]:
        """Main process: check the run directory; every process gets the checkpoint or the error."""
        if self.config.out is None:
            return None
        message: Any = None
        if self.procs.is_main:
            try:
                message = ("ok", ckpt_io.prepare_run_dir(self.config, self.resolved["data"]))
            except TrainError as error:
                message = ("error", (error.argument, error.detail))
        kind, payload = self.procs.broadcast(message)
        if kind == "error":
            raise TrainError(*payload)
        return payload

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        try:
            self.core.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.schedule.load_state_dict(ckpt["scheduler"])
            self.order.set_state(ckpt_io.restore_rng(ckpt["rng"]))
            self.epoch, self.batch = int(ckpt["epoch"]), int(ckpt["batch"])
            partial = ckpt["partial"] if self.procs.is_main else {}  # the sums are global
            self.partial = _EpochSums(**partial)
            self.history = list(ckpt["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise TrainError("--resume", f"{self.config.out}/{ckpt_io.CHECKPOINT} does not fit this model "
                             f"({type(error).__name__}: {str(error).splitlines()[0]}); it was left as it is") from None
        if self.batch >= len(self.sampler) or len(self.history) != self.epoch:
            raise TrainError("--resume", f"{self.config.out}/{ckpt_io.CHECKPOINT} is inconsistent "
                             f"(epoch {self.epoch}, batch {self.batch}, {len(self.history)} metrics rows)")

    def _wrap(self, core: nn.Module) -> nn.Module:
        model = core
        if self.procs.distributed:
            from torch.nn.parallel import DistributedDataParallel

            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                model = DistributedDataParallel(model, device_ids=[self.device.index])
            else:
                model = DistributedDataParallel(model)
        if self.config.compile:
            model = torch.compile(model)
        return model

    # -- training ---------------------------------------------------------------------------------

    def run(self, handle_signals: bool) -> TrainResult:
        config = self.config
        if self.verbose:
            self._print_header()
            if self.started_over:
                print(f"--resume: {config.out} holds {ckpt_io.CONFIG} but no {ckpt_io.CHECKPOINT} (the run stopped "
                      "before its first epoch ended): starting from epoch 1", flush=True)
            elif self.epoch >= config.epochs:
                last = self.history[-1]
                print(f"--resume: the run in {config.out} is already complete ({self.epoch} of {config.epochs} "
                      f"epochs; final test accuracy {last['test_acc']:.2%}): nothing to train. To train longer, "
                      "pass a larger --epochs (runs made with --schedule constant only)", flush=True)
            elif self.epoch or self.batch:
                print(f"resuming {config.out} at epoch {self.epoch + 1}, step {self.batch}/{len(self.sampler)}",
                      flush=True)
        finished_before = self.epoch >= config.epochs
        with _StopRequest(handle_signals, announce=self.procs.is_main) as stop:
            while self.epoch < config.epochs:
                epoch_start = self.order.get_state()
                stopped_at = self._train_epoch(stop)
                if stopped_at is not None:
                    self._save(data_order=epoch_start, batch=stopped_at)
                    return self._interrupted(stopped_at)
                self._finish_epoch()
                if self.procs.any(stop.requested):
                    return self._interrupted(0)
        if self.verbose and self.history and not finished_before:
            last = self.history[-1]
            print(f"final test accuracy: {last['test_acc']:.2%} (test loss {last['test_loss']:.4f}) "
                  f"after {last['epoch']} epochs")
        return self._result(interrupted=False)

    def _train_epoch(self, stop: _StopRequest) -> Optional[int]:
        """Train the rest of epoch ``self.epoch``; returns the batch reached if a stop was requested."""
        config, procs, data = self.config, self.procs, self.data
        steps = len(self.sampler)
        sums = self.partial
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        correct_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        scale = procs.world / config.batch_size  # DDP averages over processes: the sum becomes the global mean
        self.model.train()
        bar = self._bar(steps)
        started = time.perf_counter()
        step = self.batch
        self.plan.set((self.epoch, index) for index in self.sampler.epoch(self.order, start=self.batch))
        for step, (images, labels) in enumerate(batches(self.loader), start=self.batch):
            x = data.normalize(images, self.device, config.channels_last)
            y = labels.to(self.device, non_blocking=True)
            with _autocast(config, self.device):
                logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing, reduction="sum")
            if isinstance(self.optimizer, KFAC):
                self.optimizer.curvature_backward(logits)  # the MC Fisher's backward (before the graph is freed)
            (loss * scale).backward()  # the local mean: K-FAC's per-example gradients are N × its gradient
            try:
                self.optimizer.step()
            except CurvatureError as error:
                raise Diverged(f"training diverged in epoch {self.epoch + 1}, step {step + 1} ({error}); this epoch "
                               f"was not saved. Try a smaller --lr (now {config.lr:g})") from None
            self.optimizer.zero_grad(set_to_none=True)
            self.schedule.step()
            loss_acc += loss.detach().double()
            correct_acc += (logits.argmax(1) == y).sum().double()
            count += len(y)
            if bar is not None:
                elapsed = time.perf_counter() - started
                bar.update(1)
                if step % 5 == 0 or step == steps - 1:
                    bar.set_postfix(loss=f"{(sums.loss + loss_acc.item()) / max(1, sums.count + count):.4f}",
                                    acc=f"{(sums.correct + correct_acc.item()) / max(1, sums.count + count):.2%}",
                                    samples_s=f"{count * procs.world / max(elapsed, 1e-9):.0f}", refresh=False)
            if procs.any(stop.requested) and step + 1 < steps:
                break
        else:
            step = steps - 1
        if bar is not None:
            bar.close()
        loss_sum, correct_sum, count_sum = procs.sum([loss_acc.item(), correct_acc.item(), float(count)])
        if not math.isfinite(loss_sum):
            raise Diverged(f"training diverged in epoch {self.epoch + 1} (loss {loss_sum}); this epoch was not "
                           f"saved. Try a smaller --lr (now {config.lr:g})")
        self.partial = _EpochSums(sums.loss + loss_sum, sums.correct + correct_sum, sums.count + count_sum,
                                  sums.seconds + time.perf_counter() - started)
        if step + 1 < steps:
            return step + 1
        return None

    def _bar(self, steps: int):
        if not self.progress:
            return None
        return progress_bar(total=steps, initial=self.batch, desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
                            unit="step")

    def _evaluate(self) -> tuple:
        """Test loss (the training objective) and accuracy; each process takes a share."""
        data, procs = self.data, self.procs
        share = torch.arange(len(data.test))[procs.rank::procs.world]
        loss, correct = _evaluate_pass(self.core, data, data.test, self.eval_loader, self.eval_plan,
                                       config=self.config, device=self.device, index=share)
        loss_sum, correct_sum = procs.sum([loss, correct])
        n = len(data.test)
        return loss_sum / n, correct_sum / n

    def _finish_epoch(self) -> None:
        test_loss, test_acc = self._evaluate()
        sums = self.partial
        self.history.append({
            "epoch": self.epoch + 1,
            "train_loss": sums.loss / sums.count,
            "train_acc": sums.correct / sums.count,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": sums.seconds,
            "samples_per_s": sums.count / sums.seconds if sums.seconds > 0 else 0.0,
        })
        self.epoch, self.batch, self.partial = self.epoch + 1, 0, _EpochSums()
        self._save(data_order=self.order.get_state(), batch=0)
        if self.verbose:
            row = self.history[-1]
            print(f"epoch {row['epoch']:>3}/{self.config.epochs}  train loss {row['train_loss']:.4f} "
                  f"acc {row['train_acc']:6.2%}  test loss {row['test_loss']:.4f} acc {row['test_acc']:6.2%}  "
                  f"{row['seconds']:.1f} s  {row['samples_per_s']:.0f} samples/s", flush=True)

    # -- output -----------------------------------------------------------------------------------

    def _save(self, *, data_order: torch.Tensor, batch: int) -> None:
        """Checkpoint, then metrics.jsonl and curves.png rebuilt from the same history (main process)."""
        out = self.config.out
        if out is None or not self.procs.is_main:
            return
        payload = {
            "config": self.config.as_dict(),
            "resolved": self.resolved,
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "rng": ckpt_io.capture_rng(data_order),
            "epoch": self.epoch,
            "batch": batch,
            "partial": self.partial.as_dict() if batch else _EpochSums().as_dict(),
            "history": self.history,
        }
        _write(out, ckpt_io.CHECKPOINT, lambda path: ckpt_io.save_checkpoint(out, payload))
        if batch == 0:
            _write(out, ckpt_io.METRICS, lambda path: write_metrics(path, self.history))
            _write(out, ckpt_io.CURVES, lambda path: plot_curves(path, self.history, self._title()))

    def _title(self) -> str:
        c, act = self.config, self.resolved.get("activation", {})
        slope = f", slope {act['slope']:.4f}" if "slope" in act else ""
        shape = "".join(f" {name} {value}" for name, value in (("depth", c.depth), ("width", c.width))
                        if value is not None)
        return (f"{c.model}{shape}, {act.get('name')}{slope}; {self.data.name}; "
                f"{c.optimizer} lr {c.lr:g}, batch {c.batch_size}, seed {c.seed}")

    def _print_header(self) -> None:
        act = self.resolved.get("activation", {})
        detail = f" (slope {act['slope']:.6f}, scale {act['scale']:.6f}, eta {act['eta']:g})" if "slope" in act else ""
        print(f"{self._title()}\n{act.get('name')}{detail}; {self.resolved['parameters']:,} parameters; "
              f"{self.resolved['train_examples']} train / {self.resolved['test_examples']} test examples; "
              f"device {self.device}" + (f" x {self.procs.world} processes" if self.procs.distributed else ""),
              flush=True)
        d, p = self.data, self.pipeline
        print(f"data: {d.name} from {d.source} ({d.fingerprint})\n"
              f"      {d.num_classes} classes, {d.in_channels} channel(s), image size {p.image_size}; augment {p.augment}; "
              f"loader workers {self.config.loader_workers}", flush=True)
        if self.config.schedule == "cosine" and self.config.out is not None and not self.config.resume:
            print(f"note: the cosine schedule decays to 0 at epoch {self.config.epochs}, so this run's length is "
                  "fixed: --resume can finish it but not extend it (--schedule constant can be extended)", flush=True)

    def _interrupted(self, batch: int) -> TrainResult:
        if self.procs.is_main:
            where = (f"saved {os.path.join(self.config.out, ckpt_io.CHECKPOINT)}; continue with --resume"
                     if self.config.out else "nothing saved (no --out)")
            print(f"interrupted at epoch {self.epoch + 1}, step {batch}/{len(self.sampler)}: {where}",
                  file=sys.stderr, flush=True)
        return self._result(interrupted=True)

    def _result(self, interrupted: bool) -> TrainResult:
        return TrainResult(self.config, self.resolved, list(self.history), self.core, interrupted, self.config.out)
