"""Modules built on the fused op: TReLU, and Conv2d/Linear whose bias is applied by it."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from tat_ext._checks import check_float_param, resolve_save
from tat_ext.ops import trelu

__all__ = ["TReLU", "TATConv2d", "TATLinear", "trelu_scale"]


def trelu_scale(slope: float) -> float:
    """TReLU's output scale sqrt(2 / (1 + slope²)): gives Q(q) = q (REFERENCE.md, TReLU)."""
    return math.sqrt(2.0 / (1.0 + slope * slope))


class _TransformedLReLU:
    """The activation constants shared by the modules; scale=None means TReLU's scale."""

    def _init_activation(self, slope, scale, in_shift, out_shift, save) -> None:
        self.slope = check_float_param("slope", slope)
        self.scale = trelu_scale(self.slope) if scale is None else check_float_param("scale", scale)
        self.in_shift = check_float_param("in_shift", in_shift)
        self.out_shift = check_float_param("out_shift", out_shift)
        resolve_save(save, self.slope, self.scale, self.out_shift)  # reject bad modes up front
        self.save = save

    def _activate(self, x: torch.Tensor, bias: Optional[torch.Tensor], channel_dim: int):
        return trelu(x, bias, slope=self.slope, scale=self.scale, in_shift=self.in_shift,
                     out_shift=self.out_shift, channel_dim=channel_dim, save=self.save)

    def _activation_repr(self) -> str:
        return (f"slope={self.slope:.10g}, scale={self.scale:.10g}, in_shift={self.in_shift:g}, "
                f"out_shift={self.out_shift:g}, save={self.save!r}")


class TReLU(_TransformedLReLU, nn.Module):
    """y = scale·(LReLU(x + in_shift; slope) + out_shift) with fixed constants (no parameters).

    Args:
        slope: negative-side slope α. scale: default sqrt(2/(1+α²)) (TAT's TReLU).
        channel_dim: kept for symmetry with the functional op; unused without a bias.
    """

    def __init__(self, slope: float, scale: Optional[float] = None, in_shift: float = 0.0,
                 out_shift: float = 0.0, *, save: str = "auto") -> None:
        super().__init__()
        self._init_activation(slope, scale, in_shift, out_shift, save)

    @classmethod
    def for_depth(cls, depth: int, eta: float = 0.9, *, save: str = "auto") -> "TReLU":
        """The TReLU whose plain chain of `depth` nonlinear layers has C_f(0) = eta."""
        from tat_ext.transform import solve_trelu

        params = solve_trelu(depth, eta=eta)
        return cls(params.slope, params.scale, save=save)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._activate(x, None, 1)

    def extra_repr(self) -> str:
        return self._activation_repr()


class TATConv2d(_TransformedLReLU, nn.Conv2d):
    """nn.Conv2d followed by the transformed Leaky ReLU, with the conv's bias added by the fused op.

    Takes nn.Conv2d's arguments plus the activation constants (keyword-only); its state_dict
    ("weight", "bias") is interchangeable with nn.Conv2d's.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, slope: float, scale: Optional[float] = None,
                 in_shift: float = 0.0, out_shift: float = 0.0, save: str = "auto") -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                           groups, bias, padding_mode, device, dtype)
        self._init_activation(slope, scale, in_shift, out_shift, save)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(input, self.weight, None)
        return self._activate(out, self.bias, 1 if out.dim() == 4 else 0)  # unbatched: [C,H,W]

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, {self._activation_repr()}"


class TATLinear(_TransformedLReLU, nn.Linear):
    """nn.Linear followed by the transformed Leaky ReLU, with the bias added by the fused op.

    Takes nn.Linear's arguments plus the activation constants (keyword-only); its state_dict is
    interchangeable with nn.Linear's.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, *, slope: float, scale: Optional[float] = None,
                 in_shift: float = 0.0, out_shift: float = 0.0, save: str = "auto") -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._init_activation(slope, scale, in_shift, out_shift, save)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._activate(F.linear(input, self.weight), self.bias, -1)

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, {self._activation_repr()}"
