"""Modules built on the fused op: TReLU, and Conv2d/Linear whose bias is applied by it.

A deep vanilla TAT network needs three things these modules do not do by themselves (see
docs/math.md): the slope solved for the network's architecture
(:func:`tat_ext.transform.solve_trelu`), orthogonal/delta initialization
(:func:`tat_ext.init.tat_init_` — with PyTorch's default init a deep net maps every input pair to
cosine ≈ 1), and per-location normalized inputs (:func:`tat_ext.data.per_location_normalization`).
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from tat_ext import _extension
from tat_ext._checks import check_float_param, resolve_save
from tat_ext._trelu_params import TReLUParams, split_params, trelu_scale
from tat_ext.errors import UserError
from tat_ext.ops import trelu

__all__ = ["TReLU", "TATConv2d", "TATLinear", "trelu_scale", "FUSED_CONV_ENV",
           "fused_conv_default"]

FUSED_CONV_ENV = "TAT_EXT_FUSED_CONV"
_SWITCH = {"1": True, "on": True, "true": True, "yes": True,
           "0": False, "off": False, "false": False, "no": False}
_CONV_OP = torch.ops.tat_ext.conv_trelu.default if _extension.AVAILABLE else None


def fused_conv_default() -> bool:
    """TATConv2d's `fused_conv` when the module is not told: the environment variable
    TAT_EXT_FUSED_CONV (1/on/true/yes or 0/off/false/no; unset: on)."""
    value = os.environ.get(FUSED_CONV_ENV)
    if value is None or not value.strip():
        return True
    try:
        return _SWITCH[value.strip().lower()]
    except KeyError:
        raise UserError(FUSED_CONV_ENV, f"{FUSED_CONV_ENV}={value!r}: use 1/on/true/yes or "
                                        "0/off/false/no") from None


def _slope_and_scale(slope, scale):
    """(slope, scale) from numbers, or from the result of tat_ext.transform.solve_trelu; a number
    without a scale gets TReLU's."""
    if isinstance(slope, TReLUParams) and scale is not None:
        raise ValueError("scale: give either a solve_trelu result or a scale, not both")
    slope, scale = split_params(slope, scale, None)
    slope = check_float_param("slope", slope)
    return slope, trelu_scale(slope) if scale is None else check_float_param("scale", scale)


class _TransformedLReLU:
    """The activation constants shared by the modules; scale=None means TReLU's scale."""

    def _init_activation(self, slope, scale, in_shift, out_shift, save) -> None:
        self.slope, self.scale = _slope_and_scale(slope, scale)
        self.in_shift = check_float_param("in_shift", in_shift)
        self.out_shift = check_float_param("out_shift", out_shift)
        resolve_save(save, self.slope, self.scale, self.out_shift)  # reject bad modes up front
        self.save = save

    def _activate(self, x: torch.Tensor, bias: Optional[torch.Tensor],
                  channel_dim: int) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript calls the operator itself
            return torch.ops.tat_ext.trelu(x, bias, self.slope, self.scale, self.in_shift,
                                           self.out_shift, channel_dim, self.save)
        return trelu(x, bias, slope=self.slope, scale=self.scale, in_shift=self.in_shift,
                     out_shift=self.out_shift, channel_dim=channel_dim, save=self.save)

    def _activation_repr(self) -> str:
        return (f"slope={self.slope:.10g}, scale={self.scale:.10g}, in_shift={self.in_shift:g}, "
                f"out_shift={self.out_shift:g}, save={self.save!r}")


class TReLU(_TransformedLReLU, nn.Module):
    """y = scale·(LReLU(x + in_shift; slope) + out_shift) with fixed constants (no parameters).

    Args:
        slope: negative-side slope α, or the result of
            :func:`tat_ext.transform.solve_trelu` (which carries its scale).
        scale: default sqrt(2/(1+α²)) (TAT's TReLU, Q(q) = q).
        in_shift, out_shift: constant shifts before and after the Leaky ReLU.
        save: what the forward keeps for the backward (see :func:`tat_ext.trelu`).

    Example::

        act = TReLU(solve_trelu(49))     # a ResNet-50-shaped vanilla net: 49 nonlinear layers
    """

    def __init__(self, slope: Union[float, TReLUParams], scale: Optional[float] = None,
                 in_shift: float = 0.0, out_shift: float = 0.0, *, save: str = "auto") -> None:
        super().__init__()
        self._init_activation(slope, scale, in_shift, out_shift, save)

    @classmethod
    def for_depth(cls, depth: int, eta: float = 0.9, *, save: str = "auto") -> "TReLU":
        """The TReLU whose plain chain of `depth` nonlinear layers has C_f(0) = eta."""
        from tat_ext.transform import solve_trelu

        return cls(solve_trelu(depth, eta=eta), save=save)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._activate(x, None, 1)

    def extra_repr(self) -> str:
        return self._activation_repr()


