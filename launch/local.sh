#!/usr/bin/env bash
# Runs a job on this machine in the project's environment, creating the environment first when it is missing.
#   bash launch/local.sh                       the demo: the nano model learns the synthetic world, then answers
#                                              unseen scenes (training, then its evaluation, in workdir/demo)
#   bash launch/local.sh python -m MODULE ...  any command, inside the environment
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
if [ $# -eq 0 ]; then
  python -m ofa_jax.train --config configs/demo.py --workdir workdir/demo
  exec python -m ofa_jax.demo --config configs/demo.py --workdir workdir/demo
fi
exec "$@"
