#!/usr/bin/env bash
# Sets up ./.venv, builds tat_ext and checks the fused op against the pure-PyTorch reference,
# with its fwd+bwd speed against eager PyTorch (python -m tat_ext.demo). Arguments pass on.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m tat_ext.demo "$@"
