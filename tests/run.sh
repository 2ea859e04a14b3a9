#!/usr/bin/env bash
# Lints, then runs the whole test suite, creating the environment (with the test requirements) first when it is
# missing. Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow"` (the quick loop) or `-k parity`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
