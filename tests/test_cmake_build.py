"""CMakeLists.txt builds the same extension (CPU kernels), and the result works."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ninja") is None and
                    not os.path.exists(os.path.join(os.path.dirname(sys.executable), "ninja")),
                    reason="cmake/ninja not installed")
def test_cmake_build_loads_and_computes(tmp_path):
    import pybind11

    args = [
        "cmake", "-S", ROOT, "-B", str(tmp_path), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DPython_EXECUTABLE={sys.executable}",
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
    subprocess.run(args, check=True, capture_output=True, text=True, env=env)
    subprocess.run(["cmake", "--build", str(tmp_path)], check=True, capture_output=True, text=True,
                   env=env)
    (lib,) = glob.glob(str(tmp_path / "_C*.so"))
    # A fresh interpreter: this process already has the setup.py-built operators registered.
    check = (
        "import torch, torch.nn.functional as F\n"
        f"torch.ops.load_library({lib!r})\n"
        "x = torch.randn(4, 3, 5, 5); b = torch.randn(3)\n"
        "y, _ = torch.ops.tat_ext.trelu_forward(x, b, 0.2, 1.5, 0.0, 0.0, 1, 0)\n"
        "ref = 1.5 * F.leaky_relu(x + b.view(1, 3, 1, 1), 0.2)\n"
        "assert torch.allclose(y, ref), (y - ref).abs().max()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
