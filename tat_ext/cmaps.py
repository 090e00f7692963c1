"""Kernel maps (Q and C maps) of activation functions.

Conventions follow docs/math.md, "Kernel maps": inputs have q = 1, ``Q(q) = E[φ(√q z)²]`` and
``C(c) = E[φ(u) φ(v)] / Q(1)`` with (u, v) standard bivariate normal with correlation c.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Tuple

import numpy as np
import torch
from scipy import special

from tat_ext import _validate
from tat_ext.activations import Activation, ActivationParams, ResolvedActivation, resolve

__all__ = [
    "LocalInvariants",
    "Moments",
    "c_map",
    "derivatives",
    "local_invariants",
    "moments",
    "q_map",
    "trelu_c0",
    "trelu_c_map",
    "trelu_chain_c_map",
]


def trelu_c0(slope: float | np.ndarray) -> float | np.ndarray:
    """C(0) = (1−α)²/(π(1+α²)) of the normalized Leaky ReLU with negative slope α.

    The whole TReLU C map depends on α only through this number (see :func:`trelu_c_map`).
    """
    slope = _validate.real_array("slope", slope)
    k = (1.0 - slope) ** 2 / (np.pi * (1.0 + slope**2))
    return float(k) if k.ndim == 0 else k


def trelu_c_map(c: float | np.ndarray, slope: float, derivative: int = 0) -> float | np.ndarray:
    """C map of the normalized Leaky ReLU ``sqrt(2/(1+α²))·LReLU_α`` (or its 1st/2nd derivative).

    ``C_α(c) = c + k·(sqrt(1−c²) − c·arccos c)`` with ``k = C_α(0) = (1−α)²/(π(1+α²))``
    (docs/math.md, "TReLU"); ``C'_α(c) = 1 − k·arccos c`` and ``C''_α(c) = k/sqrt(1−c²)``
    (infinite at c = ±1 unless α = 1). ``c`` is a float or an array (values are clipped to [−1, 1]);
    a float input gives a float.
    """
    derivative = _validate.integer("derivative", derivative, ge=0, le=2)
    x = np.clip(_validate.real_array("c", c), -1.0, 1.0)
    k = trelu_c0(slope)
    if derivative == 0:
        out = x + k * (np.sqrt(1.0 - x * x) - x * np.arccos(x))
    elif derivative == 1:
        out = 1.0 - k * np.arccos(x)
    else:
        with np.errstate(divide="ignore"):
            out = np.where(k == 0.0, 0.0, k / np.sqrt(1.0 - x * x))
    return float(out) if out.ndim == 0 else out


def trelu_chain_c_map(c: float | np.ndarray, slope: float, depth: int) -> float | np.ndarray:
    """C_α applied ``depth`` times to ``c`` (values in [−1, 1]): the C map of a plain chain of
    ``depth`` TReLU layers. Scalar math for a float (the TReLU solver's hot path), elementwise
    numpy for an array; O(depth) either way."""
    k = trelu_c0(slope)
    # No clamp needed: C_α maps [−1, 1] into itself, and near c = 1 the computed increment
    # (~kθ³/3 for c = cos θ) stays below 1 − c (~θ²/2) by far more than its rounding error.
    if isinstance(c, float):
        sqrt, acos = math.sqrt, math.acos
        for _ in range(depth):
            c += k * (sqrt(1.0 - c * c) - c * acos(c))
        return c
    c = np.array(c, dtype=np.float64)
    for _ in range(depth):
        c += k * (np.sqrt(1.0 - c * c) - c * np.arccos(c))
    return c


# ---------------------------------------------------------------------------------------------
# Any activation: Gaussian expectations of φ̂(x) = γ·(φ(α·x + β) + δ)
# ---------------------------------------------------------------------------------------------

# Smooth φ: the trapezoidal rule on [−Z, Z]. For integrands analytic in the strip |Im z| < d its
# error falls like exp(−2πd/h); Gauss–Hermite with a few hundred nodes converges far slower once an
# input scale pulls φ's complex poles near the real axis (atan at α = 1.7: C''(1) off by 2e-4 with
# 200 nodes, 8e-7 with 400), so the solvers could not reach 1e-8 with it.
_TRAPEZOID_STEP = 1.0 / 20.0  # 401 nodes, 1-D expectations
_TRAPEZOID_STEP_2D = 1.0 / 8.0  # 161 nodes per axis, C(c)
# The trapezoidal rule spans [−10, 10]: the normal density beyond is below 1e-22.
_TRAPEZOID_Z_MAX = 10.0
# Piecewise-smooth φ (elu, selu, softsign): Gauss–Legendre on each side of the kink.
_GL_NODES = 128
_GL2_NODES = 64
# Standard-normal mass beyond ±12 is below 1e-32: the split rules integrate over [−12, 12].
_Z_MAX = 12.0
# Points per torch call in the 2-D rule (bounds memory for long vectors of c).
_CHUNK_POINTS = 1 << 20


@dataclass(frozen=True)
class LocalInvariants:
    """Kernel-map values of one transformed activation at q = 1 (docs/math.md, "Kernel maps").

    Attributes:
        q_1: Q(1).
        q_slope_1: Q'(1).
        c_val_0: C(0).
        c_slope_1: C'(1).
        c_curv_1: C''(1) (``inf`` for a Leaky ReLU with slope ≠ 1: its C'' blows up at c = 1).
    """

    q_1: float
    q_slope_1: float
    c_val_0: float
    c_slope_1: float
    c_curv_1: float


class Moments(NamedTuple):
    """Gaussian moments of g(z) = φ(α·z + β), z ~ N(0, 1), from which every local invariant follows.

    ``e1 = E[g]``, ``e2 = E[g²]``, ``d1 = E[g'²]``, ``d2 = E[g''²]``, ``p = E[g·g'·z]``,
    ``p0 = E[g'·z]``; and three differences computed without cancellation (near the linear limit,
    small α, g is almost constant and g almost linear, so the plain differences would lose all
    their digits; docs/math.md, "Limits"): ``var = Var g = E[(g − e1)²]``,
    ``pc = E[(g − e1)·g'·z] = p − e1·p0`` and ``gap = d1 − var``, computed as
    ``Var g' − E[r²]`` with ``r = g − e1 − E[g']·z`` (g minus its linear Hermite part; both terms
    are O(α⁴), like the gap).
    """

    e1: float
    e2: float
    d1: float
    d2: float
    p: float
    p0: float
    var: float
    pc: float
    gap: float

    def invariants(self, output_shift: float = 0.0, output_scale: float = 1.0) -> LocalInvariants:
        """Invariants of φ̂ = γ·(g + δ) (docs/math.md, "Kernel maps"): with m = E[g] + δ,
        Q(1) = γ²(Var g + m²), Q'(1) = E[φ̂φ̂'z] = γ²(E[(g − E g)g'z] + m·E[g'z]),
        C(0) = γ²m²/Q(1), C'(1) = γ²E[g'²]/Q(1) = 1 + γ²(gap − m²)/Q(1), C''(1) = γ²E[g''²]/Q(1).

        Raises:
            ValueError: Q(1) is 0 or not finite (φ̂ vanishes or overflows), so C is undefined.
        """
        g2 = output_scale**2
        mean = self.e1 + output_shift
        q1 = g2 * (self.var + mean * mean)
        if not 0.0 < q1 < math.inf:
            raise ValueError(f"Q(1) = {q1:g} for output_shift={output_shift!r}, output_scale={output_scale!r}: "
                             "the transformed activation vanishes or overflows at q = 1, so its C map "
                             "is undefined")
        return LocalInvariants(
            q_1=q1,
            q_slope_1=g2 * (self.pc + mean * self.p0),
            c_val_0=g2 * mean * mean / q1,
            c_slope_1=1.0 + g2 * (self.gap - mean * mean) / q1,  # γ²E[g'²]/Q(1), E[g'²] = Var g + gap
            c_curv_1=g2 * self.d2 / q1,
        )


@functools.lru_cache(maxsize=None)
def _trapezoid(step: float) -> Tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for E[f(z)], z ~ N(0, 1), for f analytic near the real axis."""
    n = int(round(_TRAPEZOID_Z_MAX / step))
    z = np.arange(-n, n + 1) * step
    w = np.exp(-0.5 * z * z)
    w /= w.sum()  # E[1] = 1 exactly (the exact sum differs from 1 by ~exp(-2π²/h²))
    z.setflags(write=False)
    w.setflags(write=False)
    return z, w


