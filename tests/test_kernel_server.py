"""``%%chat --model http://…`` in real kernels on a real llama-server: restarts, re-runs, server faults."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmchat_jupyter import ChatHistory
from lmchat_jupyter.backends.server.llama_client import LlamaServerClient
from lmchat_jupyter.backends.specs import default_model_path
from lmchat_jupyter.core import signing

from .kernel_driver import CellRun, KernelDriver, notebook_file
from .servers import TEST_API_KEY, LlamaServer, llama_server_binary, running_llama_server

PROMPTS = {"c1": "My name is Ada.", "c2": "I like red apples."}


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    return notebook_file(tmp_path, "notes.ipynb")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LlamaServer]:
    yield from running_llama_server(tmp_path / "slots", parallel=2, ctx_per_slot=2048)


def chat(url: str, max_tokens: int = 12) -> str:
    return f"%%chat --model {url} --temperature 0 --max-tokens {max_tokens}\n"


def timings(k: KernelDriver) -> dict[str, Any]:
    """What the server evaluated for the kernel's last answer (``prompt_n`` read anew, ``cache_n`` cached)."""
    return dict(k.value("__import__('lmchat_jupyter').current().model.backend.last_completion.get('timings', {})"))


def local_model_maps(k: KernelDriver) -> int:
    """How many mappings of the embedded model's file the kernel has (llama.cpp maps a GGUF it loads)."""
    return int(k.value(f"open('/proc/self/maps').read().count({default_model_path().name!r})"))


def erase_slots(url: str) -> None:
    client = LlamaServerClient(url)
    for slot in client.slots():
        client.erase_slot(slot.id)


def first_turns(k: KernelDriver, url: str) -> dict[str, str]:
    assert k.run("%load_ext lmchat").error is None
    answers = {}
    for cell, prompt in PROMPTS.items():
        run = k.run(chat(url) + prompt, cell_id=cell)
        assert run.error is None and "UsageError" not in run.text, run.text
        answers[cell] = k.value("__import__('lmchat_jupyter').current().history[-1].content")
        assert answers[cell] in run.displays[-1]
    return answers


def test_a_conversation_on_a_server_survives_a_kernel_restart(notebook: Path, server: LlamaServer) -> None:
    k = KernelDriver(notebook, notebook.parent)
    try:
        answers = first_turns(k, server.url)
        assert "llama-server at" in k.run("%chat info").stdout and "full sessions" in k.run("%chat info").stdout
        assert local_model_maps(k) == 0  # a kernel that talks to a server loads no model itself
    finally:
        k.shutdown()
    folder = notebook.with_suffix(".lmchat")
    assert ChatHistory.load(folder / "default.history.json").user_message_count == 2
    erase_slots(server.url)  # other kernels took every slot meanwhile

    k = KernelDriver(notebook, notebook.parent)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "restored default: 4 messages" in loaded.stdout and "full session" in loaded.stdout, loaded.text
        # Re-running the cells shows the stored answers: nothing is generated.
        for cell, prompt in PROMPTS.items():
            run = k.run(chat(server.url) + prompt, cell_id=cell)
            assert "not generated again" in run.displays[-1] and answers[cell] in run.displays[-1]
        assert timings(k) == {}
        # The next cell's prompt evaluation on the server is only the new message: the slot file came back.
        assert k.run(chat(server.url) + "What is my name?", cell_id="c3").error is None
        assert timings(k)["prompt_n"] < 30 and timings(k)["cache_n"] > 40, timings(k)
        assert local_model_maps(k) == 0
    finally:
        k.shutdown()


def test_a_server_down_at_restart_then_restarted_with_its_slots_and_then_on_another_model(
    notebook: Path, server: LlamaServer, tmp_path: Path, smollm_path: Path
) -> None:
    k = KernelDriver(notebook, notebook.parent)
    try:
        first_turns(k, server.url)
    finally:
        k.shutdown()
    server.stop()
    k = KernelDriver(notebook, notebook.parent)
    try:
        # The server is down: the conversation waits in its files, and each cell says why it cannot go on.
        loaded = k.run("%load_ext lmchat")
        assert "could not be restored" in loaded.stdout and "cannot reach the server" in loaded.stdout, loaded.text
        down = k.run(chat(server.url) + "What is my name?", cell_id="c3")
        assert "cannot reach the server" in down.text, down.text
        # The server comes back with the same --slot-save-path: its new process restores the slot file.
        server.start()
        assert k.run(chat(server.url) + "What is my name?", cell_id="c3").error is None
        assert k.value("__import__('lmchat_jupyter').current().info.user_message_count") == 3
        assert timings(k)["prompt_n"] < 30, timings(k)
    finally:
        k.shutdown()

    server.stop()
    server.model = Path(shutil.copy(smollm_path, tmp_path / "Other-Model.gguf"))
    server.start()
    k = KernelDriver(notebook, notebook.parent)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "another model or settings" in loaded.stdout and "model_path" in loaded.stdout, loaded.text
        assert "history from" in loaded.stdout
        assert k.run(chat(server.url) + "And what do I like?", cell_id="c4").error is None
        assert timings(k)["prompt_n"] > 60, timings(k)  # the history was sent again
        assert "Other-Model" in k.run("%chat info").stdout
    finally:
        k.shutdown()


