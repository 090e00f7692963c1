"""`tat-ext bench`: eager PyTorch vs torch.compile vs tat_ext, measured in one run.

(a) activation: y = scale * (leaky_relu(x + bias + in_shift, slope) + out_shift) on [N, 64, H, W]
    tensors of each size, as written in eager PyTorch, torch.compile of that same function
    (compiled afresh for every shape), and tat_ext.trelu: forward (as in training: the inputs
    require grad, so what backward needs is saved), backward (fwd+bwd minus fwd) and fwd+bwd time
    (median and interquartile range), effective GB/s (minimum bytes: forward reads
    x and writes y; backward reads grad_y and the saved tensor and writes grad_x) and its share of
    a copy_ of the same size into a preallocated buffer timed in the same run, peak memory, bytes
    saved for backward per element (inputs and the output not counted), and on CUDA kernel
    launches per fwd+bwd and the time per call when calls are issued back to back.
(b) model: training steps (forward, cross-entropy, backward, SGD) of a deep vanilla net built from
    nn.Conv2d + leaky_relu (eager), torch.compile of it (compile), tat_ext.nn.TATConv2d with the
    fused activation (fused; fused-compile on request) and with conv, bias and activation in one
    oneDNN primitive (fused-conv: TATConv2d's fused_conv, CPU fp32), same weights: step time,
    no_grad forward time, peak memory, saved-for-backward bytes, kernel launches (CUDA).

Writes OUT/bench.json (rewritten atomically after every configuration, so an interrupted run
keeps what it measured), OUT/report.txt (the printed tables), OUT/activation_gbs.png and
OUT/train_step.png. On CUDA each timed call starts after a 4x-L2 buffer is overwritten and the
GPU is idle. On the CPU, glibc returns freed blocks over 32 MB to the OS, so every large new
tensor pays page faults in every variant; MALLOC_MMAP_THRESHOLD_=4294967296
MALLOC_TRIM_THRESHOLD_=68719476736 keep freed memory in the process (see bench/results/).

Presets (explicit options override them):
  --preset quick   tiny sizes and model, a few repetitions: a smoke test in well under a minute
  --preset gpu     what bench/gpu_check.sh records: 16M and 64M elements (64-256 MB in fp32),
                   fp32/bf16, both layouts,
                   a vanilla TAT ResNet-50 (width 64, 32x32, batch 128, bf16 channels_last)
                   and the fixed cost per call (sized for about a minute per --part on an
                   H100; an estimate)
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import shlex
import time
from typing import Dict, List, Optional

import torch

from tat_ext.tools import overhead, workloads
from tat_ext.tools.common import (DTYPE_NAMES, Report, UsageError, format_table, human_count, parse_dtype,
                                  require_extension, set_threads)
from tat_ext.tools.timing import (Timer, available_bytes, kernel_launches, peak_memory,
                                  saved_bytes, synchronize)
from tat_ext.utils.devices import resolve_device
from tat_ext.utils.files import ensure_writable_dir, write_json_atomic
from tat_ext.utils.machine import describe_device, environment
from tat_ext.utils.progress import progress_bar

__all__ = ["add_arguments", "main", "model_table", "optimizer_table", "PRESETS"]

ACTIVATION_VARIANTS = ("eager", "compile", "fused")
# Marks a timing whose spread (half the interquartile range) exceeds its median: not to be trusted.
NOISY_MARK = "*"
MODEL_VARIANTS = ("eager", "compile", "fused", "fused-compile", "fused-conv")
PARTS = ("activation", "model", "overhead")
OVERHEAD_SIZES = (256, 2048, 8192)  # elements: where a call's fixed cost dominates
_BACK_TO_BACK_CALLS = 100
_BACK_TO_BACK_MAX_ELEMENTS = 1 << 20

# Defaults per device, then per preset; explicit options win over both.
_DEFAULTS = {
    "cpu": dict(sizes="2K,8K,64K,1M,4M,16M", dtype="float32,bfloat16", layout="nchw,channels_last",
                reps=10, min_time=0.2, model="conv-chain", **workloads.MODEL_DEFAULTS["cpu"]),
    "cuda": dict(sizes="2K,8K,1M,16M,64M,256M", dtype="float32,bfloat16",
                 layout="nchw,channels_last", reps=20, min_time=0.1, model="conv-chain",
                 **workloads.MODEL_DEFAULTS["cuda"]),
}
PRESETS = {
    "quick": dict(sizes="2K,64K", dtype="float32", layout="nchw", depth=13, width=8, resolution=8,
                  batch=4, reps=3, min_time=0.0),
    "gpu": dict(sizes="16M,64M", dtype="float32,bfloat16", layout="nchw,channels_last",
                model="vanilla-resnet", model_dtype="bfloat16", model_layout="channels_last",
                depth=50, width=64, resolution=32, batch=128, reps=20, min_time=0.05),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="quick or gpu (see above)")
    parser.add_argument("--part", default="activation,model,overhead",
                        help="comma-separated: activation, model, overhead (fixed cost per call "
                             "on 256-8K elements); default all three")
    parser.add_argument("--sizes", help="activation sizes in elements, e.g. 2K,8K,1M,64M "
                                        "(K, M, G = 1024^1,2,3; default depends on the device)")
    parser.add_argument("--dtype", help="comma-separated: float32, bfloat16, float16, float64 "
                                        "(default float32,bfloat16)")
    parser.add_argument("--layout", help="comma-separated: nchw, channels_last (default both)")
    parser.add_argument("--model-dtype", help="dtypes of the training step (default: --dtype's)")
    parser.add_argument("--model-layout", help="layouts of the training step (default: --layout's)")
    parser.add_argument("--form", default="trelu",
                        help="activation forms: trelu (scale*leaky_relu(x+b)), shifted (with "
                             "in_shift/out_shift), or trelu,shifted (default trelu)")
    parser.add_argument("--variants", help=f"model variants from {', '.join(MODEL_VARIANTS)} "
                                           "(default eager,compile,fused,fused-conv; the "
                                           "activation part runs the first three)")
    parser.add_argument("--optimizers", default="sgd",
                        help=f"optimizers of the training step, from {', '.join(workloads.OPTIMIZERS)} "
                             "(default sgd; kfac-c10: K-FAC's curvature every 10 steps; K-FAC runs "
                             "the eager variants only, its inverse update is timed apart)")
    parser.add_argument("--model",
                        help=f"model for the training step: {', '.join(workloads.MODELS)} "
                             "(default conv-chain; the gpu preset: vanilla-resnet)")
    parser.add_argument("--depth", type=int, help="nonlinear layers (default 50; >= 13)")
    parser.add_argument("--width", type=int, help="channels (default 16 on cpu, 64 on cuda)")
    parser.add_argument("--resolution", type=int, help="input height = width (default 16 / 32)")
    parser.add_argument("--batch", type=int, help="batch size (default 8 / 128)")
    parser.add_argument("--reps", type=int, help="timed repetitions per measurement, at least")
    parser.add_argument("--min-time", type=float, help="seconds per measurement, at least")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads; default: "
                                                    "torch's, one per core)")
    parser.add_argument("--time-budget", type=float,
                        help="seconds; configurations not started by then are skipped and "
                             "listed as such (the JSON stays valid)")
    parser.add_argument("--out", default="tat-ext-bench", help="output folder (default ./tat-ext-bench)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclasses.dataclass
class _Settings:
    device: torch.device
    parts: List[str]
    sizes: List[int]
    dtypes: List[torch.dtype]
    layouts: List[str]
    model_dtypes: List[torch.dtype]
    model_layouts: List[str]
    forms: List[str]
    variants: List[str]
    optimizers: List[str]
    spec: workloads.ModelSpec
    reps: int
    min_time: float
    time_budget: Optional[float]
    out: str
    plots: bool
    progress: bool

    def to_json(self) -> dict:
        return {"device": str(self.device), "parts": self.parts, "sizes": self.sizes,
                "dtypes": [_name(d) for d in self.dtypes], "layouts": self.layouts,
                "model_dtypes": [_name(d) for d in self.model_dtypes],
                "model_layouts": self.model_layouts, "threads": torch.get_num_threads(),
                "forms": self.forms, "variants": self.variants,
                "model": dataclasses.asdict(self.spec), "reps": self.reps,
                "min_time_s": self.min_time, "time_budget_s": self.time_budget}


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _choices(text: str, allowed, argument: str) -> List[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise UsageError(argument, f"unknown value {bad[0] if bad else text!r}; "
                                   f"choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def _at_least(value, argument: str, minimum: float = 1):
    if not (math.isfinite(value) and value >= minimum):  # also rejects NaN
        raise UsageError(argument, f"must be >= {minimum:g}, got {value}")
    return value


def _settings(args: argparse.Namespace) -> _Settings:
    device = resolve_device(args.device)
    values = dict(_DEFAULTS[device.type], model_dtype=None, model_layout=None)
    values.update(PRESETS.get(args.preset, {}))
    for key in values:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    parts = _choices(args.part, PARTS, "--part")
    variants = _choices(args.variants or "eager,compile,fused,fused-conv", MODEL_VARIANTS,
                        "--variants")
    if "eager" not in variants:
        raise UsageError("--variants", "eager is the baseline every ratio refers to; keep it")
    # Checked even when only the activation part runs: a bad option is never silently ignored.
    spec = workloads.model_spec(values["model"], values["depth"], values["width"],
                                values["resolution"], values["batch"])
    if args.time_budget is not None:
        _at_least(args.time_budget, "--time-budget", 0.0)
    dtypes = [parse_dtype(d) for d in _choices(values["dtype"], list(DTYPE_NAMES), "--dtype")]
    layouts = _choices(values["layout"], list(workloads.LAYOUTS), "--layout")
    return _Settings(
        device=device, parts=parts, sizes=workloads.sizes_from_text(values["sizes"]),
        dtypes=dtypes, layouts=layouts,
        model_dtypes=dtypes if values["model_dtype"] is None else [
            parse_dtype(d, "--model-dtype")
            for d in _choices(values["model_dtype"], list(DTYPE_NAMES), "--model-dtype")],
        model_layouts=layouts if values["model_layout"] is None else _choices(
            values["model_layout"], list(workloads.LAYOUTS), "--model-layout"),
        forms=_choices(args.form, list(workloads.ACTIVATION_FORMS), "--form"),
        variants=variants, optimizers=_choices(args.optimizers, workloads.OPTIMIZERS, "--optimizers"),
        spec=spec, reps=int(_at_least(values["reps"], "--reps")),
        min_time=float(_at_least(values["min_time"], "--min-time", 0.0)),
        time_budget=args.time_budget, out=args.out, plots=not args.no_plots,
        progress=not args.no_progress)


def _check_memory(s: _Settings) -> None:
    """Every configuration must fit before the first one allocates."""
    free = available_bytes(s.device)
    if "activation" in s.parts:
        for dtype in s.dtypes:
            for size in s.sizes:
                shape = workloads.activation_shape(size)
                n = math.prod(shape)
                workloads.check_fits(workloads.activation_bytes_estimate(n, dtype.itemsize), free,
                                     "--sizes", f"size {human_count(size)} ({n:,} elements of "
                                                f"{_name(dtype)}, x = "
                                                f"{n * dtype.itemsize / 2 ** 20:,.0f} MiB)")
    if "model" in s.parts:
        for dtype in s.model_dtypes:
            workloads.check_fits(workloads.model_bytes_estimate(s.spec, dtype.itemsize), free,
                                 "--batch", f"the {s.spec.name} training step (depth "
                                            f"{s.spec.depth}, width {s.spec.width}, batch "
                                            f"{s.spec.batch}, {s.spec.resolution}x"
                                            f"{s.spec.resolution}, {_name(dtype)})")


class _Results:
    """The JSON document, rewritten atomically after each configuration."""

    def __init__(self, s: _Settings, command: str) -> None:
        self.path = os.path.join(s.out, "bench.json")
        self.doc = {"tool": "tat-ext bench", "command": command,
                    "environment": environment([s.device]), "device": describe_device(s.device),
                    "settings": s.to_json(), "allocator_env": _malloc_env(), "complete": False,
                    "activation": [], "model": [], "overhead": [], "skipped": []}
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.doc)


def _malloc_env() -> Dict[str, str]:
    keys = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "PYTORCH_CUDA_ALLOC_CONF")
    return {k: os.environ[k] for k in keys if k in os.environ}


def _fresh_compile(fn):
    # A fresh compilation per configuration: reusing one across shapes would hit dynamo's
    # recompile limit and silently fall back to eager.
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def _measure_activation(s: _Settings, timer: Timer, form_name: str, dtype: torch.dtype,
                        layout: str, size: int) -> dict:
    device = s.device
    shape = workloads.activation_shape(size)
    form = workloads.ACTIVATION_FORMS[form_name]
    fns = workloads.activation_variants(form)
    if "compile" in s.variants:
        fns["compile"] = _fresh_compile(fns["eager"])
    fns = {k: fns[k] for k in ACTIVATION_VARIANTS if k in fns}
    g = torch.Generator(device=device).manual_seed(size)
    fmt = workloads.LAYOUTS[layout]
    xg = torch.randn(shape, generator=g, device=device, dtype=dtype).contiguous(memory_format=fmt)
    xg.requires_grad_(True)
    bg = torch.randn(shape[1], generator=g, device=device, dtype=dtype).requires_grad_(True)
    grad = torch.randn(shape, generator=g, device=device, dtype=dtype).contiguous(memory_format=fmt)
    nbytes = xg.numel() * xg.element_size()

    src = torch.empty_like(xg).normal_()
    dst = torch.empty_like(xg)
    copy = timer(lambda: dst.copy_(src))
    del src, dst
    copy_gbs = 2 * nbytes / copy.median / 1e9

    moved = {"fwd": 2 * nbytes, "bwd": 3 * nbytes, "fwdbwd": 5 * nbytes}
    record = {"form": form_name, "dtype": _name(dtype), "layout": layout, "size": size,
              "elements": xg.numel(), "shape": list(shape), "bytes": nbytes,
              "copy": dict(copy.to_json(), gbs=copy_gbs), "variants": {}}
    for name, fn in fns.items():
        def fwd(fn=fn):
            return fn(xg, bg)  # recorded for backward, as in training (one compiled graph)

        def fwdbwd(fn=fn):
            return torch.autograd.grad(fn(xg, bg), (xg, bg), grad)

        t_fwd, t_fb = timer(fwd), timer(fwdbwd)
        times = {"fwd": t_fwd.median, "fwdbwd": t_fb.median,
                 "bwd": max(t_fb.median - t_fwd.median, 0.0)}
        gbs = {k: (moved[k] / t / 1e9 if t > 0 else None) for k, t in times.items()}
        saved = saved_bytes(lambda: fn(xg, bg), exclude=(xg, bg))
        saved_extra = saved_bytes(lambda: fn(xg, bg), exclude=(xg, bg), exclude_output=True)
        v = {"fwd": t_fwd.to_json(), "fwdbwd": t_fb.to_json(), "bwd_ms": times["bwd"] * 1e3,
             "gbs": gbs, "pct_copy": {k: (100 * b / copy_gbs if b else None) for k, b in gbs.items()},
             "saved_bytes": saved, "saved_bytes_per_element": saved_extra / xg.numel(),
             "peak_bytes": peak_memory(fwdbwd, device),
             "kernel_launches": kernel_launches(fwdbwd, device)}
        if device.type == "cuda" and xg.numel() <= _BACK_TO_BACK_MAX_ELEMENTS:
            v["back_to_back_us"] = _back_to_back(fwdbwd, device) * 1e6
        record["variants"][name] = v
    record["speedup"] = _speedups({k: {p: v[p]["median_ms"] for p in ("fwd", "fwdbwd")}
                                   for k, v in record["variants"].items()})
    return record


def _back_to_back(fn, device: torch.device) -> float:
    """Seconds per call when calls are queued without waiting: the host-side cost per call once
    it exceeds the GPU time (tiny tensors)."""
    fn()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(_BACK_TO_BACK_CALLS):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) / _BACK_TO_BACK_CALLS


def _speedups(ms: Dict[str, Dict[str, float]]) -> dict:
    """time(baseline) / time(variant): > 1 means the variant is faster."""
    out = {}
    for base in ("eager", "compile"):
        if base not in ms:
            continue
        for name, phases in ms.items():
            if name != base:
                out[f"{name}_vs_{base}"] = {p: (ms[base][p] / t if t > 0 else None)
                                            for p, t in phases.items()}
    return out


def _per_step(stats: dict, steps: int) -> dict:
    """A timing of ``steps`` steps per call as the time per step."""
    return {k: v / steps if k.endswith("_ms") else v for k, v in stats.items()}


def _measure_model(s: _Settings, timer: Timer, dtype: torch.dtype, layout: str, optimizer: str = "sgd") -> dict:
    device, spec = s.device, s.spec
    unfused, fused = workloads.model_pair(spec, device, dtype, layout)
    batch, target = workloads.make_batch(spec, device, dtype, layout)
    record = {"model": spec.name, "depth": spec.depth, "width": spec.width,
              "resolution": spec.resolution, "batch": spec.batch, "dtype": _name(dtype),
              "layout": layout, "optimizer": optimizer, "variants": {}, "variants_skipped": {}}
    kfac = optimizer.startswith("kfac")
    for name in s.variants:
        if kfac and name.endswith("compile"):  # its capture hooks do not run inside a compiled graph
            record["variants_skipped"][name] = "K-FAC needs the eager model (tat_ext.optim.KFAC)"
            continue
        base = unfused if name in ("eager", "compile") else fused
        model = copy.deepcopy(base)  # every variant starts from the same weights
        workloads.set_fused_conv(model, name == "fused-conv")
        if name.endswith("compile"):
            torch._dynamo.reset()
            model = torch.compile(model)
        step = workloads.make_train_step(model, batch, target, optimizer=optimizer)
        loss = step().item()  # also the compilation, outside the timing
        t = timer(step)
        with torch.no_grad():
            model(batch)  # a no_grad graph of its own for torch.compile, outside the timing
            t_fwd = timer(lambda: model(batch))
        params = list(model.parameters())
        saved = saved_bytes(lambda: model(batch), exclude=params + [batch])
        launches = kernel_launches(step, device)
        record["variants"][name] = {
            "step": _per_step(t.to_json(), step.steps), "forward_no_grad": t_fwd.to_json(),
            "loss_first_step": loss, "saved_bytes": saved,
            "peak_bytes": peak_memory(step, device),
            "kernel_launches": None if launches is None else launches / step.steps}
        if kfac:  # amortized over the recipe's inverse period
            inverse = timer(step.refresh_inverses).to_json()
            record["variants"][name]["inverse_update"] = inverse
            record["variants"][name]["amortized_step_ms"] = (record["variants"][name]["step"]["median_ms"]
                                                             + inverse["median_ms"] / workloads.KFAC_INVERSE_PERIOD)
        del model, step
    record["speedup"] = _speedups({k: {"step": v["step"]["median_ms"],
                                        "forward_no_grad": v["forward_no_grad"]["median_ms"]}
                                   for k, v in record["variants"].items()})
    losses = [v["loss_first_step"] for v in record["variants"].values()]
    record["losses_agree"] = max(losses) - min(losses) <= 1e-3 * max(1.0, abs(losses[0])) * (
        1 if dtype in (torch.float32, torch.float64) else 30)
    return record


def _half_iqr(stats: dict) -> float:
    return (stats["q3_ms"] - stats["q1_ms"]) / 2


def _ms(stats: dict) -> str:
    """median ± half IQR; marked with NOISY_MARK when the spread exceeds the median."""
    return f"{stats['median_ms']:.3f}±{_half_iqr(stats):.3f}" + (NOISY_MARK if _noisy(stats) else "")


def _noisy(stats: dict) -> bool:
    return _half_iqr(stats) > stats["median_ms"]


def _noisy_note(stats: List[dict]) -> str:
    """The table's footnote when a timing is marked noisy (else nothing)."""
    if not any(_noisy(s) for s in stats):
        return ""
    return (f"\n{NOISY_MARK} noisy: the spread (half the interquartile range) exceeds the median; rerun "
            "with more --reps, fewer --threads, or on a quieter machine")


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2 ** 20:.1f}"