@functools.lru_cache(maxsize=None)
def _gauss_legendre(n: int) -> Tuple[np.ndarray, np.ndarray]:
    x, w = special.roots_legendre(n)
    x.setflags(write=False)
    w.setflags(write=False)
    return x, w


def _split_rule(t: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rules for E[f(z)], z ~ N(0, 1), with f smooth on each side of ``t`` (array of split points).

    Gauss–Legendre on [−Z, t] and on [t, Z], each weighted by the normal density. Returns nodes and
    weights of shape ``t.shape + (2n,)``.
    """
    x, w = _gauss_legendre(n)
    t = np.clip(t, -_Z_MAX, _Z_MAX)[..., None]
    left_half, right_half = (t + _Z_MAX) / 2.0, (_Z_MAX - t) / 2.0
    nodes = np.concatenate([t - left_half + left_half * x, t + right_half + right_half * x], axis=-1)
    weights = np.concatenate([left_half * w, right_half * w], axis=-1)
    weights = weights * np.exp(-0.5 * nodes * nodes) / math.sqrt(2.0 * math.pi)
    return nodes, weights


def _kink_in_z(kink: float, shift: float, scale: np.ndarray) -> np.ndarray:
    """Where α·z + β hits the kink; ±inf (one-sided rule) when the scale is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (kink - shift) / scale
    return np.where(np.isnan(t), np.inf, t)


def derivatives(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, order: int) -> list:
    """[φ, φ', …, φ^(order)] at the points ``x`` (numpy arrays) by torch autograd in float64.

    Derivatives of kinked φ are the piecewise ones (autograd's), as in the reference library.
    """
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    if order == 0:
        with torch.no_grad():
            return [_call(fn, xt).numpy()]
    xt.requires_grad_(True)
    outs = []
    with torch.enable_grad():
        y = _call(fn, xt)
        if not y.requires_grad:
            raise TypeError(f"activation {_name(fn)} must be differentiable by torch autograd: its output "
                            "does not depend on its input through torch operations (is it computed "
                            "with math/numpy, or detached?)")
        outs.append(y)
        for k in range(order):
            if not y.requires_grad:  # φ^(k) no longer depends on x: the rest are 0
                y = torch.zeros_like(xt)
            else:
                (grad,) = torch.autograd.grad(y.sum(), xt, create_graph=k + 1 < order, allow_unused=True)
                y = torch.zeros_like(xt) if grad is None else grad
            outs.append(y)
    return [o.detach().numpy() for o in outs]


def _name(fn: Callable) -> str:
    return repr(getattr(fn, "__name__", fn))


def _call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fn(x) for a user's activation, with errors that say what an activation must be."""
    try:
        y = fn(x)
    except Exception as error:  # anything a non-torch callable raises on a tensor
        raise TypeError(f"activation {_name(fn)} must be an elementwise torch function (e.g. torch.tanh, "
                        f"not math.tanh); calling it on a float64 tensor of shape {tuple(x.shape)} raised "
                        f"{type(error).__name__}: {error}") from error
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        raise TypeError(f"activation {_name(fn)} must map a tensor to a tensor of the same shape "
                        "(elementwise)")
    return y.to(torch.float64)


# --- Leaky ReLU family in closed form (kinked: quadrature would converge slowly) -------------

def _relu_parts(mu: np.ndarray, sigma: np.ndarray) -> Tuple[np.ndarray, ...]:
    """h = μ/σ, Φ(h), φ(h), R1 = E[relu(y)], R2 = E[relu(y)²] for y ~ N(μ, σ²), σ ≥ 0."""
    # σ = 0 (q = 0): y ≡ μ, and h = ±inf (or 0 when μ = 0) gives the right limits below.
    degenerate = np.where(mu == 0, 0.0, np.copysign(np.inf, mu))
    h = np.where(sigma > 0, mu / np.where(sigma > 0, sigma, 1.0), degenerate)
    cdf, pdf = special.ndtr(h), np.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi)
    r1 = mu * cdf + sigma * pdf
    r2 = (mu * mu + sigma * sigma) * cdf + mu * sigma * pdf
    return h, cdf, pdf, r1, r2


