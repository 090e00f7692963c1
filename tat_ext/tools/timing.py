"""Measurements shared by `tat-ext bench` and `tat-ext profile`: wall time with its spread, peak
memory, bytes saved for backward, kernel launches, and the memory a run may still allocate."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import statistics
import time
from typing import Callable, Iterable, Iterator, List, Optional

import torch

__all__ = ["Stats", "Timer", "peak_memory", "saved_bytes", "kernel_launches", "is_gpu_kernel",
           "available_bytes", "quiet_stderr", "synchronize"]


@dataclasses.dataclass
class Stats:
    """Seconds per call: median, quartiles, extremes and how many repetitions they summarize."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    reps: int

    @classmethod
    def of(cls, times: List[float]) -> "Stats":
        times = sorted(times)
        if len(times) >= 2:
            q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
        else:
            q1 = q3 = times[0]
        return cls(statistics.median(times), q1, q3, times[0], times[-1], len(times))

    def to_json(self) -> dict:
        return {"median_ms": self.median * 1e3, "q1_ms": self.q1 * 1e3, "q3_ms": self.q3 * 1e3,
                "min_ms": self.min * 1e3, "max_ms": self.max * 1e3, "reps": self.reps}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Times a callable `reps` times at least, and for `min_time` seconds at least (up to 20x reps).

    CPU: perf_counter around each call. CUDA: events around each call, after a buffer of 4x the L2
    size was overwritten (so no call reads its inputs from a cache the previous one warmed) and
    the device drained (so the measured span starts when the host starts launching: a per-call
    host overhead shows up instead of hiding behind queued work).
    """

    def __init__(self, device: torch.device, reps: int = 10, min_time: float = 0.1,
                 warmup: int = 2) -> None:
        self.device, self.reps, self.min_time, self.warmup = device, reps, min_time, warmup
        self._flush = None
        if device.type == "cuda":
            l2 = torch.cuda.get_device_properties(device).L2_cache_size
            self._flush = torch.empty(max(4 * l2, 64 << 20), dtype=torch.uint8, device=device)

    @property
    def flush_bytes(self) -> int:
        return 0 if self._flush is None else self._flush.numel()

    def __call__(self, fn: Callable[[], object]) -> Stats:
        for _ in range(self.warmup):
            fn()
        times: List[float] = []
        spent, cap = 0.0, 20 * self.reps
        while len(times) < self.reps or (spent < self.min_time and len(times) < cap):
            times.append(self._once(fn))
            spent += times[-1]
        return Stats.of(times)

    def _once(self, fn) -> float:
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        self._flush.zero_()
        torch.cuda.synchronize(self.device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def _proc_status() -> dict:
    with open("/proc/self/status") as f:
        text = f.read()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) * 1024
            for k in ("VmRSS", "VmHWM")}


def peak_memory(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """Bytes of memory in use at the peak of one call of `fn`, above what was in use before it.

    CUDA: the caching allocator's peak of allocated bytes. CPU: growth of the process's resident
    set at its high-water mark (Linux: reset through /proc/self/clear_refs); None where that is
    not available. Includes the call's outputs and temporaries, not memory that already existed.
    """
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS
        before = _proc_status()["VmRSS"]
        fn()
        return max(0, _proc_status()["VmHWM"] - before)
    except (OSError, AttributeError):
        return None


def saved_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = (),
                exclude_output: bool = False) -> int:
    """Bytes of the distinct storages autograd keeps for backward while `fn` runs (its forward),
    leaving out the storages of `exclude` (parameters, inputs: memory that exists anyway) and,
    with `exclude_output`, of the tensor `fn` returns (kept anyway when the next layer saves it)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    if exclude_output and isinstance(out, torch.Tensor):
        skip.add(out.untyped_storage().data_ptr())
    return sum(n for ptr, n in seen.items() if ptr not in skip)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler library prints status lines there on start/stop)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_NOT_KERNELS = re.compile(r"^(Memcpy|Memset|cudaMemcpy|cudaMemset)", re.I)


def is_gpu_kernel(event) -> bool:
    """A profiler event that is a GPU kernel (not a copy or memset, not host-side)."""
    if event.device_type != torch.autograd.DeviceType.CUDA:
        return False
    kind = getattr(event, "activity_type", None)  # "kernel", "gpu_memcpy", ... (newer torch)
    if kind == "kernel":
        return True
    return kind not in ("gpu_memcpy", "gpu_memset") and not _NOT_KERNELS.match(event.name)


def kernel_launches(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    """GPU kernels launched by one call of `fn` (profiler kernel events, copies and memsets not
    counted); None on the CPU."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    with quiet_stderr():
        prof.start()
    try:
        fn()
        synchronize(device)
    finally:
        with quiet_stderr():
            prof.stop()
    return sum(1 for e in prof.events() if is_gpu_kernel(e))


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory a run can still allocate: free GPU memory, or the kernel's MemAvailable estimate."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for row in f:
                if row.startswith("MemAvailable:"):
                    return int(row.split()[1]) * 1024
    except OSError:
        pass
    return None
