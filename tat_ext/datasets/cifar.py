"""CIFAR-10 and CIFAR-100 in their python-pickle format, read by the project's own reader.

``data_dir`` is the folder holding the batch files or its parent, i.e. torchvision's layout:

- CIFAR-10: ``cifar-10-batches-py/`` with ``data_batch_1`` … ``data_batch_5``, ``test_batch``
  (and ``batches.meta``, whose class names are used when present);
- CIFAR-100: ``cifar-100-python/`` with ``train``, ``test`` (and ``meta``); the 100 fine labels.

Nothing is downloaded unless asked: ``download=True`` (``--download``) fetches the official archive
through torchvision (which verifies its checksum) when the batch files are not there yet. The
reader is the project's own because torchvision's CIFAR classes check the checksums of the batch
files too, which only the official files pass. Default augmentation: ``crop-flip``.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from tat_ext.datasets import fingerprint
from tat_ext.datasets.core import ImageData, Split, standardized
from tat_ext.errors import UserError

__all__ = ["CIFAR", "cifar10", "cifar100"]


@dataclass(frozen=True)
class _Layout:
    name: str
    folder: str  # the archive's folder (torchvision's base_folder)
    train: Tuple[str, ...]
    test: str
    meta: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    torchvision_class: str


CIFAR = {
    "cifar10": _Layout("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                       "batches.meta", b"labels", b"label_names", 10, "CIFAR10"),
    "cifar100": _Layout("cifar100", "cifar-100-python", ("train",), "test", "meta", b"fine_labels",
                        b"fine_label_names", 100, "CIFAR100"),
}


def _read_batch(path: str, layout: _Layout) -> Tuple[np.ndarray, np.ndarray]:
    what = f"{layout.name.upper().replace('CIFAR', 'CIFAR-')} python-pickle batch"
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[layout.label_key], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError,
            IndexError) as error:
        raise UserError("data_dir", f"{path} is not a readable {what} ({type(error).__name__}: {error})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise UserError("data_dir", f"{path} is not a {what}: expected data [N, 3072] and N labels, got "
                         f"data {list(data.shape)} and {list(labels.shape)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise UserError("data_dir", f"{path} has labels outside 0..{layout.num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels  # row-major 3072 = red, green, blue planes of 32x32


def _class_names(path: str, layout: _Layout) -> Optional[Tuple[str, ...]]:
    """The class names of the meta file, or None when it is absent or unreadable (they are only labels)."""
    try:
        with open(path, "rb") as f:
            names = pickle.load(f, encoding="bytes")[layout.names_key]
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except Exception:  # any damage: the names are cosmetic
        return None
    return names if len(names) == layout.num_classes else None


def _batch_folder(data_dir: str, layout: _Layout) -> str:
    """``data_dir``'s ``layout.folder`` subfolder when it has one and ``data_dir`` itself lacks the
    batch files, else ``data_dir``."""
    direct = all(os.path.isfile(os.path.join(data_dir, n)) for n in layout.train + (layout.test,))
    nested = os.path.join(data_dir, layout.folder)
    return nested if not direct and os.path.isdir(nested) else os.fspath(data_dir)


def _download(data_dir: str, layout: _Layout) -> None:
    """Fetch and unpack the official archive through torchvision into ``data_dir/layout.folder``.

    Works in a temporary folder next to the data, so a failed download leaves nothing behind.
    """
    import torchvision.datasets

    parent = data_dir if os.path.isdir(data_dir) else os.path.dirname(os.path.abspath(data_dir))
    if not os.path.isdir(parent):
        raise UserError("download", f"--download: neither {data_dir} nor its parent folder exists")
    work = tempfile.mkdtemp(prefix=".tat-ext-download-", dir=parent)
    try:
        getattr(torchvision.datasets, layout.torchvision_class)(work, download=True)
        os.makedirs(data_dir, exist_ok=True)
        os.replace(os.path.join(work, layout.folder), os.path.join(data_dir, layout.folder))
    except Exception as error:  # network, DNS, proxy, checksum: all end the same way
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError("download", f"--download: could not fetch {layout.name} into {data_dir} ({detail}); "
                         "download it elsewhere and pass its folder with --data-dir") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _load(layout: _Layout, data_dir: str, download: bool) -> ImageData:
    if not isinstance(data_dir, (str, os.PathLike)):
        raise UserError("data_dir", f"--data-dir: must be a folder path, got {data_dir!r}")
    files = layout.train + (layout.test,)
    if download and not all(os.path.isfile(os.path.join(_batch_folder(data_dir, layout), n)) for n in files):
        _download(data_dir, layout)
    if not os.path.isdir(data_dir):
        raise UserError("data_dir", f"--data-dir: {data_dir} is not a directory; pass the folder with {layout.name}'s "
                         f"python batches ({', '.join(files)}) or its parent (--download fetches them)")
    root = _batch_folder(data_dir, layout)
    missing = [n for n in files if not os.path.isfile(os.path.join(root, n))]
    if missing:
        raise UserError("data_dir", f"--data-dir: {layout.name} batch file(s) missing in {root}: {', '.join(missing)} "
                         f"(expected the python version: {', '.join(files)})")
    parts = [_read_batch(os.path.join(root, n), layout) for n in layout.train]
    test_x, test_y = _read_batch(os.path.join(root, layout.test), layout)
    train = Split(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                  torch.from_numpy(np.concatenate([p[1] for p in parts])))
    test = Split(torch.from_numpy(test_x), torch.from_numpy(test_y))
    return standardized(layout.name, train, test, layout.num_classes, 1.0 / 255.0, source=os.path.abspath(root),
                        fingerprint=fingerprint.of_files(root, [os.path.join(root, n) for n in files]),
                        default_augment="crop-flip", classes=_class_names(os.path.join(root, layout.meta), layout))


def cifar10(data_dir: str, download: bool = False) -> ImageData:
    """CIFAR-10 from ``data_dir`` (see the module docstring); the standard 50,000/10,000 split.

    Raises:
        ValueError: the folder or a batch file is missing or corrupt (named), or a download failed.
    """
    return _load(CIFAR["cifar10"], data_dir, download)


def cifar100(data_dir: str, download: bool = False) -> ImageData:
    """CIFAR-100 (fine labels) from ``data_dir`` (see the module docstring).

    Raises:
        ValueError: the folder or a batch file is missing or corrupt (named), or a download failed.
    """
    return _load(CIFAR["cifar100"], data_dir, download)
