"""Clients that send no cell ids (nbclient, scripts, consoles): a rewind chosen by matching keeps what it drops."""

from __future__ import annotations

from pathlib import Path

from lmchat_jupyter import ChatHistory

from .kernel_driver import KernelDriver, notebook_file

CHAT = "%%chat --temperature 0 --max-tokens 6\n"
STORE = "__import__('lmchat_jupyter.notebook.kernel').notebook.kernel.chats().store"


def test_a_new_first_prompt_after_a_restart_keeps_the_stored_turns_beside(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "plain.ipynb")
    folder = notebook.with_name("plain.lmchat")
    k = KernelDriver(notebook, tmp_path)
    try:
        assert k.run("%load_ext lmchat").error is None
        for prompt in ("My name is Ada.", "I like red apples."):
            assert k.run(CHAT + prompt).error is None  # no cell id, as nbclient sends
    finally:
        k.shutdown()
    stored = [m.to_json() for m in ChatHistory.load(folder / "default.history.json")]
    assert len(stored) == 4
    k = KernelDriver(notebook, tmp_path)
    try:
        assert "4 messages" in k.run("%load_ext lmchat").stdout
        run = k.run(CHAT + "Name a colour.")
        assert run.error is None, run.text
        copies = sorted(folder.glob("default.replaced-*.history.json"))
        assert len(copies) == 1, sorted(p.name for p in folder.iterdir())
        kept = copies[0].name.removesuffix(".history.json")
        assert [m.to_json() for m in ChatHistory.load(copies[0])] == stored
        assert f"%chat use {kept}" in run.stdout, run.text
        assert k.value(f"{STORE}.get('default').info.message_count") == 2
        assert k.run(f"%chat use {kept}").error is None
        assert k.value(f"{STORE}.get({kept!r}).info.message_count") == 4  # the copy opens whole
    finally:
        k.shutdown()
