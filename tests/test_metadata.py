"""History embedded in notebook metadata: restore from the .ipynb alone, and hostile metadata refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmchat_jupyter import ChatHistory, HistoryFormatError
from lmchat_jupyter.storage.metadata import MAX_METADATA_BYTES, parse_metadata

from .kernel_driver import KernelDriver, notebook_file

MESSAGES = [
    {"id": "m1", "role": "user", "content": "My name is Ada.", "cell_id": "c1"},
    {"id": "m2", "role": "assistant", "content": "Nice to meet you, Ada!", "cell_id": "c1"},
]


def embedded(messages: object = MESSAGES, name: str = "default") -> dict[str, object]:
    return {"format": 1, "conversations": {name: {"id": "conv1", "model": {"spec": None}, "messages": messages}}}


def test_restore_from_the_ipynb_alone(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "shared.ipynb", {"lmchat": embedded()})
    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "history from the notebook's metadata" in loaded.stdout, loaded.text
        # The cell that produced the embedded turn is replayed, not generated.
        replay = k.run("%%chat\nMy name is Ada.", cell_id="c1")
        assert "Nice to meet you, Ada!" in replay.displays[-1] and "not generated again" in replay.displays[-1]
        nxt = k.run("%%chat --temperature 0 --max-tokens 8\nWhat is my name?", cell_id="c2")
        assert nxt.error is None
        cached = k.value("__import__('lmchat_jupyter').current().last_result.cached_tokens")
        assert cached > 10  # the embedded history was evaluated into the cache before the new turn
    finally:
        k.shutdown()
    assert (tmp_path / "shared.lmchat" / "default.lmsession").is_file()


HOSTILE = {
    "not an object": ["a list"],
    "wrong format": {"format": 99, "conversations": {}},
    "conversations not an object": {"format": 1, "conversations": "x"},
    "relative path name": embedded(name="../../escape"),
    "absolute path name": embedded(name="/etc/passwd"),
    "control characters in name": embedded(name="bad\x07name"),
    "messages not a list": embedded(messages="hi"),
    "message of wrong type": embedded(messages=[42]),
    "unknown role": embedded(messages=[{"role": "root", "content": "x"}]),
    "content not text": embedded(messages=[{"role": "user", "content": {"$": 1}}]),
    "100k messages": embedded(messages=[{"role": "user", "content": "x"}] * 100_000),
    "huge string": embedded(messages=[{"role": "user", "content": "x" * (MAX_METADATA_BYTES + 1)}]),
    "cell id with newline": embedded(messages=[{"role": "user", "content": "x", "cell_id": "a\nb"}]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_metadata_is_refused_with_a_clear_message(case: str) -> None:
    with pytest.raises(HistoryFormatError) as info:
        parse_metadata(HOSTILE[case])
    assert len(str(info.value)) < 300  # a sentence, not a dump of the input


def test_one_bad_conversation_never_takes_the_good_ones_with_it() -> None:
    value = embedded()
    value["conversations"]["../../evil"] = {"id": "x", "messages": MESSAGES}  # type: ignore[index]
    value["conversations"]["broken"] = {"id": "y", "messages": [42]}  # type: ignore[index]
    chats = parse_metadata(value)
    assert [chat.name for chat in chats] == ["default"] and chats[0].history.message_count == 2
    assert len(chats.skipped) == 2
    assert "'../../evil' is not a valid conversation name" in chats.skipped[0]
    assert "conversation 'broken'" in chats.skipped[1] and all(len(why) < 300 for why in chats.skipped)
    # Where nothing is left, the whole value is refused, naming what was wrong.
    with pytest.raises(HistoryFormatError, match="evil.*and 1 more refused"):
        parse_metadata({"format": 1, "conversations": {"../../evil": {"messages": []}, "a/b": {"messages": []}}})


def test_a_valid_conversation_beside_a_bad_one_survives_an_answer_and_a_save(tmp_path: Path) -> None:
    value = embedded()
    value["conversations"]["../../evil"] = {"id": "x", "messages": MESSAGES}  # type: ignore[index]
    notebook = notebook_file(tmp_path, "mixed.ipynb", {"lmchat": value})
    store = "__import__('lmchat_jupyter.notebook.kernel').notebook.kernel.chats().store"
    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert loaded.error is None and "Traceback" not in loaded.text, loaded.text
        assert "'../../evil' is not a valid conversation name" in loaded.stdout, loaded.text
        assert "That entry is left out" in loaded.stdout and "default: 2 messages" in loaded.stdout, loaded.text
        answer = k.run("%%chat --temperature 0 --max-tokens 6\nWhat is my name?", cell_id="c2")
        assert answer.error is None, answer.text
        k.value(f"{store}.flush() or 1")
        embedded_now = k.value(
            f"__import__('lmchat_jupyter.storage.metadata').storage.metadata.build_metadata({store}.conversations)"
        )
    finally:
        k.shutdown()
    (saved,) = embedded_now["conversations"].values()
    assert [m["content"] for m in saved["messages"] if m["role"] == "user"] == ["My name is Ada.", "What is my name?"]
    history = ChatHistory.load(tmp_path / "mixed.lmchat" / "default.history.json")
    assert [m.content for m in history if m.role == "user"] == ["My name is Ada.", "What is my name?"]
    assert list(embedded_now["conversations"]) == ["default"]


def test_hostile_metadata_in_a_kernel_touches_nothing_outside_the_sidecar(tmp_path: Path) -> None:
    inside = tmp_path / "nb"
    inside.mkdir()
    notebook = notebook_file(inside, "evil.ipynb", {"lmchat": embedded(name="../../escape")})
    before = sorted(p.name for p in tmp_path.rglob("*"))
    k = KernelDriver(notebook, inside)
    try:
        loaded = k.run("%load_ext lmchat")
        assert loaded.error is None and "Traceback" not in loaded.text
        assert "not a valid conversation name" in loaded.stdout
    finally:
        k.shutdown()
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert set(after) - set(before) <= {"evil.lmchat", ".lock", ".gitignore"}


def open_frontend_comm(k: KernelDriver, data: dict[str, object]) -> str:
    """Open the ``lmchat`` comm as the JupyterLab extension does; returns the comm id."""
    import uuid

    comm_id = uuid.uuid4().hex
    msg = k.kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": "lmchat", "data": data})
    k.kc.shell_channel.send(msg)
    return comm_id


def send_comm(k: KernelDriver, comm_id: str, data: dict[str, object]) -> None:
    k.kc.shell_channel.send(k.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data}))


def test_a_renamed_notebook_takes_its_chats_along(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "draft.ipynb")
    k = KernelDriver(notebook, tmp_path)
    try:
        k.run("%load_ext lmchat")
        comm = open_frontend_comm(k, {"type": "hello", "format": 1, "notebook_path": "draft.ipynb", "metadata": None})
        assert k.run("%%chat --temperature 0 --max-tokens 8\nMy name is Ada.", cell_id="c1").error is None
        k.value("__import__('lmchat_jupyter.notebook.kernel').notebook.kernel.chats().store.flush() or 1")
        assert (tmp_path / "draft.lmchat" / "default.lmsession").is_file()
        notebook.rename(tmp_path / "final report.ipynb")
        send_comm(k, comm, {"type": "path", "notebook_path": "final report.ipynb"})
        folder = k.value(
            "str(__import__('lmchat_jupyter.notebook.kernel').notebook.kernel.chats().store.sidecar.folder)"
        )
        assert folder == str(tmp_path / "final report.lmchat")
        assert k.run("%%chat --temperature 0 --max-tokens 8\nWhat is my name?", cell_id="c2").error is None
        k.value("__import__('lmchat_jupyter.notebook.kernel').notebook.kernel.chats().store.flush() or 1")
    finally:
        k.shutdown()
    assert not (tmp_path / "draft.lmchat").exists()
    moved = ChatHistory.load(tmp_path / "final report.lmchat" / "default.history.json")
    assert moved.user_message_count == 2
