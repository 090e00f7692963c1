"""Solvers against independent values: published TReLU slopes, a 40-digit root, C values traced
through the architecture by hand, and invariants of the returned torch functions by a separate
Gauss–Legendre rule."""
import functools
import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import roots_legendre

import tat_ext
from tat_ext.activations import ActivationParams, TransformedActivation, activation_names
from tat_ext.cmaps import trelu_c_map
from tat_ext import transform
from tat_ext.transform import get_transformed_activations, solve_dks, solve_tat, solve_trelu
from test_cmaps import gl_expectations

TOL = 1e-8  # the invariants' required accuracy (docs/math.md, "TAT for smooth activations and DKS")


def chain(depth):
    """subnet_max_func of a plain chain of ``depth`` nonlinear layers."""
    def subnet_max_func(x, r_fn):
        for _ in range(depth):
            x = r_fn(x)
        return x
    return subnet_max_func


def rescaled_resnet(blocks, branch_depth, shortcut_weight):
    """out = sqrt(1−w²)·residual + w·shortcut per block (docs/math.md, "Architectures"); the candidate subnetworks
    are the whole net and one residual branch."""
    w2 = shortcut_weight**2

    def subnet_max_func(x, r_fn):
        whole = x
        for _ in range(blocks):
            whole = (1 - w2) * chain(branch_depth)(whole, r_fn) + w2 * whole
        return max(whole, chain(branch_depth)(x, r_fn))
    return subnet_max_func


def trelu_chain_c0(slope, depth):
    c = 0.0
    for _ in range(depth):
        c = trelu_c_map(c, slope)
    return c


def invariants_by_gl(name, params):
    e1, e2, d1, d2, p = gl_expectations(name, params)
    return {"q_1": e2, "q_slope_1": p, "c_val_0": e1**2 / e2, "c_slope_1": d1 / e2, "c_curv_1": d2 / e2}


def assert_invariants(name, params, **targets):
    got = invariants_by_gl(name, params)
    for key, value in targets.items():
        assert got[key] == pytest.approx(value, abs=TOL), (key, params)


# --- TReLU ------------------------------------------------------------------------------------

# "depth D" in the paper is a chain of D − 1 nonlinear layers. The reference library stops its
# bisection once |C_f(0) − η| < 1e-8, so its slopes sit up to ~1e-8 from the exact root.
PUBLISHED = [(50, 0.4259071946, 1.3011191752), (101, 0.5704395324, 1.2284042441),
             (152, 0.6386479139, 1.1918827707)]


@pytest.mark.parametrize("depth, slope, scale", PUBLISHED)
def test_trelu_matches_published_values(depth, slope, scale):
    params = solve_trelu(depth - 1)
    assert abs(params.slope - slope) < 2e-8
    assert abs(params.scale - scale) < 2e-8
    assert abs(trelu_chain_c0(slope, depth - 1) - 0.9) < 1e-8  # the published value's own accuracy


def test_trelu_slope_is_exact():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40

    def excess(a, depth=49):
        k = (1 - a) ** 2 / (mpmath.pi * (1 + a * a))
        c = mpmath.mpf(0)
        for _ in range(depth):
            c += k * (mpmath.sqrt(1 - c * c) - c * mpmath.acos(c))
        return c - mpmath.mpf(9) / 10

    exact = mpmath.findroot(excess, (mpmath.mpf("0.42"), mpmath.mpf("0.43")), solver="secant")
    assert abs(solve_trelu(49).slope - float(exact)) < 1e-9


@pytest.mark.parametrize("depth, eta", [(13, 0.9), (49, 0.9), (200, 0.5), (1000, 0.95), (3, 0.3)])
def test_trelu_reaches_eta(depth, eta):
    params = solve_trelu(depth, eta=eta)
    assert 0.0 <= params.slope < 1.0
    assert params.scale == pytest.approx(math.sqrt(2 / (1 + params.slope**2)), abs=1e-15)
    assert trelu_chain_c0(params.slope, depth) == pytest.approx(eta, abs=1e-12)
    assert params.c0 == pytest.approx(eta, abs=1e-12)


