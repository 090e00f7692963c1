"""tat_ext.models: every family x activation builds and trains a step; the slope is the solver's for the
model's own subnet_max_func; the kernel at initialization matches the prediction; bad arguments."""
import math

import pytest
import torch

from tat_ext import diagnostics
from tat_ext.models import activation_choices, resnet, vanilla_mlp, vanilla_resnet
from tat_ext.models.common import STANDARD_DEPTHS, resnet_v2_subnet_max_func, stage_plan
from tat_ext.nn import TATConv2d, TATLinear
from tat_ext.transform import solve_trelu

# Published TReLU values (eta = 0.9): a vanilla ResNet of depth D is a chain of D - 1 nonlinear
# layers. The reference library's own bisection stops at |C_f(0) - eta| < 1e-8, hence 2e-8.
pytestmark = pytest.mark.usefixtures("one_thread")


PUBLISHED = [(50, 0.4259071946, 1.3011191752), (101, 0.5704395324, 1.2284042441),
             (152, 0.6386479139, 1.1918827707)]

SMALL = dict(width=2, in_channels=1, small_input=True, input_size=8)


def _step(model, x, classes):
    """One forward/backward; returns the logits and checks every parameter got a finite gradient."""
    logits = model(x)
    assert logits.shape == (x.shape[0], classes)
    torch.nn.functional.cross_entropy(logits, torch.randint(0, classes, (x.shape[0],))).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    return logits


@pytest.mark.parametrize("depth, slope, scale", PUBLISHED)
def test_chain_slopes_match_published(depth, slope, scale):
    model = vanilla_resnet(depth, 10, **SMALL)
    assert abs(model.activation.slope - slope) < 2e-8
    assert abs(model.activation.scale - scale) < 2e-8
    # The chain of depth - 1 maps, both through the model's own function and as a plain chain.
    assert model.subnet_max_func(0.0, lambda c: c + 1.0) == depth - 1
    assert model.activation.slope == solve_trelu(subnet_max_func=model.subnet_max_func, eta=0.9).slope


def test_rescaled_resnet101_public_check_value():
    model = vanilla_resnet(101, 10, shortcut_weight=0.6, eta=0.75, **SMALL)
    assert model.activation.slope == pytest.approx(0.6291800290346146, abs=2e-9)
    assert model.activation.scale == pytest.approx(1.196996549778802, abs=2e-9)


@pytest.mark.parametrize("depth", STANDARD_DEPTHS)
def test_every_layer_uses_the_models_slope(depth):
    """The slope of every fused layer is solve_trelu's for the model's own subnet_max_func."""
    w = 0.5
    model = vanilla_resnet(depth, 10, shortcut_weight=w, **SMALL)
    expected = solve_trelu(subnet_max_func=model.subnet_max_func, eta=0.9)
    acts = [m for m in model.modules() if hasattr(m, "slope")]
    assert acts and all(m.slope == expected.slope and m.scale == expected.scale for m in acts)
    # Per block: the pre-activation TReLU plus all but the last conv of the residual branch.
    plan = stage_plan(depth, 2)
    per_block = 3 if plan.bottleneck else 2
    assert len(acts) == per_block * sum(plan.blocks) + 1  # + the final activation


def test_subnet_max_func_bookkeeping():
    """Count r_fn applications with r(c) = c + 1 (TAT's curvature bookkeeping)."""
    r = lambda c: c + 1.0  # noqa: E731
    for depth in STANDARD_DEPTHS:  # w = 0: a chain of depth - 1 nonlinear layers
        assert resnet_v2_subnet_max_func(stage_plan(depth, 2), 0.0)(0.0, r) == depth - 1
    # With shortcuts, the max over subnetworks includes the single residual branch: in a single
    # basic block without projection and w -> 1 the whole net accumulates ~1 map, the branch 2.
    one_block = stage_plan(None, 2, blocks=(1,), bottleneck=False)
    assert resnet_v2_subnet_max_func(one_block, 0.999)(0.0, r) == 2.0
    # Projection shortcuts carry one map each: ResNet-50 with w -> 1 is 4 projections + the final one.
    assert resnet_v2_subnet_max_func(stage_plan(50, 2), 0.999)(0.0, r) == pytest.approx(5.0, abs=0.1)
    # Hand-traced ResNet-18 (basic blocks; no projection in stage 0) with w^2 = 0.25.
    x, w2 = 0.0, 0.25
    for stage in range(4):
        for j in range(2):
            shortcut = x + 1.0 if (j == 0 and stage > 0) else x
            x = w2 * shortcut + (1 - w2) * (x + 2.0)
    assert resnet_v2_subnet_max_func(stage_plan(18, 2), 0.5)(0.0, r) == pytest.approx(x + 1.0)
    # ResNet-50 has a projection in stage 0 too (64 -> 256 channels).
    assert stage_plan(50, 2).projections == (True, True, True, True)
    assert stage_plan(18, 2).projections == (False, True, True, True)
    model = vanilla_resnet(18, 10, shortcut_weight=0.5, **SMALL)
    assert model.subnet_max_func(0.0, r) == pytest.approx(x + 1.0)


