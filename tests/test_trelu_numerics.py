"""Edge cases of trelu's numbers and arguments: infinities, constants at the edge of the compute
dtype, flush-to-zero, numpy scalars, and the accuracy of the bias gradient at large counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tat_ext
from tat_ext import _extension, reference

pytestmark = pytest.mark.skipif(not _extension.AVAILABLE, reason="extension not built")
IMPLS = [tat_ext.trelu, reference.trelu]
IDS = ["fused", "reference"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fn", IMPLS, ids=IDS)
def test_infinities_and_nan_propagate(fn, dtype):
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), 1.0, -2.0], dtype=dtype)
    y = fn(x, slope=0.1, scale=1.5)  # save="output": the path with the subnormal floor
    expected = torch.tensor([float("inf"), -float("inf"), float("nan"), 1.5, -0.3], dtype=dtype)
    torch.testing.assert_close(y, expected, equal_nan=True)


def test_float64_constants_beyond_float32_match_the_reference():
    x = torch.tensor([1e-30, -1e-30], dtype=torch.float64)
    kw = dict(slope=0.5, scale=1e39)
    torch.testing.assert_close(tat_ext.trelu(x, **kw), reference.trelu(x, **kw))
    torch.testing.assert_close(tat_ext.trelu(x, **kw), torch.tensor([1e9, -5e8], dtype=torch.float64))


@pytest.mark.parametrize("name,value", [("scale", 1e39), ("in_shift", 1e300), ("slope", -4e38),
                                        ("out_shift", 1e39)])
@pytest.mark.parametrize("fn", IMPLS, ids=IDS)
def test_constants_outside_float32_are_rejected_by_name(fn, name, value):
    """float32 arithmetic would turn them into inf silently (or fail without naming them)."""
    kw = dict(dict(slope=0.1, save="mask"), **{name: value})
    with pytest.raises(ValueError, match=f"{name}=.*float32"):
        fn(torch.randn(2, 3), torch.randn(3), **kw)


@pytest.mark.parametrize("fn", IMPLS, ids=IDS)
def test_huge_python_int_is_a_value_error_naming_the_argument(fn):
    with pytest.raises(ValueError, match="slope must be finite"):
        fn(torch.randn(3), slope=10**400)


@pytest.mark.parametrize("fn", IMPLS, ids=IDS)
def test_numpy_scalars_are_accepted(fn):
    x, b = torch.randn(2, 3, 4), torch.randn(3)
    y = fn(x, b, slope=np.float32(0.25), scale=np.float64(1.5), in_shift=np.int64(0),
           channel_dim=np.int64(1))
    torch.testing.assert_close(y, reference.trelu(x, b, slope=0.25, scale=1.5, channel_dim=1))


@pytest.fixture
def flush_denormal():
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    yield
    torch.set_flush_denormal(False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_flush_denormal_keeps_the_gradient_exact(flush_denormal, dtype):
    """A positive z whose scaled output is subnormal is flushed to y = 0; "auto" must then not
    read the sign back from y (it would take the negative slope)."""
    tiny = torch.finfo(dtype).tiny  # scale * tiny is subnormal
    x = torch.tensor([tiny, -1.0, 2.0], dtype=dtype, requires_grad=True)
    y = tat_ext.trelu(x, slope=0.1, scale=0.5)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, torch.tensor([0.5, 0.05, 0.5], dtype=dtype))
    with pytest.raises(ValueError, match="flushes subnormals"):
        tat_ext.trelu(x, slope=0.1, scale=0.5, save="output")


@pytest.mark.parametrize("shape,channel_dim", [((1_000_000, 16), 1), ((1, 16_000_000), 0),
                                               ((16_000_000, 1), 1)])
def test_bias_gradient_at_large_counts_is_as_accurate_as_torch_sum(shape, channel_dim):
    """Per-channel sums of millions of terms: a serial fp32 sum drifts (its error grows with the
    count); the kernel's blocked/pairwise sums stay within 2x of torch.sum's own error."""
    g = torch.Generator().manual_seed(0)
    grad_y = 1.0 + 0.5 * torch.randn(shape, generator=g)  # nonzero mean: drift shows
    x = torch.randn(shape, generator=g).requires_grad_()
    bias = torch.zeros(shape[channel_dim], requires_grad=True)
    y = tat_ext.trelu(x, bias, slope=1.0, scale=1.0, channel_dim=channel_dim)  # dz = grad_y
    (grad_bias,) = torch.autograd.grad(y, bias, grad_y)
    dims = [d for d in range(len(shape)) if d != channel_dim]
    exact = grad_y.double().sum(dims)
    ours = ((grad_bias.double() - exact).abs() / exact.abs()).max().item()
    theirs = ((grad_y.sum(dims).double() - exact).abs() / exact.abs()).max().item()
    assert ours <= 2 * theirs + 4 * torch.finfo(torch.float32).eps, (ours, theirs)
