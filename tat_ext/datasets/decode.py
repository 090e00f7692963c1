"""Decoding one image file into a tensor (the one place that reads pixels from files)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tat_ext.errors import UserError

__all__ = ["decode"]


def decode(path: str, channels: int) -> Tensor:
    """The pixels of ``path`` as uint8 [channels, H, W].

    Raises:
        ValueError: the file cannot be read or decoded (the message names it).
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.array(image.convert("L" if channels == 1 else "RGB"))
    except Exception as error:  # Pillow raises many types for damaged files
        raise UserError("data_dir", f"--data-dir: {path} is not a readable image ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'no detail'})") from None
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
