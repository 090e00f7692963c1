#!/usr/bin/env bash
# Sets up ./.venv, builds tat_ext and runs the main job (python -m tat_ext.demo). Arguments pass on.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m tat_ext.demo "$@"