def test_trelu_slope_approaches_one_like_inverse_sqrt_depth():
    gaps = [(1 - solve_trelu(d).slope) * math.sqrt(d) for d in (4000, 16000)]
    assert gaps[1] == pytest.approx(gaps[0], rel=0.03)


@pytest.mark.parametrize("eta, min_depth", [(0.9, 13), (0.95, 21), (0.75, 6), (0.5, 3)])
def test_trelu_infeasible_eta_states_minimum_depth(eta, min_depth):
    with pytest.raises(ValueError, match=f"at least {min_depth} nonlinear layers"):
        solve_trelu(min_depth - 1, eta=eta)
    assert solve_trelu(min_depth, eta=eta).slope >= 0.0


def test_trelu_subnet_chain_equals_depth():
    assert solve_trelu(subnet_max_func=chain(49)).slope == pytest.approx(solve_trelu(49).slope, abs=1e-14)


def test_trelu_rescaled_resnet_whole_net_binds():
    net = rescaled_resnet(blocks=16, branch_depth=3, shortcut_weight=0.5)
    params = solve_trelu(subnet_max_func=net, eta=0.9)
    r = functools.partial(trelu_c_map, slope=params.slope)
    whole = 0.0
    for _ in range(16):
        whole = 0.75 * chain(3)(whole, r) + 0.25 * whole
    assert whole == pytest.approx(0.9, abs=1e-12)
    assert chain(3)(0.0, r) < 0.9


def test_trelu_residual_branch_more_nonlinear_than_whole_net():
    # A heavy shortcut (w² = 0.95) makes the whole net nearly linear; a 20-layer branch binds.
    net = rescaled_resnet(blocks=4, branch_depth=20, shortcut_weight=math.sqrt(0.95))
    params = solve_trelu(subnet_max_func=net, eta=0.9)
    assert params.slope == pytest.approx(solve_trelu(20).slope, abs=1e-12)
    r = functools.partial(trelu_c_map, slope=params.slope)
    whole = 0.0
    for _ in range(4):
        whole = 0.05 * chain(20)(whole, r) + 0.95 * whole
    assert whole < 0.5


def resnet_v2(blocks_per_stage, shortcut_weight, branch_depth=3):
    """subnet_max_func of a rescaled ResNet-V2 (docs/math.md, "Architectures"): the first block of
    each stage has a projection shortcut, which in V2 reads the pre-activated input."""
    w2 = shortcut_weight**2

    def subnet_max_func(x, r_fn):
        x0 = x
        for blocks in blocks_per_stage:
            for i in range(blocks):
                shortcut = r_fn(x) if i == 0 else x
                x = w2 * shortcut + (1 - w2) * chain(branch_depth)(x, r_fn)
        return max(r_fn(x), chain(branch_depth)(x0, r_fn))
    return subnet_max_func


def test_trelu_resnet_v2_public_check_value():
    # The reference library's own check: ResNet-101 V2, w = 0.6, eta = 0.75 (its bisection stops
    # within 1e-8 of eta, so its values sit ~6e-10 from the exact root).
    params = solve_trelu(subnet_max_func=resnet_v2((3, 4, 23, 3), 0.6), eta=0.75)
    assert params.slope == pytest.approx(0.6291800290346146, abs=2e-9)
    assert params.scale == pytest.approx(1.196996549778802, abs=2e-9)
    # With w = 0 a ResNet-50 is a chain of 49 nonlinear layers.
    assert solve_trelu(subnet_max_func=resnet_v2((3, 4, 6, 3), 0.0)).slope == solve_trelu(49).slope


