"""TATConv2d's fused conv (tat_ext::conv_trelu, csrc/autograd/conv_trelu.cpp) against the
unfused composition (conv2d, then the fused activation) that it replaces; the case grid and the
tolerance (derived from the folded scale's rounding) are in tat_ext/tools/conv_cases.py."""
from __future__ import annotations

import itertools

import pytest
import torch

from tat_ext import _extension
from tat_ext.nn import FUSED_CONV_ENV, TATConv2d
from tat_ext.tools import conv_cases
from tat_ext.tools.conv_cases import FUSED_NODE, forward_bound

pytestmark = pytest.mark.skipif(not (_extension.AVAILABLE and torch.backends.mkldnn.is_available()),
                                reason="needs the extension and oneDNN")


def _pair(**kw):
    """(fused, unfused) TATConv2d with identical parameters."""
    fused = TATConv2d(8, 8, **kw, fused_conv=True)
    unfused = TATConv2d(8, 8, **kw, fused_conv=False)
    unfused.load_state_dict(fused.state_dict())
    return fused, unfused


_run = conv_cases.run


@pytest.mark.parametrize("dtype", conv_cases.DTYPES, ids=str)
@pytest.mark.parametrize("case", conv_cases.CASES, ids=lambda c: c.id)
def test_fused_matches_the_composition_on_the_grid(case, dtype):
    r = conv_cases.compare(case, dtype, seed=conv_cases.CASES.index(case))
    assert r["fused"] == r["expect_fused"]
    assert r["ratio"] <= 1, r
    assert r["grads_equal"] and r["layout_kept"], r
    if r["fused"]:
        assert r["max_err"] > 0  # the folded scale does change the rounding: the check can fail


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_random_inputs_within_the_stated_tolerance(layout):
    torch.manual_seed(7)
    fused, unfused = _pair(kernel_size=3, padding=1, slope=0.1, scale=1.3)
    x = torch.randn(4, 8, 12, 12)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    y_f, y_u = fused(x), unfused(x)
    assert ((y_f.double() - y_u.double()).abs() <= forward_bound(fused, x, y_u)).all()


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
    assert ((a.double() - ref.double()).abs() <= forward_bound(fused, x, ref)).all()


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
