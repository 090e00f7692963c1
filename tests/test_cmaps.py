"""Kernel maps against independent values: Monte Carlo sampling (fixed seed, tolerance from the
standard error), a high-order Gauss–Legendre rule, and the reference library's form of the LReLU map."""
import functools
import math

import numpy as np
import pytest
import torch
from scipy.special import roots_legendre

from tat_ext import cmaps
from tat_ext.activations import ActivationParams, TransformedActivation, activation_names

N_MC = 1_000_000
SIGMAS = 5.0  # MC tolerance in standard errors
KINKED = {"relu", "leaky_relu", "elu", "selu", "softsign"}
SMOOTH_NAMES = [n for n in activation_names() if n not in KINKED]
PARAMS = [
    ActivationParams(),
    ActivationParams(input_scale=1.7, input_shift=0.8, output_shift=-0.3, output_scale=1.2),
    ActivationParams(input_scale=0.4, input_shift=-1.1, output_shift=0.5, output_scale=0.9),
]


@pytest.fixture(scope="module")
def normals():
    g = torch.Generator().manual_seed(1234)
    return torch.randn(2, N_MC, generator=g, dtype=torch.float64)


def _mean_close(samples: torch.Tensor, value: float) -> None:
    mean, se = samples.mean().item(), samples.std().item() / math.sqrt(samples.numel())
    assert abs(mean - value) <= SIGMAS * se + 1e-12, (mean, value, se)


def _phi_hat_derivs(name, params, z):
    """φ̂, φ̂', φ̂'' on samples by autograd (the a.e. derivatives for kinked φ)."""
    z = z.clone().requires_grad_(True)
    y = TransformedActivation(name, params)(z)
    (d1,) = torch.autograd.grad(y.sum(), z, create_graph=True)
    d2 = torch.autograd.grad(d1.sum(), z, allow_unused=True)[0] if d1.requires_grad else None
    d2 = torch.zeros_like(z) if d2 is None else d2
    return y.detach(), d1.detach(), d2.detach(), z.detach()


@functools.lru_cache(maxsize=None)
def _legendre(n):
    return roots_legendre(n)


def gl_expectations(name, params, n=3000):
    """E[φ̂], E[φ̂²], E[φ̂'²], E[φ̂''²], E[φ̂φ̂'z] by one Gauss–Legendre rule per side of the kink."""
    x, w = _legendre(n)
    edges = [-12.0, 12.0]
    if name in KINKED:
        edges.insert(1, float(np.clip(-params.input_shift / params.input_scale, -12, 12)))
    zs, ws = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        zs.append((hi + lo) / 2 + (hi - lo) / 2 * x)
        ws.append((hi - lo) / 2 * w)
    z, w = np.concatenate(zs), np.concatenate(ws)
    w = w * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    y, d1, d2, zt = _phi_hat_derivs(name, params, torch.from_numpy(z))
    y, d1, d2 = y.numpy(), d1.numpy(), d2.numpy()
    return w @ y, w @ y**2, w @ d1**2, w @ d2**2, w @ (y * d1 * z)


# --- TReLU closed form -----------------------------------------------------------------------

def test_trelu_c_map_equals_reference_library_form():
    c = np.linspace(-1, 1, 401)
    for a in (0.0, 0.1, 0.43, 0.9, 1.0):
        theirs = ((1 - a) ** 2 * (np.sqrt(1 - c**2) + (np.pi - np.arccos(c)) * c) / np.pi
                  + 2 * a * c) / (1 + a**2)
        np.testing.assert_allclose(cmaps.trelu_c_map(c, a), theirs, rtol=0, atol=1e-14)


