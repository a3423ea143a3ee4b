#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run every check CI runs: ruff, mypy --strict, the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check rkllm_core langchain_rkllm llama_index_rkllm tests
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
