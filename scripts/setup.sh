#!/usr/bin/env bash
# Create .venv and install lmchat with the extras given as arguments (e.g. "default-model,lab").
# Each step says what it does and how long it may take; pip's whole output goes to .venv/setup-EXTRAS.log,
# whose end is shown when a step fails. llama-cpp-python is compiled once (5-8 minutes on 2 cores);
# pip's wheel cache reuses the build after that.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-default-model}"

# A git checkout builds the JupyterLab extension with Node.js; without it pip fails only after the
# long llama.cpp build, with a traceback that does not say why.
if ! command -v node >/dev/null 2>&1; then
  echo "setup: Node.js 18 or newer is needed to build the JupyterLab extension from a git checkout; install it (Debian/Ubuntu: apt-get install nodejs) and run this again." >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
  echo "setup: Node.js $(node --version) is too old to build the JupyterLab extension; install Node.js 18 or newer and run this again." >&2
  exit 1
fi

step() { printf '[setup %2d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

# pip's output, one line at a time, turned into a few lines that say what runs, and a line every
# minute while a long build runs (pip's own "still running..."), so a slow machine does not look stuck.
show_progress() {
  local line since=$SECONDS collecting="" tools=""
  while IFS= read -r line; do
    case "$line" in
      "Collecting "*)
        [ -n "$collecting" ] || step "resolving the dependencies (downloads what pip's cache lacks)"
        collecting=1 ;;
      *"Building wheel for llama-cpp-python"*started*)
        since=$SECONDS
        step "compiling llama-cpp-python (once: 5-8 minutes on 2 cores, then pip's cache reuses it)" ;;
      *"Installing build dependencies: started"*)
        [ -n "$tools" ] || step "installing the build tools"
        tools=1 ;;
      # hatchling has no separate metadata hook: pip builds lmchat here, the JupyterLab extension included.
      *"Preparing editable metadata"*started*)
        since=$SECONDS
        step "building lmchat's JupyterLab extension (jlpm: 1-2 minutes when labextension/ changed)" ;;
      *"still running"*)
        step "… still building ($(((SECONDS - since) / 60)) min so far)" ;;
      "Installing collected packages"*)
        step "installing the packages into .venv" ;;
      "Successfully installed"*)
        step "done: $(wc -w <<<"${line#Successfully installed }") packages installed or updated" ;;
      ERROR:*)
        echo "$line" >&2 ;;
    esac
  done
}

if [ ! -x .venv/bin/python ]; then
  step "creating .venv"
  python3 -m venv .venv
fi
# A portable build: no -march=native, so the wheel in the cache runs on any x86-64 machine.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=off}"
step "updating pip"
.venv/bin/python -m pip install --quiet --upgrade pip
# One log per set of extras: the test setup does not overwrite the lab's.
log=".venv/setup-${extras//,/+}.log"
step "installing lmchat[${extras}] and its dependencies (pip's full output: $log)"
if ! .venv/bin/python -m pip install --progress-bar off -e ".[${extras}]" 2>&1 | tee "$log" | show_progress; then
  tail -n 40 "$log" >&2
  echo "setup: pip failed (above: the end of its output; all of it in $log)" >&2
  exit 1
fi
