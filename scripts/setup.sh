#!/usr/bin/env bash
# Create .venv (once) and install rkllm-py with every extra, then build the host runtime.
# Idempotent: a second run only checks. Used by the README's two commands and by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# llama-cpp-python compiles llama.cpp from source (about 5 minutes); pip caches the wheel.
.venv/bin/python -m pip install --quiet -e ".[all,dev,notebooks]"
.venv/bin/rkllm host build