def _lrelu_moments(a: float, alpha: float, beta: float) -> Moments:
    """Moments of g(z) = LReLU_a(α·z + β), using LReLU_a(y) = a·y + (1 − a)·relu(y).

    Sign of α does not matter (z ↦ −z). Stein's lemma gives p = E[g g' z] = d1 (the δ-free part)
    and p0 = E[g' z] = E[g''] = σ(1 − a)φ(h); g'' = 0 a.e. but C'' is infinite at 1 unless a = 1.
    """
    sigma, mu = abs(alpha), beta
    h, cdf, pdf, r1, r2 = (float(v) for v in _relu_parts(np.float64(mu), np.float64(sigma)))
    d1 = sigma * sigma * (a * a + (1.0 - a * a) * cdf)
    e1 = a * mu + (1.0 - a) * r1
    e2 = a * a * (mu * mu + sigma * sigma) + (1.0 - a * a) * r2
    p0 = sigma * (1.0 - a) * pdf
    if sigma == 0.0:
        var = gap = 0.0
    else:
        # Var g without the cancellation of e2 − e1² (large |h| is nearly linear): with y = σz + μ,
        # g = a·y + (1−a)·relu(y), Cov(y, relu y) = σ²Φ(h) (Stein) and, with Q = 1 − Φ(h),
        # Var relu(y) = σ²·(h²ΦQ + Φ − hφ(Φ − Q) − φ²). Then d1 − var = σ²(1−a)²(Φ − Var relu/σ²).
        upper = float(special.ndtr(-h))
        relu_var = h * h * cdf * upper + cdf - h * pdf * (cdf - upper) - pdf * pdf
        var = sigma * sigma * (a * a + 2.0 * a * (1.0 - a) * cdf + (1.0 - a) ** 2 * relu_var)
        gap = sigma * sigma * (1.0 - a) ** 2 * (cdf - relu_var)
    # p = E[g g' z] = E[g'²] + E[g g''] = d1: g'' is a point mass at the kink, where g = 0.
    return Moments(e1=e1, e2=e2, d1=d1, d2=0.0 if a == 1.0 else math.inf, p=d1, p0=p0,
                   var=var, pc=d1 - e1 * p0, gap=gap)


