"""Solve for the activation parameters of TAT (Leaky ReLU and smooth) and DKS.

The math and the targets are in docs/math.md ("TReLU", "Architectures", "TAT for smooth activations
and DKS"); the limits on depth and on near-linear targets in its section "Limits".
"""
from __future__ import annotations

import functools
import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import optimize

from tat_ext import _validate, cmaps
from tat_ext._validate import ArgumentValueError
from tat_ext.activations import (
    Activation,
    ActivationParams,
    ResolvedActivation,
    TransformedActivation,
    get_activation,
    resolve,
)
from tat_ext.cmaps import trelu_c_map, trelu_chain_c_map

__all__ = [
    "MAX_DEPTH",
    "MIN_LOCAL_CURVATURE",
    "MIN_LOCAL_SLOPE_EXCESS",
    "ActivationParams",
    "TReLUParams",
    "get_transformed_activations",
    "solve_dks",
    "solve_tat",
    "solve_trelu",
]

SubnetMaxFunc = Callable[[float, Callable[[float], float]], float]

# Largest number of nonlinear layers a plain chain (``depth``) may have (docs/math.md, "Limits").
# A chain's C_f(0) is the TReLU C map applied layer by layer, O(depth) per root-finder step: about
# 2 s per solve at this depth. No shortcut skips layers exactly: the iterates approach the fixed
# point C = 1 only algebraically (1 − c ~ 1/n²), not geometrically.
MAX_DEPTH = 1_000_000

# Tightest bracket brentq can be asked for on α ∈ [0, 1]; keeps |slope − exact root| far below 1e-9.
_XTOL = 1e-14


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
    """The number of nonlinear layers of a plain chain: an int in [1, MAX_DEPTH]."""
    depth = _validate.integer("depth", depth, ge=1)
    if depth > MAX_DEPTH:
        raise ArgumentValueError("depth", f"depth={depth} exceeds the supported maximum of {MAX_DEPTH} "
                                          "nonlinear layers (the chain's kernel map is evaluated layer by "
                                          "layer; docs/math.md, \"Limits\")")
    return depth


def _min_relu_depth(eta: float) -> Optional[int]:
    """Fewest layers (up to MAX_DEPTH) for which a ReLU chain, the most nonlinear TReLU, reaches
    C_f(0) >= eta; None if more are needed."""
    c = 0.0
    k = 1.0 / math.pi
    for depth in range(1, MAX_DEPTH + 1):
        c += k * (math.sqrt(1.0 - c * c) - c * math.acos(c))
        if c >= eta:
            return depth
    return None


def _subnet_value(subnet_max_func: SubnetMaxFunc, x: float, r_fn: Callable[[float], float]) -> float:
    value = subnet_max_func(x, r_fn)
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(f"subnet_max_func must return a float, got {_validate.show(value)}") from None
    if not math.isfinite(value):
        raise ValueError(f"subnet_max_func returned a non-finite value {value}")
    return value


def _round_down(value: float, digits: int) -> str:
    """``value`` cut (not rounded) to ``digits`` decimals, so that it is safe to pass back."""
    return f"{math.floor(value * 10**digits) / 10**digits:.{digits}f}"


def _round_up(value: float, digits: int = 3) -> str:
    """The smallest ``digits``-significant-digit decimal >= ``value`` > 0, to suggest a bound."""
    unit = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return f"{math.ceil(value / unit * (1.0 - 1e-12)) * unit:.{digits}g}"