def test_trelu_c_map_values_and_types():
    assert cmaps.trelu_c_map(1.0, 0.3) == pytest.approx(1.0, abs=1e-15)
    assert cmaps.trelu_c_map(0.0, 0.3) == pytest.approx(0.49 / (math.pi * 1.09), abs=1e-15)
    assert cmaps.trelu_c0(0.0) == pytest.approx(1 / math.pi)
    assert isinstance(cmaps.trelu_c_map(0.5, 0.2), float)
    assert cmaps.trelu_c_map(np.zeros((2, 3)), 0.2).shape == (2, 3)
    with pytest.raises(ValueError, match="derivative"):
        cmaps.trelu_c_map(0.5, 0.2, derivative=3)


def test_trelu_c_map_derivatives_match_finite_differences():
    c, h = np.linspace(-0.95, 0.95, 39), 1e-5
    for a in (0.0, 0.5):
        fd1 = (cmaps.trelu_c_map(c + h, a) - cmaps.trelu_c_map(c - h, a)) / (2 * h)
        fd2 = (cmaps.trelu_c_map(c + h, a, 1) - cmaps.trelu_c_map(c - h, a, 1)) / (2 * h)
        np.testing.assert_allclose(cmaps.trelu_c_map(c, a, 1), fd1, atol=1e-8)
        np.testing.assert_allclose(cmaps.trelu_c_map(c, a, 2), fd2, atol=1e-7)
    assert cmaps.trelu_c_map(1.0, 0.5, 1) == 1.0
    assert cmaps.trelu_c_map(1.0, 0.5, 2) == math.inf


@pytest.mark.parametrize("slope", [0.0, 0.3, 0.8])
def test_trelu_c_map_matches_monte_carlo(normals, slope):
    u, w = normals
    scale = math.sqrt(2 / (1 + slope**2))
    f = lambda t: scale * torch.nn.functional.leaky_relu(t, slope)
    for c in (-0.9, -0.3, 0.0, 0.5, 0.95):
        v = c * u + math.sqrt(1 - c * c) * w
        _mean_close(f(u) * f(v), cmaps.trelu_c_map(c, slope))


def test_trelu_q_map_is_identity():
    q = np.array([0.0, 0.3, 1.0, 4.0])
    for a in (0.0, 0.6):
        params = ActivationParams(output_scale=math.sqrt(2 / (1 + a * a)), negative_slope=a)
        np.testing.assert_allclose(cmaps.q_map("leaky_relu", q, params), q, atol=1e-14)


# --- Any activation --------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in activation_names() if n not in ("relu", "leaky_relu")])
def test_invariants_match_high_order_gauss_legendre(name):
    for params in PARAMS:
        e1, e2, d1, d2, p = gl_expectations(name, params)
        inv = cmaps.local_invariants(name, params)
        np.testing.assert_allclose(
            [inv.q_1, inv.q_slope_1, inv.c_val_0, inv.c_slope_1, inv.c_curv_1],
            [e2, p, e1**2 / e2, d1 / e2, d2 / e2], rtol=1e-10, atol=1e-11, err_msg=str(params))


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "tanh", "gelu", "elu", "selu", "softsign"])
def test_invariants_match_monte_carlo(normals, name):
    params = ActivationParams(input_scale=1.3, input_shift=0.4, output_shift=-0.2, output_scale=1.1,
                              negative_slope=0.2 if name == "leaky_relu" else None)
    y, d1, d2, z = _phi_hat_derivs(name, params, normals[0])
    inv = cmaps.local_invariants(name, params)
    _mean_close(y * y, inv.q_1)
    _mean_close(y * d1 * z, inv.q_slope_1)
    _mean_close(y, math.sqrt(inv.c_val_0 * inv.q_1) * np.sign(y.mean().item()))
    _mean_close(d1 * d1, inv.c_slope_1 * inv.q_1)
    if name in ("relu", "leaky_relu"):
        assert inv.c_curv_1 == math.inf  # the LReLU C map's C''(c) blows up at c = 1
    else:
        _mean_close(d2 * d2, inv.c_curv_1 * inv.q_1)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "tanh", "gelu", "softsign", "square"])