def activation_table(records: List[dict]) -> str:
    rows, right = [], [False] * 5 + [True] * 9
    for r in records:
        v = r["variants"]
        for phase in ("fwd", "bwd", "fwdbwd"):
            def t(name):
                if name not in v:
                    return "-"
                return f"{v[name]['bwd_ms']:.3f}" if phase == "bwd" else _ms(v[name][phase])
            fused = v.get("fused", {})
            sp = r["speedup"]
            vs_e = sp.get("fused_vs_eager", {}).get(phase)
            vs_c = sp.get("fused_vs_compile", {}).get(phase)
            if phase == "bwd":
                eb, cb, fb = (v.get(n, {}).get("bwd_ms") for n in ("eager", "compile", "fused"))
                vs_e = eb / fb if eb and fb else None
                vs_c = cb / fb if cb and fb else None
            rows.append([r["form"], r["dtype"], r["layout"], f"{r['elements']:,}", phase,
                         t("eager"), t("compile"), t("fused"),
                         _ratio(fused.get("gbs", {}).get(phase)),
                         _ratio(fused.get("pct_copy", {}).get(phase)), f"{r['copy']['gbs']:.1f}",
                         _ratio(vs_e), _ratio(vs_c)])
    stats = [v[phase] for r in records for v in r["variants"].values() for phase in ("fwd", "fwdbwd")]
    return format_table(["form", "dtype", "layout", "elements", "pass", "eager ms", "compile ms",
                         "fused ms", "fused GB/s", "%copy", "copy GB/s", "x eager", "x compile"],
                        rows, right=right[:13]) + _noisy_note(stats)


