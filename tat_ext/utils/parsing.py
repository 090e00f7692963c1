"""argparse types shared by the subcommands."""
from __future__ import annotations

import argparse
from typing import Callable, List, TypeVar

__all__ = ["comma_list", "positive_int"]

T = TypeVar("T")


def comma_list(convert: Callable[[str], T], valid: Callable[[T], bool], what: str) -> Callable[[str], List[T]]:
    """An argparse type for a non-empty comma-separated list whose items, converted by
    ``convert``, all pass ``valid``; ``what`` describes the items in the error."""
    def parse(text: str) -> List[T]:
        try:
            values = [convert(p.strip()) for p in text.split(",") if p.strip()]
        except ValueError:
            values = []
        if not values or not all(valid(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return values
    return parse


def positive_int(text: str) -> int:
    """An argparse type for an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
