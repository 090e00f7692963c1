"""`tat-ext profile`: where a training step's time goes, unfused vs fused.

Runs a few training steps (forward, cross-entropy, backward, SGD) of the model under
torch.profiler for each variant — eager (nn.Conv2d + leaky_relu) and fused (tat_ext's
TATConv2d) by default; compile and fused-compile on request — after warm-up steps, and writes:

  OUT/trace_<variant>.json   Chrome/Perfetto trace (open in https://ui.perfetto.dev or
                             chrome://tracing)
  OUT/profile.json           the per-kernel summary and per-category totals
  OUT/profile.txt            the printed tables

The per-kernel table lists, per variant, the kernels (CUDA: GPU kernels; CPU: operators) with the
most self time: calls and milliseconds per step and their share of the step's wall time. Each is
put in a category (activation, conv/matmul, loss, optimizer, other) by its name, so the category
table shows how much time the activation took in each variant and what fusion removed.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import tempfile
import time
from typing import Dict, List

import torch

from tat_ext.tools import workloads
from tat_ext.tools.common import Report, UsageError, format_table, parse_dtype, require_extension, set_threads
from tat_ext.tools.timing import available_bytes, is_gpu_kernel, quiet_stderr, synchronize
from tat_ext.utils.devices import resolve_device
from tat_ext.utils.files import ensure_writable_dir, write_json_atomic
from tat_ext.utils.machine import describe_device, environment
from tat_ext.utils.progress import progress_bar

__all__ = ["add_arguments", "main", "categorize", "CATEGORIES"]

VARIANTS = ("eager", "compile", "fused", "fused-compile")

# First match wins. Names are ATen operators on the CPU (aten::leaky_relu) and kernel names on
# CUDA (…leaky_relu_kernel…, …MulFunctor…, triton_poi_fused_leaky_relu_mul_0, tat_ext's
# trelu_forward_planes); the scalar multiply of the eager TReLU is its only elementwise mul.
CATEGORIES = [
    ("activation", re.compile(r"leaky|trelu|tat_ext|reduce_channel_partials|aten::mul\b|"
                              r"MulFunctor|MulBackward", re.I)),
    ("optimizer", re.compile(r"foreach|multi_tensor_apply|Optimizer|sgd", re.I)),
    ("loss", re.compile(r"cross_entropy|log_softmax|nll_loss|softmax", re.I)),
    ("conv/matmul", re.compile(r"conv|cudnn|mkldnn|onednn|gemm|xmma|cutlass|matmul|addmm|"
                               r"\bmm\b|wgrad|dgrad|implicit", re.I)),
]


def categorize(name: str) -> str:
    for category, pattern in CATEGORIES:
        if pattern.search(name):
            return category
    return "other"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--model", default="conv-chain",
                        help=f"model: {', '.join(workloads.MODELS)} (default conv-chain)")
    parser.add_argument("--depth", type=int, help="nonlinear layers (default 50)")
    parser.add_argument("--width", type=int, help="channels (default 16 on cpu, 64 on cuda)")
    parser.add_argument("--resolution", type=int, help="input height = width (default 16 / 32)")
    parser.add_argument("--batch", type=int, help="batch size (default 8 / 128)")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16")
    parser.add_argument("--layout", default="nchw", help="nchw (default) or channels_last")
    parser.add_argument("--variants", default="eager,fused",
                        help=f"comma-separated from {', '.join(VARIANTS)} (default eager,fused)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled steps first (default 2)")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads; default: "
                                                    "torch's, one per core)")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per variant (default 12)")
    parser.add_argument("--out", default="tat-ext-profile",
                        help="output folder (default ./tat-ext-profile)")


@dataclasses.dataclass
class _KernelRow:
    name: str
    category: str
    calls: int  # every occurrence
    self_us: float
    top_calls: int = 0  # CPU: calls not nested in another operator call; CUDA: launches


def _is_operator(name: str) -> bool:
    return "::" in name and not name.startswith("autograd::")


def _top_level_call(event) -> bool:
    """An operator call (aten::mul, tat_ext::trelu_forward) made by the model code, not by
    another operator (aten::convolution -> aten::mkldnn_convolution) and not the autograd
    engine's wrapper around one (evaluate_function, MulBackward0): what the per-category call
    totals count, so a call is counted once however the operator is implemented inside."""
    if not _is_operator(event.name):
        return False
    parent = event.cpu_parent
    while parent is not None:
        if _is_operator(parent.name):
            return False
        parent = parent.cpu_parent
    return True


def _settings(args: argparse.Namespace):
    device = resolve_device(args.device)
    sizes = dict(workloads.MODEL_DEFAULTS[device.type])
    for key in sizes:
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    for key, value in (("--steps", args.steps), ("--top", args.top)):
        if value < 1:
            raise UsageError(key, f"must be >= 1, got {value}")
    if args.warmup < 0:
        raise UsageError("--warmup", f"must be >= 0, got {args.warmup}")
    if args.layout not in workloads.LAYOUTS:
        raise UsageError("--layout", f"unknown layout {args.layout!r}; one of "
                                     f"{', '.join(workloads.LAYOUTS)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise UsageError("--variants", f"unknown variant {bad[0] if bad else args.variants!r}; "
                                       f"choose from {', '.join(VARIANTS)}")
    spec = workloads.model_spec(args.model, **sizes)
    dtype = parse_dtype(args.dtype)
    workloads.check_fits(workloads.model_bytes_estimate(spec, dtype.itemsize), available_bytes(device),
                         "--batch", f"the {spec.name} training step (depth {spec.depth}, width "
                                    f"{spec.width}, batch {spec.batch})")
    return device, spec, dtype, list(dict.fromkeys(variants))


def _profile_variant(device, spec, dtype, layout, variant, steps, warmup, trace_path):
    unfused, fused = workloads.model_pair(spec, device, dtype, layout)
    model = fused if variant.startswith("fused") else unfused
    if variant.endswith("compile"):
        torch._dynamo.reset()
        model = torch.compile(model)
    batch, target = workloads.make_batch(spec, device, dtype, layout)
    step = workloads.make_train_step(model, batch, target)
    for _ in range(warmup):
        step()
    synchronize(device)

    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    wall = []
    with quiet_stderr():  # the profiler library prints status lines on start and stop
        prof.start()
    try:
        for i in range(steps):
            t0 = time.perf_counter()
            with record_function(f"train_step_{i}"):
                step()
            synchronize(device)
            wall.append(time.perf_counter() - t0)
    finally:
        with quiet_stderr():
            prof.stop()
    # Export next to the destination, then rename: never a half-written trace.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(trace_path), prefix=".trace-", suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(tmp)
        os.replace(tmp, trace_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return _kernel_rows(prof, device), sum(wall)


def _in_optimizer_step(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return True
        parent = parent.cpu_parent
    return False


def _kernel_rows(prof, device) -> List[_KernelRow]:
    """Self time per kernel name: GPU kernels on CUDA, operators (self CPU time) on the CPU
    (where an operator called by the optimizer's step is put in that category whatever its name)."""
    totals: Dict[tuple, _KernelRow] = {}
    for e in prof.events():
        if device.type == "cuda":
            if not is_gpu_kernel(e):
                continue
            self_us = e.time_range.elapsed_us()
            category = categorize(e.name)
        else:
            if e.device_type != torch.autograd.DeviceType.CPU or e.name.startswith("train_step_"):
                continue
            self_us = e.self_cpu_time_total
            category = "optimizer" if _in_optimizer_step(e) else categorize(e.name)
        row = totals.setdefault((e.name, category), _KernelRow(e.name, category, 0, 0.0))
        row.calls += 1
        row.self_us += self_us
        row.top_calls += 1 if device.type == "cuda" or _top_level_call(e) else 0
    return sorted(totals.values(), key=lambda r: -r.self_us)


def _short(name: str, width: int = 72) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def main(args: argparse.Namespace) -> int:
    """Run `tat-ext profile`; returns 0 (UsageError for bad options)."""
    set_threads(args.threads)
    device, spec, dtype, variants = _settings(args)
    require_extension(device)
    out = ensure_writable_dir(args.out, "--out")
    say = Report()

    env = environment([device])
    command = "tat-ext " + " ".join(shlex.quote(a) for a in getattr(args, "argv", ["profile"]))
    say(f"# tat-ext profile on {describe_device(device)}; tat_ext {env['tat_ext']}, "
        f"torch {env['torch']}")
    say(f"# command: {command}")
    say(f"# {spec.name}: depth {spec.depth}, width {spec.width}, {spec.resolution}x{spec.resolution}, "
        f"batch {spec.batch}, {str(dtype).replace('torch.', '')}, {args.layout}; "
        f"{args.steps} profiled steps after {args.warmup} warm-up steps")
    what = "GPU kernels (self time on the GPU)" if device.type == "cuda" else "operators (self CPU time)"
    results = {}
    with progress_bar(total=len(variants), desc="profile", unit="variant") as bar:
        for variant in variants:
            trace = os.path.join(out, f"trace_{variant}.json")
            rows, wall = _profile_variant(device, spec, dtype, args.layout, variant, args.steps,
                                          args.warmup, trace)
            results[variant] = {"trace": trace, "step_ms": wall / args.steps * 1e3, "rows": rows}
            step_us = wall / args.steps * 1e6
            say()
            say(f"## {variant}: {wall / args.steps * 1e3:.2f} ms per step; top {args.top} {what}")
            say(format_table(
                ["kernel", "category", "calls/step", "ms/step", "% of step"],
                [[_short(r.name), r.category, f"{r.calls / args.steps:g}",
                  f"{r.self_us / args.steps / 1e3:.3f}", f"{100 * r.self_us / args.steps / step_us:.1f}"]
                 for r in rows[:args.top]], right=[False, False, True, True, True]))
            say(f"trace: {trace}")
            bar.update()

    categories = [c for c, _ in CATEGORIES] + ["other"]
    say()
    calls = "kernel launches" if device.type == "cuda" else "operator calls, nested calls not counted"
    say(f"## per category: ms per step ({calls}, per step); 'untracked' = step wall time not "
        "covered by the self time above (idle device, Python, launch gaps)")
    table_rows, summary = [], {}
    for variant, res in results.items():
        per = {c: [0.0, 0] for c in categories}
        for r in res["rows"]:
            per[r.category][0] += r.self_us / args.steps / 1e3
            per[r.category][1] += r.top_calls / args.steps
        tracked = sum(v[0] for v in per.values())
        summary[variant] = {"step_ms": res["step_ms"], "trace": res["trace"],
                            "categories": {c: {"ms_per_step": v[0], "calls_per_step": v[1]}
                                           for c, v in per.items()},
                            "untracked_ms_per_step": max(res["step_ms"] - tracked, 0.0),
                            "kernels": [dataclasses.asdict(r) for r in res["rows"]]}
        table_rows.append([variant, f"{res['step_ms']:.2f}"]
                          + [f"{per[c][0]:.2f} ({per[c][1]:g})" for c in categories]
                          + [f"{max(res['step_ms'] - tracked, 0.0):.2f}"])
    say(format_table(["variant", "step ms"] + categories + ["untracked"], table_rows,
                     right=[False] + [True] * (len(categories) + 2)))
    if "eager" in summary and "fused" in summary:
        e, f = (summary[v]["categories"]["activation"] for v in ("eager", "fused"))
        say()
        say(f"activation: eager {e['ms_per_step']:.2f} ms in {e['calls_per_step']:g} calls per step, "
            f"fused {f['ms_per_step']:.2f} ms in {f['calls_per_step']:g} calls; step "
            f"{summary['eager']['step_ms']:.2f} -> {summary['fused']['step_ms']:.2f} ms")
    write_json_atomic(os.path.join(out, "profile.json"),
                      {"tool": "tat-ext profile", "command": command, "environment": env,
                       "device": describe_device(device), "model": dataclasses.asdict(spec),
                       "dtype": str(dtype).replace("torch.", ""), "layout": args.layout,
                       "steps": args.steps, "warmup": args.warmup, "kernel_kind": what,
                       "variants": summary})
    say(f"summary: {os.path.join(out, 'profile.json')}")
    say.save(os.path.join(out, "profile.txt"))
    return 0
