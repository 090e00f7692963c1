"""`tat-ext verify`: the fused kernels against the pure-PyTorch reference on every device.

Runs the case grid of tat_ext/tools/cases.py (dtypes x layouts x bias kinds x parameter sets x
save modes) on the CPU and each CUDA device: forward, grad_x and grad_bias of `tat_ext.trelu`
against `tat_ext.reference.trelu` evaluated on the CPU, each held to the tolerance rule that
cases.py documents; two runs of every case must agree bit for bit (on the CPU the second run of
the large determinism cases uses one thread); fp16/bf16 errors against an fp64 reference must stay
within twice PyTorch's own. Exit status 0 when everything passed, 1 on any mismatch.

The environment variable TAT_EXT_VERIFY_INJECT=forward|grad_x|grad_bias perturbs the reference of
one case just beyond its tolerance: a self-test showing that the checker catches it (exit 1).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import tat_ext
from tat_ext import _extension, reference
from tat_ext.tools import cases
from tat_ext.tools.common import UsageError, format_table
from tat_ext.utils.devices import cuda_devices, resolve_device
from tat_ext.utils.files import check_writable_file, write_json_atomic
from tat_ext.utils.machine import describe_device, environment
from tat_ext.utils.progress import progress_bar

__all__ = ["run_verify", "VerifyResult", "add_arguments", "main", "INJECT_ENV", "INJECTIONS"]

INJECT_ENV = "TAT_EXT_VERIFY_INJECT"
INJECTIONS = ("forward", "grad_x", "grad_bias")
_MAX_FAILURES_SHOWN = 20
_LOW_PRECISION = "vs fp64 (<= 2x eager's)"
_CHECK_ORDER = ["extension", "forward", "grad_x", "grad_bias", "determinism", _LOW_PRECISION]


@dataclasses.dataclass
class CheckRow:
    """One line of the table: a device x dtype x check, aggregated over its cases."""

    device: str
    dtype: str
    check: str
    tolerance: str
    cases: int = 0
    failed: int = 0
    max_abs_err: float = 0.0
    worst_err_over_tol: float = 0.0  # <= 1 passes; 0 for bitwise checks that matched


@dataclasses.dataclass
class Failure:
    device: str
    check: str
    case: str
    detail: str


@dataclasses.dataclass
class VerifyResult:
    rows: List[CheckRow]
    failures: List[Failure]
    devices: List[str]
    mode: str
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.failures and all(r.cases > 0 for r in self.rows)

    @property
    def total_cases(self) -> int:
        return sum(r.cases for r in self.rows)

    def to_json(self) -> dict:
        return {"passed": self.passed, "mode": self.mode, "devices": self.devices,
                "seconds": self.seconds, "checks": self.total_cases,
                "failed": sum(r.failed for r in self.rows),
                "rows": [dataclasses.asdict(r) for r in self.rows],
                "failures": [dataclasses.asdict(f) for f in self.failures]}


class _Recorder:
    def __init__(self) -> None:
        self.rows: Dict[Tuple[str, str, str], CheckRow] = {}
        self.failures: List[Failure] = []

    def add(self, device: str, dtype: str, check: str, tolerance: str, *, ok: bool, err: float,
            ratio: float, case: str, detail: str = "") -> None:
        row = self.rows.setdefault((device, dtype, check), CheckRow(device, dtype, check, tolerance))
        row.cases += 1
        row.max_abs_err = max(row.max_abs_err, err)
        row.worst_err_over_tol = max(row.worst_err_over_tol, ratio)
        if not ok:
            row.failed += 1
            self.failures.append(Failure(device, check, case, detail or f"max |err| {err:.3g}"))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _seed(*parts) -> int:
    return zlib.crc32("-".join(map(str, parts)).encode()) % (2 ** 31)


def _close_ratio(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> float:
    """max |a - e| / (atol + rtol |e|): the torch.testing.assert_close criterion as a number."""
    if actual.numel() == 0:
        return 0.0
    a, e = actual.double(), expected.double()
    diff = (a - e).abs()
    ratio = diff / (atol + rtol * e.abs())  # inf where the allowed error is 0 and diff is not
    return torch.where(diff == 0, 0.0, ratio).max().item()


@dataclasses.dataclass
class _InputSet:
    layout: cases.Layout
    dtype: torch.dtype
    bias_kind: str
    runs: List[Tuple[dict, str]]  # (params, save)
    low_precision: bool  # also compare fp16/bf16 errors with PyTorch's own


def _plan(device: torch.device, quick: bool, layouts) -> List[_InputSet]:
    """Full: every layout x dtype x bias kind x parameter set x valid save mode. Quick: every
    layout x dtype with one bias kind, TReLU with each explicit save mode and one other parameter
    set with one save mode, rotating through the rest of the grid."""
    if layouts is None:
        layouts = cases.LAYOUTS + (cases.CUDA_LAYOUTS if device.type == "cuda" else [])
    plan = []
    i = 0
    for layout in layouts:
        for dtype in cases.DTYPES:
            if quick:
                kinds = [cases.BIAS_KINDS[i % 3]]
                other = cases.PARAMS[1 + i % (len(cases.PARAMS) - 1)]
                saves = cases.valid_saves(other)
                runs = [(cases.PARAMS[0], s) for s in ("input", "output", "mask")]
                runs.append((other, saves[i % len(saves)]))
            else:
                kinds = cases.BIAS_KINDS
                runs = [(p, s) for p in cases.PARAMS for s in cases.valid_saves(p)]
            for k, kind in enumerate(kinds):
                plan.append(_InputSet(layout, dtype, kind, runs,
                                      low_precision=dtype.itemsize == 2 and k == 0))
            i += 1
    return plan


def _determinism_plan(quick: bool, layouts) -> List[Tuple[cases.Layout, torch.dtype, str]]:
    layouts = cases.DETERMINISM_LAYOUTS if layouts is None else layouts
    if quick:
        return [(layout, torch.float32, "mask") for layout in layouts]
    return [(layout, dtype, save) for layout in layouts
            for dtype in (torch.float32, torch.bfloat16) for save in ("input", "output", "mask")]


def _make(layout, dtype, bias_kind, device, seed):
    x = cases.make_input(layout, dtype, device=device, seed=_seed(seed, layout.id, dtype, "x"))
    bias = cases.make_bias(x, layout.channel_dim, cases.bias_dtype(bias_kind, dtype),
                           seed=_seed(seed, layout.id, dtype, bias_kind))
    g = torch.Generator().manual_seed(_seed(seed, layout.id, dtype, "grad"))
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return x, bias, grad


class _Injector:
    """Perturbs one reference result just beyond its tolerance (the checker's self-test)."""

    def __init__(self, what: Optional[str]) -> None:
        self.what = what

    def __call__(self, what: str, t: torch.Tensor, tol_at=None) -> torch.Tensor:
        """`t` unchanged, or (once) a copy with its first element moved past the tolerance
        `tol_at(|value|)` (forward: by one ulp, since it must be bitwise identical)."""
        if self.what != what or t.numel() == 0:
            return t
        self.what = None
        t = t.clone()
        first = (0,) * t.dim()
        v = t[first]
        if tol_at is None:
            t[first] = torch.nextafter(v, torch.tensor(float("inf"), dtype=t.dtype))
        else:  # 4x the allowed error, and at least 4 ulps of the dtype
            size = abs(v.item())
            t[first] = v + 4 * tol_at(size) + 4 * torch.finfo(t.dtype).eps * max(size, 1.0)
        return t


def _check_run(rec: _Recorder, dev: str, inputs, inputs_cpu, params: dict, save: str,
               case_id: str, layout: cases.Layout, inject: _Injector) -> None:
    x, bias, grad = inputs
    x_cpu, bias_cpu, grad_cpu = inputs_cpu
    dtype = _dtype_name(x.dtype)
    kw = dict(params, channel_dim=layout.channel_dim, save=save)
    y, grads = cases.forward_backward(tat_ext.trelu, x, bias, grad, **kw)
    y2, grads2 = cases.forward_backward(tat_ext.trelu, x, bias, grad, **kw)
    y_ref, grads_ref = cases.forward_backward(reference.trelu, x_cpu, bias_cpu, grad_cpu, **kw)
    y_ref = inject("forward", y_ref)

    kept = y.stride() == torch.empty_like(x).stride()
    y_c = y.cpu()
    err = cases.max_abs_err(y_c, y_ref)
    ok = kept and torch.equal(y_c, y_ref)
    rec.add(dev, dtype, "forward", "bitwise", ok=ok, err=err, ratio=0.0 if ok else float("inf"),
            case=case_id, detail=f"max |err| {err:.3g}" if kept else "memory format not kept")

    rtol = cases.grad_x_rtol(x.dtype)
    gx_ref = inject("grad_x", grads_ref[0], lambda v: 1e-30 + rtol * v)
    ratio = _close_ratio(grads[0].cpu(), gx_ref, rtol, 1e-30)
    err = cases.max_abs_err(grads[0].cpu(), gx_ref)
    rec.add(dev, dtype, "grad_x", f"rtol {rtol:.0e}", ok=ratio <= 1, err=err, ratio=ratio,
            case=case_id, detail=f"max |err| {err:.3g}, {ratio:.3g}x the tolerance")

    if bias is not None:
        atol = cases.grad_bias_atol(grad_cpu, params["scale"], layout.channel_dim, x.dtype)
        brtol = cases.grad_bias_rtol(bias.dtype)
        gb_ref = inject("grad_bias", grads_ref[1], lambda v: atol + brtol * v)
        ratio = _close_ratio(grads[1].cpu(), gb_ref, brtol, atol)
        err = cases.max_abs_err(grads[1].cpu(), gb_ref)
        same_dtype = grads[1].dtype == bias.dtype
        tolerance = "atol 4eps*sum|dz|" + (" + 1 ulp" if brtol else "")
        rec.add(dev, dtype, "grad_bias", tolerance, ok=ratio <= 1 and same_dtype, err=err,
                ratio=ratio, case=case_id,
                detail=(f"max |err| {err:.3g}, {ratio:.3g}x the tolerance" if same_dtype
                        else f"grad_bias dtype {grads[1].dtype}, bias dtype {bias.dtype}"))

    _record_determinism(rec, dev, dtype, case_id, (y, *grads), (y2, *grads2))


def _record_determinism(rec, dev, dtype, case_id, first, second) -> None:
    same = all(torch.equal(a, b) for a, b in zip(first, second))
    err = 0.0 if same else max(cases.max_abs_err(a, b) for a, b in zip(first, second))
    rec.add(dev, dtype, "determinism", "bitwise", ok=same, err=err,
            ratio=0.0 if same else float("inf"), case=case_id,
            detail=f"two runs differ by up to {err:.3g}")


def _check_low_precision(rec: _Recorder, dev: str, inputs, case_id: str,
                         layout: cases.Layout) -> None:
    """fp16/bf16: error vs fp64 at most twice that of PyTorch's eager chain on the same device."""
    x, bias, grad = inputs
    if x.numel() == 0:
        return
    p = dict(cases.LOW_PRECISION_PARAMS, channel_dim=layout.channel_dim)
    y, (gx, *_) = cases.forward_backward(tat_ext.trelu, x, bias, grad, **p, save="mask")
    y_e, (gx_e, *_) = cases.forward_backward(cases.eager_chain, x, bias, grad, **p)
    b64 = None if bias is None else bias.double()
    y64, (gx64, *_) = cases.forward_backward(cases.fp64_reference, x.double(), b64, grad.double(),
                                             **p)
    tiny = torch.finfo(x.dtype).tiny
    worst, errs = 0.0, []
    for ours, eager, exact in ((y, y_e, y64), (gx, gx_e, gx64)):
        err, allowed = cases.max_abs_err(ours, exact), 2 * cases.max_abs_err(eager, exact) + tiny
        worst = max(worst, err / allowed)
        errs.append(err)
    rec.add(dev, _dtype_name(x.dtype), _LOW_PRECISION, "2x eager err",
            ok=worst <= 1, err=max(errs), ratio=worst, case=case_id,
            detail=f"{worst:.3g}x the allowed error (y, grad_x errors {errs[0]:.3g}, {errs[1]:.3g})")


def _verify_device(rec: _Recorder, device: torch.device, quick: bool, seed: int,
                   inject: _Injector, progress: bool, layouts) -> None:
    dev = str(device)
    plan = _plan(device, quick, layouts)
    determinism = _determinism_plan(quick, layouts)
    total = sum(len(s.runs) for s in plan) + len(determinism)
    with progress_bar(total=total, desc=f"verify {dev}", unit="case", disable=not progress) as bar:
        for s in plan:
            inputs_cpu = _make(s.layout, s.dtype, s.bias_kind, "cpu", seed)
            inputs = inputs_cpu if device.type == "cpu" else _make(s.layout, s.dtype, s.bias_kind,
                                                                    device, seed)
            base = f"{s.layout.id} {_dtype_name(s.dtype)} bias={s.bias_kind}"
            for params, save in s.runs:
                pid = ",".join(f"{k}={v:g}" for k, v in params.items())
                _check_run(rec, dev, inputs, inputs_cpu, params, save, f"{base} {pid} save={save}",
                           s.layout, inject)
                bar.update()
            if s.low_precision:
                _check_low_precision(rec, dev, inputs, base, s.layout)
        for layout, dtype, save in determinism:
            _check_determinism_large(rec, device, layout, dtype, save, seed)
            bar.update()


def _check_determinism_large(rec, device, layout, dtype, save, seed) -> None:
    x, bias, grad = _make(layout, dtype, "fp32", device, seed)
    kw = dict(slope=0.1, scale=1.2, channel_dim=layout.channel_dim, save=save)
    threads = torch.get_num_threads()
    first = cases.forward_backward(tat_ext.trelu, x, bias, grad, **kw)
    try:
        if device.type == "cpu" and threads > 1:
            torch.set_num_threads(1)  # the result must not depend on how work is split
        second = cases.forward_backward(tat_ext.trelu, x, bias, grad, **kw)
    finally:
        torch.set_num_threads(threads)
    _record_determinism(rec, str(device), _dtype_name(dtype),
                        f"{layout.id} {_dtype_name(dtype)} save={save} (large)",
                        (first[0], *first[1]), (second[0], *second[1]))


def _extension_problem(device: torch.device) -> Optional[str]:
    if not _extension.AVAILABLE:
        return (f"the compiled extension is not available ({_extension.LOAD_ERROR}); "
                "tat_ext.trelu would fall back to the reference itself")
    if device.type == "cuda" and not _extension.WITH_CUDA:
        return "tat_ext._C was built without CUDA kernels; rebuild with nvcc (TAT_EXT_CUDA=1)"
    return None


def run_verify(devices: Sequence[torch.device], *, quick: bool = False, seed: int = 0,
               inject: Optional[str] = None, progress: bool = True,
               layouts: Optional[Sequence[cases.Layout]] = None) -> VerifyResult:
    """Run the grid on `devices`; `inject` (one of INJECTIONS) perturbs one reference result;
    `layouts` replaces the grid's layouts (and the large determinism cases) with these."""
    if inject is not None and inject not in INJECTIONS:
        raise UsageError(INJECT_ENV, f"unknown value {inject!r}; one of {', '.join(INJECTIONS)}")
    rec = _Recorder()
    start = time.perf_counter()
    for device in devices:
        problem = _extension_problem(device)
        if problem is not None:
            rec.add(str(device), "-", "extension", "built", ok=False, err=0.0, ratio=float("inf"),
                    case="-", detail=problem)
            continue
        _verify_device(rec, device, quick, seed, _Injector(inject), progress, layouts)
    names = [str(d) for d in devices]
    dtypes = ["-"] + [_dtype_name(d) for d in cases.DTYPES]
    rows = sorted(rec.rows.values(), key=lambda r: (names.index(r.device), dtypes.index(r.dtype),
                                                   _CHECK_ORDER.index(r.check)))
    return VerifyResult(rows, rec.failures, names,
                        "quick" if quick else "full", time.perf_counter() - start)


def format_result(result: VerifyResult) -> str:
    rows = []
    for r in result.rows:
        worst = r.worst_err_over_tol  # 0: bitwise checks that matched; inf: bitwise mismatch
        rows.append([r.device, r.dtype, r.check, str(r.cases), str(r.failed),
                     f"{r.max_abs_err:.2e}", r.tolerance,
                     "-" if worst in (0.0, float("inf")) else f"{worst:.2f}",
                     "ok" if r.failed == 0 else "FAIL"])
    table = format_table(["device", "dtype", "check", "cases", "failed", "max |err|", "tolerance",
                          "worst err/tol", "result"], rows,
                         right=[False, False, False, True, True, True, False, True, False])
    lines = [table, ""]
    for f in result.failures[:_MAX_FAILURES_SHOWN]:
        lines.append(f"FAIL {f.device} {f.check}: {f.case}: {f.detail}")
    if len(result.failures) > _MAX_FAILURES_SHOWN:
        lines.append(f"... and {len(result.failures) - _MAX_FAILURES_SHOWN} more failures")
    failed = sum(r.failed for r in result.rows)
    where = ", ".join(result.devices)
    if result.passed:
        lines.append(f"PASS: all {result.total_cases} checks passed on {where} "
                     f"({result.mode}, {result.seconds:.1f} s)")
    else:
        lines.append(f"FAIL: {failed} of {result.total_cases} checks failed on {where} "
                     f"({result.mode}, {result.seconds:.1f} s)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a subset of the grid that runs in seconds (default: the full grid)")
    parser.add_argument("--device", default="all",
                        help="all (default: the CPU and every CUDA device), cpu, cuda or cuda:N")
    parser.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _devices(text: str) -> List[torch.device]:
    if text == "all":
        return [torch.device("cpu")] + cuda_devices()
    if text == "cuda":  # every CUDA device
        resolve_device("cuda")
        return cuda_devices()
    return [resolve_device(text)]


def main(args: argparse.Namespace) -> int:
    """Run `tat-ext verify`: 0 all passed, 1 any mismatch (UsageError for bad options)."""
    devices = _devices(args.device)
    json_path = check_writable_file(args.json, "--json") if args.json else None
    inject = os.environ.get(INJECT_ENV) or None
    env = environment(devices)
    print(f"tat-ext verify ({'quick' if args.quick else 'full'}): tat_ext {env['tat_ext']}, "
          f"torch {env['torch']}, python {env['python']}")
    for d in devices:
        print(f"  device {describe_device(d)}")
    if inject:
        print(f"  {INJECT_ENV}={inject}: one reference result is perturbed on purpose")
    result = run_verify(devices, quick=args.quick, seed=args.seed, inject=inject,
                        progress=not args.no_progress)
    print(format_result(result))
    if json_path:
        write_json_atomic(json_path, dict(result.to_json(), environment=env, seed=args.seed,
                                          injected=inject))
        print(f"results: {json_path}")
    return 0 if result.passed else 1
