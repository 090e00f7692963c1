"""Random images labelled by a random linear teacher: learnable data of any size, for speed tests."""
from __future__ import annotations

import torch

from tat_ext.datasets import fingerprint
from tat_ext.datasets.core import ImageData, Split, standardized

__all__ = ["synthetic"]


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
    described = f"generated (seed {seed}, {num_train} train, {num_test} test, {channels}x{size}x{size})"
    return standardized("synthetic", train, test, num_classes, 1.0, source=described,
                        fingerprint=fingerprint.of_arrays(train.images.numpy(), test.images.numpy()))
