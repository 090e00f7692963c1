#!/usr/bin/env bash
# Sets up ./.venv, builds tat_ext and runs the post-install kernel check: `tat-ext verify`, the
# fused kernels against the pure-PyTorch reference on the CPU and every GPU. Arguments pass on
# (e.g. --quick, --json FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m tat_ext verify "$@"