@pytest.mark.parametrize("activation", ["trelu", "relu", "tat-softplus", "dks-tanh", "dks-leaky_relu"])
@pytest.mark.parametrize("family", ["vanilla_resnet_chain", "vanilla_resnet_rescaled", "vanilla_mlp"])
def test_family_x_activation_forward_backward(family, activation):
    torch.manual_seed(0)
    if family == "vanilla_mlp":
        model = vanilla_mlp(14, 8, 10, in_features=64, activation=activation)
    else:
        w = 0.0 if family.endswith("chain") else 0.5
        model = vanilla_resnet(18, 10, shortcut_weight=w, activation=activation, **SMALL)
    _step(model, torch.randn(4, 1, 8, 8), 10)


@pytest.mark.parametrize("activation", activation_choices())
def test_every_activation_builds_or_is_refused_clearly(activation):
    """Every listed name either trains a step or (square: its targets are out of the solver's
    reach) is refused with the solver's message."""
    torch.manual_seed(0)
    try:
        model = vanilla_mlp(13, 8, 10, activation=activation)
    except ValueError as error:
        assert activation.endswith("square") and "no parameters found" in str(error)
        return
    _step(model, torch.randn(4, 64), 10)


def test_resnet_baseline_and_imagenet_stem():
    torch.manual_seed(0)
    _step(resnet(50, 7, **SMALL), torch.randn(4, 1, 8, 8), 7)
    _step(resnet(18, 5, width=2), torch.randn(2, 3, 32, 32), 5)
    _step(vanilla_resnet(18, 5, width=2), torch.randn(2, 3, 32, 32), 5)


def test_trelu_layers_are_fused_and_relu_is_plain():
    tat = vanilla_resnet(18, 10, **SMALL)
    assert sum(isinstance(m, TATConv2d) for m in tat.modules()) == 17  # stem + 16 block convs
    mlp = vanilla_mlp(13, 8, 10)
    assert sum(isinstance(m, TATLinear) for m in mlp.modules()) == 13
    relu = vanilla_resnet(18, 10, activation="relu", **SMALL)
    assert not any(isinstance(m, TATConv2d) for m in relu.modules())
    assert relu.activation.init_gain == math.sqrt(2.0)


def test_initialization_is_delta_orthogonal_with_zero_biases():
    model = vanilla_resnet(50, 10, **SMALL)
    conv = model.blocks[3][1]  # a 3x3 conv
    w = conv.weight.detach()
    assert torch.count_nonzero(w[:, :, [0, 2], :]) == 0 and torch.count_nonzero(w[:, :, 1, [0, 2]]) == 0
    centre = w[:, :, 1, 1]
    torch.testing.assert_close(centre @ centre.T, torch.eye(centre.shape[0]), atol=1e-5, rtol=0)
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules() if getattr(m, "bias", None) is not None)