def activation_memory_table(records: List[dict]) -> str:
    rows = []
    for r in records:
        for name, v in r["variants"].items():
            rows.append([r["dtype"], r["layout"], f"{r['elements']:,}", name,
                         f"{v['saved_bytes_per_element']:.2f}", _mib(v["peak_bytes"]),
                         "-" if v["kernel_launches"] is None else str(v["kernel_launches"]),
                         f"{v['back_to_back_us']:.1f}" if "back_to_back_us" in v else "-"])
    return format_table(["dtype", "layout", "elements", "variant", "saved B/elem", "peak MiB",
                         "launches", "us/call b2b"], rows,
                        right=[False, False, True, False, True, True, True, True])


def overhead_table(records: List[dict], device: torch.device) -> str:
    rows = []
    for r in records:
        v = r["variants"]
        missed = overhead.goals(r, device)
        rows.append([human_count(r["elements"]), *(f"{v[k]['fwd_us']:.2f}" for k in
                     overhead.VARIANTS), f"{r['fused_fwd_extra_us']:+.2f}",
                     *(f"{v[k]['fwdbwd_us']:.1f}" for k in overhead.VARIANTS),
                     f"{r['fused_fwdbwd_vs_eager']:.2f}", "met" if not missed else
                     "MISSED: " + "; ".join(missed)])
    return format_table(["size", "fwd leaky", "fwd eager", "fwd fused", "fused-leaky",
                         "f+b leaky", "f+b eager", "f+b fused", "fused/eager", "goals"], rows)


