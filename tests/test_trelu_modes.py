"""Parity of tat_ext.trelu with its pure-PyTorch reference in every mode PyTorch offers for the
eager composition it replaces: create_graph (double) backward, second derivatives, forward-mode
AD, the torch.func transforms, vmap, torch.compile (static, dynamic, changing constants),
autocast, checkpointing. The same function runs through both implementations and must give the
same answer."""
from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torch.func as tf
import torch.nn.functional as F
from torch.autograd import forward_ad

import tat_ext
from tat_ext import _extension, reference
from tat_ext.nn import TATConv2d, TReLU
from tat_ext.transform import get_transformed_activations

pytestmark = pytest.mark.skipif(not _extension.AVAILABLE, reason="extension not built")

# Every save mode, with constants under which it is valid (output: slope >= 0, no out_shift).
SAVES = {
    "input": dict(slope=0.2, scale=1.3, in_shift=0.1, out_shift=0.05),
    "output": dict(slope=0.2, scale=1.3, in_shift=0.1, out_shift=0.0),
    "mask": dict(slope=-0.3, scale=0.9, in_shift=-0.1, out_shift=0.2),
    "auto": dict(slope=0.4, scale=1.2, in_shift=0.0, out_shift=0.0),
}
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
IMPLS = {"fused": tat_ext.trelu, "reference": reference.trelu}


def _act(impl, save, channel_dim=1):
    return functools.partial(IMPLS[impl], channel_dim=channel_dim, save=save, **SAVES[save])


def _inputs(layout="contiguous", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 4, 6, generator=g, dtype=dtype)
    x = x.contiguous(memory_format=LAYOUTS[layout])
    b = torch.randn(5, generator=g, dtype=dtype)
    return x, b


def _both(run):
    """run(impl) for the fused op and the reference."""
    return run("fused"), run("reference")


