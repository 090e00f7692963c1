"""The CUDA kernels' logic, checked on every run without a GPU or nvcc.

tests/cuda_emu compiles the real kernel files (csrc/cuda/trelu_forward.cu, trelu_backward.cu) with
a host C++ compiler and AddressSanitizer, runs each GPU thread as a fiber (barriers and warp
shuffles are synchronization points), and checks a grid of cases that crosses every launch
decision against the shared math: outputs bit for bit, grad_bias within its rounding bound,
every output element and workspace slot written exactly once, no out-of-bounds access, no
partial barrier, shuffle in a partial warp or deadlock, no dependence on the thread order.
Build outputs go to build/cuda_emu/ (git-ignored).
"""
from __future__ import annotations

import concurrent.futures
import os
import pathlib
import platform
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "cuda_emu"
BUILD = ROOT / "build" / "cuda_emu"
KERNELS = [ROOT / "csrc" / "cuda" / f"trelu_{d}.cu" for d in ("backward", "forward")]
FLAGS = [
    "-std=c++17", "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer",
    # One rounding per + and *, as the kernels' __fadd_rn/__fmul_rn on the GPU.
    "-ffp-contract=off",
    "-Wall", "-Wextra", "-Wno-unknown-pragmas",  # `#pragma unroll` is nvcc's
    f"-I{EMU / 'include'}", f"-I{ROOT / 'csrc'}",
]


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compile(cxx: str, source: pathlib.Path) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
    obj = BUILD / (source.stem + ".o")
    lang = ["-x", "c++"] if source.suffix == ".cu" else []
    cmd = [cxx, *FLAGS, *lang, "-c", str(source), "-o", str(obj)]
    return obj, subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def harness() -> pathlib.Path:
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (set CXX, or install g++ or clang++)")
    if platform.system() != "Linux":
        pytest.skip(f"the emulator's fibers are written for Linux, not {platform.system()}")
    BUILD.mkdir(parents=True, exist_ok=True)
    sources = KERNELS + sorted(EMU.glob("*.cpp"))  # the two kernel files take longest: first
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda s: _compile(cxx, s), sources))
    errors = [r.stderr for _, r in results if r.returncode != 0]
    assert not errors, "the CPU harness does not compile:\n" + "\n".join(errors)[-8000:]
    exe = BUILD / "run_cases"
    link = subprocess.run([cxx, "-fsanitize=address", *[str(o) for o, _ in results], "-o",
                           str(exe)], capture_output=True, text=True, timeout=300)
    assert link.returncode == 0, f"linking the CPU harness failed:\n{link.stderr[-8000:]}"
    return exe


def test_cuda_kernels_on_the_cpu_emulator(harness):
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0")
    run = subprocess.run([str(harness)], capture_output=True, text=True, timeout=900, env=env)
    print(run.stdout[-20000:])
    assert run.returncode == 0, (
        "CUDA kernels failed on the CPU emulator (exit "
        f"{run.returncode}):\n{run.stdout[-12000:]}\n{run.stderr[-12000:]}")
