"""The fused transformed Leaky ReLU as an autograd-aware torch custom op.

The operators are defined in C++ (csrc/ops.cpp) with CPU and CUDA kernels; this module registers
their fake (shape) kernels and autograd so they work under torch.compile(fullgraph=True).
"""
from __future__ import annotations

from typing import Optional

import torch

from tat_ext import _extension, reference
from tat_ext._checks import check_all

__all__ = ["trelu", "SAVE_KIND"]

# What the forward keeps for the backward (the C++ SaveKind enum).
SAVE_KIND = {"input": 0, "output": 1, "mask": 2}
_MASK_WORD_BYTES = 4  # the packed mask is whole 32-bit words


def trelu(
    x: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    slope: float,
    scale: float = 1.0,
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
        scale, in_shift, out_shift: the transformation's constants. slope/scale/shifts are fixed
            Python floats: no gradient flows to them.
        channel_dim: dimension of x that `bias` indexes (ignored without a bias).
        save: what the forward keeps for backward: "input" (x, as PyTorch does), "output" (only y;
            the sign of the pre-activation is read back from y — exact when slope >= 0,
            scale > 0 and out_shift == 0, and then free when the next conv/linear saves y anyway),
            "mask" (1 bit per element), or "auto" ("output" when exact, else "mask").

    Whenever scale > 0 and out_shift == 0, a positive pre-activation never rounds to y == 0: it
    is stored as at least the output dtype's smallest positive value (this keeps save="output"
    exact in float16, where scale·z can underflow).
    """
    slope, scale, in_shift, out_shift, channel_dim, mode = check_all(
        x, bias, slope, scale, in_shift, out_shift, channel_dim, save
    )
    reason = _fallback_reason(x)
    if reason is not None:
        _extension.warn_fallback(reason)
        return reference.trelu(
            x, bias, slope=slope, scale=scale, in_shift=in_shift, out_shift=out_shift,
            channel_dim=channel_dim, save=mode,
        )
    y, _ = torch.ops.tat_ext.trelu_forward(
        x, bias, slope, scale, in_shift, out_shift, channel_dim, SAVE_KIND[mode]
    )
    return y


def _fallback_reason(x: torch.Tensor) -> Optional[str]:
    if not _extension.AVAILABLE:
        return f"the compiled extension tat_ext._C is not available ({_extension.LOAD_ERROR})"
    if x.device.type == "cuda" and not _extension.WITH_CUDA:
        return "tat_ext._C was built without CUDA kernels"
    if x.device.type not in ("cpu", "cuda", "meta"):
        return f"no tat_ext kernel for device type {x.device.type!r}"
    return None


def _mask_numel(numel):
    return (numel + 31) // 32 * _MASK_WORD_BYTES


def _in_layout(t: torch.Tensor, stride: tuple) -> torch.Tensor:
    """t with the given dense strides (a copy only when its layout differs)."""
    if all(n <= 1 or s == want for n, s, want in zip(t.shape, t.stride(), stride)):
        return t
    return torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device).copy_(t)


if _extension.AVAILABLE:

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

    def _setup_context(ctx, inputs, output):
        x, bias, slope, scale, in_shift, out_shift, channel_dim, save_kind = inputs
        y, mask = output
        ctx.params = (slope, scale, in_shift, out_shift, channel_dim)
        ctx.save_kind = save_kind
        ctx.bias_dtype = None if bias is None else bias.dtype
        if save_kind == SAVE_KIND["input"]:
            ctx.save_for_backward(x, bias)
        elif save_kind == SAVE_KIND["output"]:
            ctx.save_for_backward(y)
        else:
            ctx.save_for_backward(mask)
            ctx.out_stride = tuple(y.stride())  # the mask's bit order is y's memory order

    def _backward(ctx, grad_y, _grad_mask):
        slope, scale, in_shift, out_shift, channel_dim = ctx.params
        saved, *rest = ctx.saved_tensors
        bias = rest[0] if rest else None
        if ctx.save_kind == SAVE_KIND["mask"]:
            grad_y = _in_layout(grad_y, ctx.out_stride)
        want_bias = ctx.bias_dtype is not None and ctx.needs_input_grad[1]
        grad_x, grad_bias = torch.ops.tat_ext.trelu_backward(
            grad_y, saved, bias, ctx.save_kind, slope, scale, in_shift, out_shift, channel_dim,
            ctx.bias_dtype if want_bias else None,
        )
        return (
            grad_x if ctx.needs_input_grad[0] else None,
            grad_bias if want_bias else None,
            None, None, None, None, None, None,
        )

    torch.library.register_autograd(
        "tat_ext::trelu_forward", _backward, setup_context=_setup_context
    )