def test_trelu_infeasible_subnet_states_largest_eta():
    net = rescaled_resnet(blocks=2, branch_depth=2, shortcut_weight=0.5)
    reachable = net(0.0, functools.partial(trelu_c_map, slope=0.0))
    with pytest.raises(ValueError, match="largest reachable eta is") as info:
        solve_trelu(subnet_max_func=net, eta=0.9)
    stated = float(str(info.value).split("largest reachable eta is ")[1].split()[0])
    assert stated == pytest.approx(reachable, abs=1e-9)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(depth=20, eta=0.0), ValueError, "eta"),
    (dict(depth=20, eta=1.0), ValueError, "eta"),
    (dict(depth=20, eta=-0.1), ValueError, "eta"),
    (dict(depth=20, eta=1.5), ValueError, "eta"),
    (dict(depth=20, eta=float("nan")), ValueError, "eta"),
    (dict(depth=20, eta="0.9"), TypeError, "eta"),
    (dict(depth=0), ValueError, "depth must be >= 1"),
    (dict(depth=-3), ValueError, "depth must be >= 1"),
    (dict(depth=2.5), TypeError, "depth"),
    (dict(depth=True), TypeError, "depth"),
    (dict(), ValueError, "exactly one of depth"),
    (dict(depth=20, subnet_max_func=chain(20)), ValueError, "exactly one of depth"),
    (dict(subnet_max_func=5), TypeError, "subnet_max_func"),
    (dict(subnet_max_func=lambda x, r: 0.95), ValueError, "linear network"),
    (dict(subnet_max_func=lambda x, r: "c"), TypeError, "float"),
    (dict(subnet_max_func=lambda x, r: 10**400), TypeError, "subnet_max_func must return a float"),
])
def test_trelu_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        solve_trelu(**kwargs)


# --- Smooth TAT and DKS -----------------------------------------------------------------------

TAT_NAMES = [n for n in activation_names() if n not in ("relu", "leaky_relu", "square")]
DKS_NAMES = [n for n in activation_names() if n != "square"]


def mish(x):
    return x * torch.tanh(F.softplus(x))


@pytest.mark.parametrize("name", TAT_NAMES)
@pytest.mark.parametrize("depth", [3, 100])
def test_tat_invariants(name, depth):
    params = solve_tat(name, depth)
    assert params.input_scale > 0
    assert params.input_scale * params.output_scale < (8.0 if name == "sigmoid" else 2.0)
    assert_invariants(name, params, q_1=1.0, q_slope_1=1.0, c_slope_1=1.0, c_curv_1=0.3 / depth)


@pytest.mark.parametrize("name", DKS_NAMES)
@pytest.mark.parametrize("depth", [5, 100])
def test_dks_invariants(name, depth):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = solve_dks(name, depth)
    targets = dict(q_1=1.0, c_val_0=0.0, c_slope_1=1.5 ** (1 / depth))
    if name != "relu":  # the reference library drops Q'(1) for ReLU
        targets["q_slope_1"] = 1.0
    assert_invariants(name, params, **targets)


def test_dks_relu_follows_reference_library():
    with pytest.warns(UserWarning, match="ReLU"):
        gentle = solve_dks("relu", 10)  # per-layer C'(1) below π/(π−1): input shift +1
    assert gentle.input_shift == 1.0
    with pytest.warns(UserWarning):
        steep = solve_dks("relu", 1)  # C'(1) = 1.5 > π/(π−1): input shift −1
    assert steep.input_shift == -1.0
    assert_invariants("relu", steep, q_1=1.0, c_val_0=0.0, c_slope_1=1.5)


def test_dks_leaky_relu_reports_its_slope():
    params = solve_dks("leaky_relu", 20)
    assert params.negative_slope is not None and 0.0 < params.negative_slope < 1.0


def test_user_callable():
    params = solve_tat(mish, 20, tau=0.5)
    assert_invariants(mish, params, q_1=1.0, q_slope_1=1.0, c_slope_1=1.0, c_curv_1=0.5 / 20)
    params = solve_dks(mish, 20, zeta=2.0, q_slope=1.1)
    assert_invariants(mish, params, q_1=1.0, q_slope_1=1.1, c_val_0=0.0, c_slope_1=2.0 ** (1 / 20))


