"""Shared case grid and helpers for the trelu kernel tests (CPU and CUDA)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from tat_ext import reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@dataclasses.dataclass(frozen=True)
class Layout:
    """A shape, the dim the bias indexes, and how the tensor is laid out in memory."""

    shape: tuple
    channel_dim: int
    memory: str  # contiguous | channels_last | channels_last_3d | sliced | permuted | offset

    @property
    def id(self) -> str:
        return f"{'x'.join(map(str, self.shape))}-{self.memory}-cd{self.channel_dim}"


# Chosen to reach every code path of the kernels: constant-channel runs (NCHW), the periodic bias
# table (channels_last with few channels), channel sweeps (wide rows), short runs (small inner,
# many channels), inner chunks (> 32768 per channel), zero-size, C = 1, rank 1..5, sizes that are
# not multiples of any vector width, and non-dense / permuted / misaligned inputs.
LAYOUTS = [
    Layout((7,), 0, "contiguous"),
    Layout((5, 3), 1, "contiguous"),
    Layout((33, 100), -1, "contiguous"),
    Layout((3, 5000), 1, "contiguous"),
    Layout((2, 3000, 3), 1, "contiguous"),
    Layout((3, 13, 29), 1, "contiguous"),
    Layout((2, 1, 40003), 1, "contiguous"),
    Layout((4, 8, 5, 7), 1, "contiguous"),
    Layout((4, 8, 5, 7), 1, "channels_last"),
    Layout((2, 3, 17, 19), 1, "channels_last"),
    Layout((2, 1, 9, 11), 1, "channels_last"),
    Layout((2, 6, 3, 5, 7), 1, "channels_last_3d"),
    Layout((2, 5, 3, 4, 6), 1, "contiguous"),
    Layout((0, 4, 3, 3), 1, "contiguous"),
    Layout((3, 6, 9, 10), 1, "sliced"),
    Layout((4, 6, 5, 7), 1, "permuted"),
    Layout((3, 37, 11), 1, "offset"),
]


def make_input(layout: Layout, dtype: torch.dtype, device="cpu", seed: int = 0) -> torch.Tensor:
    """Fresh standard-normal values (never zeros only) in the requested memory layout."""
    g = torch.Generator().manual_seed(seed)
    shape = layout.shape
    if layout.memory == "sliced":  # non-dense: every other column of a wider tensor
        base = torch.randn(*shape[:-1], 2 * shape[-1], generator=g, dtype=torch.float64)
        return base.to(device=device, dtype=dtype)[..., ::2]
    if layout.memory == "offset":  # dense but starting one element into its storage
        flat = torch.randn(1 + int(torch.tensor(shape).prod()), generator=g, dtype=torch.float64)
        return flat.to(device=device, dtype=dtype)[1:].view(shape)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    if layout.memory == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout.memory == "channels_last_3d":
        return x.contiguous(memory_format=torch.channels_last_3d)
    if layout.memory == "permuted":  # dense, with dims 0 and 2 swapped in memory
        return x.transpose(0, 2).contiguous().transpose(0, 2)
    return x


def make_bias(x: torch.Tensor, channel_dim: int, dtype: Optional[torch.dtype], seed: int = 1):
    if dtype is None:
        return None
    g = torch.Generator().manual_seed(seed)
    c = x.shape[channel_dim]
    return (0.5 * torch.randn(c, generator=g, dtype=torch.float64)).to(device=x.device, dtype=dtype)


def eager_chain(x, bias, *, slope, scale, in_shift, out_shift, channel_dim):
    """What a user writes without tat_ext, in x's dtype: add bias -> leaky_relu -> scale/shift."""
    z = x
    if bias is not None:
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        z = z + bias.to(x.dtype).view(shape)
    z = z + in_shift
    return scale * (torch.nn.functional.leaky_relu(z, slope) + out_shift)


def fp64_reference(x, bias, **params):
    b = None if bias is None else bias.double()
    return reference.trelu(x.double(), b, **params)


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def grad_bias_atol(grad_out, scale, channel_dim, dtype) -> float:
    """Per-channel sums taken in different orders (fp32, fp64 for fp64): 4 eps * sum |dz|."""
    if grad_out.numel() == 0:
        return 0.0
    dims = [d for d in range(grad_out.dim()) if d != channel_dim % grad_out.dim()]
    mass = (grad_out.double().abs() * abs(scale)).sum(dim=dims).max().item()
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    return 4 * eps * mass + 1e-30


def assert_compiled_matches_eager(block, inputs, wrt, grad) -> None:
    """torch.compile(block, fullgraph=True): same output and same gradients wrt `wrt` as eager."""
    out_c = torch.compile(block, fullgraph=True)(*inputs)
    grads_c = torch.autograd.grad(out_c, wrt, grad)
    out_e = block(*inputs)
    grads_e = torch.autograd.grad(out_e, wrt, grad)
    torch.testing.assert_close(out_c, out_e)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge)
