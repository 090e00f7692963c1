"""Build of the tat_ext._C extension (C++ always, CUDA on request).

Build with `pip install --no-build-isolation -e .` so the extension is compiled against the torch
that is already installed. Environment switches:

  TAT_EXT_CUDA=auto|1|0   compile csrc/cuda/*.cu: `auto` (default) when torch is a CUDA build and
                          nvcc is found, `1` always (fails without nvcc), `0` never.
  TORCH_CUDA_ARCH_LIST    GPU targets; default "9.0+PTX" (sm_90 code for H100/H200, plus PTX
                          that newer GPUs JIT-compile).
  TAT_EXT_MARCH           -march for the C++ code; default "native" (the extension is built on
                          the machine that runs it). With AVX2+FMA (or AVX-512 F/BW/VL/DQ) in
                          the target, at::vec uses its intrinsics instead of its generic loops.
                          Set e.g. "x86-64-v3" for a binary shared across machines, or
                          "baseline" for the compiler's default target.
  TAT_EXT_DEBUG=1         -O0 -g instead of -O3 -g0.
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "9.0+PTX"


def _is_toolkit_root(path: str) -> bool:
    """A CUDA toolkit root has nvcc AND the runtime library the extension links against (a
    prefix that only holds an nvcc wrapper script, e.g. /usr/local, does not)."""
    libs = ("lib64/libcudart.so", "lib/libcudart.so", "targets/*/lib/libcudart.so")
    return os.path.exists(os.path.join(path, "bin", "nvcc")) and any(
        glob.glob(os.path.join(path, lib)) for lib in libs)


def _nvcc_reported_root(nvcc: str) -> str | None:
    """The toolkit root as nvcc itself reports it (sees through wrapper scripts)."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("#$ _HERE_="):  # the directory of the real nvcc binary
            return os.path.dirname(line.split("=", 1)[1].strip())
    return None


def _nvcc_home() -> str | None:
    """The CUDA toolkit root: CUDA_HOME (or CUDA_PATH) if it is one, else /usr/local/cuda, else
    the root of the nvcc on PATH. The single rule of this project (bench/gpu_check.sh and
    scripts/setup_env.sh leave it to this function)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and _is_toolkit_root(home):
            return home
        if home:
            print(f"setup.py: ignoring {var}={home}: not a CUDA toolkit root (one has bin/nvcc "
                  "and lib64/libcudart.so)", file=sys.stderr)
    if _is_toolkit_root("/usr/local/cuda"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    for root in (os.path.dirname(os.path.dirname(os.path.realpath(nvcc))),
                 _nvcc_reported_root(nvcc)):
        if root and _is_toolkit_root(root):
            return root
    return None


def _want_cuda() -> bool:
    mode = os.environ.get("TAT_EXT_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"TAT_EXT_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False
    home = _nvcc_home()
    if mode == "1":
        if torch.version.cuda is None:
            raise SystemExit("TAT_EXT_CUDA=1 but the installed torch is a CPU-only build")
        if home is None:
            raise SystemExit("TAT_EXT_CUDA=1 but no CUDA toolkit was found (nvcc and "
                             "lib64/libcudart.so; set CUDA_HOME to its root)")
    if torch.version.cuda is None or home is None:
        return False
    # torch.utils.cpp_extension reads CUDA_HOME at import time and may have guessed a wrong
    # root (e.g. /usr/local for a wrapper script at /usr/local/bin/nvcc): point it at the real one.
    os.environ["CUDA_HOME"] = home
    print(f"setup.py: CUDA kernels with the toolkit at {home}", file=sys.stderr)
    import torch.utils.cpp_extension as cpp_ext

    cpp_ext.CUDA_HOME = home
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    return True


def _cpu_target_flags() -> tuple[list[str], list[tuple[str, str | None]]]:
    """-march flags and the at::vec capability macros its instruction set supports."""
    march = os.environ.get("TAT_EXT_MARCH", "native").strip()
    if march in ("", "baseline") or not any(m in os.uname().machine for m in ("x86", "amd64")):
        return [], []
    flags = [f"-march={march}"]
    compiler = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([compiler, *flags, "-dM", "-E", "-x", "c++", "-"], input="",
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"TAT_EXT_MARCH={march!r} is not accepted by {compiler}: {exc}")
    isa = {line.split()[1] for line in out.splitlines() if line.startswith("#define __")}
    avx512 = {"__AVX512F__", "__AVX512BW__", "__AVX512VL__", "__AVX512DQ__", "__FMA__"}
    if avx512 <= isa:
        return flags, [("CPU_CAPABILITY", "AVX512"), ("CPU_CAPABILITY_AVX512", None)]
    if {"__AVX2__", "__FMA__"} <= isa:
        return flags, [("CPU_CAPABILITY", "AVX2"), ("CPU_CAPABILITY_AVX2", None)]
    return flags, []


def _extension():
    debug = os.environ.get("TAT_EXT_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    # -ffp-contract=off: no fused multiply-adds on the CPU, so kernels match the reference bit
    # for bit in fp32; -fopenmp: at::parallel_for is single-threaded without it.
    cxx = opt + ["-fopenmp", "-ffp-contract=off"]  # the C++ standard is torch's choice
    march_flags, capability = _cpu_target_flags()
    cxx += march_flags
    sources = [
        "csrc/module.cpp",
        "csrc/ops.cpp",
        "csrc/trelu_plan.cpp",
        *sorted(glob.glob("csrc/cpu/*.cpp", root_dir=ROOT)),
        *sorted(glob.glob("csrc/autograd/*.cpp", root_dir=ROOT)),
    ]
    kwargs = dict(
        name="tat_ext._C",
        define_macros=capability,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if _want_cuda():
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cu", root_dir=ROOT))
        nvcc = (["-O0", "-g", "-G"] if debug else ["-O3"]) + ["-lineinfo"]
        return CUDAExtension(
            sources=sources + cuda_sources,
            define_macros=kwargs.pop("define_macros") + [("TAT_EXT_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            **kwargs,
        )
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
