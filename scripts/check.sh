#!/usr/bin/env bash
# Static checks, run by scripts/test.sh before the tests (and so by CI): the layer contracts
# (import-linter: pyproject.toml [tool.importlinter]), lint (ruff) and types (mypy, the whole
# package). Needs the test extra: bash scripts/test.sh installs it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck disable=SC1091
. .venv/bin/activate
echo "check: import layers (lint-imports)" >&2
lint-imports --no-cache
echo "check: ruff" >&2
ruff check .
echo "check: mypy" >&2
mypy -p edgescale
