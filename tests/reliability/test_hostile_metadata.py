"""Hostile notebook metadata, history files and notebook names, beyond ``tests/test_metadata.py``.

``metadata.lmchat`` comes from a notebook file anyone can edit, and the sidecar's history files can
be edited too: every value is checked and refused with one sentence, through real kernels where it
matters. Notebook names are whatever the file system allows: the sidecar folder follows them.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from lmchat_jupyter import ChatHistory, HistoryFormatError
from lmchat_jupyter.storage.metadata import MAX_CONVERSATIONS, parse_metadata, read_notebook_metadata
from lmchat_jupyter.storage.sidecar import sidecar_for

from ..kernel_driver import KernelDriver, notebook_file

CHAT = "%%chat --temperature 0 --max-tokens 4\n"


def embedded(
    messages: list[dict[str, object]] | None = None, name: str = "default", **entry: object
) -> dict[str, object]:
    conversation: dict[str, object] = {"id": "conv1", "model": {"spec": None}, "messages": messages or []}
    conversation.update(entry)
    return {"format": 1, "conversations": {name: conversation}}


def user(content: str, **fields: object) -> dict[str, object]:
    return {"role": "user", "content": content, **fields}


#: Cases ``tests/test_metadata.py`` does not have.
HOSTILE = {
    # wrong types
    "format true": {"format": True, "conversations": {}},
    "format 1.0": {"format": 1.0, "conversations": {}},
    "conversation not an object": {"format": 1, "conversations": {"default": ["x"]}},
    "conversation id not text": embedded(id=42),
    "conversation id with newline": embedded(id="a\nb"),
    "message id not text": embedded([user("x", id=7)]),
    "model spec not text": embedded(model={"spec": 5}),
    "meta not an object": embedded([user("x", meta=[1])]),
    "meta nested": embedded([user("x", meta={"a": {"b": 1}})]),
    "meta NaN": embedded([user("x", meta={"a": float("nan")})]),
    "meta infinity": embedded([user("x", meta={"a": float("inf")})]),
    "system message not first": embedded([user("x"), {"role": "system", "content": "y"}]),
    # sizes and counts
    "message id of 10,000 characters": embedded([user("x", id="i" * 10_000)]),
    "meta string of 10,000 characters": embedded([user("x", meta={"a": "y" * 10_000})]),
    "model spec of 5,000 characters": embedded(model={"spec": "x" * 5000}),
    "33 conversations": {
        "format": 1,
        "conversations": {f"c{i}": {"messages": []} for i in range(MAX_CONVERSATIONS + 1)},
    },
    "25,000 messages": embedded([user("x")] * 25_000),
    "content of 3 million characters": embedded([user("x" * 3_000_000)]),
    # names that are paths, hidden files or not names at all
    "empty name": embedded(name=""),
    "name .": embedded(name="."),
    "name ..": embedded(name=".."),
    "name a/b": embedded(name="a/b"),
    "name with backslashes": embedded(name="..\\..\\escape"),
    "name ~/x": embedded(name="~/x"),
    "name .lock": embedded(name=".lock"),
    "hidden name": embedded(name=".default"),
    "temp file name": embedded(name=".default.history.json.1.2.abc.lmchat-tmp"),
    "name ending in a dot": embedded(name="chat."),
    "name of 10,000 characters": embedded(name="a" * 10_000),
    "name with NUL": embedded(name="a\x00b"),
    "name with newline": embedded(name="a\nb"),
    "name with escape sequence": embedded(name="a\x1b[31mb"),
    "name with right-to-left override": embedded(name="a\u202eb"),
    "name with zero-width space": embedded(name="a\u200bb"),
    "fullwidth dots": embedded(name="\uff0e\uff0e"),
    # text that JSON carries and UTF-8 cannot
    "lone surrogate in content": embedded([user("hi \ud800 there")]),
    "lone surrogate in a name": embedded(name="ab\udc80"),
    "lone surrogate in a message id": embedded([user("x", id="a\ud800")]),
    "lone surrogate in the conversation id": embedded(id="a\ud800"),
    "lone surrogate in meta": embedded([user("x", meta={"a": "\ud800"})]),
    "lone surrogate in a meta key": embedded([user("x", meta={"\ud800": 1})]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_metadata_is_refused_with_one_sentence(case: str) -> None:
    with pytest.raises(HistoryFormatError) as info:
        parse_metadata(HOSTILE[case])
    assert len(str(info.value)) < 300


ACCEPTED = {
    "control characters in content": embedded([user("a\x00b \x1b[31mred\x07")]),
    "name in NFD": embedded(name="cafe\u0301"),
    "name with spaces, dots and unicode": embedded(name="Été 2024 v1.2 notes"),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_odd_but_harmless_metadata_is_taken(case: str) -> None:
    (chat,) = parse_metadata(ACCEPTED[case])
    assert chat.name == unicodedata.normalize("NFC", chat.name)


def test_one_name_in_nfc_and_nfd_keeps_the_first_and_names_the_second() -> None:
    value = {"format": 1, "conversations": {"caf\u00e9": {"messages": []}, "cafe\u0301": {"messages": []}}}
    chats = parse_metadata(value)
    assert [chat.name for chat in chats] == ["caf\u00e9"]
    assert chats.skipped == ["notebook metadata names the conversation 'caf\u00e9' twice"]


def test_lone_surrogate_in_a_history_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "default.history.json"
    path.write_text(json.dumps({"format": 1, "messages": [user("x\ud800")]}), encoding="utf-8")  # "\ud800" escaped
    with pytest.raises(HistoryFormatError, match="lone surrogate"):
        ChatHistory.load(path)


def test_notebook_nested_too_deeply_is_read_as_no_metadata(tmp_path: Path) -> None:
    path = tmp_path / "deep.ipynb"
    path.write_text('{"metadata": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}", encoding="utf-8")
    assert read_notebook_metadata(path) is None


def hostile_notebook(folder: Path, case: str) -> Path:
    if case == "lone surrogate in the embedded history":
        notebook = notebook_file(folder, "nb.ipynb")
        text = json.dumps({"cells": [], "metadata": {"lmchat": embedded([user("hi \ud800")])}, "nbformat": 4})
        notebook.write_text(text, encoding="utf-8")  # ensure_ascii: the surrogate is written as "\ud800"
    elif case == "JSON nested 100,000 deep in a cell":
        notebook = folder / "nb.ipynb"
        deep = "[" * 100_000 + "]" * 100_000
        notebook.write_text('{"cells": [{"x": ' + deep + '}], "metadata": {}, "nbformat": 4}', encoding="utf-8")
    else:  # a sidecar history the kernel cannot encode
        notebook = notebook_file(folder, "nb.ipynb")
        sidecar = sidecar_for(notebook)
        sidecar.mkdir()
        history = {"format": 1, "messages": [user("hi \ud800"), {"role": "assistant", "content": "hello"}]}
        (sidecar / "default.history.json").write_text(json.dumps(history), encoding="utf-8")
    return notebook


@pytest.mark.parametrize(
    "case",
    [
        "lone surrogate in the embedded history",
        "lone surrogate in a sidecar history",
        pytest.param("JSON nested 100,000 deep in a cell", marks=pytest.mark.slow),
    ],
)
def test_hostile_notebook_in_a_kernel(tmp_path: Path, case: str) -> None:
    notebook = hostile_notebook(tmp_path, case)
    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert loaded.error is None and "Traceback" not in loaded.text, loaded.text
        if case == "lone surrogate in the embedded history":
            assert "the notebook's embedded chat was not used" in loaded.stdout, loaded.text
            assert "lone surrogate" in loaded.stdout
        elif case == "lone surrogate in a sidecar history":
            assert "ignoring default.history.json" in loaded.stdout and "lone surrogate" in loaded.stdout, loaded.text
        # The kernel goes on with a conversation of its own.
        turn = k.run(CHAT + "Hello.", cell_id="c1")
        assert turn.error is None and "Traceback" not in turn.text, turn.text
        assert k.value("__import__('lmchat_jupyter').current().info.user_message_count") == 1
    finally:
        k.shutdown()


NAMES = [
    pytest.param("日本語 v1.2 notes 📓.ipynb", id="dots-unicode-emoji-spaces"),
    pytest.param("v1.2.final.ipynb", id="dots", marks=pytest.mark.slow),
    pytest.param("it's 100% #1 [draft] $HOME;.ipynb", id="shell-characters", marks=pytest.mark.slow),
    pytest.param(".hidden.ipynb", id="hidden", marks=pytest.mark.slow),
    pytest.param(unicodedata.normalize("NFD", "café.ipynb"), id="nfd", marks=pytest.mark.slow),
    pytest.param("twice.ipynb.ipynb", id="double-suffix", marks=pytest.mark.slow),
    pytest.param("two\nlines.ipynb", id="newline", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_names(tmp_path: Path, name: str) -> None:
    notebook = notebook_file(tmp_path, name)
    expected = tmp_path / (name[: -len(".ipynb")] + ".lmchat")
    k = KernelDriver(notebook, tmp_path)
    try:
        assert k.run("%load_ext lmchat").error is None
        assert k.run(CHAT + "My name is Ada.", cell_id="c1").error is None
    finally:
        k.shutdown()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, expected.name])
    assert (expected / "default.history.json").is_file() and (expected / "default.lmsession").is_file()
    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "restored default: 2 messages" in loaded.stdout and "full session" in loaded.stdout, loaded.text
    finally:
        k.shutdown()
