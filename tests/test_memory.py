"""What the fused op keeps for backward, counted with saved_tensors_hooks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tat_ext
from tat_ext import _extension

pytestmark = pytest.mark.skipif(not _extension.AVAILABLE, reason="extension not built")


def _saved_storages(fn, params):
    """{storage pointer: bytes} of every tensor autograd saves while running fn(), leaving out
    the parameters (saving them costs no memory: they are alive anyway)."""
    saved = {}
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs:
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("memory", [torch.contiguous_format, torch.channels_last], ids=str)
def test_output_mode_adds_no_saved_tensor_in_conv_chain(memory):
    x = torch.randn(4, 8, 16, 16).contiguous(memory_format=memory)
    w1 = torch.randn(16, 8, 3, 3, requires_grad=True)
    w2 = torch.randn(16, 16, 3, 3, requires_grad=True)
    b1 = torch.randn(16, requires_grad=True)

    def chain(save, act=True):
        def run():
            h = F.conv2d(x, w1, padding=1)
            y = tat_ext.trelu(h, b1, slope=0.2, scale=1.3, save=save) if act else h
            F.conv2d(y, w2, padding=1)
        return run

    params = (w1, w2, b1)
    without_activation = _saved_storages(chain(None, act=False), params)
    output_mode = _saved_storages(chain("output"), params)
    input_mode = _saved_storages(chain("input"), params)
    mask_mode = _saved_storages(chain("mask"), params)
    h_bytes = 4 * 16 * 16 * 16 * 4
    # The activation's output replaces the conv output as conv2's saved input: same total bytes.
    assert sum(output_mode.values()) == sum(without_activation.values())
    assert len(output_mode) == len(without_activation)
    # "input" keeps the pre-activation as well; "mask" keeps 1 bit per element.
    assert sum(input_mode.values()) == sum(without_activation.values()) + h_bytes
    assert sum(mask_mode.values()) == sum(without_activation.values()) + 4 * 16 * 16 * 16 // 8