def run_and_kill_server(k: KernelDriver, code: str, cell_id: str, server: LlamaServer) -> CellRun:
    """Run ``code`` and kill the server once the answer has begun to show."""
    msg_id = k.send(code, cell_id)
    out = CellRun()
    killed = False
    while True:
        reply = k.kc.get_iopub_msg(timeout=120)
        if reply["parent_header"].get("msg_id") != msg_id:
            continue
        kind, body = reply["msg_type"], reply["content"]
        if kind == "update_display_data" and not killed:
            assert server.process is not None
            os.killpg(server.process.pid, signal.SIGKILL)
            killed = True
        elif kind == "stream":
            out.stderr += body["text"]
        elif kind == "error":
            out.error = f"{body['ename']}: {body['evalue']}"
        elif kind == "status" and body["execution_state"] == "idle":
            break
    assert killed
    k.kc.get_shell_msg(timeout=30)
    return out


def test_a_wrong_key_and_a_server_lost_mid_answer(notebook: Path, tmp_path: Path) -> None:
    llama_server_binary()
    guarded = LlamaServer(tmp_path / "slots", parallel=1, ctx_per_slot=2048, api_key=TEST_API_KEY).start()
    k = KernelDriver(notebook, notebook.parent, {"LMCHAT_API_KEY": "wrong"})
    try:
        assert k.run("%load_ext lmchat").error is None
        refused = k.run(chat(guarded.url) + "My name is Ada.", cell_id="c1")
        assert "refused the API key" in refused.text and "%chat config --api-key" in refused.text, refused.text
        # As the README shows: the key from a variable (getpass), so the cell's text does not hold it.
        assert k.run(f"key = {TEST_API_KEY!r}").error is None
        assert "set with %chat config --api-key" in k.run("%chat config --api-key {key}").stdout
        assert k.run(chat(guarded.url) + "My name is Ada.", cell_id="c1").error is None
        before = k.value("[m.content for m in __import__('lmchat_jupyter').current().history]")

        lost = run_and_kill_server(k, chat(guarded.url, 1500) + "Write a very long story about the sea.", "c2", guarded)
        said = (lost.error or "") + lost.stderr
        assert "stopped answering" in said or "ended before the answer did" in said, lost
        assert k.value("[m.content for m in __import__('lmchat_jupyter').current().history]") == before
        down = k.run(chat(guarded.url) + "Write a very long story about the sea.", cell_id="c2")
        assert "cannot reach the server" in down.text, down.text
        guarded.start()
        # The next run of the cell goes on where the conversation was.
        assert k.run(chat(guarded.url) + "Write a very long story about the sea.", cell_id="c2").error is None
        assert k.value("__import__('lmchat_jupyter').current().info.user_message_count") == 2
    finally:
        k.shutdown()
        guarded.stop()
    # The key is kept in the kernel's memory only: not in the sidecar, not in the notebook.
    for path in [notebook, *notebook.with_suffix(".lmchat").iterdir()]:
        assert TEST_API_KEY.encode() not in path.read_bytes(), path


def test_a_copied_notebook_never_contacts_the_server_it_names(tmp_path: Path, server: LlamaServer) -> None:
    notebook = notebook_file(tmp_path, "cloned.ipynb")
    other = KernelDriver(notebook, tmp_path, extra_env={signing.SECRET_ENV_VAR: str(tmp_path / "their secret")})
    try:
        assert other.run("%load_ext lmchat").error is None
        assert other.run(chat(server.url) + "Hi.", cell_id="c1").error is None
    finally:
        other.shutdown()
    server.stop()  # a kernel that contacted it now would fail: cannot reach the server
    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "did not sign" in loaded.stdout and f"`%chat model {server.url}`" in loaded.stdout, loaded.text
        run = k.run("%%chat --temperature 0 --max-tokens 6\nMy name is Ada.", cell_id="c2")
        assert run.error is None and "cannot reach" not in run.text, run.text
        assert k.value("__import__('lmchat_jupyter').current().model.spec") is None
    finally:
        k.shutdown()
