"""Image classification data for ``tat-ext train``: the 8x8 digits that ship with scikit-learn, CIFAR-10
from a local directory, and a synthetic set for speed tests.

Every loader returns an :class:`ImageData` that holds both splits in memory (the images in their
stored dtype, e.g. uint8) and turns index batches into float tensors with :meth:`ImageData.batch`:
pixels scaled to [0, 1], then standardized per channel with the training split's mean and standard
deviation. Nothing here downloads anything.
"""
from __future__ import annotations

import importlib.util
import os
import pickle
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATASETS", "ImageData", "Split", "cifar10", "digits", "load", "synthetic", "validation_split"]

DATASETS = ("digits", "cifar10", "synthetic")


@dataclass(frozen=True)
class Split:
    """Images [N, C, H, W] (stored dtype) and int64 labels [N]."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass(frozen=True)
class ImageData:
    """Both splits of an image classification set and how to turn stored pixels into model inputs."""

    name: str
    train: Split
    test: Split
    num_classes: int
    pixel_scale: float  # stored value → [0, 1]
    mean: Tuple[float, ...]  # per channel, of the scaled training images
    std: Tuple[float, ...]

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    def batch(self, split: Split, index: Tensor, device: torch.device = torch.device("cpu"),
              channels_last: bool = False) -> Tuple[Tensor, Tensor]:
        """Standardized float32 images and labels of ``split[index]`` on ``device``."""
        images = split.images[index].to(device=device, dtype=torch.float32, non_blocking=True)
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        images = (images * self.pixel_scale - mean) / std
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, split.labels[index].to(device, non_blocking=True)


def _standardized(name: str, train: Split, test: Split, num_classes: int, pixel_scale: float) -> ImageData:
    scaled = train.images.double() * pixel_scale
    mean = scaled.mean(dim=(0, 2, 3))
    std = scaled.std(dim=(0, 2, 3)).clamp_min(1e-12)
    return ImageData(name, train, test, num_classes, pixel_scale,
                     tuple(float(m) for m in mean), tuple(float(s) for s in std))


_DIGITS_FILE = ("datasets", "data", "digits.csv.gz")  # inside the scikit-learn package


def _digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """Pixels [1797, 64] and labels of scikit-learn's digits.

    The file scikit-learn ships (one row per image: 64 pixels, then the label) is read directly
    when it is where scikit-learn keeps it, since importing scikit-learn costs seconds; otherwise
    through ``sklearn.datasets.load_digits``.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise ValueError("the digits ship with scikit-learn, which is not installed (pip install scikit-learn)")
    for root in spec.submodule_search_locations or ():
        path = os.path.join(root, *_DIGITS_FILE)
        if os.path.isfile(path):
            table = np.loadtxt(path, delimiter=",", dtype=np.float64)
            if table.shape == (1797, 65):
                return table[:, :64], table[:, 64]
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target


def _every_kth_per_class(labels: Tensor, k: int) -> Tensor:
    """Mask of the examples at positions k−1, 2k−1, … within each class (in stored order)."""
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        chosen[members[k - 1::k]] = True
    return chosen


def digits() -> ImageData:
    """The 1,797 8x8 grey-scale handwritten digits bundled with scikit-learn (values 0–16).

    Fixed split, independent of any random generator: within each class, taken in the file's
    order, every fifth example (positions 4, 9, 14, …) is a test example — 355 test, 1,442 train.
    (The file cycles through the classes 0–9, so a plain "every fifth example" would put only
    4s and 9s in the test set.)
    """
    pixels, target = _digits_arrays()
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 8, 8))
    labels = torch.from_numpy(target.astype(np.int64))
    is_test = _every_kth_per_class(labels, 5)
    train = Split(images[~is_test], labels[~is_test])
    test = Split(images[is_test], labels[is_test])
    return _standardized("digits", train, test, 10, 1.0 / 16.0)


_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


