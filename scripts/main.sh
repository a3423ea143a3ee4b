#!/usr/bin/env bash
# Set up (scripts/setup.sh), then the main job: a streaming ChatRKLLM chat, on the NPU when
# RKLLM_MODEL_PATH names a .rkllm model (and librkllmrt.so is found), else SmolLM2 on the host CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/chat.py "$@"
