"""The fused CPU kernels against the pure-PyTorch reference (and an fp64 reference)."""
from __future__ import annotations

import zlib

import pytest
import torch

import tat_ext
from tat_ext import _extension, reference
from tat_ext.tools.cases import (DTYPES, LAYOUTS, PARAMS, eager_chain, fp64_reference,
                                 forward_backward, grad_bias_atol, grad_bias_rtol, grad_x_rtol,
                                 make_bias, make_input, max_abs_err, valid_saves)

pytestmark = pytest.mark.skipif(not _extension.AVAILABLE, reason="extension not built")


def _seed(*key) -> int:
    """The same seed in every process for the same case (hash() of a str is salted per process)."""
    return zlib.crc32("-".join(map(str, key)).encode()) % 1000


@pytest.fixture(autouse=True)
def _seeded_global_generator(request):
    """Tests that draw from torch's global generator see the same values whatever ran before."""
    torch.manual_seed(_seed(request.node.name))


def _grad_out(x: torch.Tensor, seed: int) -> torch.Tensor:
    """dL/dy from its own seeded generator (not the global one), so a failure reproduces."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(x.shape, dtype=torch.float64, generator=g).to(x.dtype)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: l.id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias_kind", ["none", "same", "fp32"])
def test_matches_reference(layout, dtype, bias_kind):
    seed = _seed(layout.id, dtype)
    x = make_input(layout, dtype, seed=seed)
    bias_dtype = {"none": None, "same": dtype, "fp32": torch.float32}[bias_kind]
    bias = make_bias(x, layout.channel_dim, bias_dtype)
    grad_out = _grad_out(x, seed + 1)
    for i, p in enumerate(PARAMS):
        if (i + len(layout.id)) % 2 and p is not PARAMS[0]:
            continue  # every layout sees TReLU and half of the other parameter sets
        for save in valid_saves(p):
            kw = dict(p, channel_dim=layout.channel_dim, save=save)
            y, grads = forward_backward(tat_ext.trelu, x, bias, grad_out, **kw)
            y_ref, grads_ref = forward_backward(reference.trelu, x, bias, grad_out, **kw)
            # Same rounding steps and no FMA contraction: the forward is bit-identical.
            assert torch.equal(y, y_ref), f"forward differs ({save}, {p})"
            assert y.stride() == torch.empty_like(x).stride(), "memory format not kept"
            torch.testing.assert_close(grads[0], grads_ref[0], rtol=grad_x_rtol(dtype), atol=1e-30,
                                       msg=lambda m: f"grad_x ({save}, {p}): {m}")
            if bias is not None:
                atol = grad_bias_atol(grad_out, p["scale"], layout.channel_dim, dtype)
                assert grads[1].dtype == bias.dtype
                torch.testing.assert_close(grads[1].double(), grads_ref[1].double(),
                                           rtol=grad_bias_rtol(bias.dtype), atol=atol)

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", [LAYOUTS[7], LAYOUTS[8], LAYOUTS[3]], ids=lambda l: l.id)
def test_low_precision_error_within_twice_pytorch(layout, dtype):
    """fp16/bf16: error vs an fp64 reference is at most 2x that of PyTorch's own eager chain."""
    x = make_input(layout, dtype, seed=3)
    bias = make_bias(x, layout.channel_dim, dtype)
    grad_out = _grad_out(x, 4)
    p = dict(slope=0.2, scale=1.3, in_shift=0.1, out_shift=0.05, channel_dim=layout.channel_dim)
    y, (gx, _) = forward_backward(tat_ext.trelu, x, bias, grad_out, **p, save="mask")
    y_eager, (gx_eager, _) = forward_backward(eager_chain, x, bias, grad_out, **p)
    y64, (gx64, _) = forward_backward(fp64_reference, x, bias, grad_out.double(), **p)
    tiny = torch.finfo(dtype).tiny
    assert max_abs_err(y, y64) <= 2 * max_abs_err(y_eager, y64) + tiny
    assert max_abs_err(gx, gx64) <= 2 * max_abs_err(gx_eager, gx64) + tiny

@pytest.mark.parametrize("save", ["input", "output", "mask"])
@pytest.mark.parametrize("memory", ["contiguous", "channels_last"])
def test_gradcheck_float64(save, memory):
    g = torch.Generator().manual_seed(7)
    shape = (2, 3, 4, 5)
    bias = torch.randn(3, dtype=torch.float64, generator=g)
    # Keep the pre-activation at least 0.1 away from the kink so finite differences are valid.
    z = torch.rand(shape, dtype=torch.float64, generator=g) * 2 + 0.1
    z = z * torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
    x = (z - bias.view(1, 3, 1, 1) - 0.05)
    if memory == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    bias.requires_grad_(True)

    def fn(x, b):
        return tat_ext.trelu(x, b, slope=0.3, scale=1.4, in_shift=0.05, save=save)

    assert torch.autograd.gradcheck(fn, (x, bias))

