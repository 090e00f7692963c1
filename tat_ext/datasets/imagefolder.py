"""An ImageNet-style folder of images (torchvision's ``ImageFolder`` layout), read lazily.

::

    DIR/train/<class name>/<any name>.jpg|.png|...   the training split
    DIR/val/<class name>/...                          the evaluation split (or DIR/test/ when
                                                      there is no val/)

Classes are the sub-folders of ``train/`` in sorted order (label 0, 1, …); ``val/`` may lack some
of them but may not add any. Files with torchvision's image extensions count (.jpg .jpeg .png .ppm
.bmp .pgm .tif .tiff .webp); others are ignored. Images are decoded with Pillow as grey-scale when
every image is grey (1 channel), else as RGB (3 channels; alpha dropped).

At load time every image's header is read (size and mode, not the pixels): a file Pillow cannot
identify fails the load with its path named. A file whose pixels turn out to be damaged fails the
run when it is first decoded, again naming it (nothing is skipped silently). Default augmentation:
``inception`` (random resized crop + flip; resize + center crop for evaluation), the only one that
accepts images of mixed sizes.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import torch

from tat_ext.datasets import fingerprint
from tat_ext.datasets.core import ImageData, Split, standardized
from tat_ext.errors import UserError
from tat_ext.utils.progress import progress_bar

__all__ = ["EVAL_FOLDERS", "imagefolder"]

EVAL_FOLDERS = ("val", "test")
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_SCAN_PROGRESS_FROM = 5000  # show a progress bar while scanning folders at least this large


def _samples(folder: str, class_to_idx: Optional[dict]) -> Tuple[List[Tuple[str, int]], dict]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    try:
        classes, found = find_classes(folder)
    except FileNotFoundError:
        raise UserError("data_dir", f"--data-dir: {folder} holds no class folders (expected {folder}/<class>/<image>)") from None
    if class_to_idx is not None:
        extra = sorted(set(classes) - set(class_to_idx))
        if extra:
            raise UserError("data_dir", f"--data-dir: {folder} has classes that train/ lacks: {', '.join(extra[:5])}")
        found = class_to_idx
    try:
        samples = make_dataset(folder, found, extensions=IMG_EXTENSIONS, allow_empty=class_to_idx is not None)
    except FileNotFoundError as error:  # a class folder without images
        raise UserError("data_dir", f"--data-dir: {folder}: {str(error).splitlines()[0]}") from None
    if not samples:
        raise UserError("data_dir", f"--data-dir: {folder} holds no images ({', '.join(IMG_EXTENSIONS)})")
    return samples, found


def _scan(paths: List[str]) -> Tuple[set, set]:
    """The set of (height, width) and of Pillow modes of ``paths`` (headers only)."""
    from PIL import Image

    sizes, modes = set(), set()
    for path in progress_bar(paths, total=len(paths), desc="reading image headers", unit="file",
                             disable=len(paths) < _SCAN_PROGRESS_FROM):
        try:
            with Image.open(path) as image:
                sizes.add((image.height, image.width))
                modes.add(image.mode)
        except Exception as error:  # UnidentifiedImageError, OSError, DecompressionBombError, ...
            raise UserError("data_dir", f"--data-dir: {path} is not a readable image ({type(error).__name__})") from None
    return sizes, modes


def imagefolder(data_dir: str) -> ImageData:
    """The image folder ``data_dir`` (see the module docstring).

    Raises:
        ValueError: a missing or empty folder, a class folder without images, an unreadable image
            (each named), or no ``val/``/``test/`` folder.
    """
    if not isinstance(data_dir, (str, os.PathLike)) or not os.path.isdir(data_dir):
        raise UserError("data_dir", f"--data-dir: {data_dir} is not a directory (expected DIR/train/<class>/<image> "
                         "and DIR/val/<class>/<image>)")
    train_dir = os.path.join(data_dir, "train")
    if not os.path.isdir(train_dir):
        raise UserError("data_dir", f"--data-dir: {data_dir} has no train/ folder (expected DIR/train/<class>/<image>)")
    eval_dir = next((os.path.join(data_dir, n) for n in EVAL_FOLDERS if os.path.isdir(os.path.join(data_dir, n))),
                    None)
    if eval_dir is None:
        raise UserError("data_dir", f"--data-dir: {data_dir} has neither val/ nor test/ (the evaluation split)")
    train_samples, class_to_idx = _samples(train_dir, None)
    eval_samples, _ = _samples(eval_dir, class_to_idx)
    paths = [p for p, _ in train_samples + eval_samples]
    sizes, modes = _scan(paths)
    channels = 1 if modes <= _GREY_MODES else 3

    def split(samples) -> Split:
        return Split(None, torch.tensor([c for _, c in samples], dtype=torch.int64),
                     tuple(p for p, _ in samples), channels)

    classes = tuple(sorted(class_to_idx, key=class_to_idx.get))
    return standardized("imagefolder", split(train_samples), split(eval_samples), len(classes), 1.0 / 255.0,
                        source=os.path.abspath(data_dir), fingerprint=fingerprint.of_files(data_dir, paths),
                        default_augment="inception", classes=classes,
                        size=next(iter(sizes)) if len(sizes) == 1 else None)
