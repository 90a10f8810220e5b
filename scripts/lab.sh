#!/usr/bin/env bash
# Set up and start JupyterLab on examples/ with the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "default-model,lab"
args=(--notebook-dir=examples)
[ "$(id -u)" = 0 ] && args+=(--allow-root)
echo "[lab] starting JupyterLab on examples/: open quickstart.ipynb (Ctrl-C stops it)"
exec .venv/bin/jupyter-lab "${args[@]}" "$@"
