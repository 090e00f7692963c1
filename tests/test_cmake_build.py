"""CMakeLists.txt builds the same extension (CPU kernels), and the result works.

The build here is the generic one (TAT_EXT_CPU_VARIANTS=default: no instruction-set flags at all,
what a non-x86 machine compiles); the default configuration's per-variant flags are checked from
its compile commands without building it (setup.py's build, which the other tests load, is that
configuration).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import build_flags  # noqa: E402  (the build's flag plan, next to setup.py)


needs_cmake = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("ninja") is None and
    not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ninja")),
    reason="cmake/ninja not installed")


def _configure(build_dir, *options):
    """Runs the CMake configure step; returns the environment for the build step."""
    import pybind11

    args = [
        "cmake", "-S", ROOT, "-B", str(build_dir), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DPython_EXECUTABLE={sys.executable}", *options,
    ]
    if torch.version.cuda is not None:
        # A CUDA build of torch makes find_package(Torch) look for the toolkit even for a
        # CPU-only target (BUILD_NOTES.md).
        cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
        nvrtc = glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*",
                                       "lib", "libnvrtc.so.*"))
        if not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")) or not nvrtc:
            pytest.skip("CUDA build of torch without a CUDA toolkit to satisfy its CMake config")
        args += [f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}", "-DTORCH_CUDA_ARCH_LIST=9.0",
                 f"-DCUDA_nvrtc_LIBRARY={nvrtc[0]}"]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    for name in ("TAT_EXT_MARCH", "TAT_EXT_CPU_VARIANTS"):  # the tests choose, not the caller
        env.pop(name, None)
    subprocess.run(args, check=True, capture_output=True, text=True, env=env)
    return env


def _compile_commands(build_dir) -> dict:
    """{source path relative to the repository: its compile command}."""
    with open(os.path.join(build_dir, "compile_commands.json")) as f:
        entries = json.load(f)
    return {os.path.relpath(e["file"], ROOT): e["command"] for e in entries}


def _isa_flags(command: str) -> list:
    return [a for a in command.split() if a.startswith(("-march", "-mavx", "-mfma", "-mf16c"))]


@needs_cmake
@pytest.mark.skipif(not build_flags.is_x86(), reason="the instruction-set variants are x86 only")
def test_default_configuration_flags_have_no_march_native(tmp_path):
    _configure(tmp_path)
    commands = _compile_commands(tmp_path)
    for source, command in commands.items():
        variant = next((v for v in build_flags.VARIANTS.values() if v.source == source), None)
        assert "-march" not in command, (source, command)
        assert _isa_flags(command) == (list(variant.flags) if variant else []), (source, command)
        if variant is not None:
            assert f"-DCPU_CAPABILITY={variant.macros[0][1]}" in command
    assert {v.source for v in build_flags.VARIANTS.values()} <= set(commands)


@needs_cmake
def test_generic_cmake_build_loads_and_computes(tmp_path):
    env = _configure(tmp_path, "-DTAT_EXT_CPU_VARIANTS=default")
    for source, command in _compile_commands(tmp_path).items():
        assert _isa_flags(command) == [], (source, command)
    subprocess.run(["cmake", "--build", str(tmp_path)], check=True, capture_output=True, text=True,
                   env=env)
    (lib,) = glob.glob(str(tmp_path / "_C*.so"))
    # A fresh interpreter: this process already has the setup.py-built operators registered.
    check = (
        "import importlib.util, sys, torch, torch.nn.functional as F\n"
        f"spec = importlib.util.spec_from_file_location('_C', {lib!r})\n"
        "C = importlib.util.module_from_spec(spec); spec.loader.exec_module(C)\n"
        "assert C.compiled_cpu_capabilities() == ['default'], C.compiled_cpu_capabilities()\n"
        "assert C.cpu_capability() == 'default'\n"
        "x = torch.randn(4, 3, 5, 5); b = torch.randn(3)\n"
        "y, _ = torch.ops.tat_ext.trelu_forward(x, b, 0.2, 1.5, 0.0, 0.0, 1, 0)\n"
        "ref = 1.5 * F.leaky_relu(x + b.view(1, 3, 1, 1), 0.2)\n"
        "assert torch.allclose(y, ref), (y - ref).abs().max()\n"
        "print('ok')\n"
    )
    env.pop("TAT_EXT_CPU_CAPABILITY", None)
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
