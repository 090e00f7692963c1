"""``--device`` values: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked against this machine."""
from __future__ import annotations

from typing import List, Optional

import torch

from tat_ext.errors import UserError

__all__ = ["cuda_devices", "resolve_device"]

_FORMS = "auto, cpu, cuda or cuda:N"


def cuda_devices() -> List[torch.device]:
    """Every visible CUDA device (none when torch has no CUDA or no GPU is present)."""
    if not torch.cuda.is_available():
        return []
    return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]


def resolve_device(text: str, argument: str = "--device", *, default_index: Optional[int] = None) -> torch.device:
    """The device ``text`` names: ``auto`` (cuda if a GPU is present, else cpu), ``cpu``,
    ``cuda`` (GPU ``default_index``, default the current one) or ``cuda:N``.

    Raises:
        UserError: an unknown device, or a GPU this machine does not have (named by ``argument``).
    """
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise UserError(argument, f"unknown device {text!r}; use {_FORMS}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise UserError(argument, f"unsupported device {text!r}; use {_FORMS}")
    present = cuda_devices()
    if not present:
        raise UserError(argument, f"{text!r}: no CUDA GPU is available here (torch {torch.__version__}, "
                                  f"CUDA build: {torch.version.cuda}); use --device cpu")
    index = device.index if device.index is not None else (
        torch.cuda.current_device() if default_index is None else default_index)
    if index >= len(present):
        raise UserError(argument, f"{text!r}: this machine has {len(present)} CUDA device(s)")
    return torch.device("cuda", index)