def solve_trelu(
    depth: Optional[int] = None,
    *,
    eta: float = 0.9,
    subnet_max_func: Optional[SubnetMaxFunc] = None,
) -> TReLUParams:
    """Negative slope α of the TReLU so that the network's maximal C_f(0) equals ``eta``.

    Args:
        depth: number of nonlinear layers of a plain chain (a vanilla ResNet-50 has 49), at most
            :data:`MAX_DEPTH` (10⁶).
        eta: target C_f(0) in (0, 1) (the paper's η, default 0.9).
        subnet_max_func: ``f(x, r_fn) -> float`` tracing the architecture in C-value space and
            returning the maximum over its subnetworks (docs/math.md, "Architectures"); use it
            instead of ``depth`` for branching networks.

    Returns:
        :class:`TReLUParams` with the slope (to better than 1e-9), output scale and achieved C_f(0).

    Raises:
        ValueError: bad arguments, or an ``eta`` no slope reaches (the message states the minimum
            depth, or the largest reachable ``eta`` for ``subnet_max_func``).
    """
    depth = _one_architecture(depth, {"subnet_max_func": subnet_max_func})
    eta = _validate.eta("eta", eta)

    if depth is not None:
        def c_f0(slope: float) -> float:
            return trelu_chain_c_map(0.0, slope, depth)
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
                    else f"more than {MAX_DEPTH} nonlinear layers (the supported maximum)")
            raise ArgumentValueError(
                "depth", f"eta={eta} is unreachable with depth={depth}: even ReLU (slope 0) only gives "
                f"C_f(0)={reachable:.6g}; eta={eta} needs {need}, or use eta <= {_round_down(reachable, 6)}"
            )
        raise ArgumentValueError(
            "eta", f"eta={eta} is unreachable for this subnet_max_func: the largest reachable eta is "
            f"{_round_down(reachable, 10)} (slope 0, i.e. ReLU)"
        )
    linear = c_f0(1.0)
    if linear >= eta:
        raise ValueError(
            f"subnet_max_func(0.0, identity) returned {linear:.6g} >= eta; a linear network must give "
            "C_f(0) = 0 — check that it starts from x and applies r_fn once per nonlinear layer"
        )
    slope = optimize.brentq(lambda a: c_f0(a) - eta, 0.0, 1.0, xtol=_XTOL)
    return TReLUParams(slope=slope, scale=math.sqrt(2.0 / (1.0 + slope * slope)), c0=c_f0(slope))


# ---------------------------------------------------------------------------------------------
# Smooth TAT and DKS: ActivationParams for φ̂(x) = γ·(φ(α·x + β) + δ)
# ---------------------------------------------------------------------------------------------

# Every solution is re-checked through cmaps.local_invariants against this (1e-8 is required).
_INVARIANT_TOL = 1e-9
# ... and its targeted per-layer C''(1) (TAT) or C'(1) − 1 (DKS) to this relative accuracy.
_TARGET_RTOL = 1e-6
# A root finder's stopping point counts as a candidate root when its residuals (relative to the
# targets) are below this.
_RESIDUAL_TOL = 1e-6
# Smallest per-layer targets solved (docs/math.md, "Limits"): a per-layer C''(1) (TAT) or
# C'(1) − 1 (DKS) this small makes φ̂ so nearly affine that rounding φ's argument α·z + β alone
# perturbs the moments by ~1e-16/α relative. Measured: every registered activation solves at TAT
# 1e-10 and, but for the kinked elu and softsign, at DKS 1e-8, meeting the target to ~1e-10
# relative where checked against 50-digit quadrature.
MIN_LOCAL_CURVATURE = 1e-9
MIN_LOCAL_SLOPE_EXCESS = 1e-8
# Relative slack on those floors, so that a target suggested from them survives being recomputed.
_FLOOR_SLACK = 1e-9
# Deterministic restarts after the fixed starting points (like the reference library's seed).
_RANDOM_SEED = 123
_NUM_RANDOM_STARTS = 30
# Input shifts of the starting points: near-linear guesses at each of _GUESS_SHIFTS, then a grid.
# ±0.1 puts the kink of elu/selu in range, where their β matters (pure exp is shift-invariant).
_GUESS_SHIFTS = (0.5, -0.5, 1.0, -1.0, 0.1, -0.1, 2.0, -2.0)
_SHIFT_GRID = (0.5, -0.5, 1.0, -1.0, 0.0, 2.0, -2.0)
# The reference library rejects TAT solutions with input_scale·output_scale >= 2 (unstable Q maps).
_MAX_SCALE_PRODUCT = 2.0
# sigmoid(x) = (1 + tanh(x/2))/2: judged as the equivalent tanh, every sigmoid solution has a
# product 4× its tanh twin's, so the plain rule would reject them all (the reference library lets
# sigmoid through only when the root finder lands on a negative input scale, which its signed
# test does not catch).
_REJECT_GAIN = {"sigmoid": 0.25}
# C'(1) of a DKS ReLU with input shift +1 tends to π/(π−1) as the input scale grows; larger slopes
# need the shift −1 (the reference library's 1.466942206924260361).
_RELU_MAX_SLOPE_POSITIVE_SHIFT = math.pi / (math.pi - 1.0)