class TATConv2d(_TransformedLReLU, nn.Conv2d):
    """nn.Conv2d followed by the transformed Leaky ReLU, with the conv's bias added by the fused op:
    y = scale·LReLU(conv(x) + bias; slope) (+ optional shifts), in one kernel per direction.

    Takes nn.Conv2d's arguments plus the activation's constants (keyword-only): ``slope`` (the
    negative-side slope α, or a :func:`tat_ext.transform.solve_trelu` result) and ``scale``
    (default sqrt(2/(1+α²)), TReLU's). Solve the slope for the whole network's architecture, not
    per layer. Its state_dict ("weight", "bias") is interchangeable with nn.Conv2d's.

    The weights get PyTorch's default init here; a deep vanilla TAT net needs
    :func:`tat_ext.init.tat_init_` (delta-orthogonal) applied to the whole model.

    ``fused_conv`` (default: the environment variable ``TAT_EXT_FUSED_CONV``, on when unset) runs
    conv, bias and activation as one oneDNN primitive on the CPU where that is exact enough
    (docs/fused_conv.md: fp32, save "auto"/"output", slope >= 0, out_shift == 0; anything else,
    and torch.compile, TorchScript, autocast, forward mode and torch.func transforms, take the
    unfused path).
    It is the attribute ``module.fused_conv``, settable per module: code that hooks the conv's
    output (e.g. a K-FAC optimizer reading the pre-activation) sets it to False.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, slope: Union[float, TReLUParams],
                 scale: Optional[float] = None, in_shift: float = 0.0, out_shift: float = 0.0,
                 save: str = "auto", fused_conv: Optional[bool] = None) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                           groups, bias, padding_mode, device, dtype)
        self._init_activation(slope, scale, in_shift, out_shift, save)
        if fused_conv is not None and not isinstance(fused_conv, bool):
            raise TypeError(f"fused_conv must be True, False or None, got {fused_conv!r}")
        self.fused_conv = fused_conv_default() if fused_conv is None else fused_conv

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._takes_fused_op(input):
            return self._fused_forward(input)
        out = self._conv_forward(input, self.weight, None)
        return self._activate(out, self.bias, 1 if out.dim() == 4 else 0)  # unbatched: [C,H,W]

    @torch.jit.unused  # (no annotations: TorchScript cannot resolve them on unused methods)
    def _takes_fused_op(self, input):
        return (self.fused_conv and _CONV_OP is not None and input.device.type == "cpu"
                and not isinstance(self.padding, str) and not torch.is_autocast_enabled("cpu"))

    @torch.jit.unused
    def _fused_forward(self, input):
        """tat_ext::conv_trelu: the fused primitive where it is exact, else the same composition
        as the unfused path (csrc/autograd/conv_trelu.cpp decides per call)."""
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d does: pad first, then convolve unpadded
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = (0, 0)
        unbatched = input.dim() == 3
        if unbatched:
            input = input.unsqueeze(0)
        out = _CONV_OP(input, self.weight, self.bias, self.stride, padding, self.dilation,
                       self.groups, self.slope, self.scale, self.in_shift, self.out_shift,
                       self.save)
        return out.squeeze(0) if unbatched else out

    def extra_repr(self) -> str:
        return (f"{nn.Conv2d.extra_repr(self)}, {self._activation_repr()}, "
                f"fused_conv={self.fused_conv}")


class TATLinear(_TransformedLReLU, nn.Linear):
    """nn.Linear followed by the transformed Leaky ReLU, with the bias added by the fused op.

    Takes nn.Linear's arguments plus ``slope``/``scale``/shifts/``save`` as in
    :class:`TATConv2d`; its state_dict is interchangeable with nn.Linear's. Initialize the model
    with :func:`tat_ext.init.tat_init_` (scaled orthogonal weights).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, *, slope: Union[float, TReLUParams], scale: Optional[float] = None,
                 in_shift: float = 0.0, out_shift: float = 0.0,
                 save: str = "auto") -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._init_activation(slope, scale, in_shift, out_shift, save)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._activate(F.linear(input, self.weight), self.bias, -1)

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, {self._activation_repr()}"