def _read_cifar_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError,
            IndexError) as error:
        raise ValueError(f"{path} is not a readable CIFAR-10 python-pickle batch ({type(error).__name__}: "
                         f"{error})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(f"{path} is not a CIFAR-10 batch: expected data [N, 3072] and N labels, got "
                         f"data {list(data.shape)} and {list(labels.shape)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10(data_dir: str) -> ImageData:
    """CIFAR-10 from ``data_dir`` in the standard python-pickle format (never downloaded).

    ``data_dir`` holds ``data_batch_1`` … ``data_batch_5`` and ``test_batch``, directly or in a
    ``cifar-10-batches-py`` subdirectory (the layout of the official archive). The standard split.

    Raises:
        ValueError: the directory or a batch file is missing (named), or a file is corrupt (named).
    """
    if not isinstance(data_dir, (str, os.PathLike)) or not os.path.isdir(data_dir):
        raise ValueError(f"data dir {data_dir!r} is not a directory; pass the folder with CIFAR-10's "
                         "python batches (data_batch_1..5, test_batch)")
    nested = os.path.join(data_dir, "cifar-10-batches-py")
    root = nested if os.path.isdir(nested) else os.fspath(data_dir)
    missing = [n for n in _CIFAR_TRAIN + (_CIFAR_TEST,) if not os.path.isfile(os.path.join(root, n))]
    if missing:
        raise ValueError(f"CIFAR-10 batch file(s) missing in {root}: {', '.join(missing)} "
                         "(expected the python version: data_batch_1..5 and test_batch)")
    parts = [_read_cifar_batch(os.path.join(root, n)) for n in _CIFAR_TRAIN]
    test_x, test_y = _read_cifar_batch(os.path.join(root, _CIFAR_TEST))
    train = Split(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                  torch.from_numpy(np.concatenate([p[1] for p in parts])))
    test = Split(torch.from_numpy(test_x), torch.from_numpy(test_y))
    return _standardized("cifar10", train, test, 10, 1.0 / 255.0)


def synthetic(num_train: int = 2048, num_test: int = 512, *, channels: int = 3, size: int = 32,
              num_classes: int = 10, seed: int = 0) -> ImageData:
    """Random Gaussian images labelled by a fixed random linear teacher (learnable, for speed tests).

    Deterministic for a given ``seed`` (its own generator; the global RNG is untouched).
    """
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(channels * size * size, num_classes, generator=gen)

    def split(n: int) -> Split:
        images = torch.randn(n, channels, size, size, generator=gen)
        return Split(images, (images.flatten(1) @ teacher).argmax(1))

    train, test = split(num_train), split(num_test)
    return _standardized("synthetic", train, test, num_classes, 1.0)


def validation_split(data: ImageData, every: int = 5) -> ImageData:
    """Hold out part of ``data``'s training split for choosing settings (e.g. a learning rate).

    Within each class, taken in stored order, every ``every``-th training example (positions
    every−1, 2·every−1, …) is held out: the result's ``train`` is the rest and its ``test`` the
    held-out examples; pixels are standardized with the statistics of the new ``train`` only. The
    split is fixed (no random generator), and ``data.test`` is not used at all.

    Raises:
        ValueError: ``every`` is not an int >= 2.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 2:
        raise ValueError(f"every must be an int >= 2 (every-th training example held out), got {every!r}")
    held_out = _every_kth_per_class(data.train.labels, every)
    fit = Split(data.train.images[~held_out], data.train.labels[~held_out])
    validation = Split(data.train.images[held_out], data.train.labels[held_out])
    return _standardized(data.name, fit, validation, data.num_classes, data.pixel_scale)


def load(name: str, data_dir: str | None = None) -> ImageData:
    """A dataset by name (one of :data:`DATASETS`); ``data_dir`` is needed for (only) cifar10."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "cifar10":
        if data_dir is None:
            raise ValueError("cifar10 needs a data dir with its python batches (--data-dir)")
        return cifar10(data_dir)
    if data_dir is not None:
        raise ValueError(f"a data dir applies to cifar10 only, not {name}")
    return digits() if name == "digits" else synthetic()