def _one_architecture(depth: object, funcs: Dict[str, object]) -> Optional[int]:
    """Exactly one of ``depth`` and the architecture functions; returns the checked depth or None."""
    given = (["depth"] if depth is not None else []) + [name for name, f in funcs.items() if f is not None]
    if len(given) != 1:
        raise ValueError(f"pass exactly one of depth (a plain chain), {', '.join(funcs)}; "
                         f"got {', '.join(given) if given else 'none'}")
    if depth is None and not callable(funcs[given[0]]):
        raise TypeError(f"{given[0]} must be callable, got {funcs[given[0]]!r}")
    return None if depth is None else _check_depth(depth)


def _solve_increasing(fn: Callable[[float], float], target: float, low: float, what: str) -> float:
    """x > low with fn(x) = target for an increasing fn with fn(low) < target (bracket, then brentq)."""
    def excess(x: float) -> float:
        value = fn(x)
        try:
            value = float(value)
        except (TypeError, ValueError, OverflowError):
            raise TypeError(f"{what} must return a float, got {_validate.show(value)}") from None
        if math.isnan(value):
            raise ValueError(f"{what} returned NaN at {x}")
        return value - target

    start = excess(low)
    if start >= 0.0:
        raise ValueError(f"{what} is already >= the target {target} for a linear network "
                         f"({what}({low}) = {start + target:.6g}); check the function")
    step = 1.0 if low == 0.0 else 0.1 * abs(low)
    high = low + step
    while excess(high) < 0.0:
        step *= 2.0
        high = low + step
        if step > 1e12:
            raise ValueError(f"the target {target} is unreachable through {what}: it stays below "
                             f"the target for every local value up to {high:.3g}")
    return optimize.brentq(excess, low, high, xtol=1e-300, rtol=4 * np.finfo(float).eps)


def _local_curv_target(depth, tau, subnet_max_func, max_curv_func, tau_name: str = "tau") -> float:
    """Per-layer C''(1) making the maximal C_f''(1) over subnetworks equal tau (a chain: tau/L)."""
    depth = _one_architecture(depth, {"subnet_max_func": subnet_max_func, "max_curv_func": max_curv_func})
    tau = _validate.real(tau_name, tau, gt=0.0)
    if depth is not None:
        curv = tau / depth
    else:
        if max_curv_func is None:
            # docs/math.md, "Architectures": composition becomes addition for C''(1) when C'(1) = 1.
            def max_curv_func(k: float) -> float:
                return subnet_max_func(0.0, lambda y: k + y)
        curv = _solve_increasing(max_curv_func, tau, 0.0, "max_curv_func")
    if not curv >= MIN_LOCAL_CURVATURE * (1.0 - _FLOOR_SLACK):
        fix = (f"for depth={depth} use {tau_name} >= {_round_up(MIN_LOCAL_CURVATURE * depth)}"
               if depth is not None else f"use a larger {tau_name}")
        raise ArgumentValueError(
            tau_name, f"{tau_name}={tau:g} asks each layer for C''(1) = {curv:.3g}, below the solvable "
                      f"minimum {MIN_LOCAL_CURVATURE:g}: so close to linear, the activation's kernel map "
                      f"cannot be resolved in double precision (docs/math.md, \"Limits\"); {fix}")
    return curv


def _local_slope_excess(depth, zeta, subnet_max_func, max_slope_func, zeta_name: str = "zeta") -> float:
    """Per-layer C'(1) − 1 making the maximal C_f'(1) over subnetworks equal zeta (a chain:
    zeta^(1/L) − 1). The excess is what the solver matches: 1 + excess would lose its digits."""
    depth = _one_architecture(depth, {"subnet_max_func": subnet_max_func, "max_slope_func": max_slope_func})
    zeta = _validate.real(zeta_name, zeta, gt=1.0)
    if depth is not None:
        excess = math.expm1(math.log(zeta) / depth)
    else:
        if max_slope_func is None:
            # docs/math.md, "Architectures": composition becomes multiplication for C'(1).
            def max_slope_func(s: float) -> float:
                return subnet_max_func(1.0, lambda y: s * y)
        excess = _solve_increasing(max_slope_func, zeta, 1.0, "max_slope_func") - 1.0
    if not excess >= MIN_LOCAL_SLOPE_EXCESS * (1.0 - _FLOOR_SLACK):
        if depth is not None:
            least = 1.0 + float(_round_up(math.expm1(depth * math.log1p(MIN_LOCAL_SLOPE_EXCESS))))
            fix = f"for depth={depth} use {zeta_name} >= {least!r}"
        else:
            fix = f"use a larger {zeta_name}"
        raise ArgumentValueError(
            zeta_name, f"{zeta_name}={zeta!r} asks each layer for C'(1) = 1 + {excess:.3g}, closer to 1 than "
                       f"the solvable minimum 1 + {MIN_LOCAL_SLOPE_EXCESS:g}: so close to linear, the "
                       "activation's kernel map cannot be resolved in double precision (docs/math.md, "
                       f"\"Limits\"); {fix}")
    return excess


