"""Batches for a training loop: a :class:`torch.utils.data.DataLoader` over whole index batches.

The loop decides which examples form each batch (:class:`tat_ext.train.distributed.GlobalBatchSampler`
under torchrun too) and hands the loader ``(epoch, index)`` items through :class:`BatchPlan`; the
loader's workers (``--loader-workers``; 0 = in the training process) read and augment the
examples of an item and return one stacked batch in the stored dtype (uint8 for most data, so a
GPU copy moves a quarter of the bytes); :meth:`ImageData.normalize` then standardizes it on the
device. The DataLoader keeps the items' order, and each example's augmentation depends on
(seed, epoch, index) only (:mod:`tat_ext.datasets.augment`), so a batch is bitwise the same for
any number of workers and after any resume. The workers persist across passes (starting
processes costs more than a small epoch); on CUDA the batches are pinned.

A file that cannot be decoded in a worker comes back as a marker, and :func:`batches` raises a
one-line UserError naming it (a DataLoader would wrap it in a multi-line traceback).
"""
from __future__ import annotations

import signal
from typing import Iterable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tat_ext.datasets.augment import Pipeline, example_seed
from tat_ext.datasets.core import Split
from tat_ext.errors import UserError

__all__ = ["BatchPlan", "batches", "make_loader"]

# Whole-batch items: (epoch, index) for training; epoch None means evaluation (no randomness).
Item = Tuple[Optional[int], Tensor]


class _Batches(Dataset):
    """``dataset[(epoch, index)]`` → (images [B, C, S, S] stored dtype, labels [B]) or an error marker."""

    def __init__(self, split: Split, pipeline: Pipeline, train: bool) -> None:
        self.split, self.pipeline = split, pipeline
        self.transform = pipeline.train_transform() if train else pipeline.eval_transform()

    def __getitem__(self, item: Item):
        epoch, index = item
        split, pipeline = self.split, self.pipeline
        labels = split.labels[index]
        if self.transform is None and split.in_memory:
            return split.images[index], labels
        try:
            images = [pipeline.apply(self.transform, split.example(i),
                                     None if epoch is None else example_seed(pipeline.seed, epoch, i))
                      for i in index.tolist()]
        except ValueError as error:  # a damaged file (the message names it)
            return "error", str(error)
        return torch.stack(images), labels


class BatchPlan:
    """The sampler of a loader: the items of the current pass, set with :meth:`set` before each
    ``iter(loader)`` (a persistent loader keeps its workers between passes)."""

    def __init__(self) -> None:
        self._items: List[Item] = []

    def set(self, items: Iterable[Item]) -> None:
        self._items = list(items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def _worker_init(worker_id: int) -> None:
    """Ctrl-C in a terminal reaches the whole process group, but it is the training process's to
    handle (it stops after the step and saves); a worker that died of it would make the DataLoader
    fail instead. (SIGTERM stays fatal: the DataLoader and multiprocessing end workers with it.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(split: Split, pipeline: Pipeline, *, train: bool, workers: int, device: torch.device,
                plan: BatchPlan) -> DataLoader:
    """A DataLoader over the items of ``plan`` (see the module docstring)."""
    cuda = device.type == "cuda"
    return DataLoader(_Batches(split, pipeline, train), batch_size=None, sampler=plan, num_workers=workers,
                      pin_memory=cuda, persistent_workers=workers > 0, worker_init_fn=_worker_init,
                      # Its own generator: creating an iterator draws a seed, which must not
                      # advance the global generator (the checkpoint stores that one).
                      generator=torch.Generator().manual_seed(pipeline.seed))


def batches(loader: DataLoader) -> Iterator[Tuple[Tensor, Tensor]]:
    """The batches of one pass over ``loader``.

    Raises:
        UserError: an image file of the pass could not be decoded (named).
    """
    for batch in loader:
        if isinstance(batch[0], str):
            raise UserError("data_dir", batch[1])
        yield batch
