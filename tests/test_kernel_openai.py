"""%%chat in real kernels on a real OpenAI-compatible server (llama-cpp-python's): history-only persistence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lmchat_jupyter.backends.server.probe import probe_server
from lmchat_jupyter.core.errors import ServerAuthError
from lmchat_jupyter.ui.report import api_key_note

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
        assert "could not be restored" in loaded.stdout and "none was sent" in loaded.stdout, loaded.text
        assert "asked for an API key and none was sent" in k.run(chat + "What is my name?", cell_id="c3").text
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


def answer_prompt(k: KernelDriver, code: str, answer: str) -> tuple[dict[str, object], str]:
    """Run ``code`` with stdin allowed, answer its input request (as JupyterLab's password box does); the request
    and what the cell printed."""
    msg_id = k.kc.execute(code, allow_stdin=True)
    request = k.kc.get_stdin_msg(timeout=60)
    assert request["msg_type"] == "input_request", request
    k.kc.input(answer)
    out = ""
    while True:
        reply = k.kc.get_iopub_msg(timeout=60)
        if reply["parent_header"].get("msg_id") != msg_id:
            continue
        if reply["msg_type"] == "stream":
            out += reply["content"]["text"]
        elif reply["msg_type"] == "status" and reply["content"]["execution_state"] == "idle":
            break
    k.kc.get_shell_msg(timeout=30)
    return dict(request["content"]), out


def test_the_key_asked_for_at_a_password_prompt_is_kept_nowhere(server: OpenAIServer, tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "keyed.ipynb")
    ipython_dir = tmp_path / "ipython"
    chat = f"%%chat --model {server.url} --temperature 0 --max-tokens 8\n"
    k = KernelDriver(notebook, tmp_path, {"LMCHAT_API_KEY": "", "IPYTHONDIR": str(ipython_dir)})
    try:
        assert k.run("%load_ext lmchat").error is None
        refused = k.run(chat + "My name is Ada.", cell_id="c1").text
        assert "asked for an API key and none was sent" in refused and "refused" not in refused, refused
        assert "`%chat config --api-key` (it asks for the key" in refused, refused
        request, out = answer_prompt(k, "%chat config --api-key", TEST_API_KEY)
        assert request["password"] is True and "API key" in str(request["prompt"]), request
        assert "api key: set with %chat config --api-key" in out, out
        assert k.run(chat + "My name is Ada.", cell_id="c1").error is None
        assert k.value(current(".info.user_message_count")) == 1
        _, out = answer_prompt(k, "%chat config --api-key", "not-the-key")
        wrong = k.run(chat + "And again.", cell_id="c2").text
        assert "refused the API key" in wrong and "none was sent" not in wrong, wrong
        assert TEST_API_KEY not in str(k.value("list(In)"))
    finally:
        k.shutdown()
    kept = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "history.sqlite" for path in kept), kept  # IPython's history was written here
    assert b"config --api-key" in next(p for p in kept if p.name == "history.sqlite").read_bytes()
    assert [p for p in kept if TEST_API_KEY.encode() in p.read_bytes()] == []


def test_the_key_messages_say_whether_a_key_was_sent_and_to_ask_for_it(
    server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LMCHAT_API_KEY", raising=False)
    with pytest.raises(ServerAuthError) as none:
        probe_server(server.url, None)
    with pytest.raises(ServerAuthError) as wrong:
        probe_server(server.url, "not-the-key")
    assert "asked for an API key and none was sent" in str(none.value) and "refused" not in str(none.value)
    assert "refused the API key" in str(wrong.value) and "none was sent" not in str(wrong.value)
    for said in (str(none.value), str(wrong.value), api_key_note(None)):
        # The advice is the password prompt: a key typed into a cell stays in IPython's history database.
        assert "%chat config --api-key" in said and "--api-key KEY" not in said, said
        assert "asks for it" in said or "asks for the key" in said, said
