"""Build of the tat_ext._C extension (C++ always, CUDA on request).

Build with `pip install --no-build-isolation -e .` so the extension is compiled against the torch
that is already installed. Environment switches:

  TAT_EXT_CUDA=auto|1|0   compile csrc/cuda/*.cu: `auto` (default) when torch is a CUDA build and
                          nvcc is found, `1` always (fails without nvcc), `0` never.
  TORCH_CUDA_ARCH_LIST    GPU targets; default "9.0+PTX" (sm_90 code for H100/H200, plus PTX
                          that newer GPUs JIT-compile).
  TAT_EXT_CPU_VARIANTS    the CPU kernel variants (default "default,avx2,avx512" on x86-64): each
                          is compiled with its own instruction-set flags and chosen at run time
                          (TAT_EXT_CPU_CAPABILITY forces one); "default" alone is the generic
                          build with no instruction-set flags (build_flags.py).
  TAT_EXT_MARCH           opt-in -march for all C++ code, e.g. "native" (only for the machine
                          that builds it); unset by default: baseline x86-64 plus the variants.
  TAT_EXT_DEBUG=1         -O0 -g instead of -O3 -g0.
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import build_flags  # noqa: E402  (next to this file; not part of the package)

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


class _BuildExt(BuildExtension):
    """BuildExtension plus per-source flags: each CPU kernel variant (build_flags.VARIANTS) is
    compiled on its own with its instruction-set flags, then linked in with the other objects.
    The baseline variant comes first in the link: for an inline function that several variants
    emit out of line, the linker keeps the first copy, so the baseline code never runs an
    instruction its CPU may lack (our own inline code is kept apart per instruction set anyway,
    see TAT_ISA_BEGIN in csrc/trelu_math.h)."""

    def build_extension(self, ext):
        variants = getattr(ext, "cpu_variants", [])
        args = ext.extra_compile_args
        objects = []
        for v in variants:
            flags = list(v.flags)
            extra = dict(args, cxx=args["cxx"] + flags) if isinstance(args, dict) else args + flags
            objects += self.compiler.compile(
                [v.source], output_dir=self.build_temp, macros=ext.define_macros + list(v.macros),
                include_dirs=ext.include_dirs, debug=self.debug, extra_postargs=extra,
                depends=ext.depends)
        ext.extra_objects = objects + [o for o in ext.extra_objects if o not in objects]
        super().build_extension(ext)


def _extension():
    debug = os.environ.get("TAT_EXT_DEBUG") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    # -ffp-contract=off: no fused multiply-adds on the CPU, so kernels match the reference bit
    # for bit in fp32; -fopenmp: at::parallel_for is single-threaded without it.
    cxx = opt + ["-fopenmp", "-ffp-contract=off"]  # the C++ standard is torch's choice
    march_flags, variants = build_flags.plan()
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
        define_macros=build_flags.presence_macros(variants),
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    ext = _make_extension(kwargs, sources, cxx, debug)
    ext.cpu_variants = variants
    ext.depends = sorted(glob.glob("csrc/**/*.h", root_dir=ROOT, recursive=True))
    return ext


def _make_extension(kwargs, sources, cxx, debug):
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
    cmdclass={"build_ext": _BuildExt.with_options(use_ninja=True)},
)