def model_table(records: List[dict]) -> str:
    rows = []
    for r in records:
        for name, v in r["variants"].items():
            sp = r["speedup"]
            rows.append([f"{r['model']} d{r['depth']} w{r['width']} {r['resolution']}px b{r['batch']}",
                         r["dtype"], r["layout"], r.get("optimizer", "sgd"), name, _ms(v["step"]),
                         _ratio(sp.get(f"{name}_vs_eager", {}).get("step")),
                         _ratio(sp.get(f"{name}_vs_compile", {}).get("step")),
                         _ms(v["forward_no_grad"]),
                         _ratio(sp.get(f"{name}_vs_eager", {}).get("forward_no_grad")),
                         _mib(v["peak_bytes"]), _mib(v["saved_bytes"]),
                         "-" if v["kernel_launches"] is None else f"{v['kernel_launches']:g}",
                         f"{v['loss_first_step']:.4f}"])
    stats = [v[k] for r in records for v in r["variants"].values() for k in ("step", "forward_no_grad")]
    return format_table(["model", "dtype", "layout", "optimizer", "variant", "step ms", "x eager", "x compile",
                         "no_grad fwd ms", "fwd x eager", "peak MiB", "saved MiB", "launches",
                         "loss"], rows, right=[False] * 5 + [True] * 9) + _noisy_note(stats)


