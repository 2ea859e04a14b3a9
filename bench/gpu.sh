#!/usr/bin/env bash
# The GPU benchmark in one command (about 10 minutes on one NVIDIA GPU; what it runs: bench/gpu.py):
#   bash bench/gpu.sh [--dry-run] [--out bench/gpu.json] [--sizes tiny base large]
# Needs the test environment with jax's CUDA build on a machine that has a GPU:
#   bash launch/setup_env.sh --test && .venv/bin/pip install "jax[cuda12]==$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
# --dry-run runs every step at toy sizes on whatever jax has (a CPU too): CI runs it so the script stays ready.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
if [[ " $* " != *" --dry-run "* ]] && command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
exec "$python" bench/gpu.py "$@"
