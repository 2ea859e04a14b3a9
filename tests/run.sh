#!/usr/bin/env bash
# Runs the whole test suite, creating the environment (with the test requirements) first when it is missing.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k parity`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh --test
exec .venv/bin/python -m pytest -n 2 "$@"