def _starting_points(guesses: Iterable[Tuple[float, float]], grid: Iterable[Tuple[float, float]],
                     low: Sequence[float], high: Sequence[float]) -> Iterator[np.ndarray]:
    """Near-linear guesses, a fixed grid, then seeded uniform samples in [low, high] (deterministic)."""
    for point in itertools.chain(guesses, grid):
        yield np.asarray(point, dtype=np.float64)
    rng = np.random.default_rng(_RANDOM_SEED)
    for _ in range(_NUM_RANDOM_STARTS):
        yield rng.uniform(low, high)


def _near_linear_guesses(act: ResolvedActivation, ratio: float) -> Iterator[Tuple[float, float]]:
    """(α, β) with α = ratio·|φ'(β)/φ''(β)|, for a few β.

    With g ≈ φ(β) + αφ'(β)z + α²φ''(β)z²/2 (small α), C''(1) ≈ α²(φ''/φ')² and, under DKS,
    C'(1) − 1 ≈ α²(φ''/φ')²/2: the caller picks ``ratio`` to hit its target.
    """
    _, d1, d2 = cmaps.derivatives(act.fn, np.asarray(_GUESS_SHIFTS), 2)
    for beta, first, second in zip(_GUESS_SHIFTS, d1, d2):
        if first != 0.0 and second != 0.0:
            yield min(ratio * abs(first / second), 3.0), beta


def _first_root(branches: Sequence[Tuple[Callable, Callable]],
                starts: Iterable[np.ndarray]) -> Optional[ActivationParams]:
    """Powell's hybrid method from each start on each (residual, finish) branch, in order.

    ``finish(x)`` turns a root into ActivationParams, or None to reject it; the first kept wins.
    """
    for x0 in starts:
        for residual, finish in branches:
            with np.errstate(all="ignore"):
                sol = optimize.root(_finite_residual(residual), x0, method="hybr",
                                    options={"xtol": 1e-13})
            # Near the linear limit rounding noise in the residual can stop hybr short of xtol
            # ("not making good progress") close to a root: _checked decides whether it is one.
            converged = sol.success or np.max(np.abs(sol.fun)) <= _RESIDUAL_TOL
            if converged and np.all(np.isfinite(sol.x)):
                try:
                    params = finish(sol.x)
                except (ZeroDivisionError, ValueError, OverflowError):  # a degenerate "root"
                    params = None
                if params is not None:
                    return params
    return None


