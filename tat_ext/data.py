"""Per-location normalization (PLN) of network inputs.

DKS/TAT assume every input location has q = ||x||²/dim = 1 (REFERENCE.md, "Initialization and
inputs"). PLN enforces that by dividing each location's channel vector by its RMS; a homogeneous
coordinate appended first keeps the scale information that this division would otherwise erase.
Unlike the reference library, this works for any channel axis and stays on the input's device.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["per_location_normalization"]

_HOMOG_MODES = ("one", "avg_q", "off")


def per_location_normalization(
    x: Tensor,
    homog_mode: str = "one",
    homog_scale: float = 1.0,
    has_batch_dim: bool = True,
    channel_dim: int = 1,
) -> Tensor:
    """Return ``x`` with every location's channel vector scaled to q = mean(v²) = 1.

    The channel axis is ``channel_dim`` (an axis of ``x`` as given: 1 for NCHW, -1 for
    channels-last, 0 for an unbatched CHW image). Every other axis except the batch axis indexes a
    location. Before normalizing, a homogeneous coordinate may be appended to each channel vector
    (so the channel axis grows by one):

    - ``"one"``: the constant ``homog_scale``.
    - ``"avg_q"``: ``homog_scale`` times the RMS of the example, sqrt(mean(x²)) over all its
      non-batch axes (the same value at every location of an example). Needs at least one location
      axis; without one it would carry no information beyond ``"off"``.
    - ``"off"``: nothing is appended. A location that is exactly zero then has no defined direction
      and stays zero (q = 0) instead of becoming NaN.

    Half-precision inputs are reduced in float32, so large values do not overflow when squared; the
    result has ``x``'s dtype and device, and nothing is copied to or from the host.

    Args:
        x: floating-point tensor; if ``has_batch_dim``, axis 0 is the batch axis.
        homog_mode: ``"one"``, ``"avg_q"`` or ``"off"``.
        homog_scale: finite real factor on the homogeneous coordinate.
        has_batch_dim: whether axis 0 of ``x`` indexes examples.
        channel_dim: the channel axis; may not be the batch axis.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, or an argument has the wrong type.
        ValueError: unknown ``homog_mode``, non-finite ``homog_scale``, ``channel_dim`` out of range
            or equal to the batch axis, ``x`` without a channel axis, or ``"avg_q"`` without a
            location axis.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if homog_mode not in _HOMOG_MODES:
        raise ValueError(f"homog_mode must be one of {_HOMOG_MODES}, got {homog_mode!r}")
    if isinstance(homog_scale, bool) or not isinstance(homog_scale, (int, float)):
        raise TypeError(f"homog_scale must be a real number, got {type(homog_scale).__name__}")
    if not math.isfinite(homog_scale):
        raise ValueError(f"homog_scale must be finite, got {homog_scale}")
    if not isinstance(has_batch_dim, bool):
        raise TypeError(f"has_batch_dim must be a bool, got {type(has_batch_dim).__name__}")
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
        raise TypeError(f"channel_dim must be an int, got {type(channel_dim).__name__}")

    first_feature_axis = 1 if has_batch_dim else 0
    if x.dim() <= first_feature_axis:
        raise ValueError(
            f"x of shape {tuple(x.shape)} has no channel axis"
            + (" besides the batch axis" if has_batch_dim else "")
            + "; add one with x.unsqueeze(-1)"
        )
    if not -x.dim() <= channel_dim < x.dim():
        raise ValueError(f"channel_dim={channel_dim} is out of range for x of rank {x.dim()}")
    channel_dim %= x.dim()
    if has_batch_dim and channel_dim == 0:
        raise ValueError("channel_dim=0 is the batch axis; pass has_batch_dim=False if x is unbatched")
    example_axes = tuple(range(first_feature_axis, x.dim()))
    if homog_mode == "avg_q" and len(example_axes) < 2:
        raise ValueError(
            "homog_mode='avg_q' needs at least one location axis besides the channel axis; "
            "use homog_mode='one' or 'off' for x of shape " + str(tuple(x.shape))
        )

    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if homog_mode != "off":
        homog_shape = list(work.shape)
        homog_shape[channel_dim] = 1
        if homog_mode == "one":
            homog = work.new_full(homog_shape, homog_scale)
        else:
            rms = work.square().mean(dim=example_axes, keepdim=True).sqrt()
            homog = (rms * homog_scale).expand(homog_shape)
        work = torch.cat([work, homog], dim=channel_dim)

    q = work.square().mean(dim=channel_dim, keepdim=True)
    # rsqrt(0) = inf and 0 * inf = NaN: a zero location (only possible with "off", or "avg_q" on an
    # all-zero example) is mapped to zero by clamping q to the smallest normal number.
    inv_rms = q.clamp_min(torch.finfo(work.dtype).tiny).rsqrt()
    return (work * inv_rms).to(x.dtype)
