"""Arrays in a NumPy ``.npz`` file: ``x_train``, ``y_train``, ``x_test``, ``y_test``.

- ``x_*``: images [N, C, H, W] (NCHW) or [N, H, W, C] (NHWC), or [N, H, W] (one channel). The
  layout is told by the channel axis: the one of axis 1 and axis 3 with at most 4 entries while the
  other has more; when both or neither do (e.g. [N, 3, 4, 3]) the file is refused rather than
  guessed. Both splits must have the same layout, channels and size.
- dtype uint8 (pixels 0–255, scaled by 1/255) or floating point (used as stored; must be finite).
- ``y_*``: integer class labels >= 0. The number of classes is ``len(classes)`` when the file has a
  ``classes`` array of names, else the largest training label + 1; every label must be below it.

The whole file is loaded into memory. Default augmentation: none.
"""
from __future__ import annotations

import os
import zipfile
from typing import Optional, Tuple

import numpy as np
import torch

from tat_ext.datasets import fingerprint
from tat_ext.datasets.core import ImageData, Split, standardized
from tat_ext.errors import UserError

__all__ = ["REQUIRED", "npz"]

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _images(path: str, key: str, x: np.ndarray) -> np.ndarray:
    """``x`` as NCHW, checked."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        first, last = x.shape[1] <= 4, x.shape[3] <= 4
        if first == last:
            raise UserError("data_path", f"--data-path: {path}: {key} has shape {list(x.shape)}; cannot tell NCHW from NHWC "
                             "(the channel axis must have at most 4 entries and the other more)")
        if last:
            x = x.transpose(0, 3, 1, 2)
    else:
        raise UserError("data_path", f"--data-path: {path}: {key} must be [N, C, H, W], [N, H, W, C] or [N, H, W], "
                         f"got shape {list(x.shape)}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise UserError("data_path", f"--data-path: {path}: {key} must be uint8 or floating point, got {x.dtype}")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise UserError("data_path", f"--data-path: {path}: {key} holds NaN or infinite values")
    return np.ascontiguousarray(x)


def _labels(path: str, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise UserError("data_path", f"--data-path: {path}: {key} must be a 1-D integer array, got {y.dtype} {list(y.shape)}")
    if len(y) != n:
        raise UserError("data_path", f"--data-path: {path}: {key} has {len(y)} labels but x_{key[2:]} has {n} images")
    if len(y) and y.min() < 0:
        raise UserError("data_path", f"--data-path: {path}: {key} has a negative label ({int(y.min())})")
    return y.astype(np.int64)


def npz(data_path: str) -> ImageData:
    """The arrays in ``data_path`` (see the module docstring).

    Raises:
        ValueError: a missing or unreadable file, a missing array, or arrays that break the rules
            above (each message names the file and the array).
    """
    if not isinstance(data_path, (str, os.PathLike)) or not os.path.isfile(data_path):
        raise UserError("data_path", f"--data-path: {data_path} is not a file (expected an .npz with {', '.join(REQUIRED)})")
    try:
        with np.load(data_path, allow_pickle=False) as arrays:
            missing = [k for k in REQUIRED if k not in arrays.files]
            if missing:
                raise UserError("data_path", f"--data-path: {data_path} lacks {', '.join(missing)} (has {', '.join(arrays.files)})")
            raw = {k: arrays[k] for k in REQUIRED}
            names: Optional[Tuple[str, ...]] = (tuple(str(n) for n in arrays["classes"])
                                                if "classes" in arrays.files else None)
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise UserError("data_path", f"--data-path: {data_path} is not a readable .npz ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'no detail'})") from None
    x_train, x_test = _images(data_path, "x_train", raw["x_train"]), _images(data_path, "x_test", raw["x_test"])
    if x_train.shape[1:] != x_test.shape[1:] or x_train.dtype != x_test.dtype:
        raise UserError("data_path", f"--data-path: {data_path}: x_train {list(x_train.shape[1:])} {x_train.dtype} and "
                         f"x_test {list(x_test.shape[1:])} {x_test.dtype} differ in image shape or dtype")
    if len(x_train) == 0 or len(x_test) == 0:
        raise UserError("data_path", f"--data-path: {data_path}: x_train and x_test must hold at least one image each")
    y_train, y_test = (_labels(data_path, "y_train", raw["y_train"], len(x_train)),
                       _labels(data_path, "y_test", raw["y_test"], len(x_test)))
    num_classes = len(names) if names is not None else int(y_train.max()) + 1
    for key, y in (("y_train", y_train), ("y_test", y_test)):
        if y.max() >= num_classes:
            where = f"its {num_classes} class names" if names is not None else f"y_train's classes 0..{num_classes - 1}"
            raise UserError("data_path", f"--data-path: {data_path}: {key} has label {int(y.max())}, outside {where}")
    scale = 1.0 / 255.0 if x_train.dtype == np.uint8 else 1.0
    return standardized("npz", Split(torch.from_numpy(x_train), torch.from_numpy(y_train)),
                        Split(torch.from_numpy(x_test), torch.from_numpy(y_test)), num_classes, scale,
                        source=os.path.abspath(data_path), fingerprint=fingerprint.of_file(data_path), classes=names)
