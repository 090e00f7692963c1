"""The main job for now: check the fused op against the reference and time it against eager.

    python -m tat_ext.demo [--device cpu|cuda]

Exit status 1 if the fused op disagrees with the pure-PyTorch reference.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import tat_ext
from tat_ext import _extension, reference


def _time(fn, device: str, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fwd_bwd(fn, x, bias, grad):
    def run():
        xg = x.detach().requires_grad_(True)
        bg = bias.detach().requires_grad_(True)
        y = fn(xg, bg)
        y.backward(grad)
        return y, xg.grad, bg.grad
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    device = args.device

    print(f"tat_ext {tat_ext.__version__} | torch {torch.__version__} | device {device}")
    if _extension.AVAILABLE:
        print(f"compiled extension: CUDA kernels={_extension.WITH_CUDA}, OpenMP={tat_ext._C.with_openmp}")
    else:
        print(f"compiled extension NOT available ({_extension.LOAD_ERROR}); the reference is used")

    from tat_ext.transform import solve_trelu

    params = solve_trelu(49)  # ResNet-50-shaped vanilla net: 49 nonlinear layers (docs/math.md)
    slope, scale = params.slope, params.scale
    print(f"TReLU for 49 nonlinear layers, eta=0.9: slope={slope:.10f} scale={scale:.10f}")

    def fused(x, b):
        return tat_ext.trelu(x, b, slope=slope, scale=scale)

    def ref(x, b):
        return reference.trelu(x, b, slope=slope, scale=scale)

    def eager(x, b):
        return scale * F.leaky_relu(x + b.view(1, -1, 1, 1), slope)

    ok = True
    print(f"\n{'dtype':9} {'layout':13} {'max|y-ref|':>11} {'max|dx-ref|':>12} {'max|db-ref|':>12} "
          f"{'fused ms':>9} {'eager ms':>9} {'speed-up':>9}")
    g = torch.Generator(device="cpu").manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for layout in ("nchw", "channels_last"):
            x = torch.randn(32, 64, 32, 32, generator=g).to(device=device, dtype=dtype)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            bias = torch.randn(64, generator=g).to(device)
            grad = torch.randn(x.shape, generator=g).to(device=device, dtype=dtype)
            y, dx, db = _fwd_bwd(fused, x, bias, grad)()
            y_r, dx_r, db_r = _fwd_bwd(ref, x, bias, grad)()
            errs = [(a.double() - b.double()).abs().max().item() for a, b in ((y, y_r), (dx, dx_r), (db, db_r))]
            tol = [0.0, 1e-6 if dtype == torch.float32 else 1e-2, 1e-3]
            ok &= all(e <= t * max(1.0, r.abs().max().item()) for e, t, r in zip(errs, tol, (y_r, dx_r, db_r)))
            t_fused = _time(_fwd_bwd(fused, x, bias, grad), device, args.reps)
            t_eager = _time(_fwd_bwd(eager, x, bias, grad), device, args.reps)
            print(f"{str(dtype)[6:]:9} {layout:13} {errs[0]:11.2e} {errs[1]:12.2e} {errs[2]:12.2e} "
                  f"{t_fused * 1e3:9.3f} {t_eager * 1e3:9.3f} {t_eager / t_fused:8.2f}x")
    print("\nfused vs reference:", "OK" if ok else "MISMATCH")
    print("(speed-up = eager fwd+bwd time / fused fwd+bwd time; single run, see bench/ for tables)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