def test_c_map_matches_monte_carlo(normals, name):
    u, w = normals
    params = ActivationParams(input_scale=0.9, input_shift=0.6, output_shift=-0.4, output_scale=1.3,
                              negative_slope=0.3 if name == "leaky_relu" else None)
    f = TransformedActivation(name, params)
    q1 = cmaps.q_map(name, 1.0, params)
    cs = np.array([-1.0, -0.6, 0.3, 0.9])
    for c, value in zip(cs, cmaps.c_map(name, cs, params)):
        v = c * u + math.sqrt(1 - c * c) * w
        with torch.no_grad():
            _mean_close(f(u) * f(v), value * q1)


@pytest.mark.parametrize("name", activation_names())
def test_c_map_consistent_with_invariants(name):
    params = PARAMS[1]
    inv = cmaps.local_invariants(name, params)
    assert cmaps.c_map(name, 1.0, params) == pytest.approx(1.0, abs=1e-13)
    assert cmaps.c_map(name, 0.0, params) == pytest.approx(inv.c_val_0, abs=1e-11)
    # C'(1) from a one-sided 3-point difference, exact up to O(h²·C'''); a kink in φ or in a
    # derivative makes some higher derivative of C blow up at 1, so only smooth φ qualify.
    if name in SMOOTH_NAMES:
        h = 1e-3
        c = cmaps.c_map(name, np.array([1.0, 1 - h, 1 - 2 * h]), params)
        assert (3 * c[0] - 4 * c[1] + c[2]) / (2 * h) == pytest.approx(inv.c_slope_1, abs=2e-5)


def test_q_map_matches_monte_carlo(normals):
    params = PARAMS[1]
    for name in ("tanh", "elu", "relu"):
        f = TransformedActivation(name, params)
        qs = np.array([0.0, 0.5, 2.0])
        for q, value in zip(qs, cmaps.q_map(name, qs, params)):
            with torch.no_grad():
                _mean_close(f(math.sqrt(q) * normals[0]) ** 2, value)


def test_callables_match_names():
    params = PARAMS[2]
    by_name = cmaps.local_invariants("tanh", params)
    by_fn = cmaps.local_invariants(lambda x: torch.tanh(x), params)
    np.testing.assert_allclose(list(vars(by_fn).values()), list(vars(by_name).values()), rtol=1e-13)
    assert cmaps.c_map(torch.tanh, 0.4, params) == pytest.approx(cmaps.c_map("tanh", 0.4, params), abs=1e-14)


def test_bad_input():
    with pytest.raises(ValueError, match="Unrecognized activation"):
        cmaps.local_invariants("tanhh")
    with pytest.raises(TypeError, match="activation"):
        cmaps.local_invariants(3.0)
    with pytest.raises(ValueError, match="c must lie"):
        cmaps.c_map("tanh", 1.5)
    with pytest.raises(ValueError, match="q must be"):
        cmaps.q_map("tanh", -1.0)
    with pytest.raises(TypeError, match="same shape"):
        cmaps.local_invariants(lambda x: x.sum())
    with pytest.raises(ValueError, match="negative_slope"):
        cmaps.local_invariants("tanh", ActivationParams(negative_slope=0.1))
    with pytest.raises(ValueError, match="input_scale"):
        ActivationParams(input_scale=0.0)
    with pytest.raises(ValueError, match="output_shift"):
        ActivationParams(output_shift=float("nan"))


# --- Near the linear limit: the centred moments (docs/math.md, "Limits") -------------------------

