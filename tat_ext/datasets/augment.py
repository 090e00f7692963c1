"""Augmentation with torchvision transforms, and the image side a model sees.

``--augment``:

- ``none``: the stored images (all of one square size).
- ``crop-flip`` (CIFAR's): a random ``S``x``S`` crop of the image zero-padded by ``S // 8`` on every
  side (4 pixels for 32x32), then a horizontal flip with probability 1/2; evaluation sees the
  stored image. Needs images of one square size ``S``.
- ``inception`` (the paper's ImageNet pipeline): a random resized crop (8–100 % of the area, aspect
  ratio 3/4–4/3) to ``--image-size``, then the flip; evaluation resizes the shorter side to
  ``--image-size / 0.875`` and takes the center crop. Accepts images of mixed sizes.

The default depends on the source (:attr:`ImageData.default_augment`). ``--image-size`` defaults to
the stored side; it may differ from it only with ``inception``, and is required there when the
images have mixed sizes.

Randomness: the transform of training example ``i`` in epoch ``e`` draws from a generator seeded
with a hash of (``--seed``, ``e``, ``i``) (:func:`example_seed`), never from a stream shared between
examples, so the result does not depend on the order the loader's workers produce them in, their
number, the number of torchrun processes, or where a run was interrupted and resumed.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from tat_ext.datasets.core import ImageData
from tat_ext.errors import UserError

__all__ = ["AUGMENTS", "EVAL_CROP_FRACTION", "Pipeline", "example_seed", "resolve_pipeline"]

AUGMENTS = ("none", "crop-flip", "inception")
EVAL_CROP_FRACTION = 0.875  # inception evaluation: resize to S / 0.875 (256 for 224), crop S


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for the augmentation of example ``index`` in ``epoch`` of a run with ``seed``."""
    digest = hashlib.blake2b(struct.pack("<qqq", seed, epoch, index), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Pipeline:
    """How a run turns stored images into model inputs of ``image_size`` x ``image_size``."""

    augment: str
    image_size: int
    seed: int = 0

    @property
    def identity(self) -> bool:
        """True when no example is transformed (batches may be gathered in one indexing op)."""
        return self.augment == "none"

    def train_transform(self) -> Optional[Callable[[Tensor], Tensor]]:
        from torchvision.transforms import v2

        if self.augment == "crop-flip":
            return v2.Compose([v2.RandomCrop(self.image_size, padding=self.image_size // 8),
                               v2.RandomHorizontalFlip()])
        if self.augment == "inception":
            return v2.Compose([v2.RandomResizedCrop(self.image_size, antialias=True), v2.RandomHorizontalFlip()])
        return None

    def eval_transform(self) -> Optional[Callable[[Tensor], Tensor]]:
        from torchvision.transforms import v2

        if self.augment == "inception":
            return v2.Compose([v2.Resize(round(self.image_size / EVAL_CROP_FRACTION), antialias=True),
                               v2.CenterCrop(self.image_size)])
        return None

    def apply(self, transform: Optional[Callable[[Tensor], Tensor]], image: Tensor, seed: Optional[int]) -> Tensor:
        """``transform(image)`` drawing its randomness from ``seed`` (the global generator is
        left as it was)."""
        if transform is None:
            return image
        if seed is None:
            return transform(image)
        # torchvision draws from the default CPU generator; torch.manual_seed would also reseed
        # every accelerator backend (100x slower), so seed and restore only this one.
        generator = torch.default_generator
        state = generator.get_state()
        try:
            generator.manual_seed(seed)
            return transform(image)
        finally:
            generator.set_state(state)


def resolve_pipeline(data: ImageData, augment: Optional[str], image_size: Optional[int], seed: int) -> Pipeline:
    """The pipeline for ``data`` with ``augment`` (None: the source's default) and ``image_size``
    (None: the stored side); see the module docstring.

    Raises:
        ValueError: an unknown augmentation, or an image size the augmentation cannot produce
            (e.g. images of mixed sizes without a crop), naming the flag.
    """
    augment = data.default_augment if augment is None else augment
    if augment not in AUGMENTS:
        raise UserError("augment", f"--augment: must be one of {', '.join(AUGMENTS)}, got {augment!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise UserError("image_size", f"--image-size: must be an integer >= 1, got {image_size!r}")
    stored = data.stored_size
    square = stored is not None and stored[0] == stored[1]
    if augment == "inception":
        if image_size is None and not square:
            shape = "mixed sizes" if stored is None else f"non-square images ({stored[0]}x{stored[1]})"
            raise UserError("image_size", f"--image-size: {data.name} ({data.source}) has {shape}; pass the side "
                             "the random resized crop should produce (e.g. --image-size 224)")
        return Pipeline(augment, stored[0] if image_size is None else image_size, seed)
    if not square:
        shape = "images of mixed sizes" if stored is None else f"non-square images ({stored[0]}x{stored[1]})"
        raise UserError("augment", f"--augment: {data.name} ({data.source}) has {shape}, which --augment {augment} cannot "
                         "crop; use --augment inception with --image-size")
    if image_size is not None and image_size != stored[0]:
        raise UserError("image_size", f"--image-size: {image_size} differs from the stored {stored[0]}x{stored[0]} images; only "
                         "--augment inception resizes")
    return Pipeline(augment, stored[0], seed)
