"""Scaled uniform orthogonal (SUO) initialization in PyTorch's own weight layout.

DKS/TAT assume every linear/conv layer is the identity on q and c at initialization (docs/math.md,
"Initialization"). An orthogonal matrix rescaled by max(1, sqrt(fan_out/fan_in)) does that, and a delta
initialization (only the centre tap non-zero) makes a conv act as that matrix at every location.

Unlike the reference library, which assumes [in, out, *kernel], this module works on the layout
nn.Linear and nn.ConvNd actually use: [out, in, *kernel].
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor, nn

from tat_ext import _validate

__all__ = ["INITIALIZED_TYPES", "scaled_uniform_orthogonal_", "suo_blocks", "tat_init_"]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# The layers tat_init_ initializes (and tat_ext.diagnostics.check_initialization checks).
INITIALIZED_TYPES = (nn.Linear,) + _CONV_TYPES + _CONV_TRANSPOSE_TYPES


def _haar_orthogonal(
    rows: int, cols: int, *, device: torch.device, dtype: torch.dtype, generator: Optional[torch.Generator]
) -> Tensor:
    """A [rows, cols] matrix from the Haar measure: orthonormal columns if rows >= cols, else rows."""
    tall = rows >= cols
    gaussian = torch.randn(
        (rows, cols) if tall else (cols, rows), device=device, dtype=dtype, generator=generator
    )
    q, r = torch.linalg.qr(gaussian)
    # QR alone is not Haar-distributed: its sign convention biases Q. Multiplying column j by
    # sign(R_jj) makes the factorization unique and Q exactly Haar (Mezzadri 2007, eq. 5.3).
    signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(dtype)
    q = q * signs
    return q if tall else q.T


def _check_generator(generator: object) -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def suo_blocks(layer: nn.Module) -> List[Tensor]:
    """Views of ``layer.weight`` that SUO initializes, each in [out, in, *kernel] orientation:
    one per group (a grouped conv's matrix is block-diagonal, so each block must preserve q on
    its own); transposed convs, stored [in, out/groups, *kernel], through a transposed view."""
    blocks = layer.weight.detach().chunk(getattr(layer, "groups", 1), dim=0)
    if isinstance(layer, _CONV_TRANSPOSE_TYPES):
        return [block.transpose(0, 1) for block in blocks]
    return list(blocks)


def scaled_uniform_orthogonal_(
    weight: Tensor, gain: float = 1.0, delta: bool = True, *, generator: Optional[torch.Generator] = None
) -> Tensor:
    """Fill ``weight`` in place with a scaled uniform orthogonal (SUO) sample and return it.

    ``weight`` has PyTorch's layout: [out, in] for nn.Linear, [out, in, *kernel] for nn.ConvNd. The
    non-zero matrix M ([out, in]; see ``delta``) is Haar-orthogonal times
    ``gain * max(1, sqrt(out / in))``. When out >= in its columns are orthonormal up to that scale, so
    ||M x|| / ||x|| = gain * sqrt(out / in) exactly and q = ||h||²/dim is preserved for gain = 1; when
    out < in its rows are orthonormal and q is preserved in expectation.

    Args:
        weight: floating-point tensor of rank >= 2; its device and dtype are kept. The sample is drawn
            in float32 (float64 for float64 weights) on ``weight``'s device with torch's global RNG
            (or ``generator``), so ``torch.manual_seed`` makes it reproducible.
        gain: extra factor on top of the SUO scale; leave at 1 for DKS/TAT.
        delta: for conv weights, zero every tap except the spatial centre, which holds M (in = the
            weight's dim 1); every kernel size must then be odd. With ``delta=False`` the weight is
            treated as the flattened [out, in * prod(kernel)] matrix: the conv's action on an im2col
            patch vector is (scaled) orthogonal, with fan_in = in * prod(kernel). Ignored for rank 2.
        generator: optional torch.Generator to draw from instead of the global RNG.

    Raises:
        TypeError: ``weight`` is not a floating-point tensor, ``gain`` is not a real number,
            ``delta`` not a bool, or ``generator`` not a torch.Generator.
        ValueError: ``weight`` has rank < 2 or an empty dimension, ``gain`` is not finite, or
            ``delta=True`` with an even kernel size.
    """
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got dtype {weight.dtype}")
    if weight.dim() < 2:
        raise ValueError(
            f"weight must have rank >= 2 ([out, in, *kernel]), got shape {tuple(weight.shape)}"
        )
    if weight.numel() == 0:
        raise ValueError(f"weight has an empty dimension: shape {tuple(weight.shape)}")
    gain = _validate.real("gain", gain)
    delta = _validate.boolean("delta", delta)
    generator = _check_generator(generator)

    out_dim, in_dim, *kernel = weight.shape
    use_delta = delta and len(kernel) > 0
    if use_delta and any(k % 2 == 0 for k in kernel):
        raise ValueError(
            f"delta=True needs odd kernel sizes (a centre tap), got weight of shape {tuple(weight.shape)}; "
            "use delta=False for even kernels"
        )
    fan_in = in_dim if use_delta else in_dim * math.prod(kernel)

    work_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    matrix = _haar_orthogonal(
        out_dim, fan_in, device=weight.device, dtype=work_dtype, generator=generator
    )
    matrix = matrix * (gain * max(1.0, math.sqrt(out_dim / fan_in)))

    with torch.no_grad():
        if use_delta:
            weight.zero_()
            centre = tuple(k // 2 for k in kernel)
            weight[(slice(None), slice(None)) + centre] = matrix.to(weight.dtype)
        else:
            weight.copy_(matrix.reshape(weight.shape))
    return weight


def tat_init_(
    module: nn.Module, gain: float = 1.0, delta: bool = True, *, generator: Optional[torch.Generator] = None
) -> nn.Module:
    """SUO-initialize every Linear/ConvNd/ConvTransposeNd in ``module`` and zero their biases.

    ``gain``, ``delta`` and ``generator`` are passed to :func:`scaled_uniform_orthogonal_`.
    Grouped convolutions get one SUO block per group (the conv's matrix is block-diagonal, so each
    block must preserve q on its own). Transposed convs store [in, out/groups, *kernel]; their blocks
    are initialized through a transposed view so the map in -> out is the SUO one. Returns ``module``.
    :func:`tat_ext.diagnostics.check_initialization` tells whether a model is initialized this way.

    Raises:
        ValueError: a layer still has uninitialized (lazy) parameters; run a forward pass first.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    gain = _validate.real("gain", gain)
    delta = _validate.boolean("delta", delta)
    generator = _check_generator(generator)
    for name, layer in module.named_modules():
        if not isinstance(layer, INITIALIZED_TYPES):
            continue
        if isinstance(layer.weight, nn.parameter.UninitializedParameter):
            raise ValueError(f"layer {name!r} is lazy and not yet materialized; run a forward pass first")
        for block in suo_blocks(layer):
            try:
                scaled_uniform_orthogonal_(block, gain=gain, delta=delta, generator=generator)
            except ValueError as err:
                raise ValueError(f"layer {name!r}: {err}") from err
        if layer.bias is not None:
            with torch.no_grad():
                layer.bias.zero_()
    return module
