#!/usr/bin/env bash
# Set up everything the tests need and run them all: lint, types, unit, kernel, notebook and browser tests.
# Extra arguments go to pytest (e.g. -k restore, or --long for the long reliability variants).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "default-model,test"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "[test] installing Debian's chromium for the browser tests (apt-get, about a minute)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[test] chromium is not installed: the browser tests are skipped (sudo apt-get install chromium)"
  fi
fi
echo "[test] lint (ruff), types (mypy) and the layers' import contracts (lint-imports)"
.venv/bin/ruff check lmchat_jupyter lmchat tests benchmarks
.venv/bin/ruff format --check lmchat_jupyter lmchat tests benchmarks
.venv/bin/mypy
.venv/bin/lint-imports
echo "[test] TypeScript: protocol types from the schema, Prettier and ESLint (labextension/)"
(cd labextension && export PATH="$(pwd)/../.venv/bin:$PATH" && jlpm install --immutable >/dev/null && jlpm lint:check)
# Cached outside the tree (~/.cache/lmchat/llama-server-VERSION): later runs find it at once.
echo "[test] llama-server for the shared-server tests (built once per machine, about 7 minutes)"
bash scripts/llama-server.sh --build-only >/dev/null
echo "[test] pytest: engine, kernels, notebooks and browser"
.venv/bin/python -m pytest "$@"
