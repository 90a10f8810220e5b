"""%load_ext lmchat and %%chat in real kernels: save to the sidecar, restore on restart, idempotent re-runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lmchat_jupyter import ChatHistory

from .kernel_driver import KernelDriver, notebook_file

CHAT = "%%chat --temperature 0 --max-tokens 12\n"
PROMPTS = {"c1": "My name is Ada.", "c2": "I like red apples.", "c3": "What is my name?"}


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    return notebook_file(tmp_path, "my notes ü.ipynb")


def sidecar(notebook: Path) -> Path:
    return notebook.with_name("my notes ü.lmchat")


def count_users(k: KernelDriver) -> int:
    return int(k.value("__import__('lmchat_jupyter').current().info.user_message_count"))


def test_restart_restores_and_rerun_is_idempotent(notebook: Path) -> None:
    k = KernelDriver(notebook, notebook.parent)
    try:
        assert k.run("%load_ext lmchat").error is None
        answers = {}
        for cell, prompt in PROMPTS.items():
            run = k.run(CHAT + prompt, cell_id=cell)
            assert run.error is None, run.text
            answers[cell] = k.value("__import__('lmchat_jupyter').current().history[-1].content")
            assert answers[cell] in run.displays[-1]
            assert "tok/s" in run.displays[-1]
    finally:
        k.shutdown()
    folder = sidecar(notebook)
    assert (folder / "default.lmsession").is_file()
    saved = ChatHistory.load(folder / "default.history.json")
    assert saved.user_message_count == 3

    k = KernelDriver(notebook, notebook.parent)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "restored default: 6 messages" in loaded.stdout, loaded.text
        assert "full session" in loaded.stdout
        # Re-running the three cells shows the stored answers: no generation, no duplicates.
        for cell, prompt in PROMPTS.items():
            run = k.run(CHAT + prompt, cell_id=cell)
            assert "not generated again" in run.displays[-1]
            assert answers[cell] in run.displays[-1]
        assert count_users(k) == 3
        # A new cell after the restart evaluates only its own tokens.
        assert k.run(CHAT + "And what fruit do I like?", cell_id="c4").error is None
        stats = k.value(
            "(lambda r: [r.prompt_tokens, r.cached_tokens])(__import__('lmchat_jupyter').current().last_result)"
        )
        assert stats[0] < 30 and stats[1] > 40, stats
        # Editing the second cell rewinds the conversation to it and answers anew.
        run = k.run(CHAT + "I like green pears.", cell_id="c2")
        assert "not generated again" not in run.displays[-1]
        history = k.value("[m.content for m in __import__('lmchat_jupyter').current().history]")
        assert history[0:3:2] == ["My name is Ada.", "I like green pears."]
        assert count_users(k) == 2
        # --regen answers the same cell again without adding a turn.
        assert (
            k.run("%%chat --regen --temperature 0.9 --seed 3 --max-tokens 8\nI like green pears.", "c2").error is None
        )
        assert count_users(k) == 2
    finally:
        k.shutdown()


def test_without_cell_ids_reruns_follow_the_order(notebook: Path) -> None:
    k = KernelDriver(notebook, notebook.parent)
    try:
        k.run("%load_ext lmchat")
        for prompt in PROMPTS.values():
            assert k.run(CHAT + prompt).error is None
    finally:
        k.shutdown()
    k = KernelDriver(notebook, notebook.parent)
    try:
        k.run("%load_ext lmchat")
        runs = [k.run(CHAT + prompt) for prompt in PROMPTS.values()]
        assert all("not generated again" in r.displays[-1] for r in runs)
        assert count_users(k) == 3
    finally:
        k.shutdown()


def test_kill_9_keeps_completed_turns_and_sigterm_saves(notebook: Path) -> None:
    k = KernelDriver(notebook, notebook.parent)
    k.run("%load_ext lmchat")
    k.run(CHAT + PROMPTS["c1"], cell_id="c1")
    k.run(CHAT + PROMPTS["c2"], cell_id="c2")
    k.kill()  # at once: the background session save may not have happened
    k = KernelDriver(notebook, notebook.parent)
    try:
        assert "restored default: 4 messages" in k.run("%load_ext lmchat").stdout
        assert count_users(k) == 2
        # A change no turn announced is saved by the SIGTERM handler.
        k.run("__import__('lmchat_jupyter').current().history[-1].meta['note'] = 'kept'")
    finally:
        k.terminate()
    history = json.loads((sidecar(notebook) / "default.history.json").read_text())
    assert history["messages"][-1]["meta"]["note"] == "kept"
    assert not list(sidecar(notebook).glob(".*lmchat-tmp")), "no temp files left behind"


def test_a_session_in_blocks_is_saved_at_shutdown(notebook: Path) -> None:
    """A session over 8 MiB is checksummed block by block on a thread pool; a kernel shutting down
    refuses new pool work, and the save it makes then must still happen."""
    from lmchat_jupyter.engine.session import container as session_format

    k = KernelDriver(notebook, notebook.parent)
    try:
        k.run("%load_ext lmchat")
        long_prompt = "Summarise these notes in one line. " + "The cache server keeps every row it reads. " * 50
        k.run(CHAT + long_prompt, cell_id="long")
        k.run("import lmchat_jupyter.notebook.kernel as _k\n_k.chats().store.flush()")
        k.run("__import__('lmchat_jupyter').current().history[-1].meta['note'] = 'kept'")
        # Another file in its place (a copy): the save at shutdown writes the whole session (a record
        # would need no block checksums), as a first save or a save after a rewind does.
        session = sidecar(notebook) / "default.lmsession"
        copy = session.with_name("copy")
        copy.write_bytes(session.read_bytes())
        copy.replace(session)
    finally:
        k.shutdown()
    blob = (sidecar(notebook) / "default.lmsession").read_bytes()
    parsed = session_format.parse(memoryview(blob), "session")
    kv = next(e for e in parsed.header["sections"] if e["name"] == "kv")
    assert isinstance(kv["xxh3"], list), "the session should be large enough to be checked in blocks"
    messages = json.loads(bytes(parsed.sections["history"]))["messages"]
    assert messages[-1]["meta"]["note"] == "kept"


def test_two_kernels_on_one_notebook(notebook: Path) -> None:
    first = KernelDriver(notebook, notebook.parent)
    second = KernelDriver(notebook, notebook.parent)
    try:
        first.run("%load_ext lmchat")
        first.run(CHAT + PROMPTS["c1"], cell_id="c1")
        told = second.run("%load_ext lmchat")
        assert "in use by another kernel" in told.stdout
        second.run(CHAT + "Hello from the second kernel.", cell_id="x")
        first.run(CHAT + PROMPTS["c2"], cell_id="c2")
    finally:
        second.shutdown()
        first.shutdown()
    saved = ChatHistory.load(sidecar(notebook) / "default.history.json")
    assert [m.content for m in saved if m.role == "user"] == [PROMPTS["c1"], PROMPTS["c2"]]


def test_magic_usage_errors_and_help(notebook: Path) -> None:
    k = KernelDriver(notebook, notebook.parent)
    try:
        k.run("%load_ext lmchat")
        k.run("%load_ext lmchat")  # twice is harmless
        bad = k.run("%%chat --temperature hot\nhi")
        assert bad.stderr.startswith("UsageError: %%chat: argument --temperature"), bad.text
        assert "Traceback" not in bad.text
        assert k.run("%%chat\n   ").stderr.startswith("UsageError: %%chat: the cell is empty")
        assert k.run("%chat frobnicate").stderr.startswith("UsageError")
        assert "not a valid conversation name" in k.run("%chat use ../../etc").stderr
        help_text = k.run("%chat?")
        assert "%chat rewind N" in help_text.text and "--max-tokens N" in help_text.text
        info = k.run("%chat info")
        assert "sidecar:" in info.stdout and "my notes ü.lmchat" in info.stdout
        k.run("%unload_ext lmchat")
        assert "UsageError" in k.run("%%chat\nhi").stderr
    finally:
        k.shutdown()


def run_and_interrupt(k: KernelDriver, code: str, cell_id: str) -> tuple[str, list[str]]:
    """Run ``code``, interrupt the kernel (Jupyter's stop) once the answer has begun to stream; what the cell
    showed (the last text of each output, then any error's traceback lines) and the error's traceback."""
    msg_id = k.send(code, cell_id)
    shown: dict[str, str] = {}
    traceback: list[str] = []
    interrupted = False
    while True:
        reply = k.kc.get_iopub_msg(timeout=120)
        if reply["parent_header"].get("msg_id") != msg_id:
            continue
        kind, body = reply["msg_type"], reply["content"]
        if kind in ("display_data", "update_display_data"):
            key = (body.get("transient") or {}).get("display_id") or str(len(shown))
            shown[key] = body["data"].get("text/markdown") or body["data"].get("text/plain", "")
            if kind == "update_display_data" and shown[key].strip(" ▌\n") and not interrupted:
                k.km.interrupt_kernel()
                interrupted = True
        elif kind == "stream":
            shown[f"stream-{len(shown)}"] = body["text"]
        elif kind == "error":
            traceback = list(body["traceback"])
            shown["error"] = f"{body['ename']}: {body['evalue']}"
        elif kind == "status" and body["execution_state"] == "idle":
            break
    assert interrupted
    k.kc.get_shell_msg(timeout=30)
    return "\n".join([*shown.values(), *traceback]), traceback


def test_a_stopped_answer_ends_in_one_line_and_keeps_its_tokens(notebook: Path) -> None:
    k = KernelDriver(notebook, notebook.parent)
    try:
        assert k.run("%load_ext lmchat").error is None
        code = "%%chat --temperature 0.8 --seed 1 --max-tokens 4000\nWrite a very long story about the sea."
        text, traceback = run_and_interrupt(k, code, "long")
        assert traceback and len(traceback) == 1, traceback
        kept = k.value(current(".history[-1].meta"))
        assert kept.get("finish_reason") == "interrupted", kept
        n = kept["tokens"]
        assert n > 0 and traceback[0] == f"stopped · {n} token{'s' * (n != 1)} kept", traceback
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
        assert k.value(current(".history[-1].content")) in text
        # The kernel goes on: the next cell answers after the kept partial answer.
        assert k.run(CHAT + "Thanks.", cell_id="next").error is None
        assert k.value(current(".info.user_message_count")) == 2
    finally:
        k.shutdown()


def current(expression: str) -> str:
    return f"__import__('lmchat_jupyter').current(){expression}"


def test_bad_values_and_paths_are_refused_before_anything_runs(notebook: Path, tmp_path: Path) -> None:
    k = KernelDriver(notebook, notebook.parent)
    try:
        assert k.run("%load_ext lmchat").error is None
        assert k.run(CHAT + PROMPTS["c1"], cell_id="c1").error is None
        before = k.value(current(".history.as_chat_messages()"))
        negative = k.run("%%chat --max-tokens -5\nhello", cell_id="c2")
        assert negative.stderr.startswith("UsageError: %%chat: argument --max-tokens: -5 is out of range"), negative
        assert negative.displays == [] and k.value(current(".history.as_chat_messages()")) == before
        empty = k.run('%chat use ""')
        assert "is not a valid conversation name: use 1-64 letters" in empty.stderr, empty.text
        assert "conversation: default" in k.run("%chat info").stdout
        many = k.run("%chat rewind 999")
        assert many.stderr.strip() == (
            "UsageError: %chat rewind 999: 'default' has 1 turn, so N is at most 1 (%chat clear drops them all)"
        ), many.text
        assert k.value(current(".history.as_chat_messages()")) == before
        # A path the user typed gets advice about the user's file, never to delete or remove it.
        os.mkfifo(tmp_path / "pipe")
        for path, why in (
            ("/etc/passwd", "/etc/passwd is not an lmchat session file (it does not start with"),
            ("/dev/zero", "/dev/zero is a character device, not a file; nothing was loaded"),
            (str(tmp_path / "pipe"), "is a FIFO (named pipe), not a file; nothing was loaded"),
            (str(tmp_path), "is a folder, not a file; nothing was loaded"),
        ):
            said = k.run(f"%chat load '{path}'").stderr
            assert why in said and "nothing was loaded" in said, said
            assert "delete" not in said and "remove" not in said.lower(), said
        assert k.value(current(".history.as_chat_messages()")) == before
    finally:
        k.shutdown()