def _lrelu_pair_mean(c: np.ndarray, a: float, alpha: float, beta: float) -> np.ndarray:
    """E[LReLU_a(α·u + β)·LReLU_a(α·v + β)], (u, v) standard bivariate normal with correlation c.

    The relu–relu term is E[(u+h)₊(v+h)₊]·σ² with (Rosenbaum's truncated bivariate normal moments)
    E[(u+h)₊(v+h)₊] = (c + h²)·P + 2h·φ(h)·Φ(h·k) + sqrt(1−c²)/(2π)·exp(−h²/(1+c)),
    k = sqrt((1−c)/(1+c)), P = P(u > −h, v > −h) = Φ(h) − 2·T(h, k) (Owen's T).
    """
    sigma, mu = abs(alpha), beta
    h, cdf, pdf, r1, _ = _relu_parts(np.float64(mu), np.float64(sigma))
    c = np.clip(c, -1.0, 1.0)
    s = np.sqrt(1.0 - c * c)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.sqrt((1.0 - c) / (1.0 + c))
        hk = np.where(h == 0.0, 0.0, h * k)
        tail = np.where(s > 0.0, s / (2.0 * math.pi) * np.exp(-h * h / (1.0 + c)), 0.0)
    both_positive = cdf - 2.0 * special.owens_t(h, k)
    relu_relu = sigma * sigma * ((c + h * h) * both_positive + 2.0 * h * pdf * special.ndtr(hk) + tail)
    relu_linear = mu * r1 + sigma * sigma * c * cdf  # E[y₁·relu(y₂)], using E[u | v] = c·v
    return (a * a * (sigma * sigma * c + mu * mu) + 2.0 * a * (1.0 - a) * relu_linear
            + (1.0 - a) ** 2 * relu_relu)