def _finite_residual(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a residual so that degenerate regions (zero variance, NaN moments) read as large errors."""
    def wrapped(x: np.ndarray) -> np.ndarray:
        try:
            with np.errstate(all="ignore"):
                r = np.asarray(fn(x), dtype=np.float64)
        except (ZeroDivisionError, ValueError, OverflowError):
            return np.full(len(x), 1e6)
        return np.where(np.isfinite(r), r, 1e6)
    return wrapped


def _checked(activation: Activation, params: ActivationParams, targets: dict,
             targeted: Tuple[str, float, float]) -> Optional[ActivationParams]:
    """``params`` if an independent evaluation of the invariants meets ``targets`` to
    _INVARIANT_TOL and the targeted invariant to _TARGET_RTOL, else None.

    ``targeted = (key, offset, value)``: invariant ``key`` minus ``offset`` must match ``value``
    relatively. The absolute check alone would pass any C''(1) or C'(1) − 1 below 1e-9.
    """
    try:
        inv = cmaps.local_invariants(activation, params)
    except ValueError:  # Q(1) vanished: not a solution
        return None
    ok = all(abs(getattr(inv, key) - value) <= _INVARIANT_TOL * max(1.0, abs(value))
             for key, value in targets.items())
    key, offset, value = targeted
    ok = ok and abs(getattr(inv, key) - offset - value) <= _TARGET_RTOL * value
    return params if ok else None


def _unsolvable(activation: Activation, what: str) -> ValueError:
    name = activation if isinstance(activation, str) else getattr(activation, "__name__", repr(activation))
    return ValueError(f"no parameters found for {name!r} reaching {what}; the target may be out of this "
                      "activation's reach (a strongly nonlinear layer: try a larger depth or a smaller "
                      "tau/zeta), or too close to linear for the solver's starting points (a per-layer "
                      "target near its minimum, docs/math.md, \"Limits\")")


def _positive_scale(alpha: float, beta: float, delta: float, gamma: float,
                    slope: Optional[float] = None) -> ActivationParams:
    """φ̂(x) and φ̂(−x) have the same Q and C maps (z ↦ −z): report the one with α > 0."""
    return ActivationParams(abs(float(alpha)), float(beta), float(delta), float(gamma), slope)


def solve_tat(
    activation: Activation,
    depth: Optional[int] = None,
    *,
    tau: float = 0.3,
    subnet_max_func: Optional[SubnetMaxFunc] = None,
    max_curv_func: Optional[Callable[[float], float]] = None,
) -> ActivationParams:
    """TAT for a smooth activation: Q(1) = 1, Q'(1) = 1, C'(1) = 1 and maximal C_f''(1) = ``tau``.

    Args:
        activation: a registered name (not relu/leaky_relu: use :func:`solve_trelu`) or an
            elementwise torch callable, assumed smooth.
        depth: number of nonlinear layers of a plain chain (per-layer C''(1) = tau/depth).
        tau: target C_f''(1) of the network, > 0 (default 0.3).
        subnet_max_func: architecture as in :func:`solve_trelu` (curvatures add along paths).
        max_curv_func: alternatively, the maximal C_f''(1) as a function of the per-layer C''(1).
            Exactly one of ``depth``, ``subnet_max_func``, ``max_curv_func``.

    Returns:
        :class:`ActivationParams` with input_scale > 0; the invariants hold to 1e-9. Solutions are
        not unique: the first one found from a fixed list of starting points is returned, skipping
        those with input_scale·output_scale >= 2 as the reference library does (>= 8 for sigmoid,
        i.e. the same bound on its tanh equivalent).

    Raises:
        ValueError: bad arguments, or no solution (e.g. ``square``, whose Q'(1) and C'(1) conditions
            contradict each other).
    """
    if activation in ("relu", "leaky_relu"):
        raise ValueError(f"{activation!r} has no finite C''(1), so TAT's curvature condition does not "
                         "apply; use solve_trelu(depth, eta=...) for (Leaky) ReLUs")
    resolve(activation)  # reject unknown names before the architecture search
    return _solve_tat_local(activation, _local_curv_target(depth, tau, subnet_max_func, max_curv_func))


def _solve_tat_local(activation: Activation, curv: float) -> ActivationParams:
    """TAT parameters for a per-layer C''(1) target ``curv``."""
    act = resolve(activation)
    max_product = _MAX_SCALE_PRODUCT / _REJECT_GAIN.get(activation, 1.0)
    targets = {"q_1": 1.0, "q_slope_1": 1.0, "c_slope_1": 1.0, "c_curv_1": curv}

    # Given (α, β): γ = 1/sqrt(E[g'²]) sets C'(1) = 1, and Q(1) = 1 is then the quadratic
    # (δ + E[g])² = E[g'²] − Var g, solvable by the Gaussian Poincaré inequality. Two equations in
    # (α, β) remain, on the branch of either root δ. Centred moments keep the near-linear case exact.
    def output_params(x: np.ndarray, sign: float) -> Tuple[cmaps.Moments, float, float, float]:
        m = cmaps.moments(act, x[0], x[1])
        mean = sign * math.sqrt(max(m.gap, 0.0))  # E[g] + δ
        return m, mean, mean - m.e1, 1.0 / math.sqrt(m.d1)

    def branch(sign: float) -> Tuple[Callable, Callable]:
        def residual(x: np.ndarray) -> np.ndarray:
            m, mean, _, gamma = output_params(x, sign)
            q_slope = gamma * gamma * (m.pc + mean * m.p0)
            return np.array([q_slope - 1.0, m.d2 / m.d1 / curv - 1.0])  # C''(1) relative to target

        def finish(x: np.ndarray) -> Optional[ActivationParams]:
            _, _, delta, gamma = output_params(x, sign)
            params = _positive_scale(x[0], x[1], delta, gamma)
            if params.input_scale * params.output_scale >= max_product:
                return None
            return _checked(activation, params, targets, ("c_curv_1", 0.0, curv))

        return residual, finish

    grid = [(a, b) for a in (1.0, 0.3) for b in _SHIFT_GRID]
    starts = _starting_points(_near_linear_guesses(act, math.sqrt(curv)), grid, (0.05, -3.0), (2.0, 3.0))
    params = _first_root([branch(1.0), branch(-1.0)], starts)
    if params is None:
        raise _unsolvable(activation, f"Q'(1) = 1, C'(1) = 1, C''(1) = {curv:.6g}")
    return params


def solve_dks(
    activation: Activation,
    depth: Optional[int] = None,
    *,
    zeta: float = 1.5,
    q_slope: float = 1.0,
    subnet_max_func: Optional[SubnetMaxFunc] = None,
    max_slope_func: Optional[Callable[[float], float]] = None,
) -> ActivationParams:
    """DKS: Q(1) = 1, Q'(1) = ``q_slope``, C(0) = 0 and maximal C_f'(1) = ``zeta``.

    Args:
        activation: a registered name or an elementwise torch callable (assumed smooth).
            ``relu`` follows the reference library: input shift fixed at ±1 and the Q'(1) condition
            dropped (a warning says so). ``leaky_relu`` solves for its negative slope and input
            shift (input scale 1); the slope is returned in ``negative_slope``.
        depth: number of nonlinear layers of a plain chain (per-layer C'(1) = zeta^(1/depth)).
        zeta: target C_f'(1) of the network, > 1 (default 1.5).
        q_slope: target per-layer Q'(1), > 0 (default 1).
        subnet_max_func: architecture as in :func:`solve_trelu` (slopes multiply along paths).
        max_slope_func: alternatively, the maximal C_f'(1) as a function of the per-layer C'(1).
            Exactly one of ``depth``, ``subnet_max_func``, ``max_slope_func``.

    Returns:
        :class:`ActivationParams` with input_scale > 0; the invariants hold to 1e-9.

    Raises:
        ValueError: bad arguments, or no solution (e.g. a single softplus layer cannot have
            C'(1) = 1.5 with Q'(1) = 1; ``square`` always has Q'(1) = C'(1)).
    """
    resolve(activation)  # reject unknown names before the architecture search
    q_slope = _validate.real("q_slope", q_slope, gt=0.0)
    excess = _local_slope_excess(depth, zeta, subnet_max_func, max_slope_func)
    if activation == "relu":
        _warn_dks_relu(stacklevel=3)
    return _solve_dks_local(activation, excess, q_slope)


def _warn_dks_relu(stacklevel: int) -> None:
    warnings.warn("DKS with ReLU is highly discouraged (use Leaky ReLU); as in the reference library its "
                  "input shift is fixed at ±1 and the Q'(1) condition is dropped", UserWarning,
                  stacklevel=stacklevel)


def _solve_dks_local(activation: Activation, excess: float, q_slope: float) -> ActivationParams:
    """DKS parameters for a per-layer C'(1) = 1 + ``excess`` and Q'(1) = ``q_slope``.

    C'(1) − 1 is matched relative to ``excess``: deep nets need C'(1) = 1 + O(1/L).
    """
    if activation == "relu":
        return _solve_dks_relu(excess)
    act = resolve(activation)
    targets = {"q_1": 1.0, "q_slope_1": q_slope, "c_val_0": 0.0, "c_slope_1": 1.0 + excess}

    if activation == "leaky_relu":
        # Unknowns (negative slope, β); LReLU is positively homogeneous, so α = 1 loses nothing.
        def unpack(x: np.ndarray) -> Tuple[ResolvedActivation, float, float]:
            return act._replace(lrelu_slope=float(x[0])), 1.0, float(x[1])
        guesses, grid = [], [(a, b) for a in (0.0, 0.5) for b in (0.0, 1.0, -1.0)]
        box = ((0.0, -3.0), (1.0, 3.0))
    else:
        def unpack(x: np.ndarray) -> Tuple[ResolvedActivation, float, float]:
            return act, float(x[0]), float(x[1])
        guesses = _near_linear_guesses(act, math.sqrt(2.0 * excess))
        grid = [(a, b) for a in (1.0, 0.3) for b in _SHIFT_GRID]
        box = ((0.05, -3.0), (2.0, 3.0))

    # δ = −E[g] sets C(0) = 0; then Q(1) = 1 needs γ² = 1/Var g (centred moments: exact near-linear).
    def residual(x: np.ndarray) -> np.ndarray:
        resolved, alpha, beta = unpack(x)
        m = cmaps.moments(resolved, alpha, beta, curvature=False)
        # Both relative to the excess: near the linear limit Q'(1) − 1 is O(excess) too, and an
        # unscaled first row would look converged long before its root is reached.
        return np.array([(m.pc / m.var - q_slope) / excess, (m.gap / m.var) / excess - 1.0])

    def finish(x: np.ndarray) -> Optional[ActivationParams]:
        resolved, alpha, beta = unpack(x)
        m = cmaps.moments(resolved, alpha, beta, curvature=False)
        negative_slope = float(x[0]) if activation == "leaky_relu" else None
        params = _positive_scale(alpha, beta, -m.e1, 1.0 / math.sqrt(m.var), negative_slope)
        return _checked(activation, params, targets, ("c_slope_1", 1.0, excess))

    params = _first_root([(residual, finish)], _starting_points(guesses, grid, *box))
    if params is None:
        raise _unsolvable(activation, f"Q'(1) = {q_slope:.6g}, C(0) = 0, C'(1) = 1 + {excess:.10g}")
    return params


def _solve_dks_relu(excess: float) -> ActivationParams:
    """DKS for ReLU with C(0) = 0, Q(1) = 1 and C'(1) = 1 + ``excess``: C'(1) depends only on
    h = β/α; brentq on h."""
    act = resolve("relu")
    shift = 1.0 if 1.0 + excess < _RELU_MAX_SLOPE_POSITIVE_SHIFT else -1.0

    def residual(h: float) -> float:
        m = cmaps.moments(act, 1.0, h)  # relu(α·z + β) = α·relu(z + h): the scale cancels in C'(1)
        return m.gap / m.var - excess

    # C'(1) − 1 falls from 1/(π−1) at h = 0 to 0 as h → +∞, and grows without bound as h → −∞.
    tiny, bound = shift * 1e-12, 1.0
    while np.sign(residual(shift * bound)) == np.sign(residual(tiny)):
        bound *= 2.0
        if bound > 1e3:
            raise ValueError(f"no ReLU input scale reaches C'(1) = 1 + {excess:.10g}")
    h = optimize.brentq(residual, *sorted((tiny, shift * bound)), xtol=1e-300, rtol=4 * np.finfo(float).eps)
    m = cmaps.moments(act, 1.0 / abs(h), shift)
    return ActivationParams(1.0 / abs(h), shift, -m.e1, 1.0 / math.sqrt(m.var))


# ---------------------------------------------------------------------------------------------
# Drop-in for dks.pytorch.get_transformed_activations
# ---------------------------------------------------------------------------------------------

_DKS_DEFAULTS = {"c_slope_1_target": 1.5, "local_q_slope_target": 1.0}
_TAT_DEFAULTS = {"c_val_0_target": 0.9, "c_curve_target": 0.3}


def _with_defaults(params: Optional[Mapping], defaults: dict, argname: str) -> dict:
    """A new dict of ``defaults`` updated by ``params`` (the caller's dict is never modified)."""
    if params is None:
        return dict(defaults)
    if not isinstance(params, Mapping):
        raise TypeError(f"{argname} must be a dict or None, got {params!r}")
    unknown = [key for key in params if key not in defaults]
    if unknown:
        raise ValueError(f"{argname} has unrecognized key(s) {', '.join(map(repr, unknown))}; "
                         f"allowed keys: {', '.join(map(repr, defaults))}")
    return {**defaults, **params}


def _fused_leaky_relu(params: ActivationParams,
                      negative_slope: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """γ·(LReLU(α·x + β) + δ) through the fused op, folding α > 0 into the others by homogeneity:
    γα·(LReLU(x + β/α) + δ/α)."""
    from tat_ext.ops import trelu  # lazy: loads the compiled extension only when the activation is built

    a = params.input_scale
    return functools.partial(trelu, slope=negative_slope, scale=params.output_scale * a,
                             in_shift=params.input_shift / a, out_shift=params.output_shift / a)


def _as_callable(name: str, params: ActivationParams) -> Callable[[torch.Tensor], torch.Tensor]:
    if name in ("relu", "leaky_relu"):
        slope = 0.0 if name == "relu" else params.negative_slope
        return _fused_leaky_relu(params, slope)
    return TransformedActivation(name, params)


def get_transformed_activations(
    activation_names: Sequence[str],
    method: str = "DKS",
    dks_params: Optional[Mapping[str, float]] = None,
    tat_params: Optional[Mapping[str, float]] = None,
    max_slope_func: Optional[Callable[[float], float]] = None,
    max_curv_func: Optional[Callable[[float], float]] = None,
    subnet_max_func: Optional[SubnetMaxFunc] = None,
) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Transformed activations by name; a drop-in for ``dks.pytorch.get_transformed_activations``.

    Args:
        activation_names: list or tuple of registered names.
        method: ``"DKS"``, ``"TAT"`` or ``"untransformed"``.
        dks_params: keys ``c_slope_1_target`` (ζ, default 1.5) and ``local_q_slope_target``
            (default 1.0).
        tat_params: keys ``c_val_0_target`` (η for Leaky ReLU, default 0.9) and ``c_curve_target``
            (τ for smooth activations, default 0.3).
        max_slope_func, max_curv_func, subnet_max_func: the architecture, as in the reference
            library; DKS needs ``max_slope_func`` or ``subnet_max_func``, TAT with smooth
            activations ``max_curv_func`` or ``subnet_max_func``, TAT with ``leaky_relu`` (which
            must then be the only name) ``subnet_max_func``.

    Returns:
        ``{name: callable}``: torch functions ``γ·(φ(α·x + β) + δ)``; (Leaky) ReLUs call the fused
        op :func:`tat_ext.trelu`.

    Raises:
        ValueError: for the misuse the reference library rejects (wrong container, unknown method
            or name, unknown dict key, out-of-range target, missing architecture function,
            relu under TAT, leaky_relu mixed with others under TAT) and for unsolvable targets.
    """
    if not isinstance(activation_names, (list, tuple)):
        raise ValueError("activation_names must be a list or tuple of strings, "
                         f"got {type(activation_names).__name__}")
    functions = {name: get_activation(name) for name in activation_names}  # unknown names raise
    if method == "untransformed":
        return functions

    dks = _with_defaults(dks_params, _DKS_DEFAULTS, "dks_params")
    tat = _with_defaults(tat_params, _TAT_DEFAULTS, "tat_params")

    if method == "DKS":
        if "relu" in activation_names:
            _warn_dks_relu(stacklevel=3)
        zeta_name = "dks_params['c_slope_1_target']"
        zeta = _validate.real(zeta_name, dks["c_slope_1_target"], gt=1.0)
        q_slope = _validate.real("dks_params['local_q_slope_target']", dks["local_q_slope_target"], gt=0.0)
        if max_slope_func is None and subnet_max_func is None:
            raise ValueError("DKS needs subnet_max_func or max_slope_func")
        excess = _local_slope_excess(None, zeta, subnet_max_func if max_slope_func is None else None,
                                     max_slope_func, zeta_name)
        params = {name: _solve_dks_local(name, excess, q_slope) for name in activation_names}
    elif method == "TAT" and "leaky_relu" not in activation_names:
        if "relu" in activation_names:
            raise ValueError("ReLU is not supported by TAT (its C''(1) is infinite); use leaky_relu")
        tau_name = "tat_params['c_curve_target']"
        tau = _validate.real(tau_name, tat["c_curve_target"], gt=0.0)
        if max_curv_func is None and subnet_max_func is None:
            raise ValueError("TAT with smooth activations needs subnet_max_func or max_curv_func")
        curv = _local_curv_target(None, tau, subnet_max_func if max_curv_func is None else None,
                                  max_curv_func, tau_name)
        params = {name: _solve_tat_local(name, curv) for name in activation_names}
    elif method == "TAT":
        if len(activation_names) > 1:
            raise ValueError("with TAT, leaky_relu must be the only activation (its slope comes from "
                             "c_val_0_target, the others' parameters from c_curve_target); "
                             f"got {activation_names}")
        eta = _validate.real("tat_params['c_val_0_target']", tat["c_val_0_target"], ge=0.0, le=1.0)
        if subnet_max_func is None:
            raise ValueError("TAT with leaky_relu needs subnet_max_func")
        trelu_params = solve_trelu(eta=eta, subnet_max_func=subnet_max_func)
        params = {"leaky_relu": ActivationParams(output_scale=trelu_params.scale,
                                                 negative_slope=trelu_params.slope)}
    else:
        raise ValueError(f"method must be 'DKS', 'TAT' or 'untransformed', got {method!r}")
    return {name: _as_callable(name, params[name]) for name in activation_names}
