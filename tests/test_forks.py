"""``%chat fork NEW [--at TURN]``: a copy with its KV cache, listed with its origin, saved and restored like any chat."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import lmchat_jupyter
from lmchat_jupyter import ChatHistory
from lmchat_jupyter.notebook.kernel import chats

from .kernel_driver import KernelDriver, notebook_file

CHAT = "--temperature 0 --max-tokens 8"
STORE = "__import__('lmchat_jupyter.notebook.kernel').notebook.kernel.chats().store"


def line(ip: InteractiveShell, text: str) -> str:
    with capture_output() as out:
        ip.run_line_magic("chat", text)
    return out.stdout


def row(rows: list[str], start: str) -> str:
    """The ``%chat list`` row that starts with ``start``."""
    return next(r for r in rows if r.startswith(start))


def test_fork_copies_the_kv_cache_and_goes_its_own_way(shell: InteractiveShell) -> None:
    for i, prompt in enumerate(["My name is Ada.", "I live in Oslo.", "I like tea."]):
        chats().cell_id = f"c{i}"
        shell.run_cell_magic("chat", CHAT, prompt)
    original = lmchat_jupyter.current("default")
    before = [m.id for m in original.history]

    said = line(shell, "fork alt --at 2")
    assert "'alt' forked from 'default' at turn 2" in said and "%%chat now uses 'alt'" in said
    store = chats().store
    alt = store.get("alt")
    assert store.active == "alt" and alt.history.user_message_count == 2
    assert [m.id for m in alt.history] == before[:4]
    assert alt.history.conversation_id != original.history.conversation_id
    assert said.count("cached tokens") == 1 and f"its {alt.info.token_count:,} cached tokens" in said

    chats().cell_id = "c9"
    shell.run_cell_magic("chat", CHAT, "What do I drink?")
    result = alt.last_result
    assert result is not None and result.cached_tokens >= alt.info.token_count - result.prompt_tokens - 20
    assert result.prompt_tokens < 30  # only the new message: the copied KV cache was used
    assert [m.id for m in original.history] == before  # the original is untouched

    rows = line(shell, "list").splitlines()
    assert row(rows, "* alt ").endswith(" · forked from 'default' at turn 2")
    assert "forked" not in row(rows, "  default ")

    full = line(shell, "fork whole")  # without --at: every turn
    assert "'whole' forked from 'alt' at turn 3" in full


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("fork default", "already a conversation called 'default'"),
        ("fork other --at 5", "--at 5: 'default' has 1 turn, so TURN is from 0 to 1"),
        ("fork other --at -1", "TURN is from 0 to 1"),
        ("fork ../escape", "not a valid conversation name"),
        ("fork", "the following arguments are required: NEW"),
    ],
)
def test_fork_mistakes_are_usage_errors(shell: InteractiveShell, command: str, message: str) -> None:
    shell.run_cell_magic("chat", CHAT, "Hello.")
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        shell.run_line_magic("chat", command)
    assert chats().store.active == "default"


def test_fork_then_restart_then_restore_both(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "forks.ipynb")
    k = KernelDriver(notebook, tmp_path)
    try:
        assert k.run("%load_ext lmchat").error is None
        for i, prompt in enumerate(["My name is Ada.", "I live in Oslo."]):
            assert k.run(f"%%chat {CHAT}\n{prompt}", cell_id=f"c{i}").error is None
        forked = k.run("%chat fork alt --at 1")
        assert "'alt' forked from 'default' at turn 1" in forked.stdout, forked.text
        assert k.run(f"%%chat {CHAT}\nI live in Rome.", cell_id="alt1").error is None
        ids = k.value(f"{{n: [m.id for m in {STORE}.get(n).history] for n in ('default', 'alt')}}")
    finally:
        k.shutdown()
    folder = tmp_path / "forks.lmchat"
    assert ChatHistory.load(folder / "alt.history.json").forked_from is not None
    assert (folder / "alt.lmsession").is_file() and (folder / "default.lmsession").is_file()

    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert loaded.error is None, loaded.text
        rows = k.run("%chat list").stdout.splitlines()
        assert row(rows, "  alt ").endswith(" · forked from 'default' at turn 1") and row(rows, "* default ")
        for name in ("default", "alt"):
            assert k.run(f"%chat use {name}").error is None
            assert k.value(f"[m.id for m in {STORE}.get({name!r}).history]") == ids[name]
            assert k.run(f"%%chat {CHAT}\nWhere do I live?", cell_id=f"{name}-next").error is None
            result = k.value(f"(lambda r: [r.prompt_tokens, r.cached_tokens])({STORE}.get({name!r}).last_result)")
            assert result[0] < 30 and result[1] > 40, (name, result)  # restored KV state, no re-read
    finally:
        k.shutdown()