def _longdouble_moments(fn, alpha, beta, fn_slope, kink=None, n=600):
    """Var g, E[g'²] − Var g and E[(g − E g)g'z] by Gauss–Legendre in long double (split at the
    kink), for g(z) = fn(α·z + β) with derivative α·fn_slope(α·z + β)."""
    ld = np.longdouble
    x, w = roots_legendre(n)
    edges = [-12.0, 12.0] if kink is None else [-12.0, (kink - beta) / alpha, 12.0]
    zs, ws = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        lo, hi = ld(lo), ld(hi)
        zs.append((hi + lo) / 2 + (hi - lo) / 2 * x.astype(ld))
        ws.append((hi - lo) / 2 * w.astype(ld))
    z, w = np.concatenate(zs), np.concatenate(ws)
    w = w * np.exp(-z * z / 2) / np.sqrt(ld(2) * ld(np.pi))
    arg = ld(alpha) * z + ld(beta)
    g, g1 = fn(arg), ld(alpha) * fn_slope(arg)
    centred = g - (w * g).sum()
    var = (w * centred**2).sum()
    return float(var), float((w * g1**2).sum() - var), float((w * centred * g1 * z).sum())


@pytest.mark.parametrize("alpha, beta", [(1e-4, 0.6), (3e-3, -0.4), (0.8, 0.3)])
def test_centred_moments_of_a_nearly_linear_activation(alpha, beta):
    assert np.finfo(np.longdouble).eps < 1e-18, "needs extended precision"
    m = cmaps.moments(cmaps.resolve("tanh"), alpha, beta)
    var, gap, pc = _longdouble_moments(np.tanh, alpha, beta, lambda y: 1 - np.tanh(y) ** 2)
    # At α = 1e-4 the gap is 1e-8·Var g: e2 − e1² and d1 − var would leave it no correct digit.
    assert m.var == pytest.approx(var, rel=1e-12)
    assert m.gap == pytest.approx(gap, rel=1e-6)
    assert m.pc == pytest.approx(pc, rel=1e-10)
    assert m.gap == pytest.approx(m.d1 - m.var, rel=1e-6, abs=1e-13 * m.var)


@pytest.mark.parametrize("slope, beta", [(0.9999, 0.3), (0.2, 4.0), (0.0, -1.5)])
def test_centred_moments_of_leaky_relu_closed_forms(slope, beta):
    m = cmaps.moments(cmaps.resolve("leaky_relu", ActivationParams(negative_slope=slope)), 1.3, beta)
    var, gap, pc = _longdouble_moments(lambda y: np.where(y > 0, y, slope * y), 1.3, beta,
                                       lambda y: np.where(y > 0, 1.0, slope), kink=0.0)
    assert m.var == pytest.approx(var, rel=1e-12)
    assert m.gap == pytest.approx(gap, rel=1e-8)
    assert m.pc == pytest.approx(pc, rel=1e-10)


def test_invariants_of_a_vanishing_activation_raise():
    # Formerly ZeroDivisionError: Q(1) = 0 leaves the C map undefined.
    for params in (ActivationParams(output_scale=0.0), ActivationParams(output_scale=1e-200)):
        with pytest.raises(ValueError, match=r"Q\(1\) = 0"):
            cmaps.local_invariants("tanh", params)


def test_argument_types():
    assert cmaps.trelu_c_map(np.float32(0.5), np.float64(0.2), derivative=np.int64(1)) == \
        cmaps.trelu_c_map(0.5, 0.2, derivative=1)
    assert cmaps.trelu_c0(np.float32(0.25)) == cmaps.trelu_c0(0.25)
    for call, match in [
        (lambda: cmaps.trelu_c_map(0.5, "0.2"), "slope must be a real number"),
        (lambda: cmaps.trelu_c0(10**400), "slope must be finite"),
        (lambda: cmaps.trelu_c_map("0.5", 0.2), "c must be a real number"),
        (lambda: cmaps.trelu_c_map(0.5, 0.2, derivative=True), "derivative must be an int"),
        (lambda: cmaps.c_map("tanh", [0.1, "x"]), "c must be a real number or an array"),
        (lambda: cmaps.q_map("tanh", None), "q must be a real number or an array"),
    ]:
        with pytest.raises((TypeError, ValueError), match=match):
            call()
