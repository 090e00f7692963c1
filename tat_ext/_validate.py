"""Argument checks that name the argument in their errors.

Each check accepts what PyTorch accepts for a Python scalar, numpy scalars included
(``numbers.Integral`` / ``numbers.Real``, ``numpy.bool_``), and returns the plain Python value.
A wrong type raises TypeError; a wrong value raises :class:`ArgumentValueError`, a
:class:`tat_ext.errors.UserError` (a ValueError) that also records the argument's name
(``error.argument``), so that the command line can name its flag. Pass the flag itself as ``name``
("--epochs") where the value came from one.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import numpy as np

from tat_ext.errors import UserError

__all__ = ["ArgumentValueError", "boolean", "eta", "integer", "one_of", "real", "real_array"]

_REPR_LIMIT = 60


class ArgumentValueError(UserError):
    """A ValueError about one argument; ``argument`` is its name as the caller wrote it and
    ``str(error)`` the message, which starts with that name."""


def show(value: object) -> str:
    """``repr(value)``, shortened to at most 60 characters (a huge int has hundreds of digits)."""
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT - 3] + "..."


def _bounds_text(gt, ge, lt, le) -> str:
    parts = [f"{op} {bound if isinstance(bound, int) else format(bound, 'g')}"
             for op, bound in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if bound is not None]
    return " and ".join(parts)


def real(name: str, value: object, *, finite: bool = True, gt: Optional[float] = None,
         ge: Optional[float] = None, lt: Optional[float] = None, le: Optional[float] = None) -> float:
    """``value`` as a float: a real number (not a bool), finite unless ``finite=False``, within
    the given bounds (NaN never satisfies a bound)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {show(value)}")
    try:
        result = float(value)
    except OverflowError:  # an int or Fraction beyond the float range
        raise ArgumentValueError(name, f"{name} must be finite (it is too large for a float), "
                                       f"got {show(value)}") from None
    if finite and not math.isfinite(result):
        raise ArgumentValueError(name, f"{name} must be finite, got {show(value)}")
    ok = ((gt is None or result > gt) and (ge is None or result >= ge)
          and (lt is None or result < lt) and (le is None or result <= le))
    if not ok:
        raise ArgumentValueError(name, f"{name} must be {_bounds_text(gt, ge, lt, le)}, got {show(value)}")
    return result


def real_array(name: str, value: object) -> np.ndarray:
    """``value`` as a float64 array: a real number (checked by :func:`real`, not necessarily
    finite) or an array-like of real numbers (numpy, lists, CPU tensors; no bools or None)."""
    if isinstance(value, (numbers.Number, str, bytes, np.bool_)):
        return np.asarray(real(name, value, finite=False), dtype=np.float64)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "iuf":  # None, strings, objects, bools, complex
        raise TypeError(f"{name} must be a real number or an array of them, got "
                        f"{type(value).__name__} {show(value)}")
    return array.astype(np.float64)


def integer(name: str, value: object, *, ge: Optional[int] = None, le: Optional[int] = None) -> int:
    """``value`` as an int: an integral number (not a bool) within the given bounds."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {show(value)}")
    result = int(value)
    if (ge is not None and result < ge) or (le is not None and result > le):
        raise ArgumentValueError(name, f"{name} must be {_bounds_text(None, ge, None, le)}, "
                                       f"got {show(result)}")
    return result


def eta(name: str, value: object) -> float:
    """TAT's target C_f(0) for a (leaky) ReLU network: a real number strictly between 0 and 1
    (C_f(0) = 1 only for a linear network; docs/math.md)."""
    return real(name, value, gt=0.0, lt=1.0)


def boolean(name: str, value: object) -> bool:
    """``value`` as a bool: a Python or numpy bool (not an int, whose truth is ambiguous here)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {show(value)}")
    return bool(value)


def one_of(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of the strings ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ArgumentValueError(name, f"{name} must be one of {', '.join(map(repr, choices))}, "
                                       f"got {show(value)}")
    return value
