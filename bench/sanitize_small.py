"""A small forward+backward over every CUDA launch path, for compute-sanitizer.

Few elements, but shapes that reach the plane grid (several segments, planes not a multiple of the
vector width, misaligned), the flat grid (channels_last, small inner, masks across planes), the
column grid (backward; two second-stage levels of the bias reduction), the scalar fallback
(misaligned x and grad_y), zero-size and bias-free tensors; every dtype and save mode, with and
without a bias gradient. Results are also checked against the CPU kernels, so a clean sanitizer
run is a correct run too.

  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python3 bench/sanitize_small.py
  (likewise --tool initcheck; racecheck with --dtypes float32,bfloat16)

(without the caching allocator every tensor is its own allocation, so an access past a tensor's
end is caught rather than landing in a neighbour's memory.)
"""
from __future__ import annotations

import argparse
import sys

import torch

import tat_ext
from tat_ext.ops import SAVE_KIND

# (shape, channel_dim, memory, has_bias)
CASES = [
    ((2, 3, 20, 41), 1, "contiguous", True),  # planes of 820: plane grid, mask on the flat grid
    ((2, 2, 32, 32), 1, "contiguous", True),  # planes of 1024: mask on the plane grid
    ((1, 2, 2000), 1, "offset", True),  # misaligned: scalar fallback
    ((3, 16, 5, 7), 1, "channels_last", True),  # channels_last, C multiple of every vector width
    ((2, 5, 3, 3), 1, "channels_last", True),  # C = 5: scalar columns
    ((4, 6, 7), 1, "contiguous", True),  # small inner
    ((3, 1000), 1, "contiguous", True),  # Linear-like, inner == 1
    ((5, 77), 1, "contiguous", False),  # no bias: one flat plane
    ((32, 64, 17, 17), 1, "channels_last", True),  # fp32: two levels of the bias reduction
    ((0, 3, 4), 1, "contiguous", True),  # zero-size
]


def make(shape, memory, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    flat = torch.randn(n + 1, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    if memory == "offset":
        return flat[1:].view(shape)
    x = flat[:n].view(shape)
    if memory == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    return x.clone()


def run(x, bias, grad, save, slope, scale, out_shift, channel_dim):
    x = x.detach().requires_grad_(True)
    b = None if bias is None else bias.detach().requires_grad_(True)
    y = tat_ext.trelu(x, b, slope=slope, scale=scale, out_shift=out_shift,
                      channel_dim=channel_dim, save=save)
    inputs = (x,) if b is None else (x, b)
    return (y,) + tuple(torch.autograd.grad(y, inputs, grad))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="float32,bfloat16,float16,float64")
    dtypes = [getattr(torch, d) for d in ap.parse_args().dtypes.split(",")]
    assert torch.cuda.is_available() and tat_ext._C.with_cuda, "needs a GPU and the CUDA build"
    checks = 0
    for shape, cd, memory, has_bias in CASES:
        for dtype in dtypes:
            x = make(shape, memory, dtype, "cuda")
            bias = torch.randn(shape[cd], device="cuda") if has_bias else None
            grad = make(shape, memory, dtype, "cuda", seed=1)  # "offset": misaligned too
            for save in ("input", "output", "mask"):
                out_shift = 0.1 if save == "mask" else 0.0
                got = run(x, bias, grad, save, 0.2, 1.3, out_shift, cd)
                want = run(x.cpu(), None if bias is None else bias.cpu(), grad.cpu(), save, 0.2,
                           1.3, out_shift, cd)
                assert torch.equal(got[0].cpu(), want[0]), (shape, memory, dtype, save)
                if len(got) > 1:
                    assert torch.equal(got[1].cpu(), want[1]), (shape, memory, dtype, save)
                if len(got) > 2:
                    torch.testing.assert_close(got[2].cpu(), want[2], rtol=1e-4, atol=1e-4)
                # The raw op without a bias gradient (the plain grad_x path).
                y, mask = torch.ops.tat_ext.trelu_forward(x, bias, 0.2, 1.3, 0.0, out_shift, cd,
                                                          SAVE_KIND[save])
                saved = {"input": x, "output": y, "mask": mask}[save]
                torch.ops.tat_ext.trelu_backward(grad, saved, bias if save == "input" else None,
                                                 SAVE_KIND[save], 0.2, 1.3, 0.0, out_shift, cd,
                                                 None)
                checks += 1
    torch.cuda.synchronize()
    print(f"sanitize_small: {checks} forward+backward checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
