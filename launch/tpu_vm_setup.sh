#!/usr/bin/env bash
# Readies a Cloud TPU VM (one worker of a slice) to train: the system's venv module where the image lacks it, the
# project's environment with jax[tpu] pinned to the project's jax version (libtpu must match jax), and no stale
# training process or libtpu lock left holding the TPU chips from an earlier run.
#   bash launch/tpu_vm_setup.sh        (launch/tpu_pod.sh runs it on every worker)
set -euo pipefail
cd "$(dirname "$0")/.."
sudo() { if [ "$(id -u)" = 0 ]; then "$@"; else command sudo "$@"; fi; }

if ! python3 -c 'import ensurepip, venv' 2> /dev/null; then
  sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv > /dev/null
fi
# A training process of an earlier launch still holds the chips (a TPU admits one process per host).
sudo pkill -9 -f 'ofa_jax\.train' || true
sudo rm -f /tmp/libtpu_lockfile
bash launch/setup_env.sh
jax_version=$(.venv/bin/python -c 'import jax; print(jax.__version__)')
.venv/bin/python -m pip install --quiet "jax[tpu]==$jax_version"