def optimizer_table(records: List[dict]) -> str:
    """Per (dtype, layout, variant): each optimizer's step time, K-FAC's inverse update and its
    step amortized over the inverse period, and the ratio to Adam's step (or the first listed)."""
    groups: Dict[tuple, Dict[str, dict]] = {}
    for r in records:
        for name, v in r["variants"].items():
            groups.setdefault((r["dtype"], r["layout"], name), {})[r.get("optimizer", "sgd")] = v
    rows = []
    for (dtype, layout, name), by_opt in groups.items():
        base_name = "adam" if "adam" in by_opt else next(iter(by_opt))
        base = by_opt[base_name]["step"]["median_ms"]
        for opt, v in by_opt.items():
            amortized = v.get("amortized_step_ms", v["step"]["median_ms"])
            rows.append([dtype, layout, name, opt, _ms(v["step"]),
                         _ms(v["inverse_update"]) if "inverse_update" in v else "-", f"{amortized:.3f}",
                         f"{amortized / base:.2f} ({base_name})" if base > 0 else "-"])
    return format_table(["dtype", "layout", "variant", "optimizer", "step ms", "inverse update ms",
                         f"amortized ms (inverse every {workloads.KFAC_INVERSE_PERIOD})", "x step of"], rows,
                        right=[False] * 4 + [True] * 4)