def test_architecture_functions_set_the_network_targets():
    net = rescaled_resnet(blocks=6, branch_depth=3, shortcut_weight=0.6)
    tat = solve_tat("gelu", subnet_max_func=net, tau=0.4)
    curv = invariants_by_gl("gelu", tat)["c_curv_1"]
    assert net(0.0, lambda y: curv + y) == pytest.approx(0.4, abs=TOL)
    dks = solve_dks("softplus", subnet_max_func=net, zeta=1.3)
    slope = invariants_by_gl("softplus", dks)["c_slope_1"]
    assert net(1.0, lambda y: slope * y) == pytest.approx(1.3, abs=TOL)
    # max_*_func of a chain are the same per-layer targets as depth.
    same = solve_tat("tanh", max_curv_func=lambda k: 30 * k)
    np.testing.assert_allclose(list(vars(same).values())[:4], list(vars(solve_tat("tanh", 30)).values())[:4],
                               rtol=1e-9)
    same = solve_dks("tanh", max_slope_func=lambda s: s**30)
    np.testing.assert_allclose(list(vars(same).values())[:4], list(vars(solve_dks("tanh", 30)).values())[:4],
                               rtol=1e-9)


def test_solutions_are_deterministic():
    assert solve_tat("softsign", 7) == solve_tat("softsign", 7)
    assert solve_dks("elu", 7) == solve_dks("elu", 7)


@pytest.mark.parametrize("call, match", [
    (lambda: solve_tat("square", 10), "no parameters found for 'square'"),
    (lambda: solve_dks("square", 10), "no parameters found for 'square'"),
    (lambda: solve_dks("softplus", 1), "no parameters found for 'softplus'"),
    (lambda: solve_tat("relu", 10), "solve_trelu"),
    (lambda: solve_tat("leaky_relu", 10), "solve_trelu"),
    (lambda: solve_tat("tanhh", 10), "Unrecognized activation"),
    (lambda: solve_dks("tanhh", 10), "Unrecognized activation"),
    (lambda: solve_tat("tanh", 10, tau=0.0), "tau must be > 0"),
    (lambda: solve_dks("tanh", 10, zeta=1.0), "zeta"),
    (lambda: solve_dks("tanh", 10, q_slope=-1.0), "q_slope must be > 0"),
    (lambda: solve_tat("tanh"), "exactly one of depth"),
    (lambda: solve_dks("tanh", 10, max_slope_func=lambda s: s), "exactly one of depth"),
    (lambda: solve_tat("tanh", 0), "depth must be >= 1"),
    (lambda: solve_tat("tanh", max_curv_func=lambda k: 1.0), "already >= the target"),
])
def test_smooth_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- get_transformed_activations ----------------------------------------------------------------

X = torch.linspace(-4, 4, 101, dtype=torch.float64)


def test_untransformed_matches_reference_library_definitions():
    acts = get_transformed_activations(list(activation_names()), method="untransformed")
    x = X
    expected = {
        "tanh": torch.tanh(x), "sigmoid": 1 / (1 + torch.exp(-x)), "erf": torch.erf(x),
        "relu": torch.clamp(x, min=0), "softplus": torch.log1p(torch.exp(x)),
        "selu": 1.0507009873554805 * torch.where(x > 0, x, 1.6732632423543772 * (torch.exp(x) - 1)),
        "elu": torch.where(x > 0, x, torch.exp(x) - 1), "swish": x / (1 + torch.exp(-x)),
        "silu": x / (1 + torch.exp(-x)), "bentid": (torch.sqrt(x**2 + 1) - 1) / 2 + x,
        "atan": torch.atan(x), "asinh": torch.asinh(x), "square": x**2,
        "softsign": x / (1 + torch.abs(x)), "leaky_relu": torch.where(x > 0, x, 0.01 * x),
        "gelu": 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        "gelu_exact": x * (torch.erf(x / math.sqrt(2)) + 1) / 2,
    }
    assert set(acts) == set(expected)
    for name, fn in acts.items():
        torch.testing.assert_close(fn(x), expected[name], rtol=1e-12, atol=1e-12, msg=name)


def test_dks_functions_apply_the_solved_parameters():
    net = chain(20)
    with pytest.warns(UserWarning, match="ReLU"):
        acts = get_transformed_activations(["tanh", "relu", "leaky_relu"], "DKS", subnet_max_func=net)
    for name, fn in acts.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params = solve_dks(name, 20)
        # (Leaky) ReLUs go through the fused op with the input scale folded in (homogeneity).
        torch.testing.assert_close(fn(X), TransformedActivation(name, params)(X), rtol=1e-12, atol=1e-12)


