"""TATConv2d's fused conv (``fused_conv=True``, csrc/autograd/conv_trelu.cpp) against the unfused
composition it replaces (conv2d, then the fused activation): the case grid and its tolerance, in
one place for `tat-ext verify` (its "fused conv" rows) and tests/test_fused_conv.py.

Tolerance of the forward in fp32: folding the scale into the weights rounds each scale*W and
scale*(b + in_shift) once (relative error u = 2^-24), and the n = C_in/groups*kh*kw products of
the conv may be summed in another order, so with Higham's gamma_k = k*u / (1 - k*u)
    |y_fused - y_unfused| <= 2*gamma_{n+2} * scale * (conv(|x|, |W|) + |b + in_shift|) + u*|y|.
The inputs lie on a dyadic grid on which the conv is exact and no pre-activation is 0, so both
paths see the same signs: the gradients (the same grad_z into the same convolution_backward) must
then be bitwise equal. Where the fused primitive does not apply (fp64, bf16, ...), the module
must take exactly the unfused path: everything bitwise.
"""
from __future__ import annotations

import dataclasses
from typing import List, Tuple

import torch
import torch.nn.functional as F

from tat_ext.nn import TATConv2d

__all__ = ["ConvCase", "CASES", "DTYPES", "FUSED_NODE", "make_pair", "dyadic", "forward_bound",
           "run", "compare"]

U = 2.0 ** -24
FUSED_NODE = "ConvTreluBackward"  # the fused op's autograd node: proof the fused path ran
DTYPES = [torch.float32, torch.float64, torch.bfloat16]  # fused, and two that must fall back


@dataclasses.dataclass(frozen=True)
class ConvCase:
    groups: int
    stride: int
    dilation: int
    padding: int
    padding_mode: str
    bias: bool
    kernel: int
    channels_last: bool = False

    @property
    def id(self) -> str:
        layout = "channels_last" if self.channels_last else "nchw"
        return (f"k{self.kernel} g{self.groups} s{self.stride} d{self.dilation} "
                f"p{self.padding}-{self.padding_mode} bias={self.bias} {layout}")


_CONFIGS = [
    (1, 1, 1, 1, "zeros", True, 3),
    (2, 2, 1, 1, "zeros", True, 3),
    (1, 1, 2, 2, "reflect", True, 3),
    (4, 1, 1, 1, "circular", False, 3),
    (1, 2, 1, 0, "zeros", True, 1),
    (1, 1, 1, 2, "replicate", True, 5),
]
CASES: List[ConvCase] = [ConvCase(*c, channels_last=cl) for cl in (False, True) for c in _CONFIGS]


def make_pair(case: ConvCase, dtype: torch.dtype, seed: int) -> Tuple[TATConv2d, TATConv2d]:
    """(fused, unfused) modules with the same dyadic weights and bias."""
    gen = torch.Generator().manual_seed(seed)
    kw = dict(kernel_size=case.kernel, stride=case.stride, padding=case.padding,
              dilation=case.dilation, groups=case.groups, bias=case.bias,
              padding_mode=case.padding_mode, slope=0.25, scale=1.37,
              in_shift=1 / 256)  # z = k/64 + 1/256 is never 0: its sign is clear
    fused = TATConv2d(8, 8, **kw, fused_conv=True)
    unfused = TATConv2d(8, 8, **kw, fused_conv=False)
    with torch.no_grad():
        fused.weight.copy_(dyadic(fused.weight.shape, gen))
        if case.bias:
            fused.bias.copy_(dyadic(fused.bias.shape, gen, step=1 / 16))
    unfused.load_state_dict(fused.state_dict())
    return fused.to(dtype), unfused.to(dtype)


def dyadic(shape, gen: torch.Generator, step: float = 1 / 8, span: int = 8) -> torch.Tensor:
    """Values k*step with |k| <= span: the conv's sums of products stay exact in fp32."""
    return torch.randint(-span, span + 1, tuple(shape), generator=gen).float() * step


def forward_bound(module: TATConv2d, x: torch.Tensor, y_ref: torch.Tensor) -> torch.Tensor:
    """The elementwise fp32 tolerance of the module docstring (float64)."""
    w = module.weight.detach().double().abs()
    xa = x.detach().double().abs()
    padding = module.padding
    if module.padding_mode != "zeros":
        xa = F.pad(xa, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    mass = F.conv2d(xa, w, None, module.stride, padding, module.dilation, module.groups)
    b = module.bias.detach().double() if module.bias is not None else torch.zeros(w.shape[0])
    mass = mass + (b + module.in_shift).abs().view(1, -1, 1, 1)
    n = w.shape[1] * w.shape[2] * w.shape[3] + 2
    gamma = n * U / (1 - n * U)
    return 2 * gamma * module.scale * mass + U * y_ref.detach().double().abs()


def run(module: TATConv2d, x: torch.Tensor, grad: torch.Tensor):
    """(y, (grad_x, grad_weight[, grad_bias])) on a fresh leaf copy of x."""
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    params = [p for p in (module.weight, module.bias) if p is not None]
    return y, torch.autograd.grad(y, [x, *params], grad)


def compare(case: ConvCase, dtype: torch.dtype, seed: int) -> dict:
    """Fused vs unfused on one case: whether the fused primitive ran, the forward's largest
    error and its ratio to the tolerance (fp32) or whether it is bitwise (other dtypes), and
    whether the gradients are bitwise equal and the memory format is kept."""
    fused, unfused = make_pair(case, dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = dyadic((3, 8, 11, 9), gen).to(dtype)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        shape = unfused(x).shape
    grad = dyadic(shape, gen).to(dtype)
    y_u, g_u = run(unfused, x, grad)
    y_f, g_f = run(fused, x, grad)
    err = (y_f.double() - y_u.double()).abs()
    expect_fused = dtype == torch.float32
    if expect_fused:
        ratio = (err / forward_bound(fused, x, y_u)).max().item()
    else:
        ratio = 0.0 if torch.equal(y_f, y_u) else float("inf")
    return {"fused": y_f.grad_fn.name() == FUSED_NODE, "expect_fused": expect_fused,
            "max_err": err.max().item(), "ratio": ratio,
            "layout_kept": y_f.stride() == y_u.stride(),
            "grads_equal": all(torch.equal(a, b) for a, b in zip(g_f, g_u))}
