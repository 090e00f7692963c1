"""Per-location normalization (PLN) of network inputs.

DKS/TAT assume every input location has q = ||x||²/dim = 1 (docs/math.md, "Per-location
normalization"). PLN enforces that by dividing each location's channel vector by its RMS; a
homogeneous coordinate appended first keeps the scale information that this division would
otherwise erase. Unlike the reference library, this works for any channel axis and stays on the
input's device.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

from tat_ext import _validate

__all__ = ["per_location_normalization"]

_HOMOG_MODES = ("one", "avg_q", "off")


def _peak(v: Tensor, dims: Union[int, Sequence[int]]) -> Tensor:
    """max |v| over ``dims`` (kept), 1 where that is 0: dividing by it keeps squares in range.

    Detached: the quantities it scales are exactly invariant to the divisor (RMS is homogeneous of
    degree 1, v / RMS(v) of degree 0), so treating it as a constant gives the exact gradient.
    """
    peak = v.detach().abs().amax(dim=dims, keepdim=True)
    return torch.where(peak > 0, peak, 1.0)


def _sqrt_or_zero(t: Tensor) -> Tensor:
    """sqrt(t) for t >= 0, with gradient 0 instead of inf at t = 0 (where v ↦ RMS(v) has none)."""
    positive = t > 0
    return torch.where(positive, torch.where(positive, t, 1.0).sqrt(), 0.0)


def _unit_rms(v: Tensor, dim: int) -> Tensor:
    """v / RMS(v) along ``dim``: scaled by the peak first, so that no square overflows (|v| up to
    the dtype's maximum) or underflows (down to its subnormals). An all-zero vector maps to zero
    with gradient zero (its direction, and so the true gradient, is undefined)."""
    scaled = v / _peak(v, dim)  # entries in [-1, 1], one of them ±1 unless all are 0
    mean_square = scaled.square().mean(dim=dim, keepdim=True)  # >= 1/n unless all are 0
    nonzero = mean_square > 0
    return torch.where(nonzero, scaled * torch.where(nonzero, mean_square, 1.0).rsqrt(), 0.0)


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
    location. Before normalizing, a homogeneous coordinate may be appended to each channel vector,
    so that the channel axis grows by one, C → C + 1 (the first conv/linear layer then needs
    ``in_channels + 1`` inputs):

    - ``"one"`` (default): the constant ``homog_scale``.
    - ``"avg_q"``: ``homog_scale`` times the RMS of the example, sqrt(mean(x²)) over all its
      non-batch axes (the same value at every location of an example). Needs at least one location
      axis; without one it would carry no information beyond ``"off"``.
    - ``"off"``: nothing is appended. A location that is exactly zero then has no direction: it
      stays zero (q = 0), with gradient zero. Needs at least 2 channels: a 1-channel location has
      a single value, which normalizing would reduce to its sign.

    Values of any magnitude the dtype holds are normalized exactly: each vector is divided by its
    largest |entry| before squaring. Half-precision inputs are computed in float32; the result has
    ``x``'s dtype and device, and nothing is copied to or from the host. Differentiable.

    Args:
        x: floating-point tensor; if ``has_batch_dim``, axis 0 is the batch axis.
        homog_mode: ``"one"``, ``"avg_q"`` or ``"off"``.
        homog_scale: finite real factor on the homogeneous coordinate.
        has_batch_dim: whether axis 0 of ``x`` indexes examples.
        channel_dim: the channel axis; may not be the batch axis.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, or an argument has the wrong type.
        ValueError: unknown ``homog_mode``, non-finite ``homog_scale``, ``channel_dim`` out of range
            or equal to the batch axis, ``x`` without a channel axis or with 0 channels,
            ``"avg_q"`` without a location axis, or a location vector of one coordinate that can
            be nonzero (1 channel with ``"off"``, or with ``homog_scale=0``).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    homog_mode = _validate.one_of("homog_mode", homog_mode, _HOMOG_MODES)
    homog_scale = _validate.real("homog_scale", homog_scale)
    has_batch_dim = _validate.boolean("has_batch_dim", has_batch_dim)
    channel_dim = _validate.integer("channel_dim", channel_dim)

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
    channels = x.shape[channel_dim]
    if channels == 0:
        raise ValueError(f"x of shape {tuple(x.shape)} has no channels (channel_dim={channel_dim})")
    if channels == 1 and (homog_mode == "off" or homog_scale == 0.0):
        why = ("homog_mode='off'" if homog_mode == "off"
               else f"homog_mode={homog_mode!r} with homog_scale=0 (a zero coordinate)")
        raise ValueError(
            f"x has 1 channel (shape {tuple(x.shape)}, channel_dim={channel_dim}) and {why}: every "
            "location is a single value, and normalizing it to q = 1 would leave only its sign. Use "
            "the default homog_mode='one' with a nonzero homog_scale, which appends a coordinate "
            "(1 channel → 2)"
        )

    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if homog_mode != "off":
        homog_shape = list(work.shape)
        homog_shape[channel_dim] = 1
        if homog_mode == "one":
            homog = work.new_full(homog_shape, homog_scale)
        else:
            # The result is invariant to each example's scale: bring its peak to 1 first, so that
            # neither the squares nor the coordinate below leave the normal range.
            work = work / _peak(work, example_axes)
            rms = _sqrt_or_zero(work.square().mean(dim=example_axes, keepdim=True))
            homog = (rms * homog_scale).expand(homog_shape)
        work = torch.cat([work, homog], dim=channel_dim)
    return _unit_rms(work, channel_dim).to(x.dtype)
