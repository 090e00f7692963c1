"""The 1,797 8x8 handwritten digits that ship with scikit-learn (nothing is downloaded)."""
from __future__ import annotations

import importlib.util
import os
from typing import Tuple

import numpy as np
import torch

from tat_ext.datasets import fingerprint
from tat_ext.datasets.core import ImageData, Split, every_kth_per_class, standardized

__all__ = ["digits", "digits_arrays"]

_DIGITS_FILE = ("datasets", "data", "digits.csv.gz")  # inside the scikit-learn package


def digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
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


def digits() -> ImageData:
    """The 1,797 8x8 grey-scale handwritten digits bundled with scikit-learn (values 0–16).

    Fixed split, independent of any random generator: within each class, taken in the file's
    order, every fifth example (positions 4, 9, 14, …) is a test example — 355 test, 1,442 train.
    (The file cycles through the classes 0–9, so a plain "every fifth example" would put only
    4s and 9s in the test set.) No augmentation by default (a flipped digit is another symbol).
    """
    pixels, target = digits_arrays()
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 8, 8))
    labels = torch.from_numpy(target.astype(np.int64))
    is_test = every_kth_per_class(labels, 5)
    train = Split(images[~is_test], labels[~is_test])
    test = Split(images[is_test], labels[is_test])
    return standardized("digits", train, test, 10, 1.0 / 16.0, source="scikit-learn (sklearn.datasets.load_digits)",
                        fingerprint=fingerprint.of_arrays(images.numpy(), labels.numpy()),
                        classes=tuple(str(d) for d in range(10)))
