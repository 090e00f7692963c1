"""Progress bars (tqdm) and printing around them.

One rule everywhere: a bar is drawn on stderr only when it is enabled and stderr is a terminal
(tqdm's ``disable=None``); where tqdm is not installed, a silent stand-in takes its place.
"""
from __future__ import annotations

import sys
from typing import Any, Iterable, Optional

__all__ = ["progress_bar", "say"]


class _NoBar:
    """Stands in for a tqdm bar when tqdm is not installed (e.g. an offline GPU machine)."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None, initial: int = 0) -> None:
        self.iterable, self.total, self.n = iterable, total, initial

    def __iter__(self):
        for item in self.iterable or ():
            yield item
            self.n += 1

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: Optional[str] = None,
                 unit: str = "it", initial: int = 0, disable: bool = False, leave: bool = False) -> Any:
    """A tqdm bar on stderr (usable as an iterator wrapper and as a context manager); not drawn
    when ``disable`` or when stderr is not a terminal."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar(iterable, total, initial)
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr, leave=leave,
                mininterval=0.5, dynamic_ncols=True, disable=True if disable else None)


def say(line: str = "") -> None:
    """Print a line to stdout without breaking a progress bar that is being drawn."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(line, flush=True)
        return
    tqdm.write(line)