# --- Public evaluation API ------------------------------------------------------------------

def _params(params: Optional[ActivationParams]) -> ActivationParams:
    if params is None:
        return ActivationParams()
    if not isinstance(params, ActivationParams):
        raise TypeError(f"params must be an ActivationParams or None, got {params!r}")
    return params


def moments(act: ResolvedActivation, input_scale: float = 1.0, input_shift: float = 0.0,
            curvature: bool = True) -> Moments:
    """:class:`Moments` of g(z) = φ(α·z + β) for a resolved activation (the solvers' inner loop).

    Closed forms for the Leaky ReLU family; otherwise the trapezoidal rule (smooth φ) or
    Gauss–Legendre split at the kink (elu, selu, softsign), with derivatives by autograd.
    ``curvature=False`` skips the second derivative (``d2`` is then NaN).
    """
    if act.lrelu_slope is not None:
        return _lrelu_moments(act.lrelu_slope, input_scale, input_shift)
    if act.kink is None:
        z, w = _trapezoid(_TRAPEZOID_STEP)
    else:
        z, w = _split_rule(np.asarray((act.kink - input_shift) / input_scale), _GL_NODES)
    f, *derivs = derivatives(act.fn, input_scale * z + input_shift, 2 if curvature else 1)
    g1 = input_scale * derivs[0]
    d2 = float(w @ (input_scale**2 * derivs[1]) ** 2) if curvature else math.nan
    e1, mean_slope = float(w @ f), float(w @ g1)
    centred = f - e1
    beyond_linear = centred - mean_slope * z
    slope_dev = g1 - mean_slope
    return Moments(e1=e1, e2=float(w @ (f * f)), d1=float(w @ (g1 * g1)), d2=d2,
                   p=float(w @ (f * g1 * z)), p0=float(w @ (g1 * z)),
                   var=float(w @ (centred * centred)), pc=float(w @ (centred * g1 * z)),
                   gap=float(w @ (slope_dev * slope_dev)) - float(w @ (beyond_linear * beyond_linear)))


def local_invariants(activation: Activation, params: Optional[ActivationParams] = None) -> LocalInvariants:
    """Q(1), Q'(1), C(0), C'(1), C''(1) of ``γ·(φ(α·x + β) + δ)`` (identity params by default).

    ``activation`` is a registered name or an elementwise torch callable (assumed smooth). Kinked
    names use closed forms (relu, leaky_relu) or a quadrature split at the kink (elu, selu, softsign).
    Derivatives are taken piecewise, as the reference library does.
    """
    p = _params(params)
    act = resolve(activation, p)
    m = moments(act, p.input_scale, p.input_shift)
    return m.invariants(p.output_shift, p.output_scale)


