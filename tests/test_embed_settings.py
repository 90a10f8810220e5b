"""What the .ipynb carries of its chats: ``%chat config --embed full|metadata-only|off`` and ``%chat strip``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmchat_jupyter import ChatHistory, Conversation, HistoryFormatError, Model
from lmchat_jupyter.core.history import Message
from lmchat_jupyter.storage.metadata import build_metadata, embed_setting, parse_metadata, strip_notebook_file

from .kernel_driver import KernelDriver, notebook_file
from .test_metadata import embedded, open_frontend_comm

SECRET = "The launch code is 0000."


@pytest.fixture
def conversations(model: Model) -> dict[str, Conversation]:
    history = ChatHistory(
        [Message("user", SECRET, cell_id="c1", meta={"uses": "code"}), Message("assistant", "Noted.", cell_id="c1")]
    )
    return {"default": Conversation(model, history=history)}


def test_full_is_the_history_as_before(conversations: dict[str, Conversation]) -> None:
    value = build_metadata(conversations, embed="full")
    assert value is not None and "embed" not in value  # older lmchat reads it unchanged
    [chat] = parse_metadata(value)
    assert [m.content for m in chat.history] == [SECRET, "Noted."] and embed_setting(value) == "full"


def test_metadata_only_keeps_ids_roles_cells_and_lengths(conversations: dict[str, Conversation]) -> None:
    value = build_metadata(conversations, embed="metadata-only")
    assert value is not None and value["embed"] == "metadata-only"
    messages = value["conversations"]["default"]["messages"]
    assert [(m["role"], m["cell_id"], m["length"]) for m in messages] == [
        ("user", "c1", len(SECRET)),
        ("assistant", "c1", 6),
    ]
    assert all(set(m) == {"id", "role", "cell_id", "length"} for m in messages)
    assert "launch" not in json.dumps(value) and "code" not in json.dumps(value)
    assert parse_metadata(value) == [] and embed_setting(value) == "metadata-only"


def test_off_keeps_only_the_choice(conversations: dict[str, Conversation]) -> None:
    value = build_metadata(conversations, embed="off")
    assert value == {"format": 1, "embed": "off"}
    assert parse_metadata(value) == [] and embed_setting(value) == "off"
    assert build_metadata({}, embed="metadata-only") == {"format": 1, "embed": "metadata-only"}
    assert build_metadata({}, embed="full") is None


def test_an_unknown_embed_value_is_refused() -> None:
    with pytest.raises(HistoryFormatError, match="embed"):
        parse_metadata({"format": 1, "embed": "everything", "conversations": {}})
    assert embed_setting({"format": 1, "embed": ["off"]}) is None


def test_strip_notebook_file(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "share.ipynb", {"lmchat": embedded(), "kernelspec": {"name": "python3"}})
    assert strip_notebook_file(notebook)
    saved = json.loads(notebook.read_text(encoding="utf-8"))
    assert saved["metadata"] == {"kernelspec": {"name": "python3"}} and saved["nbformat"] == 4
    assert not strip_notebook_file(notebook)


def metadata_sent(comms: list[dict[str, object]]) -> list[object]:
    return [c.get("value") for c in comms if c.get("type") == "metadata"]


def test_embed_and_strip_in_a_kernel(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "shared.ipynb", {"lmchat": {"format": 1, "embed": "metadata-only"}})
    k = KernelDriver(notebook, tmp_path)
    try:
        assert k.run("%load_ext lmchat").error is None
        open_frontend_comm(
            k, {"type": "hello", "notebook_path": "shared.ipynb", "metadata": {"format": 1, "embed": "metadata-only"}}
        )
        assert "embed: metadata-only" in k.run("%chat config").stdout  # the notebook's own choice
        run = k.run("%%chat --temperature 0 --max-tokens 8\nMy secret is 1234.", cell_id="c1")
        value = metadata_sent(run.comms)[-1]
        assert isinstance(value, dict) and "1234" not in json.dumps(value)
        assert [m["length"] for m in value["conversations"]["default"]["messages"]][0] == len("My secret is 1234.")
        assert metadata_sent(k.run("%chat config --embed off").comms)[-1] == {"format": 1, "embed": "off"}
        full = metadata_sent(k.run("%chat config --embed full").comms)
        assert "My secret is 1234." in json.dumps(full)
        stripped = k.run("%chat strip")
        assert stripped.comms and all(c == {"type": "strip"} for c in stripped.comms)
        assert "save the notebook" in stripped.stdout
        bad = k.run("%chat config --embed everything")
        assert "invalid choice: 'everything'" in bad.stderr, bad.text
    finally:
        k.shutdown()


def test_strip_without_the_extension_edits_the_ipynb_on_disk(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "vscode.ipynb", {"lmchat": embedded()})
    k = KernelDriver(notebook, tmp_path)
    try:
        assert k.run("%load_ext lmchat").error is None
        run = k.run("%chat strip")
        assert f"removed lmchat's metadata from {notebook}" in run.stdout, run.text
    finally:
        k.shutdown()
    assert "lmchat" not in json.loads(notebook.read_text(encoding="utf-8"))["metadata"]
