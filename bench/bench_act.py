"""Fused transformed Leaky ReLU vs eager PyTorch vs torch.compile: forward, backward, fwd+bwd.

For [N, C, H, W] activations (a conv output) of 1 MB .. 1 GB, float32/bfloat16, NCHW and
channels_last, it times
  eager     scale * leaky_relu(x + bias, slope)             (what users write)
  compile   torch.compile of that same function (same run, same inputs)
  fused     tat_ext.trelu(x, bias, slope=, scale=)          (save="auto" -> "output")
and prints time, effective bandwidth (minimum bytes: fwd reads x + writes y; bwd reads grad_y +
the saved tensor and writes grad_x), its % of two copy ceilings measured in the same run, and the
ratios fused/eager and fused/compile (speed-ups, > 1 is faster). bwd is fwd+bwd minus fwd.
The ceilings: `copy` = dst.copy_(src) into a preallocated buffer; `clone` = src.clone(), which,
like any op returning a new tensor, also pays for fresh output memory (on the CPU, page faults of a
new allocation — a large share of the time there).

  python bench/bench_act.py                         # CPU, default sizes
  python bench/bench_act.py --device cuda --sizes-mb 16,64,256,1024 --json out.json

On the CPU, a large new tensor costs page faults on every allocation (glibc returns blocks over
32 MB to the OS when freed), for every variant alike; run with
MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 to keep freed memory in the
process and see the kernels against the copy ceiling.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import tat_ext

SLOPE, SCALE = 0.4259071946, 1.3011191752  # TReLU for a depth-50 vanilla net (REFERENCE.md)
CHANNELS, HW = 64, 32


def eager_chain(x, bias):
    return SCALE * F.leaky_relu(x + bias.view(1, -1, 1, 1), SLOPE)


def fused(x, bias):
    return tat_ext.trelu(x, bias, slope=SLOPE, scale=SCALE)


class Timer:
    """Median wall time of a callable; CUDA events with L2 flushed before every repetition."""

    def __init__(self, device: str, min_time: float, min_reps: int, max_reps: int):
        self.device, self.min_time, self.min_reps, self.max_reps = device, min_time, min_reps, max_reps
        self.flush = None
        if device == "cuda":
            l2 = torch.cuda.get_device_properties(0).L2_cache_size
            self.flush = torch.empty(max(4 * l2, 256 << 20), dtype=torch.uint8, device="cuda")

    def __call__(self, fn) -> float:
        fn()  # warm-up (and compilation)
        fn()
        times, spent = [], 0.0
        while len(times) < self.min_reps or (spent < self.min_time and len(times) < self.max_reps):
            if self.device == "cuda":
                self.flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                t = start.elapsed_time(end) / 1e3
            else:
                t0 = time.perf_counter()
                fn()
                t = time.perf_counter() - t0
            times.append(t)
            spent += t
        return statistics.median(times)


def copy_bandwidths(timer: Timer, device: str, nbytes: int) -> tuple[float, float]:
    """Bytes read + written per second by a copy into a preallocated buffer, and by clone()."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    t_copy = timer(lambda: dst.copy_(src))
    t_clone = timer(lambda: src.clone())
    return 2 * nbytes / t_copy, 2 * nbytes / t_clone


