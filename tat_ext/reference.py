"""Pure-PyTorch reference of the fused transformed Leaky ReLU.

Same signature and semantics as :func:`tat_ext.trelu`, built from plain PyTorch ops (autograd
gives its backward). Every kernel is tested against it, and it is the fallback when the compiled
extension is unavailable. It rounds exactly like the kernels: the bias plus in_shift and the
pre-activation are computed in float32 (float64 for float64 inputs) and y is rounded once.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from tat_ext._checks import check_all
from tat_ext._trelu_params import TReLUParams, split_params

__all__ = ["trelu", "accumulation_dtype"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float64 for float64 tensors, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    """y = scale·(LReLU(x + bias[c] + in_shift; slope) + out_shift), in plain PyTorch.

    `slope` and `scale` are read as by the fused op (a solver result carries its scale). `save`
    is validated like the fused op's but has no effect here (autograd keeps what it needs).
    """
    slope, scale = split_params(slope, scale, 1.0)
    slope, scale, in_shift, out_shift, channel_dim, _ = check_all(
        x, bias, slope, scale, in_shift, out_shift, channel_dim, save
    )
    acc = accumulation_dtype(x.dtype)
    if bias is None:
        z = x.to(acc) + in_shift
    else:
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        z = x.to(acc) + (bias.to(acc) + in_shift).view(shape)
    # PyTorch's own Leaky ReLU: the gradient at z == 0 is slope, and the gradient's derivative
    # is zeros (not "unused"), as eager code gives them.
    y = scale * (F.leaky_relu(z, slope) + out_shift)
    if out_shift == 0.0 and scale > 0.0:
        positive = z > 0
        # A positive pre-activation never rounds to y == 0 (see trelu_math.h): lift it to the
        # output dtype's smallest positive value, with a straight-through gradient.
        info = torch.finfo(x.dtype)
        floor = info.smallest_normal * info.eps  # smallest positive subnormal, e.g. 2**-24 in fp16
        # Only where y is below the floor (never for inf or NaN, where y - y would be NaN).
        y = y + torch.where(positive & (y < floor), floor - y, 0.0).detach()
    return y.to(x.dtype)
