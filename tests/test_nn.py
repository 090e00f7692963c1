"""tat_ext.nn modules: equivalence with nn.Conv2d/nn.Linear + the reference, state_dict, autocast."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tat_ext import _extension, reference
from tat_ext.nn import TATConv2d, TATLinear, TReLU, trelu_scale

# Without the compiled op the modules run the reference: comparing them with it would compare the
# reference with itself, and TorchScript cannot find the operator.
needs_extension = pytest.mark.skipif(
    not _extension.AVAILABLE,
    reason=f"the compiled extension tat_ext._C is not available ({_extension.LOAD_ERROR})")


def _scale(a: float) -> float:
    """TReLU's scale, written out here rather than taken from the package under test."""
    return math.sqrt(2.0 / (1.0 + a * a))


def test_trelu_scale_gives_unit_second_moment():
    # E[(s * LReLU(z))^2] = s^2 (1 + a^2) / 2 = 1 for z ~ N(0, 1).
    for a in (0.0, 0.3, 0.9):
        assert math.isclose(trelu_scale(a) ** 2 * (1 + a * a) / 2, 1.0, rel_tol=1e-15)


@needs_extension
@pytest.mark.parametrize("memory", [torch.contiguous_format, torch.channels_last], ids=str)
@pytest.mark.parametrize("batched", [True, False])
def test_tatconv2d_matches_conv_plus_reference(memory, batched):
    torch.manual_seed(0)
    m = TATConv2d(3, 8, 3, stride=2, padding=1, slope=0.3).to(memory_format=memory)
    plain = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    plain.load_state_dict(m.state_dict())  # same keys and shapes
    x = torch.randn(2, 3, 11, 9) if batched else torch.randn(3, 11, 9)
    if batched:
        x = x.contiguous(memory_format=memory)
    x.requires_grad_(True)
    y = m(x)
    h = nn.functional.conv2d(x, plain.weight, None, 2, 1)
    y_ref = reference.trelu(h, plain.bias, slope=0.3, scale=_scale(0.3),
                            channel_dim=1 if batched else 0)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, m.weight, m.bias), g)
    grads_ref = torch.autograd.grad(y_ref, (x, plain.weight, plain.bias), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_extension
def test_tatlinear_matches_linear_plus_reference_on_3d_input():
    torch.manual_seed(1)
    m = TATLinear(5, 7, slope=0.1, scale=1.2, out_shift=0.3)
    x = torch.randn(4, 6, 5)
    y = m(x)
    y_ref = reference.trelu(nn.functional.linear(x, m.weight), m.bias, slope=0.1, scale=1.2,
                            out_shift=0.3, channel_dim=-1)
    torch.testing.assert_close(y, y_ref)
    assert set(m.state_dict()) == set(nn.Linear(5, 7).state_dict())


@needs_extension
def test_modules_without_bias_and_repr():
    m = TATConv2d(2, 4, 1, bias=False, slope=0.2)
    assert m.bias is None and "slope=0.2" in repr(m)
    x = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(m(x), reference.trelu(nn.functional.conv2d(x, m.weight), slope=0.2,
                                                     scale=_scale(0.2)))
    assert TATLinear(3, 2, bias=False, slope=0.0)(torch.randn(2, 3)).shape == (2, 2)


@needs_extension
def test_trelu_module_for_depth_uses_the_solver():
    act = TReLU.for_depth(49)
    assert abs(act.slope - 0.4259071946) < 1e-9  # docs/math.md, "Published values": depth 50
    assert abs(act.scale - 1.3011191752) < 1e-9
    x = torch.randn(3, 4)
    torch.testing.assert_close(act(x), reference.trelu(x, slope=act.slope, scale=act.scale))


@needs_extension
def test_autocast_bf16_with_fp32_bias():
    torch.manual_seed(2)
    m = TATConv2d(3, 6, 3, padding=1, slope=0.25)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert m.bias.grad.dtype == torch.float32 and m.weight.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = nn.functional.conv2d(x, m.weight, None, 1, 1)
    torch.testing.assert_close(y, reference.trelu(h, m.bias, slope=0.25, scale=_scale(0.25)))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(slope=float("nan")), ValueError, "slope must be finite"),
    (dict(slope=0.1, save="output", out_shift=1.0), ValueError, "save='output'"),
    (dict(slope=0.1, save="nope"), ValueError, "save must be one of"),
])
def test_module_constructors_reject_bad_activation_args(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TATConv2d(2, 2, 3, **kwargs)
    with pytest.raises(exc, match=match):
        TATLinear(2, 2, **kwargs)


def test_trelu_takes_the_solver_result():
    from tat_ext.transform import solve_trelu

    params = solve_trelu(50)
    act = TReLU(params)
    assert (act.slope, act.scale) == (params.slope, params.scale)
    conv = TATConv2d(2, 2, 3, slope=params)
    assert (conv.slope, conv.scale) == (params.slope, params.scale)
    with pytest.raises(ValueError, match="scale"):
        TReLU(params, scale=1.0)
    with pytest.raises(TypeError, match="slope must be a real number"):
        TReLU("0.2")


def test_docstrings_explain_what_the_modules_need():
    assert "channel_dim" not in TReLU.__doc__  # it has no such argument
    for cls in (TATConv2d, TATLinear):
        assert "tat_init_" in cls.__doc__ and "slope" in cls.__doc__


@needs_extension
@pytest.mark.parametrize("make,shape", [
    (lambda: TReLU(0.3, out_shift=0.1), (2, 3, 4)),
    # TorchScript takes the unfused path; eager then must too for a bitwise comparison.
    (lambda: TATConv2d(3, 4, 3, padding=1, slope=0.2, fused_conv=False), (2, 3, 5, 5)),
    (lambda: TATLinear(3, 4, slope=0.2, save="mask"), (2, 3)),
], ids=["TReLU", "TATConv2d", "TATLinear"])
def test_torchscript_matches_eager(make, shape):
    torch.manual_seed(0)
    module = make()
    scripted = torch.jit.script(module)
    x = torch.randn(shape, requires_grad=True)
    y, y_scripted = module(x), scripted(x)
    torch.testing.assert_close(y_scripted, y, rtol=0, atol=0)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y_scripted, x, g)[0],
                               torch.autograd.grad(y, x, g)[0], rtol=0, atol=0)