def test_tat_leaky_relu_is_the_fused_trelu():
    acts = get_transformed_activations(["leaky_relu"], "TAT", tat_params={"c_val_0_target": 0.8},
                                       subnet_max_func=chain(49))
    fn = acts["leaky_relu"]
    params = solve_trelu(49, eta=0.8)
    assert fn.func is tat_ext.trelu
    torch.testing.assert_close(fn(X), params.scale * F.leaky_relu(X, params.slope), rtol=1e-14, atol=1e-14)


def test_tat_smooth_functions_hit_the_targets():
    acts = get_transformed_activations(["softplus", "gelu"], "TAT", tat_params={"c_curve_target": 0.5},
                                       max_curv_func=lambda k: 25 * k)
    for name, fn in acts.items():
        assert_invariants(name, fn.params, q_1=1.0, q_slope_1=1.0, c_slope_1=1.0, c_curv_1=0.02)
        torch.testing.assert_close(fn(X), TransformedActivation(name, solve_tat(name, 25, tau=0.5))(X))


def test_dks_q_slope_target_is_used():
    acts = get_transformed_activations(["tanh"], dks_params={"local_q_slope_target": 1.1},
                                       max_slope_func=lambda s: s**10)
    assert_invariants("tanh", acts["tanh"].params, q_1=1.0, q_slope_1=1.1, c_slope_1=1.5 ** 0.1)


def test_caller_dicts_are_not_modified():
    dks, tat = {"c_slope_1_target": 2.0}, {"c_curve_target": 0.4}
    get_transformed_activations(["tanh"], "DKS", dks_params=dks, tat_params=tat, max_slope_func=lambda s: s**4)
    get_transformed_activations(["tanh"], "TAT", dks_params=dks, tat_params=tat, max_curv_func=lambda k: 4 * k)
    assert dks == {"c_slope_1_target": 2.0} and tat == {"c_curve_target": 0.4}