def _assert_same(fused, ref, rtol=1e-12, atol=1e-12):
    fused_leaves, fused_spec = torch.utils._pytree.tree_flatten(fused)
    ref_leaves, ref_spec = torch.utils._pytree.tree_flatten(ref)
    assert fused_spec == ref_spec, "the implementations give different numbers of results"
    for a, b in zip(fused_leaves, ref_leaves, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("save", SAVES)
def test_create_graph_double_backward(save, layout):
    """A gradient penalty through the gradient: second-order terms must not be dropped."""
    def run(impl):
        x, b = (t.requires_grad_() for t in _inputs(layout))
        y = _act(impl, save)(x, b)
        gx, gb = torch.autograd.grad((y * y.detach().cos()).sum() + y.pow(3).sum(), (x, b),
                                     create_graph=True)
        penalty = gx.pow(2).sum() + (gb * gb.detach()).sum() + (gx * x).sum()
        return torch.autograd.grad(penalty, (x, b))
    _assert_same(*_both(run))


def _eager(x, b, slope, scale, in_shift, out_shift):
    """The plain PyTorch composition the op replaces."""
    return scale * (F.leaky_relu(x + b.view(1, -1, 1, 1) + in_shift, slope) + out_shift)


@pytest.mark.parametrize("save", SAVES)
def test_second_derivative_is_zeros_like_eager(save):
    """d/dx of the gradient (with grad_y fixed) is zeros, as for eager PyTorch (leaky_relu_backward's
    derivative with respect to its input): not an error, not an unused input, in every mode."""
    def run(impl):
        x, b = (t.requires_grad_() for t in _inputs())
        f = functools.partial(_eager, **SAVES[save]) if impl == "eager" else _act(impl, save)
        gx, gb = torch.autograd.grad(f(x, b).sum(), (x, b), create_graph=True)
        return torch.autograd.grad((gx * x.detach().cos()).sum() + gb.sum(), (x, b))
    fused, ref = _both(run)
    eager = run("eager")
    assert torch.equal(eager[0], torch.zeros_like(eager[0]))  # the behaviour matched
    _assert_same(fused, eager, rtol=0, atol=0)
    _assert_same(ref, eager, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["relu", "leaky_relu"])
def test_transformed_relus_have_zero_second_derivative(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DKS with ReLU warns (the shifted ReLU is not smooth)
        fn = get_transformed_activations([name], "DKS", max_slope_func=lambda s: s**10)[name]
    x = _inputs()[0].requires_grad_()
    (d1,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    assert torch.equal(d2, torch.zeros_like(x))


@pytest.mark.parametrize("save", SAVES)
def test_gradgradcheck(save):
    x, b = (t.requires_grad_() for t in _inputs())
    assert torch.autograd.gradcheck(_act("fused", save), (x, b), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(_act("fused", save), (x, b), check_fwd_over_rev=True,
                                        check_rev_over_rev=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("save", SAVES)
def test_forward_mode(save, layout):
    x, b = _inputs(layout)
    tx, tb = _inputs(layout, seed=1)

    def run(impl):
        with forward_ad.dual_level():
            y = _act(impl, save)(forward_ad.make_dual(x, tx), forward_ad.make_dual(b, tb))
            tangent = forward_ad.unpack_dual(y).tangent
        return tangent, tf.jvp(_act(impl, save), (x, b), (tx, tb))
    fused, ref = _both(run)
    assert fused[0].abs().sum() > 0  # never silently zero
    _assert_same(fused, ref)


@pytest.mark.parametrize("save", SAVES)
def test_func_transforms(save):
    x, b = _inputs()

    def run(impl):
        f = _act(impl, save)
        loss = lambda x, b: f(x, b).sin().sum()  # noqa: E731
        return (tf.grad(loss, argnums=(0, 1))(x, b),
                tf.jacrev(f, argnums=(0, 1))(x, b),
                tf.jacfwd(f, argnums=(0, 1))(x, b),
                tf.hessian(lambda b: f(x, b).pow(3).sum())(b),
                tf.vjp(f, x, b)[1](torch.ones_like(x)))
    _assert_same(*_both(run))


@pytest.mark.parametrize("batched", ["x", "bias", "both"])
@pytest.mark.parametrize("save", SAVES)
def test_vmap(save, batched):
    xs, bs = _inputs()[0], torch.randn(3, 5, dtype=torch.float64)
    x, b = xs[0], bs[0]
    in_dims = {"x": (0, None), "bias": (None, 0), "both": (0, 0)}[batched]
    args = (xs if in_dims[0] == 0 else x, bs if in_dims[1] == 0 else b)

    def run(impl):
        f = _act(impl, save, channel_dim=0)  # per sample: [C, H, W]
        grads = tf.vmap(tf.grad(lambda x, b: f(x, b).pow(2).sum(), argnums=(0, 1)),
                        in_dims=in_dims)(*args)
        return tf.vmap(f, in_dims=in_dims)(*args), grads
    _assert_same(*_both(run))


def test_functional_call_of_a_module():
    torch.manual_seed(0)
    m = TATConv2d(3, 4, 3, padding=1, slope=0.25).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, impl):
        h = torch.nn.functional.conv2d(x, p["weight"], None, padding=1)
        return IMPLS[impl](h, p["bias"], slope=m.slope, scale=m.scale).square().sum()

    fused = tf.grad(lambda p: tf.functional_call(m, p, (x,)).square().sum())(params)
    ref = tf.grad(functools.partial(loss, impl="reference"))(params)
    _assert_same(fused, ref)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("save", SAVES)
def test_compile_fullgraph_with_changing_shapes_and_constants(save, dynamic):
    torch._dynamo.reset()
    consts = SAVES[save]

    def block(x, b, slope, scale):
        p = dict(consts, slope=slope, scale=scale)
        return tat_ext.trelu(x, b, channel_dim=1, save=save, **p).square().sum()

    compiled = torch.compile(block, fullgraph=True, dynamic=dynamic)
    for n, slope, scale in [(4, 0.2, 1.3), (6, 0.3, 1.1), (5, 0.25, 0.9)]:
        x, b = (t.float().requires_grad_() for t in _inputs())
        x = x[..., :n].detach().requires_grad_()
        out = compiled(x, b, slope, scale)
        grads = torch.autograd.grad(out, (x, b))
        p = dict(consts, slope=slope, scale=scale)
        out_ref = reference.trelu(x, b, channel_dim=1, **p).square().sum()
        _assert_same((out, grads), (out_ref, torch.autograd.grad(out_ref, (x, b))), rtol=1e-5,
                     atol=1e-5)


def test_compiled_modules_have_no_graph_break_with_dynamic_shapes_and_changing_constants():
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(TATConv2d(3, 4, 3, padding=1, slope=0.2),
                              TATConv2d(4, 4, 3, padding=1, slope=0.2, out_shift=0.1),
                              TReLU(0.3))
    explanation = torch._dynamo.explain(net)(torch.randn(2, 3, 6, 6))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1

    def unfused(x):  # the same network from the reference
        for m in net:
            if isinstance(m, TATConv2d):
                x = reference.trelu(m._conv_forward(x, m.weight, None), m.bias, slope=m.slope,
                                    scale=m.scale, out_shift=m.out_shift)
            else:
                x = reference.trelu(x, slope=m.slope, scale=m.scale)
        return x

    compiled = torch.compile(net, fullgraph=True, dynamic=True)
    for size, slope in [(6, 0.2), (9, 0.2), (7, 0.35)]:
        for m in net:
            m.slope = slope
        x = torch.randn(2, 3, size, size)
        torch.testing.assert_close(compiled(x), unfused(x))


@pytest.mark.parametrize("save", SAVES)
def test_autocast_bf16_with_fp32_bias(save):
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    x = torch.randn(2, 3, 8, 8)

    def run(impl):
        b = torch.linspace(-0.5, 0.5, 5, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = torch.nn.functional.conv2d(x, w, padding=1)  # bf16 under autocast
            y = _act(impl, save)(h, b)
        assert y.dtype == torch.bfloat16
        return y, torch.autograd.grad(y.float().square().sum(), (w, b))
    (y, grads), (y_ref, grads_ref) = _both(run)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    _assert_same(grads, grads_ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("save", SAVES)
def test_checkpointing(save, reentrant):
    def run(impl):
        x, b = (t.requires_grad_() for t in _inputs())
        f = lambda x, b: _act(impl, save)(x, b).exp()  # noqa: E731
        y = torch.utils.checkpoint.checkpoint(f, x, b, use_reentrant=reentrant)
        y.sum().backward()  # the reentrant variant works with .backward() only
        return x.grad, b.grad
    _assert_same(*_both(run))


def test_compiled_autograd_raises_instead_of_guessing():
    """torch._dynamo.compiled_autograd (experimental) needs hooks the op's graph nodes do not
    provide: a clear error, never a silently different gradient. (torch.compile of a whole
    training step traces the backward through AOTAutograd instead, and works.)"""
    x, b = (t.requires_grad_() for t in _inputs())
    loss = tat_ext.trelu(x, b, slope=0.1).sum()
    with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
        with pytest.raises(NotImplementedError, match="compiled_args not implemented: TreluBackward"):
            loss.backward()


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non-strict"])
def test_torch_export_keeps_the_operator(strict):
    torch.manual_seed(0)
    net = torch.nn.Sequential(TATConv2d(3, 4, 3, padding=1, slope=0.2),
                              TATConv2d(4, 4, 3, padding=1, slope=0.2, out_shift=0.1))
    x = torch.randn(2, 3, 6, 6)
    program = torch.export.export(net, (x,), strict=strict)
    targets = [str(n.target) for n in program.graph.nodes]
    # TATConv2d's fused conv (on by default) exports as the conv_trelu operator, which decides
    # per call between the oneDNN primitive and conv2d -> trelu (docs/fused_conv.md).
    ours = [t for t in targets if t in ("tat_ext.trelu.default", "tat_ext.conv_trelu.default")]
    assert len(ours) == 2, targets
    torch.testing.assert_close(program.module()(x), net(x))
