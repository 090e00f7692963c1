"""Argument checks of trelu in Python, for the pure-PyTorch reference (which must work without the
compiled extension) and for the messages of the fused op's Python entry point.

The compiled operator checks the same conditions in C++ (csrc/trelu_plan.cpp) with the same
messages; tests/test_trelu.py holds both to one list of bad inputs.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Optional

import torch

SAVE_MODES = ("auto", "input", "output", "mask")
# The concrete modes as the operators' `save_kind` integer: the C++ SaveKind enum (trelu_math.h).
SAVE_KIND = {"input": 0, "output": 1, "mask": 2}
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_FLOAT32_MAX = torch.finfo(torch.float32).max


def check_float_param(name: str, value: object) -> float:
    """A finite real number as a Python float: the op treats these parameters as constants."""
    if isinstance(value, torch.Tensor):
        raise TypeError(
            f"trelu: {name} must be a Python float, got a Tensor (the activation parameters are "
            "fixed constants; no gradient flows to them)"
        )
    if isinstance(value, (bool, str)) or not isinstance(value, numbers.Real):
        raise TypeError(f"trelu: {name} must be a real number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"trelu: {name} must be finite, got an integer beyond the float range") \
            from None
    if not math.isfinite(value):
        raise ValueError(f"trelu: {name} must be finite, got {value}")
    return value


def check_int_param(name: str, value: object) -> int:
    """A Python int from any integer (numpy's included), but not a bool."""
    if isinstance(value, (bool, torch.Tensor)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"trelu: {name} must be an int, got {type(value).__name__}")
    return operator.index(value)


def check_range(dtype: torch.dtype, **params: float) -> None:
    """The constants fit the arithmetic's dtype: float32 unless x is float64."""
    if dtype == torch.float64:
        return
    for name, value in params.items():
        if abs(value) > _FLOAT32_MAX:
            raise ValueError(
                f"trelu: {name}={value:g} is outside the float32 range used by the arithmetic for "
                f"{dtype} inputs (|{name}| <= 3.4028235e38); use float64"
            )


def output_sign_is_exact(slope: float, scale: float, out_shift: float) -> bool:
    """z > 0 <=> y > 0 holds exactly (the kernels keep positive outputs off zero)."""
    return slope >= 0.0 and scale > 0.0 and out_shift == 0.0


def resolve_save(save: object, slope: float, scale: float, out_shift: float) -> str:
    """The concrete save mode ("input" | "output" | "mask") for a user's `save` argument.

    (The compiled op also picks "mask" for "auto" while the CPU flushes subnormals to zero.)
    """
    if not isinstance(save, str) or save not in SAVE_MODES:
        raise ValueError(f"trelu: save must be one of {SAVE_MODES}, got {save!r}")
    exact = output_sign_is_exact(slope, scale, out_shift)
    if save == "auto":
        return "output" if exact else "mask"
    if save == "output" and not exact:
        raise ValueError(
            "trelu: save='output' recovers the sign of the pre-activation from y, which is exact only "
            f"when slope >= 0, scale > 0 and out_shift == 0 (got slope={slope}, scale={scale}, "
            f"out_shift={out_shift}); use save='mask' or 'input'"
        )
    return save


def check_inputs(x: object, bias: Optional[object], channel_dim: object) -> int:
    """Validates x/bias/channel_dim; returns channel_dim wrapped to [0, x.dim())."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"trelu: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"trelu: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("trelu: x must have at least one dimension")
    channel_dim = check_int_param("channel_dim", channel_dim)
    if bias is None:
        return channel_dim  # no channel structure without a bias
    if not -x.dim() <= channel_dim < x.dim():
        raise ValueError(f"trelu: channel_dim={channel_dim} is out of range for x of rank {x.dim()}")
    channel_dim %= x.dim()
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"trelu: bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.dim() != 1 or bias.shape[0] != x.shape[channel_dim]:
        raise ValueError(
            f"trelu: bias must be 1-D with x.shape[{channel_dim}] = {x.shape[channel_dim]} "
            f"elements, got shape {tuple(bias.shape)}"
        )
    if bias.dtype not in (x.dtype, torch.float32):
        raise TypeError(
            f"trelu: bias dtype must be x's dtype ({x.dtype}) or torch.float32, got {bias.dtype}"
        )
    if bias.device != x.device:
        raise ValueError(f"trelu: bias is on {bias.device} but x is on {x.device}")
    return channel_dim


def check_all(x, bias, slope, scale, in_shift, out_shift, channel_dim, save):
    """All checks of trelu's arguments; returns (slope, scale, in_shift, out_shift, channel_dim,
    save mode)."""
    channel_dim = check_inputs(x, bias, channel_dim)
    slope = check_float_param("slope", slope)
    scale = check_float_param("scale", scale)
    in_shift = check_float_param("in_shift", in_shift)
    out_shift = check_float_param("out_shift", out_shift)
    check_range(x.dtype, slope=slope, scale=scale, in_shift=in_shift, out_shift=out_shift)
    mode = resolve_save(save, slope, scale, out_shift)
    return slope, scale, in_shift, out_shift, channel_dim, mode