def main(args: argparse.Namespace) -> int:
    """Run `tat-ext bench`; returns 0 (UsageError for bad options)."""
    set_threads(args.threads)
    s = _settings(args)
    require_extension(s.device)
    _check_memory(s)
    s.out = ensure_writable_dir(s.out, "--out")
    command = "tat-ext " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["bench"]))
    results = _Results(s, command)
    timer = Timer(s.device, reps=s.reps, min_time=s.min_time)
    say = Report()
    env = results.doc["environment"]
    say(f"# tat-ext bench on {results.doc['device']}; tat_ext {env['tat_ext']}, torch {env['torch']}, "
        f"python {env['python']}")
    say("# command: " + " ".join([f"{k}={v}" for k, v in _malloc_env().items()] + [command]))
    # (part, form, dtype, layout, size); form: the activation's form, or the training step's optimizer.
    # The training step first: a time budget should cut activation sizes instead.
    configs = []
    if "model" in s.parts:
        configs += [("model", o, d, l, None) for d in s.model_dtypes for l in s.model_layouts
                    for o in s.optimizers]
    if "overhead" in s.parts:
        configs += [("overhead", None, torch.float32, "-", n) for n in OVERHEAD_SIZES]
    if "activation" in s.parts:
        configs += [("activation", form, d, l, n) for form in s.forms for d in s.dtypes
                    for l in s.layouts for n in s.sizes]
    start = time.perf_counter()
    with progress_bar(total=len(configs), desc="bench", unit="config", disable=not s.progress) as bar:
        for part, form, dtype, layout, size in configs:
            what = (f"overhead {human_count(size)}" if part == "overhead" else
                    f"model {s.spec.name} {_name(dtype)} {layout}" + (f" {form}" if len(s.optimizers) > 1 else "")
                    if part == "model" else f"{part} {form} {_name(dtype)} {layout} {human_count(size)}")
            if s.time_budget is not None and time.perf_counter() - start > s.time_budget:
                results.doc["skipped"].append(what)
                bar.update()
                continue
            bar.set_postfix_str(what)
            try:
                if part == "activation":
                    results.doc["activation"].append(
                        _measure_activation(s, timer, form, dtype, layout, size))
                elif part == "overhead":
                    results.doc["overhead"].append(overhead.measure(s.device, size, dtype))
                else:
                    results.doc["model"].append(_measure_model(s, timer, dtype, layout, form))
            except torch.OutOfMemoryError:
                raise UsageError("--sizes" if part == "activation" else "--batch",
                                 f"out of memory at {what} (what was measured before is in "
                                 f"{results.path})") from None
            results.save()
            bar.update()
    results.doc["complete"] = not results.doc["skipped"]
    results.doc["seconds"] = time.perf_counter() - start
    results.save()
    _print_report(results.doc, say)
    if s.plots:
        from tat_ext.tools import plots

        try:
            for path in plots.draw(results.doc, s.out):
                say(f"plot: {path}")
        except ImportError as error:  # matplotlib absent (an offline GPU machine): keep the rest
            say(f"plots skipped: {error}")
    say(f"results: {results.path}")
    say.save(os.path.join(s.out, "report.txt"))
    return 0