def test_kernel_at_initialization_matches_prediction():
    """q stays 1 and the output cosine is C_f(c_in) through a ResNet-101-shaped vanilla TAT net.

    Images constant over space make every location carry the same vector, so the flattened cosine
    that measure_kernel reports is the per-location one the theory predicts. At width 64 single
    pairs scatter by a few hundredths (finite width); their mean error is what must vanish — and
    it resolves the slope: those of a 49- or 200-layer chain miss by about 0.04.
    """
    torch.manual_seed(1)
    model = vanilla_resnet(101, 10, width=64, in_channels=3, small_input=True, input_size=4)
    pairs = 16
    base = torch.randn(pairs, 3, 1, 1)
    x_a = base.expand(pairs, 3, 4, 4).contiguous()
    x_b = (0.6 * base + 0.8 * torch.randn(pairs, 3, 1, 1)).expand(pairs, 3, 4, 4).contiguous()
    last = list(model.blocks[-1].children())[-1]
    trace = diagnostics.measure_kernel(model, x_a, x_b, modules=["normalize", model.stem, last])
    c_in, c_out = trace.cosine[1], trace.cosine[-2]  # after per-location normalization; final activation

    def error(slope):
        return c_out - diagnostics.predicted_cosine(c_in, slope, 100)

    assert abs(error(model.activation.slope).mean()) < 0.02 and error(model.activation.slope).abs().mean() < 0.03
    for wrong_depth in (49, 200):
        assert abs(error(solve_trelu(wrong_depth).slope).mean()) > 0.03
    # q = 1 holds in the wide limit; at width 64 it drifts like a random walk in log q (std ~0.3
    # over 100 layers), so the bound is loose — but a wrong scale would move it by orders of
    # magnitude ((1 + slope^2)/2 per layer without TReLU's output scale).
    q = torch.cat([trace.q_a[1:-1], trace.q_b[1:-1]], dim=1).mean(dim=1)
    assert torch.all(q.log().abs() < 0.5), q


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="depth must be one of 18, 34, 50, 101, 152, 200"):
        vanilla_resnet(42, 10)
    with pytest.raises(ValueError, match="depth must be one of"):
        resnet(19, 10)
    with pytest.raises(ValueError, match="activation must be one of trelu, relu, tat-tanh"):
        vanilla_resnet(18, 10, activation="swishy")
    with pytest.raises(ValueError, match="tat-relu|activation must be one of"):
        vanilla_mlp(20, 8, 10, activation="tat-relu")
    # eta out of reach of a chain: the message names the minimum depth.
    with pytest.raises(ValueError, match="needs at least 21 nonlinear layers"):
        vanilla_resnet(18, 10, eta=0.95, **SMALL)
    with pytest.raises(ValueError, match="needs at least 13 nonlinear layers"):
        vanilla_mlp(10, 8, 10)
    # with shortcuts: the largest reachable eta.
    with pytest.raises(ValueError, match="largest reachable eta is 0.77"):
        vanilla_resnet(18, 10, shortcut_weight=0.9, eta=0.97, **SMALL)
    with pytest.raises(ValueError, match="shortcut_weight"):
        vanilla_resnet(50, 10, shortcut_weight=1.0)
    with pytest.raises(ValueError, match="eta must be"):
        vanilla_mlp(20, 8, 10, eta=1.5)
    with pytest.raises(ValueError, match="width"):
        vanilla_mlp(20, 0, 10)
    with pytest.raises(ValueError, match="input_size applies to small_input"):
        vanilla_resnet(18, 10, input_size=8)
    model = vanilla_resnet(18, 10, **SMALL)
    with pytest.raises(ValueError, match="input_size"):
        model(torch.randn(2, 1, 16, 16))


def test_small_input_strides_keep_an_8x8_map():
    from tat_ext.models.common import final_spatial_size, for_input

    plan = stage_plan(50, 4)
    assert for_input(plan, True, 8).strides == (1, 1, 1, 1)
    assert for_input(plan, True, 32).strides == (1, 2, 2, 1)
    assert final_spatial_size(for_input(plan, True, 32), 32, small_input=True) == 8
    assert for_input(plan, False, None).strides == (1, 2, 2, 2)
    assert final_spatial_size(for_input(plan, False, None), 224, small_input=False) == 7
    assert vanilla_resnet(18, 10, **SMALL)(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("family", ["vanilla_resnet", "vanilla_mlp"])
def test_unfused_build_is_the_same_network_from_plain_ops(family, monkeypatch):
    """fused=False: conv/linear with bias + scale * leaky_relu, same state_dict and function."""
    from tat_ext.models.layers import EagerTReLU

    # The fused activation alone: the fused conv's folded scale changes the rounding, which
    # tests/test_fused_conv.py holds to its own tolerance.
    monkeypatch.setenv("TAT_EXT_FUSED_CONV", "0")

    torch.manual_seed(0)
    if family == "vanilla_resnet":
        make = lambda fused: vanilla_resnet(18, 10, width=4, in_channels=1, small_input=True,  # noqa: E731
                                            input_size=8, fused=fused)
        x = torch.randn(3, 1, 8, 8)
    else:
        make = lambda fused: vanilla_mlp(16, 8, 10, fused=fused)  # noqa: E731
        x = torch.randn(3, 64)
    fused, plain = make(True), make(False)
    with torch.no_grad():  # nonzero biases, so where the bias is added matters
        for p in fused.parameters():
            p.add_(0.05 * torch.randn_like(p))
    plain.load_state_dict(fused.state_dict())
    assert not any(isinstance(m, (TATConv2d, TATLinear)) for m in plain.modules())
    assert any(isinstance(m, EagerTReLU) for m in plain.modules())
    assert plain.activation.slope == fused.activation.slope
    torch.testing.assert_close(plain(x), fused(x), rtol=1e-5, atol=1e-5)
    g_plain = torch.autograd.grad(plain(x).square().sum(), list(plain.parameters()))
    g_fused = torch.autograd.grad(fused(x).square().sum(), list(fused.parameters()))
    for a, b in zip(g_plain, g_fused):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
