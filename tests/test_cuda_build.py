"""The CUDA kernels as built (runs without a GPU): registered for both ops, and sm_90 machine code
(with 16-byte global accesses) plus PTX for every dtype in the extension's .so.

CI builds with CUDA whenever nvcc exists (scripts/setup_env.sh); cuobjdump and nvdisasm come from
the PyPI packages nvidia-cuda-cuobjdump / nvidia-cuda-nvdisasm (requirements.txt).
"""
from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import sysconfig

import pytest
import torch

from tat_ext import _extension
from tat_ext.ops import SAVE_KIND

pytestmark = pytest.mark.skipif(
    not _extension.WITH_CUDA,
    reason="tat_ext._C was built without CUDA kernels (TAT_EXT_CUDA=0, no nvcc or CPU-only torch)",
)

# Template arguments as they appear in the mangled kernel names.
DTYPES = {  # name: (mangled scalar type, elements per 16-byte access)
    "float32": ("f", 4),
    "float64": ("d", 2),
    "float16": ("N3c104HalfE", 8),
    "bfloat16": ("N3c108BFloat16E", 8),
}


def _tool(name: str) -> str:
    """A CUDA binary tool: the venv's nvidia-* package first, then CUDA_HOME, then PATH."""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    candidates = [p for r in sorted(roots)
                  for p in sorted(glob.glob(os.path.join(r, "nvidia", "*", "bin", name)))]
    cuda_home = os.environ.get("CUDA_HOME")
    if cuda_home:
        candidates.append(os.path.join(cuda_home, "bin", name))
    candidates.append(shutil.which(name) or "")
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    pytest.fail(f"{name} not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm "
                "(requirements.txt) or put the CUDA toolkit's bin/ on PATH")


def _cuobjdump(*args: str) -> str:
    cuobjdump = _tool("cuobjdump")
    env = dict(os.environ)
    if "--dump-sass" in args:  # cuobjdump disassembles through nvdisasm, found on PATH
        env["PATH"] = os.path.dirname(_tool("nvdisasm")) + os.pathsep + env.get("PATH", "")
    from tat_ext import _C

    out = subprocess.run([cuobjdump, *args, _C.__file__], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, f"cuobjdump {' '.join(args)} failed:\n{out.stderr}"
    return out.stdout


@functools.lru_cache(maxsize=None)
def _sm90_functions() -> dict[str, str]:
    """Mangled kernel name -> its sm_90 SASS."""
    sass = _cuobjdump("--dump-sass", "--gpu-architecture", "sm_90")
    parts = re.split(r"^\s*Function : (\S+)\s*$", sass, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _kernel(kernel: str, *template_args: str) -> tuple[str, str]:
    """The one sm_90 kernel whose name is `kernel<template_args...>`."""
    prefix = f"{kernel}I{''.join(template_args)}"
    hits = [(n, s) for n, s in _sm90_functions().items() if prefix in n]
    assert len(hits) == 1, f"expected one sm_90 kernel {prefix}*, found {[n for n, _ in hits]}"
    return hits[0]


@pytest.mark.parametrize("op", ["trelu_forward", "trelu_backward"])
def test_cuda_kernel_registered(op):
    dump = torch._C._dispatch_dump(f"tat_ext::{op}")
    assert re.search(r"^CUDA: registered at .*trelu_ops_cuda\.cu", dump, flags=re.M), dump


def test_sm90_elf_in_extension():
    elfs = _cuobjdump("--list-elf")
    for unit in ("trelu_forward", "trelu_backward"):
        assert re.search(rf"{unit}\.sm_90\.cubin", elfs), elfs


def test_ptx_embedded_for_newer_gpus():
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")  # setup.py's default is "9.0+PTX"
    if arch_list and "PTX" not in arch_list.upper():
        pytest.skip(f"TORCH_CUDA_ARCH_LIST={arch_list!r} asks for no PTX")
    ptx = _cuobjdump("--list-ptx")
    for unit in ("trelu_forward", "trelu_backward"):
        assert re.search(rf"{unit}\.sm_90\.ptx", ptx), f"no PTX for {unit} (no +PTX?):\n{ptx}"


def _assert_16_byte_access(name: str, sass: str, loads: bool = True):
    assert "STG.E.128" in sass, f"{name}: no 16-byte global store in its SASS"
    if loads:
        assert re.search(r"LDG\.E\.128", sass), f"{name}: no 16-byte global load in its SASS"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", ["trelu_forward_planes", "trelu_forward_flat"])
def test_forward_sass(kernel, dtype):
    scalar, vec = DTYPES[dtype]
    _assert_16_byte_access(*_kernel(kernel, scalar, f"Li{vec}E"))
    _kernel(kernel, scalar, "Li1E")  # the misaligned-pointer fallback


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", sorted(SAVE_KIND.values()))
@pytest.mark.parametrize("kernel", ["trelu_backward_planes", "trelu_backward_columns"])
def test_backward_sass(kernel, kind, dtype):
    scalar, vec = DTYPES[dtype]
    _assert_16_byte_access(*_kernel(kernel, scalar, f"Li{vec}E", f"LNS_8SaveKindE{kind}E"))
    _kernel(kernel, scalar, "Li1E", f"LNS_8SaveKindE{kind}E")


@pytest.mark.parametrize("acc", ["f", "d"])
def test_bias_grad_reduction_sass(acc):
    _kernel("reduce_channel_partials", acc)
