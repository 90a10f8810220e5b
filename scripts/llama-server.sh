#!/usr/bin/env bash
# Build llama.cpp's llama-server once and start it on this machine with the embedded default model.
#
#   bash scripts/llama-server.sh --port PORT [--parallel N] [--model PATH] [--ctx-per-slot TOKENS]
#                                [--host ADDR] [--slot-save-path DIR] [-- EXTRA llama-server ARGS]
#   bash scripts/llama-server.sh --build-only      # build (or find) it and print the binary's path
#
# The source is the llama.cpp vendored in the pinned llama-cpp-python sdist (the version in pyproject.toml), so
# the server runs exactly the llama.cpp that the kernels run. cmake and ninja come from PyPI into a venv of their
# own. The build (about 7 minutes on two cores) lands in LMCHAT_LLAMA_SERVER_DIR, by default
# ~/.cache/lmchat/llama-server-VERSION/, outside any work tree, and is reused from then on.
# Slot files go to --slot-save-path, by default a temporary folder removed when the server stops.
# An API key: pass `-- --api-key KEY` (clients read theirs from LMCHAT_API_KEY).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

port="" parallel=2 model="" ctx_per_slot=8192 host=127.0.0.1 slot_dir="" build_only=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="${2:?--port needs a number}"; shift 2 ;;
    --parallel) parallel="${2:?--parallel needs a number}"; shift 2 ;;
    --model) model="${2:?--model needs a .gguf path}"; shift 2 ;;
    --ctx-per-slot) ctx_per_slot="${2:?--ctx-per-slot needs a number}"; shift 2 ;;
    --host) host="${2:?--host needs an address}"; shift 2 ;;
    --slot-save-path) slot_dir="${2:?--slot-save-path needs a folder}"; shift 2 ;;
    --build-only) build_only=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "llama-server.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

# Python for pip: the project's venv when there is one (scripts/setup.sh), else the system's python3.
python="${LMCHAT_PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python="$(command -v python3)"; fi
fi

version="$(sed -n 's/^[[:space:]]*"llama-cpp-python==\([0-9][0-9.]*\)".*/\1/p' "$repo/pyproject.toml" | head -n 1)"
if [ -z "$version" ]; then
  echo "llama-server.sh: no pinned llama-cpp-python==VERSION in $repo/pyproject.toml" >&2
  exit 1
fi
cache="${LMCHAT_LLAMA_SERVER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lmchat/llama-server-$version}"
binary="$cache/bin/llama-server"

build() {
  local work="$cache/build.tmp" tools="$cache/tools"
  rm -rf "$work"
  mkdir -p "$work"
  echo "llama-server.sh: building llama-server from llama-cpp-python $version's llama.cpp (once, ~7 min) in $cache" >&2
  if [ ! -x "$tools/bin/cmake" ] || [ ! -x "$tools/bin/ninja" ]; then
    rm -rf "$tools"
    "$python" -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check "cmake>=3.21" ninja
  fi
  "$tools/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$version" -d "$work"
  tar xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
  local src="$work/llama_cpp_python-$version/vendor/llama.cpp"
  # Static libraries: one self-contained binary that can be moved into place (no build-tree RPATH).
  # No -march=native: the cached binary runs on any x86-64 machine that shares the cache.
  PATH="$tools/bin:$PATH" cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >"$work/configure.log" 2>&1 \
    || { tail -n 30 "$work/configure.log" >&2; exit 1; }
  # A line a minute with ninja's progress, so a long build does not look stuck.
  local started
  started="$(date +%s)"
  (
    while sleep 60; do
      step="$(grep -o '^\[[0-9]*/[0-9]*\]' "$work/build.log" 2>/dev/null | tail -n 1)"
      echo "llama-server.sh: … still compiling ($(( ($(date +%s) - started) / 60 )) min so far${step:+, step $step})" >&2
    done
  ) &
  local ticker=$!
  PATH="$tools/bin:$PATH" cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
    || { kill "$ticker"; tail -n 30 "$work/build.log" >&2; exit 1; }
  kill "$ticker"
  echo "llama-server.sh: built in $(( ($(date +%s) - started) / 60 )) min" >&2
  mkdir -p "$cache/bin"
  cp "$work/build/bin/llama-server" "$binary.tmp"
  mv -f "$binary.tmp" "$binary"  # atomic: a half-copied binary is never found
  rm -rf "$work"
}

mkdir -p "$cache"
# One build at a time per cache (parallel test runs, two shells): the others wait, then find the binary.
exec 9>"$cache/.lock"
flock 9
if [ ! -x "$binary" ]; then build; fi
flock -u 9
exec 9>&-

if [ "$build_only" = 1 ]; then
  echo "$binary"
  exit 0
fi
[ -n "$port" ] || { echo "llama-server.sh: --port PORT is required (or --build-only)" >&2; usage >&2; exit 2; }

if [ -z "$model" ]; then
  model="$("$python" -c 'from lmchat_jupyter.backends.specs import default_model_path; print(default_model_path())')" || {
    echo "llama-server.sh: no embedded default model; run 'bash scripts/setup.sh default-model' or pass --model" >&2
    exit 1
  }
fi

remove_slot_dir=0
if [ -z "$slot_dir" ]; then
  slot_dir="$(mktemp -d "${TMPDIR:-/tmp}/lmchat-slots.XXXXXX")"
  remove_slot_dir=1
fi
mkdir -p "$slot_dir"

echo "llama-server.sh: http://$host:$port  model $model  $parallel slots of $ctx_per_slot tokens  slot files in $slot_dir" >&2
"$binary" -m "$model" --host "$host" --port "$port" -np "$parallel" -c "$((parallel * ctx_per_slot))" \
  --slot-save-path "$slot_dir/" ${extra[@]+"${extra[@]}"} &
server=$!
# Stopping this script stops the server; the temporary slot folder goes with it.
trap 'kill -TERM "$server" 2>/dev/null || true' INT TERM HUP
status=0
wait "$server" || status=$?
# wait returns early when a trapped signal arrives: wait again for the server to exit.
while kill -0 "$server" 2>/dev/null; do wait "$server" || status=$?; done
if [ "$remove_slot_dir" = 1 ]; then rm -rf "$slot_dir"; fi
exit "$status"
