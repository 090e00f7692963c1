"""Solve for the activation parameters of TAT (Leaky ReLU and smooth) and DKS.

The math and the targets are in REFERENCE.md ("TReLU", "Architectures", "TAT for smooth activations
and DKS").
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional

from scipy import optimize

from tat_ext.cmaps import trelu_c_map

__all__ = ["TReLUParams", "solve_trelu"]

SubnetMaxFunc = Callable[[float, Callable[[float], float]], float]

# Tightest bracket brentq can be asked for on α ∈ [0, 1]; keeps |slope − exact root| far below 1e-9.
_XTOL = 1e-14
# Guard for the "minimum depth" search of an infeasible eta (ReLU chains approach C = 1 like 1/L²).
_MAX_DEPTH_SEARCH = 10_000_000


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


def _check_depth(depth: object) -> int:
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral):
        raise TypeError(f"depth must be an int (number of nonlinear layers), got {depth!r}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1 (number of nonlinear layers), got {depth}")
    return int(depth)


def _check_eta(eta: object) -> float:
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise TypeError(f"eta must be a float in (0, 1), got {eta!r}")
    if not 0.0 < eta < 1.0:
        raise ValueError(f"eta must lie strictly between 0 and 1, got {eta}")
    return float(eta)


def _check_architecture(depth: object, subnet_max_func: object) -> Optional[int]:
    """Exactly one of ``depth`` / ``subnet_max_func``; returns the checked depth (or None)."""
    if (depth is None) == (subnet_max_func is None):
        raise ValueError("pass exactly one of depth (a plain chain) or subnet_max_func (any architecture)")
    if subnet_max_func is not None and not callable(subnet_max_func):
        raise TypeError(f"subnet_max_func must be callable f(x, r_fn) -> float, got {subnet_max_func!r}")
    return None if depth is None else _check_depth(depth)


def _trelu_chain_c0(slope: float, depth: int) -> float:
    """C_α applied ``depth`` times to 0 — scalar math, since this loop is the solver's hot path."""
    k = (1.0 - slope) ** 2 / (math.pi * (1.0 + slope * slope))
    c = 0.0
    sqrt, acos = math.sqrt, math.acos
    # No clamp needed: the computed increment is below 1 − c by far more than its rounding error.
    for _ in range(depth):
        c += k * (sqrt(1.0 - c * c) - c * acos(c))
    return c


def _min_relu_depth(eta: float) -> Optional[int]:
    """Fewest layers for which a ReLU chain (the most nonlinear TReLU) reaches C_f(0) >= eta."""
    c = 0.0
    k = 1.0 / math.pi
    for depth in range(1, _MAX_DEPTH_SEARCH + 1):
        c += k * (math.sqrt(1.0 - c * c) - c * math.acos(c))
        if c >= eta:
            return depth
    return None


def _subnet_value(subnet_max_func: SubnetMaxFunc, x: float, r_fn: Callable[[float], float]) -> float:
    value = subnet_max_func(x, r_fn)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"subnet_max_func must return a float, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"subnet_max_func returned a non-finite value {value}")
    return value


def solve_trelu(
    depth: Optional[int] = None,
    *,
    eta: float = 0.9,
    subnet_max_func: Optional[SubnetMaxFunc] = None,
) -> TReLUParams:
    """Negative slope α of the TReLU so that the network's maximal C_f(0) equals ``eta``.

    Args:
        depth: number of nonlinear layers of a plain chain (a vanilla ResNet-50 has 49).
        eta: target C_f(0) in (0, 1) (the paper's η, default 0.9).
        subnet_max_func: ``f(x, r_fn) -> float`` tracing the architecture in C-value space and
            returning the maximum over its subnetworks (REFERENCE.md, "Architectures"); use it
            instead of ``depth`` for branching networks.

    Returns:
        :class:`TReLUParams` with the slope (to better than 1e-9), output scale and achieved C_f(0).

    Raises:
        ValueError: bad arguments, or an ``eta`` no slope reaches (the message states the minimum
            depth, or the largest reachable ``eta`` for ``subnet_max_func``).
    """
    depth = _check_architecture(depth, subnet_max_func)
    eta = _check_eta(eta)

    if depth is not None:
        def c_f0(slope: float) -> float:
            return _trelu_chain_c0(slope, depth)
    else:
        def c_f0(slope: float) -> float:
            return _subnet_value(subnet_max_func, 0.0, lambda c: trelu_c_map(c, slope))

    # C_α(c) grows with k = C_α(0), which falls as α rises: C_f(0) is decreasing in α, from its
    # maximum at α = 0 (ReLU) to 0 at α = 1 (linear). Hence a bracketing root finder on [0, 1].
    reachable = c_f0(0.0)
    if reachable < eta:
        if depth is not None:
            needed = _min_relu_depth(eta)
            need = (f"at least {needed} nonlinear layers" if needed is not None
                    else f"more than {_MAX_DEPTH_SEARCH} nonlinear layers")
            raise ValueError(
                f"eta={eta} is unreachable with depth={depth}: even ReLU (slope 0) only gives "
                f"C_f(0)={reachable:.6g}; eta={eta} needs {need}, or use eta <= {reachable:.6g}"
            )
        raise ValueError(
            f"eta={eta} is unreachable for this subnet_max_func: the largest reachable eta is "
            f"{reachable:.10g} (slope 0, i.e. ReLU)"
        )
    linear = c_f0(1.0)
    if linear >= eta:
        raise ValueError(
            f"subnet_max_func(0.0, identity) returned {linear:.6g} >= eta; a linear network must give "
            "C_f(0) = 0 — check that it starts from x and applies r_fn once per nonlinear layer"
        )
    slope = optimize.brentq(lambda a: c_f0(a) - eta, 0.0, 1.0, xtol=_XTOL)
    return TReLUParams(slope=slope, scale=math.sqrt(2.0 / (1.0 + slope * slope)), c0=c_f0(slope))
