"""TReLU's constants: the output-scale formula and the solver's result type.

Kept free of SciPy, so that the op, its reference and the modules read them without loading the
solvers (tat_ext.transform, which re-exports :class:`TReLUParams`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

__all__ = ["TReLUParams", "split_params", "trelu_scale"]


def trelu_scale(slope: float) -> float:
    """TReLU's output scale sqrt(2 / (1 + slope²)): gives Q(q) = q (docs/math.md, TReLU)."""
    return math.sqrt(2.0 / (1.0 + slope * slope))


@dataclass(frozen=True)
class TReLUParams:
    """Transformed Leaky ReLU ``scale · LReLU_slope(x)``.

    Attributes:
        slope: negative-side slope α in [0, 1).
        scale: output scale ``sqrt(2/(1+α²))`` that makes Q(q) = q.
        c0: C_f(0) the network reaches with this slope (the maximum over subnetworks).
    """

    slope: float
    scale: float
    c0: float


def split_params(slope: object, scale: Optional[object],
                 default_scale: Optional[float]) -> Tuple[object, Optional[object]]:
    """(slope, scale) of an activation given a number or a :class:`TReLUParams` as ``slope``.

    A TReLUParams gives its slope, and its scale unless ``scale`` is given (an explicit scale
    wins); a number gives itself, and ``scale``, or ``default_scale`` when ``scale`` is None.
    Neither is validated here.
    """
    if isinstance(slope, TReLUParams):
        return slope.slope, slope.scale if scale is None else scale
    return slope, default_scale if scale is None else scale