@pytest.mark.parametrize("fn", [tat_ext.trelu, reference.trelu], ids=["fused", "reference"])
def test_takes_the_solver_result_like_the_modules(fn):
    """slope=solve_trelu(...) brings its scale; scale=None is 1.0 for a number; a scale given
    explicitly wins."""
    from tat_ext.transform import solve_trelu

    params = solve_trelu(49)
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    assert torch.equal(fn(x, slope=params), fn(x, slope=params.slope, scale=params.scale))
    assert torch.equal(fn(x, slope=params, scale=2.0), fn(x, slope=params.slope, scale=2.0))
    assert torch.equal(fn(x, slope=0.3), fn(x, slope=0.3, scale=1.0))
    assert not torch.equal(fn(x, slope=params), fn(x, slope=params.slope))  # the scale mattered

def test_gradient_at_zero_is_slope():
    x = torch.tensor([[-1.0, 0.0, 2.0]], requires_grad=True)
    y = tat_ext.trelu(x, slope=0.25, scale=2.0, save="input")
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx.tolist() == [[0.5, 0.5, 2.0]]

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_mode_exact_when_scale_times_z_underflows(dtype):
    """0.25 * (smallest subnormal) rounds to 0, yet y stays positive, so save='output' is exact."""
    info = torch.finfo(dtype)
    m = info.smallest_normal * info.eps  # smallest positive subnormal
    assert (torch.tensor(m, dtype=torch.float64) * 0.25).to(dtype) == 0  # the case is reachable
    x = torch.tensor([m, 3 * m, -m, 0.0, 1.0, -1.0], dtype=dtype).repeat(5, 1)
    grads = {}
    for save in ("input", "output", "mask"):
        xi = x.clone().requires_grad_(True)
        y = tat_ext.trelu(xi, slope=0.1, scale=0.25, save=save)
        assert torch.equal(y > 0, x > 0)
        assert torch.equal(y, reference.trelu(x, slope=0.1, scale=0.25))
        grads[save] = torch.autograd.grad(y, xi, torch.ones_like(y))[0]
    assert torch.equal(grads["output"], grads["input"])
    assert torch.equal(grads["mask"], grads["input"])

def test_nan_and_inf_propagate_like_pytorch():
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 1.0, -1.0]])
    for save in ("input", "output", "mask"):
        y = tat_ext.trelu(x, slope=0.1, scale=1.5, save=save)
        torch.testing.assert_close(y, 1.5 * torch.nn.functional.leaky_relu(x, 0.1), equal_nan=True)

@pytest.mark.parametrize("save", ["input", "output", "mask"])
def test_grad_bias_deterministic_across_runs_and_threads(save):
    x = torch.randn(16, 64, 33, 33, dtype=torch.float32)
    bias = torch.randn(64, requires_grad=True)
    g = torch.randn_like(x)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads), 1, max(2, threads)):
            torch.set_num_threads(n)
            xi = x.clone().requires_grad_(True)
            y = tat_ext.trelu(xi, bias, slope=0.1, scale=1.2, save=save)
            results.append(torch.autograd.grad(y, (xi, bias), g))
    finally:
        torch.set_num_threads(threads)
    for gx, gb in results[1:]:
        assert torch.equal(gx, results[0][0]) and torch.equal(gb, results[0][1])

