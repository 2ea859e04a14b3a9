#!/usr/bin/env bash
# Creates or refreshes the project's virtual environment in .venv (CPU jax; see BUILD.md for GPU and TPU).
#   bash launch/setup_env.sh           runtime requirements
#   bash launch/setup_env.sh --test    plus the test requirements (pytest and the PyTorch reference)
# Installs only when the requirement files changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

files=(requirements.txt)
if [ "${1:-}" = "--test" ]; then files+=(requirements-test.txt); fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
# This script is hashed too: the --no-deps install below is pinned here, not in a requirements file.
stamp=".venv/.installed-$(cat "${files[@]}" pyproject.toml launch/setup_env.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  requirements=()
  for f in "${files[@]}"; do requirements+=(-r "$f"); done
  .venv/bin/python -m pip install --quiet "${requirements[@]}" -e .
  if [ "${1:-}" = "--test" ]; then
    # taming's Encoder/Decoder/GumbelQuantize, the VQGAN reference; its declared dependencies pull a CUDA torch.
    .venv/bin/python -m pip install --quiet --no-deps taming-transformers-rom1504==0.0.6
    # jax's TPU compiler (the libtpu of its tpu extra) beside the environment, not in it: the planner's TPU test puts
    # it on its path, and every other process keeps a jax that never looks for a TPU.
    libtpu=$(.venv/bin/python -c "import importlib.metadata as m; print(next(r.split(';')[0].strip() for r in m.requires('jax') if r.startswith('libtpu')))") \
      && .venv/bin/python -m pip install --quiet --no-deps --upgrade --target .venv/tpu-compiler "$libtpu" \
      || echo "setup_env.sh: jax's TPU compiler did not install; the planner's TPU test will fail" >&2
  fi
  touch "$stamp"
fi
# pycocoevalcap's PTB tokenizer runs Java; a test compares metrics.ptb_tokenize with it (and skips without Java).
if [ "${1:-}" = "--test" ] && ! command -v java > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  apt-get install -y -qq default-jre-headless > /dev/null 2>&1 || echo "setup_env.sh: Java did not install; the live PTB tokenizer test will skip" >&2
fi
