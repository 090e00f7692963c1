"""The in-memory description of a classification set: :class:`Split`, :class:`ImageData`, the
per-channel statistics used to standardize pixels, and :func:`validation_split`."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch
from torch import Tensor

from tat_ext.datasets.decode import decode
from tat_ext.errors import UserError

__all__ = ["ImageData", "Split", "channel_stats", "every_kth_per_class", "standardized", "validation_split"]

# At most this many training images (evenly spaced) are decoded for the statistics of a split
# that is read from files (an ImageNet-sized folder would take minutes otherwise).
_STATS_SAMPLE = 2000


@dataclass(frozen=True)
class Split:
    """One split: int64 ``labels`` [N] and either ``images`` [N, C, H, W] in memory (stored dtype,
    e.g. uint8) or, for data read lazily, the image ``files`` (decoded with ``channels`` channels)."""

    images: Optional[Tensor]
    labels: Tensor
    files: Optional[Tuple[str, ...]] = None
    channels: int = 0

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def example(self, i: int) -> Tensor:
        """Image ``i`` [C, H, W] in its stored dtype (decoded from its file for a lazy split).

        Raises:
            ValueError: the file cannot be decoded (the message names it).
        """
        if self.images is not None:
            return self.images[i]
        return decode(self.files[i], self.channels)

    def subset(self, keep: Tensor) -> "Split":
        """The examples selected by the bool mask or index tensor ``keep``."""
        index = torch.nonzero(keep).flatten() if keep.dtype == torch.bool else keep
        files = None if self.files is None else tuple(self.files[i] for i in index.tolist())
        images = None if self.images is None else self.images[index]
        return replace(self, images=images, labels=self.labels[index], files=files)


@dataclass(frozen=True)
class ImageData:
    """Both splits of an image classification set and how stored pixels become model inputs:
    ``pixel_scale`` maps a stored value to [0, 1], then each channel is standardized with the
    training split's ``mean``/``std`` (of the scaled values).

    ``source`` is where the data came from (a path, or a description such as "scikit-learn"),
    ``fingerprint`` identifies its content (see :mod:`tat_ext.datasets.fingerprint`), and
    ``default_augment`` is the augmentation used when the run does not choose one. ``size`` is
    the stored (height, width) when every image has it, None for a folder of mixed sizes; it is
    only needed for lazy splits (in-memory images carry their shape).
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    pixel_scale: float
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    source: str = ""
    fingerprint: str = ""
    default_augment: str = "none"
    classes: Optional[Tuple[str, ...]] = None
    size: Optional[Tuple[int, int]] = None

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1] if self.train.in_memory else self.train.channels

    @property
    def stored_size(self) -> Optional[Tuple[int, int]]:
        """(height, width) shared by every image, or None when the sizes differ."""
        if self.train.in_memory:
            return tuple(self.train.images.shape[-2:])
        return self.size

    @property
    def image_size(self) -> int:
        """Side of the stored (square) images; see :func:`tat_ext.datasets.augment.resolve_pipeline`
        for the side a model sees after augmentation."""
        size = self.stored_size
        if size is None or size[0] != size[1]:
            raise UserError("image_size", f"{self.name} ({self.source}) has images of mixed or non-square sizes; "
                             "choose a side with --image-size and --augment inception")
        return size[0]

    def normalize(self, images: Tensor, device: torch.device = torch.device("cpu"),
                  channels_last: bool = False) -> Tensor:
        """Stored-dtype images [B, C, H, W] → standardized float32 on ``device``."""
        images = images.to(device=device, dtype=torch.float32, non_blocking=True)
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        images = (images * self.pixel_scale - mean) / std
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def batch(self, split: Split, index: Tensor, device: torch.device = torch.device("cpu"),
              channels_last: bool = False) -> Tuple[Tensor, Tensor]:
        """Standardized float32 images and labels of ``split[index]`` on ``device`` (no augmentation;
        in-memory splits of one image size)."""
        if split.in_memory:
            images = split.images[index]
        else:
            images = torch.stack([split.example(i) for i in index.tolist()])
        return (self.normalize(images, device, channels_last),
                split.labels[index].to(device, non_blocking=True))


def channel_stats(split: Split, pixel_scale: float) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and standard deviation of the scaled pixels of ``split``.

    In memory: over every pixel. Lazy: over every pixel of up to 2,000 evenly spaced images (each
    image weighted by its pixel count), so the cost stays bounded for large folders.
    """
    if split.in_memory:
        scaled = split.images.double() * pixel_scale
        mean, std = scaled.mean(dim=(0, 2, 3)), scaled.std(dim=(0, 2, 3))
    else:
        picks = torch.linspace(0, len(split) - 1, min(len(split), _STATS_SAMPLE)).round().long().unique()
        total = sq = count = 0
        for i in picks.tolist():
            pixels = split.example(i).double().flatten(1) * pixel_scale
            total = total + pixels.sum(1)
            sq = sq + (pixels ** 2).sum(1)
            count += pixels.shape[1]
        mean = total / count
        std = (sq / count - mean ** 2).clamp_min(0.0).sqrt()
    std = std.clamp_min(1e-12)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def standardized(name: str, train: Split, test: Split, num_classes: int, pixel_scale: float,
                 **described) -> ImageData:
    """An :class:`ImageData` whose statistics are those of ``train`` (``described``: the optional
    fields: source, fingerprint, default_augment, classes, size)."""
    mean, std = channel_stats(train, pixel_scale)
    return ImageData(name, train, test, num_classes, pixel_scale, mean, std, **described)


def every_kth_per_class(labels: Tensor, k: int) -> Tensor:
    """Mask of the examples at positions k−1, 2k−1, … within each class (in stored order)."""
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        chosen[members[k - 1::k]] = True
    return chosen


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
    held_out = every_kth_per_class(data.train.labels, every)
    fit, validation = data.train.subset(~held_out), data.train.subset(held_out)
    mean, std = channel_stats(fit, data.pixel_scale)
    return replace(data, train=fit, test=validation, mean=mean, std=std)
