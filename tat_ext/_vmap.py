"""Batching rules (torch.vmap) for the tat_ext operators.

A vmapped call becomes ONE call of the fused kernel on the whole batch. When the per-sample
results depend on per-sample channel data (a batched bias, or a per-sample bias gradient), the
vmap dimension is folded into the channel dimension: sample b's channel c becomes channel
b * C + c, so the kernel's per-channel bias and per-channel sums stay per sample.
"""
from __future__ import annotations

from typing import Optional

import torch

from tat_ext._checks import SAVE_KIND


def _fold(t: torch.Tensor, bdim: int, cd: int) -> torch.Tensor:
    """[.., C, ..] with a batch dim at `bdim` -> [.., B*C, ..] (batch-major channels)."""
    t = t.movedim(bdim, cd)
    return t.reshape(*t.shape[:cd], -1, *t.shape[cd + 2:])


def _unfold(t: torch.Tensor, batch: int, cd: int) -> torch.Tensor:
    """Inverse of _fold, with the batch dim in front."""
    return t.unflatten(cd, (batch, -1)).movedim(cd, 0)


def _batched(t: torch.Tensor, bdim: Optional[int], batch: int) -> torch.Tensor:
    """t with its batch dim in front (expanded when t is not batched)."""
    return t.movedim(bdim, 0) if bdim is not None else t.expand(batch, *t.shape)


def _logical_dim(dim: int, rank: int) -> int:
    """dim wrapped to a sample of rank `rank`, with the operator's own errors."""
    if rank < 1:
        raise ValueError("trelu: x must have at least one dimension")
    if not -rank <= dim < rank:
        raise ValueError(f"trelu: channel_dim={dim} is out of range for x of rank {rank}")
    return dim % rank


def _channel_bias(bias, bdim, batch):
    """The [B*C] bias of the folded channels."""
    if bdim is not None:
        return bias.movedim(bdim, 0).reshape(-1)
    return bias.repeat(batch)


def _trelu_vmap(info, in_dims, x, bias, slope, scale=1.0, in_shift=0.0, out_shift=0.0,
                channel_dim=1, save="auto"):
    x_bdim, b_bdim = in_dims[0], in_dims[1]
    op = torch.ops.tat_ext.trelu.default
    x = _batched(x, x_bdim, info.batch_size)
    if bias is None or b_bdim is None:
        # The same channels for every sample: the batch is one more outer dim.
        cd = channel_dim if bias is None else _logical_dim(channel_dim, x.dim() - 1) + 1
        return op(x, bias, slope, scale, in_shift, out_shift, cd, save), 0
    cd = _logical_dim(channel_dim, x.dim() - 1)
    y = op(_fold(x, 0, cd), _channel_bias(bias, b_bdim, info.batch_size), slope, scale,
           in_shift, out_shift, cd, save)
    return _unfold(y, info.batch_size, cd), 0


def _trelu_backward_vmap(info, in_dims, grad_y, saved, bias, save_kind, slope, scale, in_shift,
                         out_shift, channel_dim, bias_grad_dtype):
    g_bdim, s_bdim, b_bdim = in_dims[0], in_dims[1], in_dims[2]
    batch = info.batch_size
    op = torch.ops.tat_ext.trelu_backward.default
    consts = (slope, scale, in_shift, out_shift)
    grad_y = _batched(grad_y, g_bdim, batch)
    if save_kind == SAVE_KIND["mask"]:
        # The mask's bits follow each sample's memory order: one call per sample.
        saved = _batched(saved, s_bdim, batch)
        bias = None if bias is None else _batched(bias, b_bdim, batch)
        outs = [op(grad_y[i], saved[i], None if bias is None else bias[i], save_kind, *consts,
                   channel_dim, bias_grad_dtype) for i in range(batch)]
        return (torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])), (0, 0)
    saved = _batched(saved, s_bdim, batch)
    per_sample_channels = bias_grad_dtype is not None or (bias is not None and b_bdim is not None)
    if not per_sample_channels:
        cd = channel_dim if bias is None else _logical_dim(channel_dim, grad_y.dim() - 1) + 1
        grad_x, grad_bias = op(grad_y, saved, bias, save_kind, *consts, cd, bias_grad_dtype)
        return (grad_x, grad_bias.expand(batch, *grad_bias.shape)), (0, 0)
    cd = _logical_dim(channel_dim, grad_y.dim() - 1)
    folded_bias = None if bias is None else _channel_bias(bias, b_bdim, batch)
    grad_x, grad_bias = op(_fold(grad_y, 0, cd), _fold(saved, 0, cd), folded_bias, save_kind,
                           *consts, cd, bias_grad_dtype)
    return (_unfold(grad_x, batch, cd), grad_bias.view(batch, -1)), (0, 0)


def register() -> None:
    """Registers the rules (needs the compiled operators)."""
    torch.library.register_vmap("tat_ext::trelu", _trelu_vmap)
    torch.library.register_vmap("tat_ext::trelu_backward", _trelu_backward_vmap)
