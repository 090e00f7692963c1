"""Kernel maps (Q and C maps) of activation functions.

Conventions follow REFERENCE.md, "Kernel maps": inputs have q = 1, ``Q(q) = E[φ(√q z)²]`` and
``C(c) = E[φ(u) φ(v)] / Q(1)`` with (u, v) standard bivariate normal with correlation c.
"""
from __future__ import annotations

import numpy as np

__all__ = ["trelu_c_map", "trelu_c0"]


def trelu_c0(slope: float | np.ndarray) -> float | np.ndarray:
    """C(0) = (1−α)²/(π(1+α²)) of the normalized Leaky ReLU with negative slope α.

    The whole TReLU C map depends on α only through this number (see :func:`trelu_c_map`).
    """
    slope = np.asarray(slope, dtype=np.float64)
    k = (1.0 - slope) ** 2 / (np.pi * (1.0 + slope**2))
    return float(k) if k.ndim == 0 else k


def trelu_c_map(c: float | np.ndarray, slope: float, derivative: int = 0) -> float | np.ndarray:
    """C map of the normalized Leaky ReLU ``sqrt(2/(1+α²))·LReLU_α`` (or its 1st/2nd derivative).

    ``C_α(c) = c + k·(sqrt(1−c²) − c·arccos c)`` with ``k = C_α(0) = (1−α)²/(π(1+α²))``
    (REFERENCE.md, "TReLU"); ``C'_α(c) = 1 − k·arccos c`` and ``C''_α(c) = k/sqrt(1−c²)``
    (infinite at c = ±1 unless α = 1). ``c`` is a float or an array (values are clipped to [−1, 1]);
    a float input gives a float.
    """
    if derivative not in (0, 1, 2):
        raise ValueError(f"derivative must be 0, 1 or 2, got {derivative!r}")
    x = np.clip(np.asarray(c, dtype=np.float64), -1.0, 1.0)
    k = trelu_c0(slope)
    if derivative == 0:
        out = x + k * (np.sqrt(1.0 - x * x) - x * np.arccos(x))
    elif derivative == 1:
        out = 1.0 - k * np.arccos(x)
    else:
        with np.errstate(divide="ignore"):
            out = np.where(k == 0.0, 0.0, k / np.sqrt(1.0 - x * x))
    return float(out) if out.ndim == 0 else out
