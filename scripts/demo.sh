#!/usr/bin/env bash
# Sets up ./.venv, builds tat_ext and runs the main job: a ResNet-101-shaped vanilla network (100
# nonlinear layers, no shortcuts, no normalization) trained on the embedded 8x8 digits with TAT,
# then with Edge-of-Chaos ReLU, test accuracies side by side (`tat-ext compare`; arguments pass on,
# e.g. --epochs 5 or --out runs/compare).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m tat_ext compare "$@"
