"""The custom ops' registration: opcheck (schema, fake kernels, autograd) and torch.compile."""
from __future__ import annotations

import pytest
import torch

import tat_ext
from tat_ext import _extension, reference
from tat_ext.ops import SAVE_KIND
from tat_ext.tools.cases import assert_compiled_matches_eager

pytestmark = pytest.mark.skipif(not _extension.AVAILABLE, reason="extension not built")


def _forward_args(save: str, memory=torch.contiguous_format, dtype=torch.float32):
    x = torch.randn(3, 5, 4, 6, dtype=dtype).contiguous(memory_format=memory).requires_grad_(True)
    bias = torch.randn(5, requires_grad=True)
    return (x, bias, 0.2, 1.3, 0.1, 0.0, 1, SAVE_KIND[save])


@pytest.mark.parametrize("save", ["input", "output", "mask"])
@pytest.mark.parametrize("memory", [torch.contiguous_format, torch.channels_last], ids=str)
def test_opcheck_forward(save, memory):
    torch.library.opcheck(torch.ops.tat_ext.trelu_forward.default, _forward_args(save, memory))


def test_opcheck_forward_without_bias_and_bf16():
    x = torch.randn(4, 7, 3, dtype=torch.bfloat16, requires_grad=True)
    torch.library.opcheck(torch.ops.tat_ext.trelu_forward.default,
                          (x, None, 0.0, 1.4, 0.0, 0.0, 1, SAVE_KIND["mask"]))


@pytest.mark.parametrize("save", ["input", "output", "mask"])
def test_opcheck_backward(save):
    x, bias, slope, scale, in_shift, out_shift, cd, kind = _forward_args(save)
    with torch.no_grad():
        y, mask = torch.ops.tat_ext.trelu_forward(x, bias, slope, scale, in_shift, out_shift, cd, kind)
    saved = {"input": x.detach(), "output": y, "mask": mask}[save]
    torch.library.opcheck(
        torch.ops.tat_ext.trelu_backward.default,
        (torch.randn_like(y), saved, bias.detach() if save == "input" else None, kind, slope, scale,
         in_shift, out_shift, cd, torch.float32),
    )


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


def test_compile_traces_the_custom_op_not_the_reference():
    torch._dynamo.reset()
    from torch._dynamo.testing import CompileCounterWithBackend

    backend = CompileCounterWithBackend("eager")
    fn = torch.compile(lambda x: tat_ext.trelu(x, slope=0.1, scale=1.2), backend=backend,
                       fullgraph=True)
    x = torch.randn(4, 5)
    torch.testing.assert_close(fn(x), reference.trelu(x, slope=0.1, scale=1.2))
    assert backend.frame_count == 1
    targets = [str(n.target) for g in backend.graphs for n in g.graph.nodes]
    assert any("tat_ext.trelu_forward" in t for t in targets), targets
