"""The kernel-vs-reference case grid and its tolerance rules, in one place: `tat-ext verify`
(tat_ext/tools/verify.py) runs it on every device, and the test suite (tests/test_trelu.py,
tests/test_trelu_cuda.py) imports it.

Tolerances, and why:
- forward: bit-identical to `tat_ext.reference.trelu` (same rounding steps, no FMA contraction).
- grad_x: the kernel computes g * (scale*slope), autograd (g*scale)*slope: 1 ulp of fp32
  (`grad_x_rtol`); in fp16/bf16 that ulp can flip one rounding of the result (1 eps of the dtype).
- grad_bias: per-channel sums taken in a different order (`grad_bias_atol`), plus one more
  rounding when the bias is fp16/bf16 (`grad_bias_rtol`).
- fp16/bf16 against an fp64 reference: at most twice the error of PyTorch's own eager chain in
  the same dtype (`LOW_PRECISION_PARAMS`).
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional

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


# Beyond LAYOUTS, shapes that reach every CUDA grid (csrc/cuda/trelu_forward.cu,
# trelu_backward.cu): long planes (several segments; not a multiple of the vector width; a
# multiple of 32 so the mask stays on the plane grid; misaligned), channels_last with C a multiple
# of the vector width or not, short planes with many rows (several column blocks of rows), wide
# rows, a bias on dim 0, a two-level bias reduction, and a misaligned odd-length plane.
CUDA_LAYOUTS = [
    Layout((2, 3, 33, 37), 1, "contiguous"),
    Layout((3, 4, 32, 32), 1, "contiguous"),
    Layout((2, 3, 100, 100), 1, "contiguous"),
    Layout((2, 5, 7, 11, 13), 1, "contiguous"),
    Layout((2, 4, 30, 30), 1, "offset"),
    Layout((4, 6, 5000), 0, "contiguous"),
    Layout((4, 64, 9, 9), 1, "channels_last"),
    Layout((3, 100, 5, 5), 1, "channels_last"),
    Layout((2, 16, 3, 10, 10), 1, "channels_last_3d"),
    Layout((512, 3, 67), 1, "contiguous"),
    Layout((5000, 24), 1, "contiguous"),
    Layout((3, 70001), -1, "contiguous"),
    Layout((3, 8, 40, 40), 1, "permuted"),
    Layout((32, 64, 17, 17), 1, "channels_last"),  # fp32: two second-stage levels
    Layout((3, 5, 383), 1, "offset"),
]

# Large enough that the CPU kernels split the work over threads and the CUDA bias reduction runs
# in several blocks: where a nondeterministic reduction would show.
DETERMINISM_LAYOUTS = [
    Layout((16, 64, 33, 33), 1, "contiguous"),
    Layout((32, 64, 17, 17), 1, "channels_last"),
    Layout((64, 48, 7, 7), 1, "contiguous"),
]

# Parameter sets: TReLU (slope 0 = ReLU, tiny, mid, linear), a non-unit scale, and shifts.
PARAMS = [
    dict(slope=0.0, scale=2 ** 0.5, in_shift=0.0, out_shift=0.0),
    dict(slope=0.01, scale=1.0, in_shift=0.0, out_shift=0.0),
    dict(slope=0.5, scale=1.2649110640673518, in_shift=0.0, out_shift=0.0),
    dict(slope=1.0, scale=0.75, in_shift=0.0, out_shift=0.0),
    dict(slope=0.2, scale=1.7, in_shift=0.3, out_shift=-0.4),
    dict(slope=-0.3, scale=-0.9, in_shift=-0.2, out_shift=0.0),
]
SAVES = ["input", "output", "mask", "auto"]
BIAS_KINDS = ["none", "same", "fp32"]

# fp16/bf16 vs fp64: every constant nonzero so each rounding step is exercised.
LOW_PRECISION_PARAMS = dict(slope=0.2, scale=1.3, in_shift=0.1, out_shift=0.05)


def valid_saves(params: dict) -> List[str]:
    """save="output" is exact (and allowed) only when slope >= 0, scale > 0 and out_shift == 0."""
    exact = params["slope"] >= 0 and params["scale"] > 0 and params["out_shift"] == 0
    return [s for s in SAVES if s != "output" or exact]


def bias_dtype(kind: str, dtype: torch.dtype) -> Optional[torch.dtype]:
    """"none": no bias; "same": x's dtype; "fp32": a float32 bias (an fp32 parameter under autocast)."""
    return {"none": None, "same": dtype, "fp32": torch.float32}[kind]


def grad_x_rtol(dtype: torch.dtype) -> float:
    """dz = g * (scale*slope) vs autograd's (g*scale)*slope: 1 ulp of the math dtype; in fp16/bf16
    that ulp can flip one rounding of the stored gradient."""
    if dtype == torch.float64:
        return 1e-14
    if dtype.itemsize == 2:
        return torch.finfo(dtype).eps
    return 2e-6


def grad_bias_rtol(bias_dtype: torch.dtype) -> float:
    """A low-precision bias gets its fp32 sum rounded once more: 1 ulp of its dtype."""
    return torch.finfo(bias_dtype).eps if bias_dtype.itemsize < 4 else 0.0


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
    """A per-channel bias of `dtype` on x's device (None when dtype is None)."""
    if dtype is None:
        return None
    g = torch.Generator().manual_seed(seed)
    c = x.shape[channel_dim]
    return (0.5 * torch.randn(c, generator=g, dtype=torch.float64)).to(device=x.device, dtype=dtype)


def forward_backward(fn, x, bias, grad_out, **kw):
    """y = fn(x, bias, **kw) and the gradients wrt x (and bias), on fresh leaf copies (clone keeps
    x's strides); zeros when y is empty."""
    x = x.detach().clone().requires_grad_(True)
    b = None if bias is None else bias.detach().clone().requires_grad_(True)
    y = fn(x, b, **kw)
    inputs = (x,) if b is None else (x, b)
    if y.numel() == 0:
        return y, tuple(torch.zeros_like(t) for t in inputs)
    return y, torch.autograd.grad(y, inputs, grad_out)


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
    """The reference evaluated in float64: the "true" values low-precision errors are measured from."""
    b = None if bias is None else bias.double()
    return reference.trelu(x.double(), b, **params)


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| (0 for empty tensors), computed in float64 on a's device."""
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
