"""llama_cpp loads with the first local model, and only then: importing lmchat, ``%load_ext lmchat``, settings
made before a model loads and chats on an OpenAI-compatible server leave it unloaded.

Each case runs in a fresh process (the test process has loaded llama.cpp long before).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import TEST_API_KEY, OpenAIServer

REPO = Path(__file__).resolve().parents[1]
REPORT = "\nimport sys\nprint('llama_cpp loaded' if 'llama_cpp' in sys.modules else 'llama_cpp not loaded')\n"


def llama_cpp_after(code: str, cwd: Path, **env: str) -> str:
    """Whether ``code``, run in a fresh process in ``cwd``, left llama_cpp loaded (and its last lines of output)."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), **env}
    done = subprocess.run(
        [sys.executable, "-c", code + REPORT], cwd=cwd, env=environ, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_importing_lmchat_and_its_extension_loads_no_llama_cpp(tmp_path: Path) -> None:
    code = (
        "import os, lmchat_jupyter\n"
        "import lmchat_jupyter.ui.magics\n"
        "from lmchat_jupyter import Conversation, ModelSettings, load_model, load_ipython_extension\n"
        "from lmchat_jupyter.backends.registry import target\n"
        "settings = ModelSettings(n_ctx=4096)\n"  # a notebook's settings, made before any model loads
        "assert type(target('http://127.0.0.1:9')).__name__ == 'ServerTarget'\n"
        "print('policy', os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    out = llama_cpp_after(code, tmp_path)
    assert out.splitlines()[-1] == "llama_cpp not loaded", out
    # What llama.cpp reads when it loads is set already, for whoever loads it later.
    assert "policy PASSIVE" in out, out


def test_load_ext_loads_no_llama_cpp(tmp_path: Path) -> None:
    code = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'lmchat')\n"
        "ip.run_line_magic('unload_ext', 'lmchat')\n"
    )
    out = llama_cpp_after(code, tmp_path, JPY_SESSION_NAME=str(tmp_path / "notes.ipynb"))
    assert out.splitlines()[-1] == "llama_cpp not loaded", out


def test_loading_a_local_model_loads_llama_cpp(tmp_path: Path) -> None:
    out = llama_cpp_after("from lmchat_jupyter import load_model\nload_model(n_ctx=256)\n", tmp_path)
    assert out.splitlines()[-1] == "llama_cpp loaded", out
    # So does a question only llama.cpp answers: reading the default GPU layers of settings.
    code = "from lmchat_jupyter import ModelSettings\nprint(ModelSettings().n_gpu_layers)\n"
    assert llama_cpp_after(code, tmp_path).splitlines()[-1] == "llama_cpp loaded"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[OpenAIServer]:
    running = OpenAIServer(smollm_path, tmp_path_factory.mktemp("openai"), api_key=TEST_API_KEY)
    yield running
    running.stop()


def test_a_chat_on_an_openai_server_loads_no_llama_cpp(server: OpenAIServer, tmp_path: Path) -> None:
    load = (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\n"
        "ip.run_line_magic('load_ext', 'lmchat')\n"
    )
    chat = (
        f"ip.run_cell_magic('chat', '--model {server.url} --temperature 0 --max-tokens 4', 'Hello')\n"
        "ip.run_line_magic('chat', 'info')\n"
        "ip.run_line_magic('unload_ext', 'lmchat')\n"  # saves the conversation
    )
    env = {"JPY_SESSION_NAME": str(tmp_path / "notes.ipynb"), "LMCHAT_API_KEY": TEST_API_KEY}
    out = llama_cpp_after(load + chat, tmp_path, **env)
    assert "(OpenAI-compatible server at" in out, out
    assert out.splitlines()[-1] == "llama_cpp not loaded", out
    # The kernel restarted: the conversation comes back (its history) from the sidecar folder.
    out = llama_cpp_after(load, tmp_path, **env)
    assert "restored default: 2 messages" in out, out
    assert out.splitlines()[-1] == "llama_cpp not loaded", out
