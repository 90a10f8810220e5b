#!/usr/bin/env bash
# Set up everything the tests need and run them all: lint, types, unit, kernel, notebook and browser tests.
# Extra arguments go to pytest (e.g. -k restore, or --long for the long reliability variants).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "default-model,test"
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/ruff check lmchat_jupyter lmchat tests benchmarks
.venv/bin/ruff format --check lmchat_jupyter lmchat tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
