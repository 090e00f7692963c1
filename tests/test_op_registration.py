"""The custom ops' registration: opcheck (schema, fake kernels, autograd) and torch.compile."""
from __future__ import annotations

import pytest
import torch

import tat_ext
from tat_ext import _extension, reference
from tat_ext.ops import SAVE_KIND
from tat_ext.tools.cases import assert_compiled_matches_eager

pytestmark = pytest.mark.skipif(not _extension.AVAILABLE, reason="extension not built")


def _trelu_args(save: str, memory=torch.contiguous_format, dtype=torch.float32, bias=True):
    x = torch.randn(3, 5, 4, 6, dtype=dtype).contiguous(memory_format=memory).requires_grad_(True)
    b = torch.randn(5, requires_grad=True) if bias else None
    out_shift = 0.1 if save in ("mask", "input") else 0.0
    return (x, b, 0.2, 1.3, 0.1, out_shift, 1, save)


@pytest.mark.parametrize("save", ["auto", "input", "output", "mask"])
@pytest.mark.parametrize("memory", [torch.contiguous_format, torch.channels_last], ids=str)
def test_opcheck_trelu(save, memory):
    torch.library.opcheck(torch.ops.tat_ext.trelu.default, _trelu_args(save, memory))


def test_opcheck_trelu_without_bias_and_bf16():
    torch.library.opcheck(torch.ops.tat_ext.trelu.default,
                          _trelu_args("mask", dtype=torch.bfloat16, bias=False))


@pytest.mark.parametrize("save", ["input", "output", "mask"])
def test_opcheck_forward_kernel(save):
    """The internal forward (below autograd): schema and fake kernel, mask sizes included."""
    x, bias, slope, scale, in_shift, out_shift, cd, _ = _trelu_args(save)
    torch.library.opcheck(torch.ops.tat_ext.trelu_forward.default,
                          (x.detach(), bias.detach(), slope, scale, in_shift, out_shift, cd,
                           SAVE_KIND[save]))


@pytest.mark.parametrize("save", ["input", "output", "mask"])
def test_opcheck_backward_is_differentiable(save):
    """trelu_backward is itself an op with autograd (double backward, forward mode)."""
    x, bias, slope, scale, in_shift, out_shift, cd, _ = _trelu_args(save)
    kind = SAVE_KIND[save]
    with torch.no_grad():
        y, mask = torch.ops.tat_ext.trelu_forward(x, bias, slope, scale, in_shift, out_shift, cd,
                                                  kind)
    saved = {"input": x.detach(), "output": y, "mask": mask}[save]
    grad_y = torch.randn_like(y).requires_grad_(True)
    torch.library.opcheck(
        torch.ops.tat_ext.trelu_backward.default,
        (grad_y, saved, bias.detach() if save == "input" else None, kind, slope, scale,
         in_shift, out_shift, cd, torch.float32),
    )


def test_internal_forward_refuses_autograd():
    """Only trelu knows how to differentiate the raw mask: a clear error, never a silent zero."""
    x = torch.randn(2, 3, requires_grad=True)
    y, _ = torch.ops.tat_ext.trelu_forward(x, None, 0.1, 1.0, 0.0, 0.0, 1, 0)
    with pytest.raises(RuntimeError, match="not implemented"):
        y.sum().backward()


@pytest.mark.parametrize("save", ["input", "output", "mask"])
def test_compile_fullgraph_matches_eager(save):
    torch._dynamo.reset()

    def block(x, w, b):
        h = torch.nn.functional.conv2d(x, w)
        return tat_ext.trelu(h, b, slope=0.15, scale=1.35, out_shift=0.0 if save != "mask" else 0.1,
                             save=save).sum(dim=(2, 3))

    x = torch.randn(2, 3, 9, 9).contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 3, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    assert_compiled_matches_eager(block, (x, w, b), (w, b), torch.randn(2, 6))


def test_compile_traces_the_fused_kernels_not_the_reference():
    """Dynamo's graph holds tat_ext::trelu; the joint graph AOTAutograd derives from it holds the
    fused forward and backward kernels."""
    torch._dynamo.reset()
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._dynamo.testing import CompileCounterWithBackend

    seen = []

    def keep(gm, _):
        seen.extend(str(n.target) for n in gm.graph.nodes)
        return make_boxed_func(gm.forward)

    counter = CompileCounterWithBackend(aot_autograd(fw_compiler=keep, bw_compiler=keep))
    fn = torch.compile(lambda x, b: tat_ext.trelu(x, b, slope=0.1, scale=1.2), backend=counter,
                       fullgraph=True)
    x = torch.randn(4, 5, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    y = fn(x, b)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(y, reference.trelu(x, b, slope=0.1, scale=1.2))
    assert counter.frame_count == 1
    dynamo_targets = [str(n.target) for g in counter.graphs for n in g.graph.nodes]
    assert any("tat_ext.trelu.default" in t for t in dynamo_targets), dynamo_targets
    assert any("tat_ext.trelu_forward" in t for t in seen), seen
    assert any("tat_ext.trelu_backward" in t for t in seen), seen
