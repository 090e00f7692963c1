"""Solve for the activation parameters of TAT (Leaky ReLU and smooth) and DKS.

The math and the targets are in REFERENCE.md ("TReLU", "Architectures", "TAT for smooth activations
and DKS").
"""
from __future__ import annotations

import functools
import itertools
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import optimize

from tat_ext import cmaps
from tat_ext.activations import (
    Activation,
    ActivationParams,
    ResolvedActivation,
    TransformedActivation,
    get_activation,
    resolve,
)
from tat_ext.cmaps import trelu_c_map

__all__ = [
    "ActivationParams",
    "TReLUParams",
    "get_transformed_activations",
    "solve_dks",
    "solve_tat",
    "solve_trelu",
]

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


def _round_down(value: float, digits: int) -> str:
    """``value`` cut (not rounded) to ``digits`` decimals, so that it is safe to pass back."""
    return f"{math.floor(value * 10**digits) / 10**digits:.{digits}f}"


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
    depth = _one_architecture(depth, {"subnet_max_func": subnet_max_func})
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
                f"C_f(0)={reachable:.6g}; eta={eta} needs {need}, or use eta <= {_round_down(reachable, 6)}"
            )
        raise ValueError(
            f"eta={eta} is unreachable for this subnet_max_func: the largest reachable eta is "
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

# Every solution is re-checked through cmaps.local_invariants against this (REFERENCE: 1e-8).
_INVARIANT_TOL = 1e-9
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


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite float, got {value!r}")
    if value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


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
        except (TypeError, ValueError):
            raise TypeError(f"{what} must return a float, got {value!r}") from None
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


def _local_curv_target(depth, tau, subnet_max_func, max_curv_func) -> float:
    """Per-layer C''(1) making the maximal C_f''(1) over subnetworks equal tau (a chain: tau/L)."""
    depth = _one_architecture(depth, {"subnet_max_func": subnet_max_func, "max_curv_func": max_curv_func})
    tau = _check_positive("tau", tau)
    if depth is not None:
        return tau / depth
    if max_curv_func is None:
        # REFERENCE.md, "Architectures": composition becomes addition for C''(1) when C'(1) = 1.
        def max_curv_func(k: float) -> float:
            return subnet_max_func(0.0, lambda y: k + y)
    return _solve_increasing(max_curv_func, tau, 0.0, "max_curv_func")


def _local_slope_target(depth, zeta, subnet_max_func, max_slope_func) -> float:
    """Per-layer C'(1) making the maximal C_f'(1) over subnetworks equal zeta (a chain: zeta^(1/L))."""
    depth = _one_architecture(depth, {"subnet_max_func": subnet_max_func, "max_slope_func": max_slope_func})
    zeta = _check_positive("zeta", zeta)
    if zeta <= 1.0:
        raise ValueError(f"zeta (the network's C_f'(1)) must be > 1, got {zeta}")
    if depth is not None:
        return math.exp(math.log(zeta) / depth)
    if max_slope_func is None:
        # REFERENCE.md, "Architectures": composition becomes multiplication for C'(1).
        def max_slope_func(s: float) -> float:
            return subnet_max_func(1.0, lambda y: s * y)
    return _solve_increasing(max_slope_func, zeta, 1.0, "max_slope_func")


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
            if sol.success and np.all(np.isfinite(sol.x)):
                params = finish(sol.x)
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


def _checked(activation: Activation, params: ActivationParams, targets: dict) -> Optional[ActivationParams]:
    """``params`` if an independent evaluation of the invariants meets ``targets``, else None."""
    inv = cmaps.local_invariants(activation, params)
    ok = all(abs(getattr(inv, key) - value) <= _INVARIANT_TOL * max(1.0, abs(value))
             for key, value in targets.items())
    return params if ok else None


def _unsolvable(activation: Activation, what: str) -> ValueError:
    name = activation if isinstance(activation, str) else getattr(activation, "__name__", repr(activation))
    return ValueError(f"no parameters found for {name!r} reaching {what}; the target may be out of this "
                      "activation's reach (try a milder target, e.g. a larger depth or smaller tau/zeta)")


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
    # (α, β) remain, on the branch of either root δ.
    def output_params(x: np.ndarray, sign: float) -> Tuple[cmaps.Moments, float, float]:
        m = cmaps.moments(act, x[0], x[1])
        gap = max(m.d1 - (m.e2 - m.e1 * m.e1), 0.0)
        return m, -m.e1 + sign * math.sqrt(gap), 1.0 / math.sqrt(m.d1)

    def branch(sign: float) -> Tuple[Callable, Callable]:
        def residual(x: np.ndarray) -> np.ndarray:
            m, delta, gamma = output_params(x, sign)
            q_slope = gamma * gamma * (m.p + delta * m.p0)
            return np.array([q_slope - 1.0, m.d2 / m.d1 / curv - 1.0])  # C''(1) relative to target

        def finish(x: np.ndarray) -> Optional[ActivationParams]:
            _, delta, gamma = output_params(x, sign)
            params = _positive_scale(x[0], x[1], delta, gamma)
            if params.input_scale * params.output_scale >= max_product:
                return None
            return _checked(activation, params, targets)

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
    q_slope = _check_positive("q_slope", q_slope)
    slope = _local_slope_target(depth, zeta, subnet_max_func, max_slope_func)
    if activation == "relu":
        _warn_dks_relu(stacklevel=3)
    return _solve_dks_local(activation, slope, q_slope)


def _warn_dks_relu(stacklevel: int) -> None:
    warnings.warn("DKS with ReLU is highly discouraged (use Leaky ReLU); as in the reference library its "
                  "input shift is fixed at ±1 and the Q'(1) condition is dropped", UserWarning,
                  stacklevel=stacklevel)


def _solve_dks_local(activation: Activation, slope: float, q_slope: float) -> ActivationParams:
    """DKS parameters for a per-layer C'(1) target ``slope`` and Q'(1) target ``q_slope``."""
    if activation == "relu":
        return _solve_dks_relu(slope)
    act = resolve(activation)
    targets = {"q_1": 1.0, "q_slope_1": q_slope, "c_val_0": 0.0, "c_slope_1": slope}
    excess = slope - 1.0  # C'(1) − 1 is matched relative to this: deep nets need 1 + O(1/L)

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

    def moments_and_var(x: np.ndarray) -> Tuple[cmaps.Moments, float]:
        resolved, alpha, beta = unpack(x)
        m = cmaps.moments(resolved, alpha, beta, curvature=False)
        return m, m.e2 - m.e1 * m.e1  # δ = −E[g] sets C(0) = 0; then Q(1) = 1 needs γ² = 1/Var g

    def residual(x: np.ndarray) -> np.ndarray:
        m, var = moments_and_var(x)
        q = (m.p - m.e1 * m.p0) / var
        return np.array([q - q_slope, ((m.d1 - var) / var) / excess - 1.0])

    def finish(x: np.ndarray) -> Optional[ActivationParams]:
        m, var = moments_and_var(x)
        _, alpha, beta = unpack(x)
        negative_slope = float(x[0]) if activation == "leaky_relu" else None
        params = _positive_scale(alpha, beta, -m.e1, 1.0 / math.sqrt(var), negative_slope)
        return _checked(activation, params, targets)

    params = _first_root([(residual, finish)], _starting_points(guesses, grid, *box))
    if params is None:
        raise _unsolvable(activation, f"Q'(1) = {q_slope:.6g}, C(0) = 0, C'(1) = {slope:.10g}")
    return params


def _solve_dks_relu(slope: float) -> ActivationParams:
    """DKS for ReLU with C(0) = 0, Q(1) = 1: C'(1) depends only on h = β/α; brentq on h."""
    act = resolve("relu")
    shift = 1.0 if slope < _RELU_MAX_SLOPE_POSITIVE_SHIFT else -1.0

    def excess(h: float) -> float:
        m = cmaps.moments(act, 1.0, h)  # relu(α·z + β) = α·relu(z + h): the scale cancels in C'(1)
        var = m.e2 - m.e1 * m.e1
        return (m.d1 - var) / var - (slope - 1.0)

    # C'(1) − 1 falls from 1/(π−1) at h = 0 to 0 as h → +∞, and grows without bound as h → −∞.
    tiny, bound = shift * 1e-12, 1.0
    while np.sign(excess(shift * bound)) == np.sign(excess(tiny)):
        bound *= 2.0
        if bound > 1e3:
            raise ValueError(f"no ReLU input scale reaches C'(1) = {slope:.10g}")
    h = optimize.brentq(excess, *sorted((tiny, shift * bound)), xtol=1e-300, rtol=4 * np.finfo(float).eps)
    m = cmaps.moments(act, 1.0 / abs(h), shift)
    return ActivationParams(1.0 / abs(h), shift, -m.e1, 1.0 / math.sqrt(m.e2 - m.e1 * m.e1))


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
    from tat_ext import trelu  # lazy: loads the compiled extension only when the activation is built

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
        zeta = dks["c_slope_1_target"]
        if not zeta > 1.0:
            raise ValueError(f"dks_params['c_slope_1_target'] must be a float > 1.0, got {zeta!r}")
        if max_slope_func is None and subnet_max_func is None:
            raise ValueError("DKS needs subnet_max_func or max_slope_func")
        slope = _local_slope_target(None, zeta, subnet_max_func if max_slope_func is None else None,
                                    max_slope_func)
        q_slope = _check_positive("dks_params['local_q_slope_target']", dks["local_q_slope_target"])
        params = {name: _solve_dks_local(name, slope, q_slope) for name in activation_names}
    elif method == "TAT" and "leaky_relu" not in activation_names:
        if "relu" in activation_names:
            raise ValueError("ReLU is not supported by TAT (its C''(1) is infinite); use leaky_relu")
        tau = tat["c_curve_target"]
        if not tau > 0.0:
            raise ValueError(f"tat_params['c_curve_target'] must be a float > 0.0, got {tau!r}")
        if max_curv_func is None and subnet_max_func is None:
            raise ValueError("TAT with smooth activations needs subnet_max_func or max_curv_func")
        curv = _local_curv_target(None, tau, subnet_max_func if max_curv_func is None else None,
                                  max_curv_func)
        params = {name: _solve_tat_local(name, curv) for name in activation_names}
    elif method == "TAT":
        if len(activation_names) > 1:
            raise ValueError("with TAT, leaky_relu must be the only activation (its slope comes from "
                             "c_val_0_target, the others' parameters from c_curve_target); "
                             f"got {activation_names}")
        eta = tat["c_val_0_target"]
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"tat_params['c_val_0_target'] must be a float in [0, 1], got {eta!r}")
        if subnet_max_func is None:
            raise ValueError("TAT with leaky_relu needs subnet_max_func")
        trelu_params = solve_trelu(eta=eta, subnet_max_func=subnet_max_func)
        params = {"leaky_relu": ActivationParams(output_scale=trelu_params.scale,
                                                 negative_slope=trelu_params.slope)}
    else:
        raise ValueError(f"method must be 'DKS', 'TAT' or 'untransformed', got {method!r}")
    return {name: _as_callable(name, params[name]) for name in activation_names}
