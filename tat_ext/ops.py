"""The fused transformed Leaky ReLU, :func:`trelu`, as a PyTorch operator.

The operators, their argument checks and their autograd (reverse, forward and higher order) live
in C++ (csrc/ops.cpp, csrc/autograd/, csrc/cpu/, csrc/cuda/): a call goes straight to the
dispatcher, like a built-in op. This module adds what torch.compile needs (fake kernels), a vmap
rule, and the fallback to the pure-PyTorch reference where no compiled kernel exists.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch.compiler import is_compiling

from tat_ext import _extension, _vmap, reference
from tat_ext._checks import SAVE_KIND, check_all, check_float_param, check_int_param
from tat_ext._trelu_params import TReLUParams, split_params

__all__ = ["trelu", "SAVE_KIND"]

_MASK_WORD_BYTES = 4  # the packed mask is whole 32-bit words

_OP = torch.ops.tat_ext.trelu.default if _extension.AVAILABLE else None
_C = _extension.C
# Tensor types without __torch_function__ overrides of their own.
_Tensor = torch.Tensor
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def trelu(
    x: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    slope: Union[float, TReLUParams],
    scale: Optional[float] = None,
    in_shift: float = 0.0,
    out_shift: float = 0.0,
    channel_dim: int = 1,
    save: str = "auto",
) -> torch.Tensor:
    """Fused y = scale·(LReLU(x + bias[c] + in_shift; slope) + out_shift).

    Args:
        x: float32/float64/float16/bfloat16 tensor of rank >= 1 (contiguous, channels_last or any
            other dense layout is processed in place of memory; other strides are copied once).
            y keeps x's memory format.
        bias: optional 1-D tensor of x.shape[channel_dim] values, of x's dtype or float32 (e.g.
            an fp32 parameter under autocast). Receives a gradient reduced in fp32 (fp64 for
            fp64), deterministically.
        slope: negative-side slope of the Leaky ReLU; the gradient at exactly z == 0 is `slope`.
            Or the result of :func:`tat_ext.transform.solve_trelu`: its slope, and its scale
            unless `scale` is given.
        scale: output scale; None means 1.0 for a number `slope`, the result's scale for a
            solver result.
        in_shift, out_shift: the transformation's other constants. slope/scale/shifts are fixed
            numbers: no gradient flows to them. For float32/float16/bfloat16 inputs the
            arithmetic is float32, so they must lie within float32's range.
        channel_dim: dimension of x that `bias` indexes (ignored without a bias).
        save: what the forward keeps for backward: "input" (x, as PyTorch does), "output" (only y;
            the sign of the pre-activation is read back from y — exact when slope >= 0,
            scale > 0 and out_shift == 0, and then free when the next conv/linear saves y anyway),
            "mask" (1 bit per element), or "auto" ("output" when exact, else "mask"; also "mask"
            while the CPU flushes subnormals to zero, see torch.set_flush_denormal).

    Differentiable to any order (create_graph backward, forward mode, torch.func transforms,
    vmap) and traceable by torch.compile(fullgraph=True), with dynamic shapes and constants.

    Whenever scale > 0 and out_shift == 0, a positive pre-activation never rounds to y == 0: it
    is stored as at least the output dtype's smallest positive value (this keeps save="output"
    exact in float16, where scale·z can underflow).
    """
    if scale is None or type(slope) is not float:
        slope, scale = split_params(slope, scale, 1.0)
    if _OP is not None:
        if is_compiling():  # torch.compile traces the operator itself
            return _OP(x, bias, slope, scale, in_shift, out_shift, channel_dim, save)
        if not (type(slope) is float and type(scale) is float and type(in_shift) is float
                and type(out_shift) is float):
            # ints, numpy scalars...; a Tensor, bool or string is rejected here, by name.
            slope, scale, in_shift, out_shift = (
                check_float_param(name, value) for name, value in
                (("slope", slope), ("scale", scale), ("in_shift", in_shift), ("out_shift", out_shift)))
        if type(channel_dim) is not int:
            channel_dim = check_int_param("channel_dim", channel_dim)
        try:
            if type(x) is _Tensor and (bias is None or type(bias) in _PLAIN):
                # A typed C++ entry (csrc/module.cpp): the torch.ops path would add ~4 us a call.
                return _C.trelu(x, bias, slope, scale, in_shift, out_shift, channel_dim, save)
            return _OP(x, bias, slope, scale, in_shift, out_shift, channel_dim, save)
        except NotImplementedError:  # the dispatcher found no kernel for this device
            reason = _no_kernel_reason(x)
        except (TypeError, RuntimeError):
            # The operator's schema rejected an argument: say which one, and why.
            check_all(x, bias, slope, scale, in_shift, out_shift, channel_dim, save)
            raise
    else:
        reason = f"the compiled extension tat_ext._C is not available ({_extension.LOAD_ERROR})"
    _extension.warn_fallback(reason)
    return reference.trelu(x, bias, slope=slope, scale=scale, in_shift=in_shift,
                           out_shift=out_shift, channel_dim=channel_dim, save=save)


def _no_kernel_reason(x: torch.Tensor) -> str:
    if x.device.type == "cuda" and not _extension.WITH_CUDA:
        return "tat_ext._C was built without CUDA kernels"
    return f"no tat_ext kernel for device type {x.device.type!r}"


def _mask_numel(numel):
    return (numel + 31) // 32 * _MASK_WORD_BYTES


if _extension.AVAILABLE:
    _vmap.register()

    @torch.library.register_fake("tat_ext::trelu")
    def _trelu_fake(x, bias, slope, scale=1.0, in_shift=0.0, out_shift=0.0, channel_dim=1,
                    save="auto"):
        return torch.empty_like(x)

    @torch.library.register_fake("tat_ext::conv_trelu")
    def _conv_trelu_fake(x, weight, bias, stride, padding, dilation, groups, slope, scale=1.0,
                         in_shift=0.0, out_shift=0.0, save="auto"):
        # The composition's output (the fused path gives y the same layout).
        return torch.empty_like(torch.ops.aten.convolution(
            x, weight, None, stride, padding, dilation, False, [0, 0], groups))

    @torch.library.register_fake("tat_ext::trelu_forward")
    def _trelu_forward_fake(x, bias, slope, scale, in_shift, out_shift, channel_dim, save_kind):
        n = _mask_numel(x.numel()) if save_kind == SAVE_KIND["mask"] else 0
        return torch.empty_like(x), x.new_empty((n,), dtype=torch.uint8)

    @torch.library.register_fake("tat_ext::trelu_backward")
    def _trelu_backward_fake(
        grad_y, saved, bias, save_kind, slope, scale, in_shift, out_shift, channel_dim,
        bias_grad_dtype,
    ):
        like = grad_y if save_kind == SAVE_KIND["mask"] else saved
        if bias_grad_dtype is None:
            grad_bias = grad_y.new_empty((0,))
        else:
            grad_bias = grad_y.new_empty((grad_y.shape[channel_dim],), dtype=bias_grad_dtype)
        return torch.empty_like(like), grad_bias
