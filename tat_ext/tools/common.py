"""What the `tat-ext verify/bench/profile` tools share beyond :mod:`tat_ext.utils`: their
user-input error, dtype parsing, plain-text tables, the printed report and the extension check."""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence

import torch

from tat_ext import _validate
from tat_ext.errors import UserError
from tat_ext.utils.files import write_text_atomic
from tat_ext.utils.progress import say

__all__ = ["UsageError", "format_table", "set_threads", "require_extension", "human_count", "Report",
           "DTYPE_NAMES", "parse_dtype"]


class UsageError(UserError):
    """A user mistake (bad option value, missing GPU, too little memory, unwritable path) about
    the option ``argument``; it reads "argument --option: message". The command line prints it as
    one line and exits with status 2."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(argument, f"argument {argument}: {message}")


DTYPE_NAMES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
               "bfloat16": torch.bfloat16}


def parse_dtype(name: str, argument: str = "--dtype") -> torch.dtype:
    try:
        return DTYPE_NAMES[name]
    except KeyError:
        raise UsageError(argument, f"unknown dtype {name!r}; one of {', '.join(DTYPE_NAMES)}") from None


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                 right: Optional[Sequence[bool]] = None) -> str:
    """A fixed-width text table; numbers are expected pre-formatted as strings."""
    rows = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    right = right or [False] * len(headers)

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


class Report:
    """The printed report of a tool run, kept to be saved as a text file next to its results."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        say(line)

    def save(self, path: str) -> None:
        write_text_atomic(path, "\n".join(self.lines) + "\n")


def require_extension(device: torch.device, argument: str = "--device") -> None:
    """Timing "fused" without the compiled kernels would time the pure-PyTorch fallback."""
    from tat_ext import _extension

    if not _extension.AVAILABLE:
        raise UsageError(argument, f"the compiled extension tat_ext._C is not available "
                                   f"({_extension.LOAD_ERROR}); build it first (README.md)")
    if device.type == "cuda" and not _extension.WITH_CUDA:
        raise UsageError(argument, "tat_ext._C was built without CUDA kernels; rebuild with "
                                   "nvcc present (TAT_EXT_CUDA=1)")


def human_count(n: int) -> str:
    """2048 -> '2K', 3 * 2**20 -> '3M'; other numbers as they are."""
    for suffix, unit in (("G", 2 ** 30), ("M", 2 ** 20), ("K", 2 ** 10)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def set_threads(threads: Optional[int], argument: str = "--threads") -> None:
    """torch.set_num_threads for the CPU work of a tool run (None: leave torch's default)."""
    if threads is None:
        return
    torch.set_num_threads(_validate.integer(argument, threads, ge=1))
