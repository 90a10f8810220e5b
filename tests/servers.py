"""Real inference servers for tests: llama-server (through scripts/llama-server.sh) and llama-cpp-python's server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "llama-server.sh"
TEST_API_KEY = "lmchat-test-key"
#: urllib without proxies: the test servers are on 127.0.0.1, whatever proxy the environment names.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_server_binary() -> Path:
    """Build llama-server once (cached outside the tree) and return it; skip only where nothing can compile C++."""
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("llama-server cannot be built here: no C++ compiler (install g++, e.g. apt-get install g++)")
    done = subprocess.run(
        ["bash", str(SCRIPT), "--build-only"], capture_output=True, text=True, env=_env(), timeout=3600
    )
    if done.returncode != 0:
        raise RuntimeError(f"scripts/llama-server.sh --build-only failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _env() -> dict[str, str]:
    # The script finds the embedded model with the Python running the tests.
    return {**os.environ, "LMCHAT_PYTHON": sys.executable}


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server at {url} exited with {process.returncode} before it was ready")
        try:
            with DIRECT.open(url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server at {url} was not ready after {timeout:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class LlamaServer:
    """llama-server on 127.0.0.1 started by scripts/llama-server.sh; its slot files stay in ``slot_dir``.

    ``restart()`` stops and starts it on the same port and slot folder (slots in memory are lost, files stay).
    """

    def __init__(
        self,
        slot_dir: Path,
        *,
        parallel: int = 2,
        ctx_per_slot: int = 4096,
        api_key: str | None = None,
        model: Path | None = None,
    ) -> None:
        self.slot_dir = slot_dir
        #: The model file (None: the embedded default); may change between restarts.
        self.model = model
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        self.api_key = api_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = slot_dir.parent / f"llama-server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> LlamaServer:
        command = ["bash", str(SCRIPT), "--port", str(self.port), "--parallel", str(self.parallel)]
        command += ["--ctx-per-slot", str(self.ctx_per_slot), "--slot-save-path", str(self.slot_dir)]
        if self.model is not None:
            command += ["--model", str(self.model)]
        # No RAM prompt cache (llama-server keeps 8 GiB of evicted slots by default): what a test or a
        # benchmark sees of a conversation's cache comes from its slot and its slot file only.
        command += ["--", "--threads", "2", "--cache-ram", "0"]
        if self.api_key:
            command += ["--api-key", self.api_key]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, env=_env(), start_new_session=True)
        wait_healthy(self.url, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running_llama_server(slot_dir: Path, **settings: Any) -> Iterator[LlamaServer]:
    """A started llama-server for a fixture (``yield from``), stopped afterwards; skips without a build."""
    llama_server_binary()
    with LlamaServer(slot_dir, **settings) as running:
        yield running


class OpenAIServer:
    """llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``) on 127.0.0.1."""

    def __init__(self, model: Path, log_dir: Path, *, api_key: str | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--n_ctx", "2048", "--n_threads", "2", "--verbose", "False"]
        if api_key:
            command += ["--api_key", api_key]
        with (log_dir / f"llama-cpp-server-{self.port}.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        self._wait()

    def _wait(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode} before it was ready")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"llama_cpp.server was not listening after {timeout:.0f} s")

    def stop(self) -> None:
        _stop(self.process)


def slot_file_tokens(path: Path) -> list[int]:
    """The tokens a llama-server slot file holds (read from the file, not through the server)."""
    # llama_state_seq_save_file writes magic, version and a count (uint32 each), then that many int32s: here
    # llama-server's packed prompt, -1, its format version 1, the token count, the tokens, the media count.
    with path.open("rb") as fh:
        _magic, _version, count = struct.unpack("<III", fh.read(12))
        packed = list(struct.unpack(f"<{count}i", fh.read(4 * count)))
    if packed[:2] == [-1, 1]:
        return packed[3 : 3 + packed[2]]
    return packed
