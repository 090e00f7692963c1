"""The fused CUDA kernels: the CPU suite's case grid on the GPU, checked against the CPU kernels
(bit for bit: same math, no FMA contraction on either side) and an fp64 reference; misaligned
views, multi-level bias reductions, zero size, grad_bias accuracy, determinism, torch.compile,
a > 2^31-element tensor, streams and device errors. Skipped without a GPU (tests/test_cuda_emu.py
runs the kernels' logic on the CPU)."""
from __future__ import annotations

import zlib

import pytest
import torch

import tat_ext
from tat_ext import _extension
from tat_ext.ops import SAVE_KIND
from tat_ext.tools.cases import (CUDA_LAYOUTS, DTYPES, LAYOUTS, Layout,
                                 assert_compiled_matches_eager,
                                 eager_chain, fp64_reference, grad_bias_atol, make_bias,
                                 make_input, max_abs_err)

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(not _extension.AVAILABLE, reason="extension not built"),
]

PARAMS = [
    dict(slope=0.0, scale=2 ** 0.5, in_shift=0.0, out_shift=0.0),
    dict(slope=0.4259071946, scale=1.3011191752, in_shift=0.0, out_shift=0.0),
    dict(slope=0.2, scale=1.7, in_shift=0.3, out_shift=-0.4),
    dict(slope=-0.3, scale=-0.9, in_shift=-0.2, out_shift=0.0),
]

def _saves(p):
    exact = p["slope"] >= 0 and p["scale"] > 0 and p["out_shift"] == 0
    return ["input", "output", "mask"] if exact else ["input", "mask"]

def _fwd_bwd(fn, x, bias, grad_out, **kw):
    x = x.detach().requires_grad_(True)  # a view: keeps x's strides AND its storage offset
    b = None if bias is None else bias.detach().clone().requires_grad_(True)
    y = fn(x, b, **kw)
    inputs = (x,) if b is None else (x, b)
    return y, torch.autograd.grad(y, inputs, grad_out)

def _grad_out(layout, x):
    """dL/dy in x's memory layout; for "offset" layouts one element into its storage too, so the
    backward's loads of grad_y are misaligned as well."""
    g = make_input(layout, x.dtype, device=x.device, seed=7)
    return g if layout.memory == "offset" else g.contiguous()

def test_extension_has_cuda_kernels():
    assert _extension.WITH_CUDA, "a GPU is present but tat_ext._C was built without CUDA kernels"

