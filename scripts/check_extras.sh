#!/usr/bin/env bash
# Install rkllm-py alone and with each extra ([langchain], [llamaindex], [host], [server]), each in a
# fresh virtual environment from the built wheel, and run what that extra promises
# (scripts/extras_smoke.py): an import no extra declares fails here, not on a user's machine.
# Usage: bash scripts/check_extras.sh [core|langchain|llamaindex|host|server ...]   (default: all)
# Run by .ci/run. Each venv has its own host-runtime cache, so the runtime is built from the
# installed package's own sources.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PY=${PYTHON:-python3}
extras=("$@")
[ ${#extras[@]} -gt 0 ] || extras=(core langchain llamaindex host server)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" . >/dev/null
wheel=$(ls "$work"/dist/rkllm_py-*.whl)

for extra in "${extras[@]}"; do
  spec="$wheel"
  [ "$extra" = core ] || spec="$wheel[$extra]"
  env_dir="$work/venv-$extra"
  start=$(date +%s)
  "$PY" -m venv "$env_dir"
  "$env_dir/bin/python" -m pip install --quiet --upgrade pip
  "$env_dir/bin/python" -m pip install --quiet "$spec"
  # run from outside the checkout, so that only the installed package is importable
  (cd "$work" && RKLLM_HOST_CACHE="$env_dir/host-cache" \
    "$env_dir/bin/python" "$repo/scripts/extras_smoke.py" "$extra")
  echo "rkllm-py[$extra]: ok in $(( $(date +%s) - start )) s"
  rm -rf "$env_dir"
done