@pytest.mark.parametrize("kwargs, match", [
    (dict(activation_names="tanh"), "list or tuple"),
    (dict(activation_names=["tanhh"]), "Unrecognized activation function name 'tanhh'"),
    (dict(activation_names=["tanh"], method="KFAC", subnet_max_func=chain(3)), "method"),
    (dict(activation_names=["tanh"], dks_params={"zeta": 1.5}, subnet_max_func=chain(3)), "'zeta'"),
    (dict(activation_names=["tanh"], method="TAT", tat_params={"eta": 0.9}, subnet_max_func=chain(3)), "'eta'"),
    (dict(activation_names=["tanh"], dks_params={"c_slope_1_target": 1.0}, subnet_max_func=chain(3)),
     "c_slope_1_target"),
    (dict(activation_names=["tanh"]), "subnet_max_func"),
    (dict(activation_names=["tanh"], method="TAT"), "subnet_max_func"),
    (dict(activation_names=["tanh"], method="TAT", tat_params={"c_curve_target": 0.0}, subnet_max_func=chain(3)),
     "c_curve_target"),
    (dict(activation_names=["relu"], method="TAT", subnet_max_func=chain(3)), "ReLU is not supported by TAT"),
    (dict(activation_names=["leaky_relu", "tanh"], method="TAT", subnet_max_func=chain(30)), "only activation"),
    (dict(activation_names=["leaky_relu"], method="TAT", tat_params={"c_val_0_target": 1.2},
          subnet_max_func=chain(30)), "c_val_0_target"),
    (dict(activation_names=["leaky_relu"], method="TAT", max_curv_func=lambda k: k), "subnet_max_func"),
    (dict(activation_names=["leaky_relu"], method="TAT", subnet_max_func=chain(5)), "largest reachable eta"),
])
def test_get_transformed_activations_misuse(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_transformed_activations(**kwargs)


def test_transformed_activation_is_a_plain_torch_function():
    params = ActivationParams(0.5, 0.2, -0.1, 3.0)
    fn = TransformedActivation("tanh", params)
    x = torch.randn(4, 5, requires_grad=True)
    fn(x).sum().backward()
    torch.testing.assert_close(fn(x), 3.0 * (torch.tanh(0.5 * x + 0.2) - 0.1))
    assert x.grad.shape == x.shape


# --- Limits: depth and near-linear targets (docs/math.md, "Limits") -----------------------------

def _longdouble_dks_excess(name, params):
    """C'(1) − 1 of φ̂ = γ·(φ(α·z + β) + δ) with δ = −E[φ(αz+β)] (DKS), by Gauss–Legendre in long
    double: rounding α·z + β costs ~1e-19 there instead of ~1e-16, which near the linear limit
    decides the digits of Var g."""
    ld = np.longdouble
    assert np.finfo(ld).eps < 1e-18, "needs extended precision"
    x, w = roots_legendre(600)
    z = x.astype(ld) * ld(12)
    weight = w.astype(ld) * ld(12) * np.exp(-z * z / 2) / np.sqrt(ld(2) * ld(np.pi))
    arg = ld(params.input_scale) * z + ld(params.input_shift)
    if name == "tanh":
        g, slope = np.tanh(arg), 1 - np.tanh(arg) ** 2
    else:  # softplus
        g, slope = np.log1p(np.exp(arg)), 1 / (1 + np.exp(-arg))
    g1 = ld(params.input_scale) * slope
    centred = g - (weight * g).sum()
    return float((weight * g1 * g1).sum() / (weight * centred * centred).sum() - 1)


@pytest.mark.parametrize("call, argument", [
    (lambda: solve_tat("softplus", 50, tau=1e-20), "tau"),
    (lambda: solve_dks("tanh", 50, zeta=1 + 1e-13), "zeta"),
    (lambda: solve_tat("tanh", max_curv_func=lambda k: 1e12 * k), "tau"),
    (lambda: solve_dks("tanh", max_slope_func=lambda s: math.exp(min(1e9 * math.log(s), 700.0))), "zeta"),
    (lambda: get_transformed_activations(["tanh"], "TAT", tat_params={"c_curve_target": 1e-12},
                                         max_curv_func=lambda k: 10 * k), "tat_params['c_curve_target']"),
    (lambda: get_transformed_activations(["gelu"], "DKS", dks_params={"c_slope_1_target": 1 + 1e-10},
                                         max_slope_func=lambda s: s ** 3), "dks_params['c_slope_1_target']"),
])
def test_near_linear_targets_raise_naming_the_argument(call, argument):
    # Formerly a bare ZeroDivisionError (or a C''(1) silently 6% off target).
    with pytest.raises(ValueError, match=re.escape(argument) + ".*below the solvable minimum|"
                       + re.escape(argument) + ".*closer to 1 than the solvable minimum") as info:
        call()
    assert info.value.argument == argument


def test_suggested_minimum_targets_are_solvable():
    with pytest.raises(ValueError, match=r"use tau >= 7e-09"):
        solve_tat("tanh", 7, tau=1e-12)
    params = solve_tat("tanh", 7, tau=7e-9)
    assert invariants_by_gl("tanh", params)["c_curv_1"] == pytest.approx(1e-9, rel=1e-6)
    with pytest.raises(ValueError, match=r"use zeta >= 1.0000000701"):
        solve_dks("tanh", 7, zeta=1 + 1e-12)
    params = solve_dks("tanh", 7, zeta=1.0000000701)
    assert _longdouble_dks_excess("tanh", params) == pytest.approx(math.expm1(math.log(1.0000000701) / 7),
                                                                   rel=1e-6)


@pytest.mark.parametrize("name", ["tanh", "softplus", "gelu", "atan"])
def test_tat_at_the_depth_bound(name):
    # Per-layer C''(1) = 3e-7: the old solver found no root for tanh here.
    params = solve_tat(name, transform.MAX_DEPTH)
    got = invariants_by_gl(name, params)
    assert got["c_curv_1"] == pytest.approx(0.3 / transform.MAX_DEPTH, rel=1e-6)
    assert_invariants(name, params, q_1=1.0, q_slope_1=1.0, c_slope_1=1.0)


@pytest.mark.parametrize("name", ["tanh", "softplus"])
@pytest.mark.parametrize("depth", [20, transform.MAX_DEPTH])
def test_dks_slope_excess_is_met_relatively(name, depth):
    # C'(1) − 1 = 1.5^(1/L) − 1 is matched relative to itself, checked in long double.
    params = solve_dks(name, depth)
    target = math.expm1(math.log(1.5) / depth)
    assert _longdouble_dks_excess(name, params) == pytest.approx(target, rel=1e-6)
    assert_invariants(name, params, q_1=1.0, q_slope_1=1.0, c_val_0=0.0)


def test_depth_bound():
    bound = transform.MAX_DEPTH
    for call in (lambda d: solve_trelu(d), lambda d: solve_tat("tanh", d), lambda d: solve_dks("tanh", d)):
        with pytest.raises(ValueError, match=f"depth={bound + 1} exceeds the supported maximum of {bound}"):
            call(bound + 1)
        with pytest.raises(ValueError, match="exceeds the supported maximum"):
            call(10**20)  # formerly: hung in an O(depth) loop per root-finder step
    with pytest.raises(ValueError, match=f"more than {bound} nonlinear layers"):
        solve_trelu(20, eta=1 - 1e-13)


# --- Argument types (numpy scalars accepted; bad values named) -----------------------------------

def test_numpy_scalars_are_accepted():
    assert solve_trelu(np.int64(49), eta=np.float32(0.75)) == solve_trelu(49, eta=float(np.float32(0.75)))
    assert solve_tat("tanh", np.int32(10), tau=np.float64(0.4)) == solve_tat("tanh", 10, tau=0.4)
    assert solve_dks("tanh", np.uint8(10), zeta=np.float16(1.5), q_slope=np.float32(1.0)) == solve_dks("tanh", 10)
    acts = get_transformed_activations(["tanh"], "TAT", tat_params={"c_curve_target": np.float32(0.5)},
                                       max_curv_func=lambda k: 25 * k)
    assert acts["tanh"].params == solve_tat("tanh", 25, tau=float(np.float32(0.5)))
    params = ActivationParams(np.float32(0.5), np.float64(0.25), np.int64(1), np.float16(2.0))
    assert all(type(v) is float for v in (params.input_scale, params.input_shift, params.output_shift,
                                           params.output_scale))


@pytest.mark.parametrize("call, error, match", [
    (lambda: get_transformed_activations(["tanh"], "TAT", tat_params={"c_curve_target": "0.2"},
                                         max_curv_func=lambda k: k), TypeError, r"tat_params\['c_curve_target'\]"),
    (lambda: get_transformed_activations(["leaky_relu"], "TAT", tat_params={"c_val_0_target": "0.9"},
                                         subnet_max_func=chain(20)), TypeError, r"tat_params\['c_val_0_target'\]"),
    (lambda: get_transformed_activations(["tanh"], "DKS", dks_params={"c_slope_1_target": None},
                                         max_slope_func=lambda s: s), TypeError, r"dks_params\['c_slope_1_target'\]"),
    (lambda: get_transformed_activations(["tanh"], "DKS", dks_params={"local_q_slope_target": "1"},
                                         max_slope_func=lambda s: s), TypeError, r"dks_params\['local_q_slope_target'\]"),
    (lambda: solve_tat("tanh", 10, tau=10**400), ValueError, "tau must be finite"),
    (lambda: solve_dks("tanh", 10, zeta=10**400), ValueError, "zeta must be finite"),
    (lambda: solve_trelu(10, eta=np.bool_(True)), TypeError, "eta"),
    (lambda: solve_trelu(np.float64(10)), TypeError, "depth"),
    (lambda: solve_tat(math.tanh, 50), TypeError, "activation 'tanh' must be an elementwise torch function"),
    (lambda: solve_dks(lambda x: x.detach().numpy(), 50), TypeError, "activation .* must map a tensor"),
    (lambda: solve_dks(lambda x: torch.zeros_like(x), 50), TypeError, "must be differentiable by torch autograd"),
    (lambda: ActivationParams(input_scale="1"), TypeError, "ActivationParams.input_scale"),
    (lambda: ActivationParams(output_scale=10**400), ValueError, "ActivationParams.output_scale"),
])
def test_bad_argument_values_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