def test_zero_size_gives_empty_output_and_zero_bias_grad():
    x = torch.randn(0, 4, 3, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    y = tat_ext.trelu(x, bias, slope=0.1)
    assert y.shape == x.shape
    (gb,) = torch.autograd.grad(y.sum(), bias)
    assert torch.equal(gb, torch.zeros(4))

@pytest.mark.parametrize("shape", [(2, 0, 3), (0, 4)])
def test_zero_channels_or_rows_give_bias_grad_of_the_right_shape(shape):
    x = torch.randn(shape, requires_grad=True)
    bias = torch.randn(shape[1], requires_grad=True)
    for save in ("input", "output", "mask"):
        gx, gb = torch.autograd.grad(tat_ext.trelu(x, bias, slope=0.1, save=save).sum(), (x, bias))
        assert gx.shape == x.shape and torch.equal(gb, torch.zeros(shape[1]))

def test_non_dense_grad_output_is_handled():
    """y.sum().backward() hands the op an expanded (stride-0) gradient."""
    x = torch.randn(3, 5, 6, 7).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    bias = torch.randn(5, requires_grad=True)
    for save in ("input", "output", "mask"):
        gx, gb = torch.autograd.grad(tat_ext.trelu(x, bias, slope=0.2, save=save).sum(), (x, bias))
        gx_ref, gb_ref = torch.autograd.grad(reference.trelu(x, bias, slope=0.2).sum(), (x, bias))
        torch.testing.assert_close(gx, gx_ref)
        torch.testing.assert_close(gb, gb_ref)

def test_bias_only_requires_grad():
    x = torch.randn(4, 6, 5)
    bias = torch.randn(6, requires_grad=True)
    (gb,) = torch.autograd.grad(tat_ext.trelu(x, bias, slope=0.2).sum(), bias)
    (gb_ref,) = torch.autograd.grad(reference.trelu(x, bias, slope=0.2).sum(), bias)
    torch.testing.assert_close(gb, gb_ref)

def test_auto_save_mode_choice():
    x = torch.randn(2, 3, 4, requires_grad=True)
    counts = {}
    for out_shift in (0.0, 0.5):
        seen = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t) or t, lambda t: t):
            tat_ext.trelu(x, slope=0.1, out_shift=out_shift)
        counts[out_shift] = [t.dtype for t in seen]
    assert counts[0.0] == [torch.float32]  # y ("output")
    assert counts[0.5] == [torch.uint8]  # the packed mask

def test_fallback_to_reference_warns_once(monkeypatch):
    monkeypatch.setattr(tat_ext.ops, "_OP", None)  # as if tat_ext._C failed to load
    monkeypatch.setattr(_extension, "LOAD_ERROR", "simulated")
    monkeypatch.setattr(_extension, "_warned", set())
    x = torch.randn(2, 3, 4)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference"):
        y = tat_ext.trelu(x, slope=0.1)
    torch.testing.assert_close(y, reference.trelu(x, slope=0.1), rtol=0, atol=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tat_ext.trelu(x, slope=0.1)  # second call: no new warning

BAD_INPUTS = [
    (dict(x=torch.arange(6).view(2, 3)), TypeError, "x must be float"),
    (dict(x="not a tensor"), TypeError, "x must be a torch.Tensor"),
    (dict(x=torch.tensor(1.0)), ValueError, "at least one dimension"),
    (dict(bias=torch.randn(4)), ValueError, "bias must be 1-D with x.shape"),
    (dict(bias=torch.randn(3, 1)), ValueError, "bias must be 1-D"),
    (dict(bias=torch.randn(3, dtype=torch.float64)), TypeError, "bias dtype"),
    (dict(bias=torch.randn(3), channel_dim=4), ValueError, "channel_dim=4 is out of range"),
    (dict(bias=torch.randn(3), channel_dim=1.0), TypeError, "channel_dim must be an int"),
    (dict(slope=float("nan")), ValueError, "slope must be finite"),
    (dict(scale=float("inf")), ValueError, "scale must be finite"),
    (dict(in_shift=float("nan")), ValueError, "in_shift must be finite"),
    (dict(out_shift="0"), TypeError, "out_shift must be a real number"),
    (dict(slope=torch.tensor(0.1)), TypeError, "slope must be a Python float"),
    (dict(save="bits"), ValueError, "save must be one of"),
    (dict(save="output", out_shift=0.1), ValueError, "save='output'"),
    (dict(save="output", slope=-0.1), ValueError, "save='output'"),
    (dict(save="output", scale=-1.0), ValueError, "save='output'"),
]

@pytest.mark.parametrize("fn", [tat_ext.trelu, reference.trelu], ids=["fused", "reference"])
@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c[2])
def test_bad_input_raises_naming_the_argument(fn, case):
    overrides, exc, match = case
    kw = dict(x=torch.randn(2, 3, 4, dtype=torch.float32), bias=None, slope=0.1)
    kw.update(overrides)
    x, bias = kw.pop("x"), kw.pop("bias")
    with pytest.raises(exc, match=match):
        fn(x, bias, **kw)

def test_raw_op_rejects_bad_save_kind_and_mask_size():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="save_kind"):
        torch.ops.tat_ext.trelu_forward(x, None, 0.1, 1.0, 0.0, 0.0, 1, 7)
    with pytest.raises(ValueError, match="mask has"):
        torch.ops.tat_ext.trelu_backward(x, torch.zeros(1, dtype=torch.uint8), None, 2, 0.1, 1.0,
                                         0.0, 0.0, 1, None)
    with pytest.raises(ValueError, match="save='output' needs"):
        torch.ops.tat_ext.trelu_backward(x, x, None, 1, 0.1, 1.0, 0.0, 0.5, 1, None)