@pytest.mark.parametrize("layout", LAYOUTS + CUDA_LAYOUTS, ids=lambda l: l.id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias_kind", ["none", "same", "fp32"])
def test_matches_cpu_kernels_and_fp64(layout, dtype, bias_kind):
    seed = zlib.crc32(f"{layout.id}-{dtype}".encode()) % 1000
    x = make_input(layout, dtype, device="cuda", seed=seed)
    bias_dtype = {"none": None, "same": dtype, "fp32": torch.float32}[bias_kind]
    bias = make_bias(x, layout.channel_dim, bias_dtype)
    grad_out = _grad_out(layout, x)
    if layout.memory == "offset" and x.numel() > 0:
        assert x.data_ptr() % 16 != 0 and grad_out.data_ptr() % 16 != 0  # the scalar paths
    x_cpu, bias_cpu = x.cpu(), None if bias is None else bias.cpu()
    grad_cpu = grad_out.cpu()
    for i, p in enumerate(PARAMS):
        if i % 2 != seed % 2 and i != 1:
            continue  # every case sees TReLU and half of the other parameter sets
        for save in _saves(p):
            kw = dict(p, channel_dim=layout.channel_dim, save=save)
            what = f"({save}, {p})"
            y, grads = _fwd_bwd(tat_ext.trelu, x, bias, grad_out, **kw)
            y_cpu, grads_cpu = _fwd_bwd(tat_ext.trelu, x_cpu, bias_cpu, grad_cpu, **kw)
            assert y.stride() == torch.empty_like(x).stride(), "memory format not kept"
            assert torch.equal(y.cpu(), y_cpu), f"forward differs from the CPU kernel {what}"
            assert torch.equal(grads[0].cpu(), grads_cpu[0]), f"grad_x differs from CPU {what}"
            if bias is not None:
                assert grads[1].dtype == bias.dtype
                rtol = torch.finfo(bias.dtype).eps if bias.dtype.itemsize < 4 else 0.0
                atol = grad_bias_atol(grad_cpu, p["scale"], layout.channel_dim, dtype)
                torch.testing.assert_close(grads[1].cpu().double(), grads_cpu[1].double(),
                                           rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")
            if save == "mask" and y.stride() == y_cpu.stride():  # bit order = y's memory order
                args = (p["slope"], p["scale"], p["in_shift"], p["out_shift"], layout.channel_dim,
                        SAVE_KIND["mask"])
                _, mask = torch.ops.tat_ext.trelu_forward(x, bias, *args)
                _, mask_cpu = torch.ops.tat_ext.trelu_forward(x_cpu, bias_cpu, *args)
                assert torch.equal(mask.cpu(), mask_cpu), f"packed mask differs {what}"
        if dtype.itemsize == 2 and x.numel() > 0:
            kw = dict(p, channel_dim=layout.channel_dim)
            _assert_within_twice_pytorch(x, bias, grad_out, kw)

def _assert_within_twice_pytorch(x, bias, grad_out, p):
    """fp16/bf16: error vs an fp64 reference at most 2x that of PyTorch's eager chain (same GPU)."""
    y, (gx, *_) = _fwd_bwd(tat_ext.trelu, x, bias, grad_out, **p, save="mask")
    y_eager, (gx_eager, *_) = _fwd_bwd(eager_chain, x, bias, grad_out, **p)
    b64 = None if bias is None else bias.double()
    y64, (gx64, *_) = _fwd_bwd(fp64_reference, x.double(), b64, grad_out.double(), **p)
    tiny = torch.finfo(x.dtype).tiny
    assert max_abs_err(y, y64) <= 2 * max_abs_err(y_eager, y64) + tiny
    assert max_abs_err(gx, gx64) <= 2 * max_abs_err(gx_eager, gx64) + tiny

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", [CUDA_LAYOUTS[2], CUDA_LAYOUTS[6], CUDA_LAYOUTS[9]],
                         ids=lambda l: l.id)
def test_full_precision_close_to_fp64(layout, dtype):
    x = make_input(layout, dtype, device="cuda", seed=5)
    bias = make_bias(x, layout.channel_dim, dtype)
    grad_out = torch.randn(x.shape, dtype=dtype, device="cuda")
    p = dict(slope=0.2, scale=1.3, in_shift=0.1, out_shift=0.05, channel_dim=layout.channel_dim)
    y, (gx, gb) = _fwd_bwd(tat_ext.trelu, x, bias, grad_out, **p, save="input")
    y64, (gx64, gb64) = _fwd_bwd(fp64_reference, x.double(), bias.double(), grad_out.double(),
                                 **p)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(y.double(), y64, **tol)
    torch.testing.assert_close(gx.double(), gx64, **tol)
    atol = grad_bias_atol(grad_out, p["scale"], layout.channel_dim, dtype)
    torch.testing.assert_close(gb.double(), gb64, rtol=0, atol=atol)

# Second-stage levels of the bias-gradient reduction (trelu_backward.cu) for fp32: more than
# 128 partial sums per channel take two levels, more than 128^2 three.
# (tests/cuda_emu counts the levels these reach on the emulator.)
@pytest.mark.parametrize("layout", [
    Layout((32, 64, 17, 17), 1, "channels_last"),  # column grid, two levels
    Layout((65, 32, 1024), 1, "contiguous"),  # plane grid (two segments per plane), two levels
    Layout((8224, 32, 64), 1, "contiguous"),  # column grid, 257 row blocks x 64: three levels
], ids=lambda l: l.id)
def test_multi_level_bias_reduction_matches_cpu(layout):
    x = make_input(layout, torch.float32, device="cuda", seed=3)
    bias = make_bias(x, layout.channel_dim, torch.float32)
    grad_out = _grad_out(layout, x)
    for save in ("input", "output", "mask"):
        kw = dict(slope=0.2, scale=1.3, channel_dim=layout.channel_dim, save=save)
        y, (gx, gb) = _fwd_bwd(tat_ext.trelu, x, bias, grad_out, **kw)
        y_cpu, (gx_cpu, gb_cpu) = _fwd_bwd(tat_ext.trelu, x.cpu(), bias.cpu(), grad_out.cpu(),
                                           **kw)
        assert torch.equal(y.cpu(), y_cpu) and torch.equal(gx.cpu(), gx_cpu), save
        atol = grad_bias_atol(grad_out.cpu(), kw["scale"], layout.channel_dim, torch.float32)
        torch.testing.assert_close(gb.cpu().double(), gb_cpu.double(), rtol=0, atol=atol)

@pytest.mark.parametrize("save", ["input", "output", "mask"])
def test_zero_size_backward(save):
    x = torch.empty(0, 4, 3, 3, device="cuda", requires_grad=True)
    bias = torch.randn(4, device="cuda", requires_grad=True)
    out_shift = 0.1 if save == "mask" else 0.0
    y = tat_ext.trelu(x, bias, slope=0.1, scale=1.2, out_shift=out_shift, save=save)
    gx, gb = torch.autograd.grad(y, (x, bias), torch.empty_like(y))
    assert gx.shape == x.shape and gb.shape == (4,) and gb.device == bias.device
    assert torch.equal(gb, torch.zeros_like(gb))

def test_grad_bias_error_at_long_column_walks():
    """C = 3 channels_last: each column thread walks ~560 rows, through both blocked tiers of
    trelu_backward_columns. With a constant dL/dy the rounding errors add up instead of
    cancelling; grad_bias (98M terms per channel) stays within the kernel's rounding bound
    (trelu_backward.cu) and within torch.sum's error on the same terms."""
    shape = (1500, 3, 256, 256)
    free, _ = torch.cuda.mem_get_info()
    if free < 12 * 2 ** 30:
        pytest.skip(f"needs ~12 GiB of free GPU memory, {free / 2 ** 30:.1f} GiB free")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(shape, device="cuda", generator=g).contiguous(
        memory_format=torch.channels_last)
    bias = torch.randn(3, device="cuda", generator=g)
    grad_out = torch.ones_like(x)
    _, (gx, gb) = _fwd_bwd(tat_ext.trelu, x, bias, grad_out, slope=0.1, scale=1.2,
                           save="output")
    del x, grad_out
    # gx holds exactly the terms the kernel summed (fp32 dz); their exact sum and magnitude:
    dims = (0, 2, 3)
    exact = gx.double().sum(dims)
    unit = 2.0 ** -24 * gx.double().abs().sum(dims)
    err = (gb.double() - exact).abs() / unit
    torch_err = (gx.sum(dims).double() - exact).abs() / unit
    assert (err <= 128).all(), f"grad_bias error {err.tolist()} u*sum|dz| exceeds the bound"
    # No worse than torch.sum (within 2x, or 16 u*sum|dz| ~ 1e-6 relative: both tiny).
    assert (err <= torch.clamp(2 * torch_err, min=16)).all(), (
        f"grad_bias error {err.tolist()} vs torch.sum's {torch_err.tolist()} (u*sum|dz|)")

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_subnormals_nan_inf_like_cpu(dtype):
    """Subnormal inputs and outputs (no flush to zero), y > 0 exactly when z > 0 even where
    scale * z underflows (the positive floor), NaN/inf propagation: all as on the CPU."""
    info = torch.finfo(dtype)
    m = info.smallest_normal * info.eps  # smallest positive subnormal
    vals = [m, 3 * m, -m, 0.0, info.smallest_normal, 1.0, -1.0, float("nan"), float("inf"),
            -float("inf")]
    x = torch.tensor(vals, dtype=torch.float64).to(dtype).repeat(7, 1)
    for save in ("input", "output", "mask"):
        out_shift = 0.1 if save == "mask" else 0.0
        kw = dict(slope=0.1, scale=0.25, out_shift=out_shift, save=save)
        y, (gx,) = _fwd_bwd(tat_ext.trelu, x.cuda(), None, torch.ones(x.shape, dtype=dtype,
                                                                   device="cuda"), **kw)
        y_cpu, (gx_cpu,) = _fwd_bwd(tat_ext.trelu, x, None, torch.ones_like(x), **kw)
        assert torch.equal(y.cpu().nan_to_num(7.0), y_cpu.nan_to_num(7.0)), save
        assert torch.equal(gx.cpu(), gx_cpu), save
        if save == "output":
            finite = x.isfinite()
            assert torch.equal((y.cpu() > 0)[finite], (x > 0)[finite])

@pytest.mark.parametrize("save", ["input", "output", "mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,memory", [((16, 64, 33, 33), "contiguous"),
                                          ((32, 64, 17, 17), "channels_last"),
                                          ((64, 48, 7, 7), "contiguous")])
def test_grads_bitwise_reproducible(shape, memory, dtype, save):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(shape, device="cuda", generator=g).to(dtype)
    if memory == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(shape[1], device="cuda", generator=g)
    grad_out = torch.randn(shape, device="cuda", generator=g).to(dtype)
    runs = [_fwd_bwd(tat_ext.trelu, x, bias, grad_out, slope=0.1, scale=1.2, save=save)
            for _ in range(3)]
    for y, (gx, gb) in runs[1:]:
        assert torch.equal(y, runs[0][0])
        assert torch.equal(gx, runs[0][1][0])
        assert torch.equal(gb, runs[0][1][1]), "grad_bias is not bitwise reproducible"

@pytest.mark.parametrize("memory", ["contiguous", "channels_last"])
def test_misaligned_grad_output(memory):
    """grad_y at an odd storage offset takes the scalar (non-16-byte) path of the backward."""
    x = torch.randn(4, 32, 20, 20, device="cuda")
    if memory == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(32, device="cuda")
    flat = torch.randn(x.numel() + 1, device="cuda")
    odd = flat[1:].as_strided(x.shape, x.stride())  # x's layout, 4 bytes off 16-byte alignment
    assert odd.data_ptr() % 16 != 0
    aligned = odd.clone()
    for save in ("input", "output", "mask"):
        _, (gx, gb) = _fwd_bwd(tat_ext.trelu, x, bias, odd, slope=0.1, scale=1.2, save=save)
        _, (gx_ref, gb_ref) = _fwd_bwd(tat_ext.trelu, x, bias, aligned, slope=0.1, scale=1.2,
                                       save=save)
        assert torch.equal(gx, gx_ref)
        torch.testing.assert_close(gb, gb_ref)

def test_runs_on_the_current_stream():
    """Input written on a side stream behind slow work: the op must queue on that stream."""
    x = torch.randn(8, 16, 64, 64, device="cuda")
    bias = torch.randn(16, device="cuda")
    expected = tat_ext.trelu(x, bias, slope=0.1, scale=1.2)
    staged = torch.zeros_like(x)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        big = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
        for _ in range(5):
            big.fill_(1)
        staged.copy_(x)
        y = tat_ext.trelu(staged, bias, slope=0.1, scale=1.2)
    side.synchronize()
    assert torch.equal(y, expected)

@pytest.mark.parametrize("save,dtype,memory", [("output", torch.bfloat16, "channels_last"),
                                               ("mask", torch.float32, "contiguous")])
def test_compile_fullgraph_fwd_bwd(save, dtype, memory):
    torch._dynamo.reset()

    def block(x, w, b):
        h = torch.nn.functional.conv2d(x, w)
        out_shift = 0.1 if save == "mask" else 0.0
        return tat_ext.trelu(h, b, slope=0.15, scale=1.35, out_shift=out_shift, save=save)

    fmt = torch.channels_last if memory == "channels_last" else torch.contiguous_format
    x = torch.randn(4, 8, 20, 20, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    w = torch.randn(16, 8, 3, 3, device="cuda", dtype=dtype, requires_grad=True)
    b = torch.randn(16, device="cuda", requires_grad=True)
    g = torch.randn(4, 16, 18, 18, device="cuda", dtype=dtype)
    assert_compiled_matches_eager(block, (x, w, b), (w, b), g)

def test_bias_and_x_on_different_devices_raise_clearly():
    x = torch.randn(2, 3, 4, device="cuda")
    args = (0.1, 1.0, 0.0, 0.0, 1, SAVE_KIND["input"])
    with pytest.raises(ValueError, match="bias is on cpu but x is on cuda"):
        tat_ext.trelu(x, torch.randn(3), slope=0.1)
    with pytest.raises(ValueError, match="bias is on cpu but x is on cuda"):
        torch.ops.tat_ext.trelu_forward(x, torch.randn(3), *args)
    with pytest.raises(RuntimeError, match="x is on cpu but another argument is on a CUDA"):
        torch.ops.tat_ext.trelu_forward(x.cpu(), torch.randn(3, device="cuda"), *args)
    with pytest.raises(RuntimeError, match="saved tensor is on cpu but grad_y is on cuda"):
        torch.ops.tat_ext.trelu_backward(x, x.cpu(), None, SAVE_KIND["input"], 0.1, 1.0, 0.0, 0.0,
                                         1, None)
    with pytest.raises(ValueError, match="bias is on cpu"):
        torch.ops.tat_ext.trelu_backward(x, x, torch.randn(3), SAVE_KIND["input"], 0.1, 1.0, 0.0,
                                         0.0, 1, torch.float32)

def test_over_2_pow_31_elements_bf16():
    """64-bit indexing: 3 planes of 715,849,728 bf16 elements; checked around offset 2^31."""
    shape = (1, 3, 32768, 21846)
    numel = 3 * 32768 * 21846
    assert numel > 2 ** 31
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2 ** 30:
        pytest.skip(f"needs ~24 GiB of free GPU memory, {free / 2 ** 30:.1f} GiB free")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(True)
    bias = torch.tensor([0.3, -0.2, 0.1], device="cuda", requires_grad=True)
    p = dict(slope=0.1, scale=1.25, out_shift=0.05, save="mask")
    y = tat_ext.trelu(x, bias, **p)
    grad_out = torch.ones_like(y)
    gx, gb = torch.autograd.grad(y, (x, bias), grad_out)
    del grad_out
    # Flat offset 2^31 lies in plane 2, row 32765: compare the rows around it, and plane 0's
    # first rows, with the CPU kernel on the same slices.
    for c, rows in ((2, slice(32760, None)), (0, slice(0, 4)), (1, slice(16000, 16004))):
        xs = x.detach()[:, c:c + 1, rows].cpu().requires_grad_(True)
        bs = bias.detach()[c:c + 1].cpu().requires_grad_(True)
        ys = tat_ext.trelu(xs, bs, **p)
        (gxs,) = torch.autograd.grad(ys, xs, torch.ones_like(ys))
        assert torch.equal(y.detach()[:, c:c + 1, rows].cpu(), ys)
        assert torch.equal(gx[:, c:c + 1, rows].cpu(), gxs)
    # grad_bias[c] = scale * (#positive + slope * #non-positive) over the plane.
    for c in range(3):
        positive = (x.detach()[0, c].float() + bias.detach()[c] > 0).sum().item()
        plane = shape[2] * shape[3]
        want = p["scale"] * (positive + p["slope"] * (plane - positive))
        # fp32 sums of 7e8 terms: a wrong plane or offset would be off by far more.
        assert abs(gb[c].item() - want) <= 5e-4 * want, (c, gb[c].item(), want)