def _print_report(doc: dict, say) -> None:
    if doc["activation"]:
        say()
        say("## activation: time per call (median ± half the interquartile range); GB/s = minimum "
            "bytes / time; %copy = share of a preallocated copy_ of the same size; x eager, "
            "x compile = speed-up of fused (> 1 is faster)")
        say(activation_table(doc["activation"]))
        say()
        say("## activation, fwd+bwd: bytes saved for backward per element (inputs and output not "
            "counted), peak memory above the inputs, kernel launches and time per call issued "
            "back to back (CUDA)")
        say(activation_memory_table(doc["activation"]))
    if doc["model"]:
        say()
        say("## training step (forward, cross-entropy, backward, SGD): time (median ± half IQR), "
            "speed-up against eager and torch.compile, peak memory above the weights and batch, "
            "saved-for-backward MiB, kernel launches (CUDA), first-step loss (same weights)")
        say(model_table(doc["model"]))
        if len({r.get("optimizer", "sgd") for r in doc["model"]}) > 1:
            say()
            say("## training step by optimizer: K-FAC's step (curvature every step, or every 10 for kfac-c10) "
                "without its inverse update, the inverse update of all layers, and the step amortized over "
                f"{workloads.KFAC_INVERSE_PERIOD} steps; x = amortized step / the named optimizer's step")
            say(optimizer_table(doc["model"]))
        for r in doc["model"]:
            for name, why in r.get("variants_skipped", {}).items():
                say(f"note: {name} with {r['optimizer']} not measured: {why}")
        for r in doc["model"]:
            if not r["losses_agree"]:
                say(f"WARNING: first-step losses differ between variants ({r['dtype']}, "
                    f"{r['layout']}): the variants do not compute the same function")
    if doc["overhead"]:
        say()
        say("## fixed cost per call on tiny tensors (us, host clock, best of 7 batches of calls "
            "issued back to back; inputs require grad): F.leaky_relu alone, the eager "
            "composition scale * leaky_relu(x + b), and tat_ext.trelu")
        say(overhead_table(doc["overhead"], torch.device(doc["settings"]["device"])))
    if doc["skipped"]:
        say()
        say(f"skipped (time budget): {'; '.join(doc['skipped'])}")
    say()
    say(f"total {doc['seconds']:.1f} s")
