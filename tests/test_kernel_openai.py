"""%%chat in real kernels on a real OpenAI-compatible server (llama-cpp-python's): history-only persistence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .kernel_driver import KernelDriver, notebook_file
from .servers import TEST_API_KEY, OpenAIServer

PROMPTS = {"c1": "My name is Ada.", "c2": "I like red apples."}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[OpenAIServer]:
    running = OpenAIServer(smollm_path, tmp_path_factory.mktemp("openai"), api_key=TEST_API_KEY)
    yield running
    running.stop()


def current(expression: str) -> str:
    return f"__import__('lmchat_jupyter').current(){expression}"


def test_a_notebook_chat_on_an_openai_server_comes_back_as_its_history(server: OpenAIServer, tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "shared.ipynb")
    env = {"LMCHAT_API_KEY": TEST_API_KEY}
    chat = f"%%chat --model {server.url} --temperature 0 --max-tokens 12\n"
    k = KernelDriver(notebook, tmp_path, env)
    try:
        assert k.run("%load_ext lmchat").error is None
        answers = {}
        for cell, prompt in PROMPTS.items():
            run = k.run(chat + prompt, cell_id=cell)
            assert run.error is None, run.text
            answers[cell] = k.value(current(".history[-1].content"))
            assert answers[cell] and answers[cell] in run.displays[-1]
            assert "tok/s" in run.displays[-1] and "context" not in run.displays[-1]  # the server says no context
        info = k.run("%chat info").text
        assert f"(OpenAI-compatible server at {server.url}, history-only)" in info, info
    finally:
        k.shutdown()
    saved = [path.read_bytes() for path in tmp_path.glob("shared.lmchat/*") if path.is_file()]
    assert saved and not any(TEST_API_KEY.encode() in data for data in saved)

    k = KernelDriver(notebook, tmp_path, env)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "restored default: 4 messages" in loaded.stdout, loaded.text
        assert f"history-only (server: OpenAI-compatible at {server.url}" in loaded.stdout, loaded.text
        assert "tok/s" not in loaded.text  # nothing was re-read: no progress bar, no rate
        status = k.value("__import__('lmchat_jupyter').ChatWidget().status.value")
        assert "history-only" in status and "16,777,216" not in status, status
        for cell, prompt in PROMPTS.items():
            run = k.run(chat + prompt, cell_id=cell)
            assert "not generated again" in run.displays[-1] and answers[cell] in run.displays[-1]
        run = k.run(chat + "What is my name?", cell_id="c3")
        assert run.error is None, run.text
        assert k.value(current(".info.user_message_count")) == 3
        sent = k.value(current(".history.as_chat_messages()"))
        assert [m["content"] for m in sent if m["role"] == "user"] == [*PROMPTS.values(), "What is my name?"]
    finally:
        k.shutdown()

    # Without the key the conversation waits on disk; with it (set in the kernel) it comes back and goes on.
    k = KernelDriver(notebook, tmp_path, {"LMCHAT_API_KEY": ""})
    try:
        loaded = k.run("%load_ext lmchat")
        assert "could not be restored" in loaded.stdout and "refused the API key" in loaded.stdout, loaded.text
        assert "refused the API key" in k.run(chat + "What is my name?", cell_id="c3").text
        assert k.run(f"%chat config --api-key {TEST_API_KEY}").error is None
        run = k.run(chat + "What is my name?", cell_id="c3")
        assert "not generated again" in run.displays[-1], run.text
        assert k.value(current(".info.user_message_count")) == 3
        assert "restored: history-only (server: OpenAI-compatible" in k.run("%chat info").text
        forked = k.run("%chat fork side --at 1")
        assert "its history copied (history-only" in forked.stdout, forked.text
        assert k.run(chat + "And what do I like?", cell_id="s1").error is None
        side = k.value("__import__('lmchat_jupyter').current('side').history.as_chat_messages()")
        assert [m["content"] for m in side if m["role"] == "user"] == ["My name is Ada.", "And what do I like?"]
        assert k.run("%chat use default").error is None and k.run("%chat rewind 1").error is None
        assert k.value(current(".info.user_message_count")) == 2
    finally:
        k.shutdown()
