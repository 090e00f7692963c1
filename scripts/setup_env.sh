#!/usr/bin/env bash
# Creates ./.venv (if missing) with tat_ext's dependencies and builds the extension in place.
#
#   TAT_EXT_CUDA   auto (default: CUDA kernels when torch is a CUDA build and nvcc exists) | 1 | 0
#   PYTHON         interpreter for the venv (default: python3)
#   TAT_EXT_VENV   venv path (default: ./.venv)
#   TAT_EXT_TORCH_INDEX_URL
#                  package index for torch and torchvision (default: unset = the normal index, whose
#                  Linux torch wheels bring several GB of CUDA libraries). A CPU-only machine can
#                  use https://download.pytorch.org/whl/cpu; a given CUDA version .../whl/cu130.
#                  Both are installed from it first, at the versions requirements.txt asks for
#                  (a venv that already holds a fitting torch keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${TAT_EXT_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv"
  "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
# A new venv's pip (23.x) cannot do editable builds without isolation against current setuptools.
"$py" -m pip install -q --disable-pip-version-check -U pip
if [ -n "${TAT_EXT_TORCH_INDEX_URL:-}" ]; then
  echo "== installing torch and torchvision from $TAT_EXT_TORCH_INDEX_URL"
  # The versions requirements.txt asks for (its torch and torchvision lines, as written there).
  mapfile -t torch_reqs < <(grep -E '^torch(vision)?[ =<>~!]' requirements.txt | sed 's/[[:space:]]*#.*//')
  "$py" -m pip install -q --disable-pip-version-check --index-url "$TAT_EXT_TORCH_INDEX_URL" "${torch_reqs[@]}"
fi
echo "== installing dependencies"
"$py" -m pip install -q --disable-pip-version-check -r requirements.txt

# setup.py finds the CUDA toolkit (one rule, _nvcc_home: it also sees through an nvcc wrapper
# script) and defaults TORCH_CUDA_ARCH_LIST to 9.0+PTX.
echo "== building tat_ext (TAT_EXT_CUDA=${TAT_EXT_CUDA:-auto})"
# One build at a time in this checkout: concurrent builds would overwrite each other's objects.
flock .build.lock "$py" -m pip install -q --disable-pip-version-check --no-build-isolation -e .
"$py" -c "import tat_ext._C as c; print(f'== built: cuda kernels={c.with_cuda}, openmp={c.with_openmp}')"
