"""TATConv2d's fused conv (tat_ext::conv_trelu, csrc/autograd/conv_trelu.cpp) against the
unfused composition (conv2d, then the fused activation) that it replaces.

Tolerance (forward, fp32): folding the scale into the weights rounds each scale*W and
scale*(b + in_shift) once (relative error u = 2^-24) and the conv's n = C_in/groups*kh*kw
products may be summed in another order, so with Higham's gamma_k = k*u/(1-k*u)
  |y_fused - y_unfused| <= 2*gamma_{n+2} * scale * (conv(|x|, |W|) + |b + in_shift|) + u*|y|.
With inputs on a dyadic grid the conv itself is exact, the sign of every pre-activation is the
same in both, and the gradients (same grad_z, same convolution_backward) are bitwise equal."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from tat_ext import _extension
from tat_ext.nn import FUSED_CONV_ENV, TATConv2d

pytestmark = pytest.mark.skipif(not (_extension.AVAILABLE and torch.backends.mkldnn.is_available()),
                                reason="needs the extension and oneDNN")
U = 2.0 ** -24
FUSED_NODE = "ConvTreluBackward"

# (groups, stride, dilation, padding, padding_mode, bias, kernel)
CONFIGS = [
    (1, 1, 1, 1, "zeros", True, 3),
    (2, 2, 1, 1, "zeros", True, 3),
    (1, 1, 2, 2, "reflect", True, 3),
    (4, 1, 1, 1, "circular", False, 3),
    (1, 2, 1, 0, "zeros", True, 1),
    (1, 1, 1, 2, "replicate", True, 5),
]


def _pair(**kw):
    """(fused, unfused) TATConv2d with identical parameters."""
    fused = TATConv2d(8, 8, **kw, fused_conv=True)
    unfused = TATConv2d(8, 8, **kw, fused_conv=False)
    unfused.load_state_dict(fused.state_dict())
    return fused, unfused


def _dyadic(shape, gen, step=1 / 8, span=8):
    """Values k*step, |k| <= span: sums of products stay exact in fp32."""
    return torch.randint(-span, span + 1, shape, generator=gen).float() * step


def _run(module, x, g):
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    params = [p for p in (module.weight, module.bias) if p is not None]
    grads = torch.autograd.grad(y, [x, *params], g)
    return y, grads


def _bound(module, x, y_ref):
    """The tolerance above, elementwise (float64)."""
    w = module.weight.detach().double().abs()
    xa = x.detach().double().abs()
    padding = module.padding
    if module.padding_mode != "zeros":
        xa = F.pad(xa, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    mass = F.conv2d(xa, w, None, module.stride, padding, module.dilation, module.groups)
    b = module.bias.detach().double() if module.bias is not None else torch.zeros(w.shape[0])
    mass = mass + (b + module.in_shift).abs().view(1, -1, 1, 1)
    n = w.shape[1] * w.shape[2] * w.shape[3] + 2
    gamma = n * U / (1 - n * U)
    return 2 * gamma * module.scale * mass + U * y_ref.detach().double().abs()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_fused_matches_the_composition_on_a_dyadic_grid(config, layout):
    groups, stride, dilation, padding, mode, bias, k = config
    gen = torch.Generator().manual_seed(CONFIGS.index(config))
    fused, unfused = _pair(kernel_size=k, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, bias=bias, padding_mode=mode, slope=0.25, scale=1.37,
                           in_shift=1 / 256)  # z = k/64 + 1/256 is never 0: its sign is clear
    with torch.no_grad():
        fused.weight.copy_(_dyadic(fused.weight.shape, gen))
        if bias:
            fused.bias.copy_(_dyadic(fused.bias.shape, gen, step=1 / 16))
        unfused.load_state_dict(fused.state_dict())
    x = _dyadic((3, 8, 11, 9), gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        shape = unfused(x).shape
    grad = _dyadic(shape, gen)
    y_u, g_u = _run(unfused, x, grad)
    y_f, g_f = _run(fused, x, grad)
    assert y_f.grad_fn.name() == FUSED_NODE and y_u.grad_fn.name() != FUSED_NODE
    assert y_f.stride() == y_u.stride() and y_f.shape == y_u.shape
    err = (y_f.double() - y_u.double()).abs()
    assert (err <= _bound(fused, x, y_u)).all(), err.max()
    assert err.max() > 0 or fused.scale == 1  # the folded scale does change the rounding
    for a, b in zip(g_f, g_u):
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_random_inputs_within_the_stated_tolerance(layout):
    torch.manual_seed(7)
    fused, unfused = _pair(kernel_size=3, padding=1, slope=0.1, scale=1.3)
    x = torch.randn(4, 8, 12, 12)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    y_f, y_u = fused(x), unfused(x)
    assert ((y_f.double() - y_u.double()).abs() <= _bound(fused, x, y_u)).all()


@pytest.mark.parametrize("case", ["float64", "bfloat16", "float16", "mask", "slope<0",
                                  "out_shift", "unbatched", "same"])
def test_unsupported_calls_take_exactly_the_unfused_path(case):
    torch.manual_seed(3)
    kw = dict(kernel_size=3, padding=1, slope=0.2)
    dtype = {"float64": torch.float64, "bfloat16": torch.bfloat16,
             "float16": torch.float16}.get(case, torch.float32)
    kw.update({"mask": dict(save="mask"), "slope<0": dict(slope=-0.2, scale=0.9),
               "out_shift": dict(out_shift=0.1), "same": dict(padding="same")}.get(case, {}))
    fused, unfused = _pair(**kw)
    fused, unfused = fused.to(dtype), unfused.to(dtype)
    x = torch.randn(2, 8, 6, 6, dtype=dtype)
    if case == "unbatched":
        x = x[0]
    y_f, g_f = _run(fused, x, torch.ones(fused(x).shape, dtype=dtype))
    y_u, g_u = _run(unfused, x, torch.ones(y_f.shape, dtype=dtype))
    if case == "unbatched":  # supported: the fused op on a batch of one
        assert y_f.grad_fn.name() != FUSED_NODE  # (the squeeze)
        torch.testing.assert_close(y_f, y_u)
        return
    assert y_f.grad_fn.name() != FUSED_NODE
    assert torch.equal(y_f, y_u)
    for a, b in zip(g_f, g_u):
        assert torch.equal(a, b)


def test_double_backward_matches_the_composition():
    torch.manual_seed(4)
    fused, unfused = _pair(kernel_size=3, padding=1, slope=0.2)
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    g = torch.randn(2, 8, 7, 7)
    out = []
    for m in (fused, unfused):
        gx, = torch.autograd.grad(m(x), x, g, create_graph=True)
        # grad_x depends on W through the conv's backward; on x and b only through the signs
        out.append(torch.autograd.grad(gx.square().sum(), [m.weight]))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_transforms_compile_checkpoint_and_functional_call():
    torch.manual_seed(5)
    fused, unfused = _pair(kernel_size=3, padding=1, slope=0.2)
    x = torch.randn(3, 8, 6, 6)
    ref = unfused(x)
    close = dict(rtol=1e-5, atol=1e-5)
    # vmap and forward mode: no batching rule or tangent for the oneDNN op: the composition
    per_example = torch.vmap(lambda t: fused(t.unsqueeze(0)).squeeze(0))(x)
    torch.testing.assert_close(per_example, ref, **close)
    tangent = torch.randn_like(x)
    _, jvp = torch.func.jvp(fused, (x,), (tangent,))
    _, jvp_ref = torch.func.jvp(unfused, (x,), (tangent,))
    torch.testing.assert_close(jvp, jvp_ref, **close)
    params = {k: v.detach() for k, v in fused.named_parameters()}
    torch.testing.assert_close(torch.func.functional_call(fused, params, (x,)), ref, **close)
    xg = x.clone().requires_grad_(True)
    y = torch.utils.checkpoint.checkpoint(fused, xg, use_reentrant=False)
    y.sum().backward()
    xr = x.clone().requires_grad_(True)
    unfused(xr).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, **close)
    for dynamic in (False, True):
        torch._dynamo.reset()
        compiled = torch.compile(fused, fullgraph=True, dynamic=dynamic)
        torch.testing.assert_close(compiled(x), ref, **close)


def test_switch_attribute_environment_and_state_dict(monkeypatch):
    monkeypatch.setenv(FUSED_CONV_ENV, "off")
    assert TATConv2d(2, 2, 1, slope=0.1).fused_conv is False
    monkeypatch.setenv(FUSED_CONV_ENV, "1")
    m = TATConv2d(2, 2, 1, slope=0.1)
    assert m.fused_conv is True and "fused_conv=True" in repr(m)
    m.fused_conv = False  # per module, e.g. by an optimizer that hooks the conv's output
    assert m(torch.randn(1, 2, 3, 3)).grad_fn.name() != FUSED_NODE
    monkeypatch.delenv(FUSED_CONV_ENV)
    assert TATConv2d(2, 2, 1, slope=0.1).fused_conv is True
    monkeypatch.setenv(FUSED_CONV_ENV, "maybe")
    with pytest.raises(ValueError, match=FUSED_CONV_ENV):
        TATConv2d(2, 2, 1, slope=0.1)
    with pytest.raises(TypeError, match="fused_conv"):
        TATConv2d(2, 2, 1, slope=0.1, fused_conv="yes")
    plain = torch.nn.Conv2d(2, 2, 1)
    assert set(m.state_dict()) == set(plain.state_dict())
    plain.load_state_dict(m.state_dict())


def test_autocast_keeps_the_unfused_dtypes():
    m = TATConv2d(3, 6, 3, padding=1, slope=0.25, fused_conv=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(2, 3, 8, 8))
    assert y.dtype == torch.bfloat16


def test_inference_mode_and_no_grad_use_the_fused_primitive():
    torch.manual_seed(6)
    fused, unfused = _pair(kernel_size=3, padding=1, slope=0.2)
    x = torch.randn(2, 8, 6, 6)
    with torch.inference_mode():
        a, ref = fused(x), unfused(x)
    with torch.no_grad():
        b = fused(x)
    assert torch.equal(a, b)
    assert ((a.double() - ref.double()).abs() <= _bound(fused, x, ref)).all()


def test_grid_of_layouts_strides_and_dtypes_never_errors():
    """Every combination either fuses or falls back; none raises or changes the shape."""
    for dtype, cl, stride, groups in itertools.product(
            (torch.float32, torch.float64), (False, True), (1, 2), (1, 2)):
        m = TATConv2d(4, 4, 3, stride=stride, groups=groups, padding=1, slope=0.3).to(dtype)
        x = torch.randn(2, 4, 5, 5, dtype=dtype)[:, :, :, ::1]
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        y = m(x)
        m.fused_conv = False
        assert y.shape == m(x).shape