def make_inputs(size_mb: float, dtype: torch.dtype, layout: str, device: str):
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = max(1, round(size_mb * 2**20 / itemsize / (CHANNELS * HW * HW)))
    x = torch.randn(n, CHANNELS, HW, HW, dtype=dtype, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(CHANNELS, dtype=torch.float32 if dtype != torch.float64 else dtype, device=device)
    return x, bias


def bench_one(timer, fns, x, bias):
    """{variant: {fwd, fwdbwd, bwd}} seconds."""
    grad = torch.randn_like(x)
    xg = x.detach().requires_grad_(True)
    bg = bias.detach().requires_grad_(True)
    out = {}
    for name, fn in fns.items():
        def fwd():
            with torch.no_grad():
                fn(x, bias)

        def fwdbwd():
            y = fn(xg, bg)
            torch.autograd.backward(y, grad)
            xg.grad = None
            bg.grad = None

        t_f, t_fb = timer(fwd), timer(fwdbwd)
        out[name] = {"fwd": t_f, "fwdbwd": t_fb, "bwd": max(t_fb - t_f, 0.0)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes-mb", default="1,16,64,256", help="comma-separated input sizes in MB")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--layouts", default="nchw,channels_last")
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement (at least)")
    ap.add_argument("--min-reps", type=int, default=5)
    ap.add_argument("--max-reps", type=int, default=200)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    ap.add_argument("--json", help="also write the results as JSON to this path")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    try:
        sizes = [float(s) for s in args.sizes_mb.split(",")]
        dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    except (ValueError, AttributeError) as exc:
        ap.error(f"bad --sizes-mb/--dtypes: {exc}")
    layouts = args.layouts.split(",")
    if any(l not in ("nchw", "channels_last") for l in layouts):
        ap.error("--layouts takes nchw and/or channels_last")

    timer = Timer(args.device, args.min_time, args.min_reps, args.max_reps)
    machine = (torch.cuda.get_device_name(0) if args.device == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    ceiling, clone_ceiling = copy_bandwidths(
        timer, args.device,
        int(max(256, max(sizes)) * 2**20) if args.device == "cuda" else int(min(max(sizes), 256) * 2**20))
    print(f"# bench_act: {args.device} ({machine}); torch {torch.__version__}; python {platform.python_version()}")
    malloc_env = " ".join(f"{k}={os.environ[k]}" for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                                                            "THP_MEM_ALLOC_ENABLE") if k in os.environ)
    print(f"# command: {malloc_env + ' ' if malloc_env else ''}python "
          f"{' '.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])}")
    print(f"# copy ceilings (read+write): copy_ into a preallocated buffer {ceiling / 1e9:.1f} GB/s; "
          f"clone() {clone_ceiling / 1e9:.1f} GB/s")
    print("# time in ms; GB/s = minimum bytes / time; %copy, %clone = GB/s / ceiling; "
          "x-eager, x-compile = speed-up of fused (>1 is faster)")
    header = (f"{'dtype':9} {'layout':13} {'MB':>6} {'pass':7} {'eager':>9} {'compile':>9} {'fused':>9} "
              f"{'GB/s':>7} {'%copy':>6} {'%clone':>6} {'x-eager':>8} {'x-compile':>9}")
    print(header)
    print("-" * len(header))

    fns = {"eager": eager_chain, "fused": fused}
    records = []

    def save(complete: bool) -> None:
        """The results so far (rewritten after each configuration: a run cut short keeps them)."""
        if not args.json:
            return
        payload = dict(device=args.device, machine=machine, torch=torch.__version__,
                       copy_ceiling_gbs=ceiling / 1e9, clone_ceiling_gbs=clone_ceiling / 1e9,
                       command=" ".join(sys.argv), complete=complete, results=records)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.json)  # atomic: never a half-written results file

    for dtype in dtypes:
        for layout in layouts:
            for size in sizes:
                if not args.no_compile:
                    # A fresh compilation per configuration: reusing one would hit dynamo's
                    # recompile limit across shapes and silently fall back to eager.
                    torch._dynamo.reset()
                    fns["compile"] = torch.compile(eager_chain, dynamic=False)
                x, bias = make_inputs(size, dtype, layout, args.device)
                res = bench_one(timer, fns, x, bias)
                nbytes = x.numel() * x.element_size()
                moved = {"fwd": 2 * nbytes, "bwd": 3 * nbytes, "fwdbwd": 5 * nbytes}
                for phase in ("fwd", "bwd", "fwdbwd"):
                    t = {k: v[phase] for k, v in res.items()}
                    gbs = moved[phase] / t["fused"] / 1e9 if t["fused"] > 0 else math.inf
                    rec = dict(dtype=str(dtype).replace("torch.", ""), layout=layout, mb=nbytes / 2**20,
                               shape=list(x.shape), phase=phase, ms={k: v * 1e3 for k, v in t.items()},
                               fused_gbs=gbs, pct_ceiling=100 * gbs * 1e9 / ceiling,
                               pct_clone_ceiling=100 * gbs * 1e9 / clone_ceiling,
                               speedup_vs_eager=t["eager"] / t["fused"] if t["fused"] else math.inf,
                               speedup_vs_compile=(t["compile"] / t["fused"] if "compile" in t and t["fused"]
                                                   else None))
                    records.append(rec)
                    comp = f"{t['compile'] * 1e3:9.3f}" if "compile" in t else f"{'-':>9}"
                    xc = f"{rec['speedup_vs_compile']:9.2f}" if rec["speedup_vs_compile"] else f"{'-':>9}"
                    print(f"{rec['dtype']:9} {layout:13} {rec['mb']:6.0f} {phase:7} {t['eager'] * 1e3:9.3f} "
                          f"{comp} {t['fused'] * 1e3:9.3f} {gbs:7.1f} {rec['pct_ceiling']:6.1f} "
                          f"{rec['pct_clone_ceiling']:6.1f} "
                          f"{rec['speedup_vs_eager']:8.2f} {xc}", flush=True)
                del x, bias
                save(complete=False)
    save(complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
