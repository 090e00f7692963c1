"""A description of the machine, recorded with every tool and sweep result so that numbers can be
traced to where they were measured."""
from __future__ import annotations

import platform
from typing import Any, Dict, Sequence

import torch

__all__ = ["cpu_model", "describe_device", "environment"]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(devices: Sequence[torch.device] = ()) -> Dict[str, Any]:
    """Versions and hardware: tat_ext, torch, Python, the CPU and its threads, whether the compiled
    extension (and its CUDA kernels) loaded, and the GPUs among ``devices``."""
    import tat_ext
    from tat_ext import _extension

    info: Dict[str, Any] = {
        "tat_ext": tat_ext.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "extension_built": _extension.AVAILABLE,
        "extension_with_cuda": _extension.WITH_CUDA,
    }
    gpus = [d for d in devices if d.type == "cuda"]
    if gpus:
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(d) for d in gpus]
    return info


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100)`` or ``cpu (<model>, N threads)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({cpu_model()}, {threads} thread{'s' if threads != 1 else ''})"