def q_map(activation: Activation, q: float | np.ndarray,
          params: Optional[ActivationParams] = None) -> float | np.ndarray:
    """Q(q) = E[φ̂(√q·z)²] for q ≥ 0 (float or array)."""
    p = _params(params)
    act = resolve(activation, p)
    q_arr = _validate.real_array("q", q)
    if np.any(~(q_arr >= 0.0)):
        raise ValueError("q must be >= 0 (it is a mean squared activation)")
    scale = p.input_scale * np.sqrt(q_arr.reshape(-1))
    d, g = p.output_shift, p.output_scale
    if act.lrelu_slope is not None:
        a = act.lrelu_slope
        _, _, _, r1, r2 = _relu_parts(np.full_like(scale, p.input_shift), np.abs(scale))
        e1 = a * p.input_shift + (1.0 - a) * r1
        e2 = a * a * (p.input_shift**2 + scale * scale) + (1.0 - a * a) * r2
    else:
        if act.kink is None:
            z, w = _trapezoid(_TRAPEZOID_STEP)
            z, w = np.broadcast_to(z, scale.shape + z.shape), w
        else:
            z, w = _split_rule(_kink_in_z(act.kink, p.input_shift, scale), _GL_NODES)
        (f,) = derivatives(act.fn, scale[:, None] * z + p.input_shift, 0)
        e1, e2 = (f * w).sum(-1), (f * f * w).sum(-1)
    out = (g * g * (e2 + 2.0 * d * e1 + d * d)).reshape(q_arr.shape)
    return float(out) if out.ndim == 0 else out


def c_map(activation: Activation, c: float | np.ndarray,
          params: Optional[ActivationParams] = None) -> float | np.ndarray:
    """C(c) = E[φ̂(u)·φ̂(v)] / Q(1) at q = 1, for c in [−1, 1] (float or array).

    Closed form for the Leaky ReLU family. Otherwise a 2-D rule with the Cholesky trick
    v = c·u + sqrt(1−c²)·w: a tensor trapezoidal rule for smooth φ; for piecewise φ, rules split at the
    kink in u and, for each u, at the kink of v in w.
    """
    p = _params(params)
    act = resolve(activation, p)
    c_arr = _validate.real_array("c", c)
    if np.any(~(np.abs(c_arr) <= 1.0)):
        raise ValueError("c must lie in [-1, 1] (it is a cosine similarity)")
    flat = c_arr.reshape(-1)
    d = p.output_shift
    if act.lrelu_slope is not None:
        m = _lrelu_moments(act.lrelu_slope, p.input_scale, p.input_shift)
        pair = _lrelu_pair_mean(flat, act.lrelu_slope, p.input_scale, p.input_shift)
        e1, e2 = m.e1, m.e2
    else:
        pair, e1, e2 = _pair_mean_quadrature(act, flat, p.input_scale, p.input_shift)
    out = ((pair + 2.0 * d * e1 + d * d) / (e2 + 2.0 * d * e1 + d * d)).reshape(c_arr.shape)
    return float(out) if out.ndim == 0 else out


def _pair_mean_quadrature(act: ResolvedActivation, c: np.ndarray, alpha: float,
                          beta: float) -> Tuple[np.ndarray, float, float]:
    """E[g(u)g(v)] for each c, and E[g], E[g²] from the same outer rule (so C(1) = 1 exactly)."""
    if act.kink is None:
        u, wu = _trapezoid(_TRAPEZOID_STEP_2D)
    else:
        kink_u = (act.kink - beta) / alpha
        u, wu = _split_rule(np.asarray(kink_u), _GL2_NODES)
    (gu,) = derivatives(act.fn, alpha * u + beta, 0)
    e1, e2 = float(wu @ gu), float(wu @ (gu * gu))
    inner = u.size if act.kink is None else 2 * _GL2_NODES
    chunk = max(1, _CHUNK_POINTS // (u.size * inner))
    pair = np.empty_like(c)
    for start in range(0, c.size, chunk):
        cc = c[start:start + chunk, None, None]
        s = np.sqrt(np.maximum(1.0 - cc * cc, 0.0))
        if act.kink is None:
            w, ww = _trapezoid(_TRAPEZOID_STEP_2D)
        else:
            # Where v = c·u + s·w crosses the kink, per (c, u).
            w, ww = _split_rule(_kink_in_z(kink_u - cc[..., 0] * u, 0.0, s[..., 0]), _GL2_NODES)
        v = cc * u[:, None] + s * w
        (gv,) = derivatives(act.fn, alpha * v + beta, 0)
        pair[start:start + chunk] = ((gv * ww).sum(-1) * gu) @ wu
    return pair, e1, e2
