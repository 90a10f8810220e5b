"""No path destroys a conversation: notebook copies, late notebook paths, two kernels, shutdown.

Where two versions of a conversation meet, the longer wins if it extends the other; otherwise both
are kept, the other under a new name that the message gives. Histories embedded in the notebook
are evaluated when their conversation is first used, not when the notebook opens.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from lmchat_jupyter import ChatHistory
from lmchat_jupyter.core.history import Message

from .kernel_driver import KernelDriver, notebook_file

CHAT = "%%chat --temperature 0 --max-tokens 6\n"
STORE = "__import__('lmchat_jupyter.notebook.kernel').notebook.kernel.chats().store"


def embedded(conversations: dict[str, list[tuple[str, str]]]) -> dict[str, object]:
    """``metadata.lmchat`` holding one conversation per name, built from (user, assistant) turns."""
    value: dict[str, object] = {}
    for name, turns in conversations.items():
        messages = []
        for i, (user, answer) in enumerate(turns):
            messages.append({"id": f"{name}-u{i}", "role": "user", "content": user, "cell_id": f"{name}-c{i}"})
            messages.append({"id": f"{name}-a{i}", "role": "assistant", "content": answer, "cell_id": f"{name}-c{i}"})
        value[name] = {"id": f"conv-{name}", "model": {"spec": None}, "messages": messages}
    return {"format": 1, "conversations": value}


def users(path: Path) -> list[str]:
    return [m.content for m in ChatHistory.load(path) if m.role == "user"]


def test_embedded_histories_wait_for_their_first_use(tmp_path: Path) -> None:
    from .test_metadata import open_frontend_comm

    metadata = embedded({"default": [("My name is Ada.", "Hello Ada!")], "other": [("Count to three.", "1 2 3")] * 3})
    notebook = notebook_file(tmp_path, "shared.ipynb", {"lmchat": metadata})
    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert loaded.error is None, loaded.text
        # Said, with how long each is; nothing evaluated yet.
        assert "default: 2 messages, 25 characters, history from the notebook's metadata" in loaded.stdout
        assert "other: 6 messages" in loaded.stdout and "evaluated when the conversation is first used" in loaded.stdout
        assert k.value(f"sorted({STORE}.conversations)") == []
        # The frontend's hello carries the same histories: still nothing evaluated, nothing said twice.
        open_frontend_comm(k, {"type": "hello", "format": 1, "notebook_path": "shared.ipynb", "metadata": metadata})
        assert k.value(f"sorted({STORE}.conversations)") == []
        listed = k.run("%chat list")
        assert "default" in listed.stdout and "other" in listed.stdout
        # First use: this conversation alone is evaluated, and its cell replayed.
        replay = k.run("%%chat\nMy name is Ada.", cell_id="default-c0")
        assert "Hello Ada!" in replay.displays[-1] and "not generated again" in replay.displays[-1], replay.text
        assert k.value(f"sorted({STORE}.conversations)") == ["default"]
    finally:
        k.shutdown()
    folder = tmp_path / "shared.lmchat"
    assert (folder / "default.history.json").is_file() and not (folder / "other.history.json").exists()


def test_an_older_notebook_copy_never_replaces_the_sidecars_conversation(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "nb.ipynb")
    folder = tmp_path / "nb.lmchat"
    k = KernelDriver(notebook, tmp_path)
    try:
        k.run("%load_ext lmchat")
        for i, prompt in enumerate(["My name is Ada.", "I like red apples."]):
            assert k.run(CHAT + prompt, cell_id=f"c{i}").error is None
    finally:
        k.shutdown()
    assert users(folder / "default.history.json") == ["My name is Ada.", "I like red apples."]

    # An older copy of the notebook, holding another conversation under the same name, is opened.
    notebook_file(tmp_path, "nb.ipynb", {"lmchat": embedded({"default": [("My name is Bob.", "Hi Bob!")]})})
    (tmp_path / "other.json").write_text(
        json_history([Message("user", "Loaded from a file."), Message("assistant", "Fine.")]), encoding="utf-8"
    )
    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "restored default: 4 messages" in loaded.stdout, loaded.text
        assert "so the notebook's is kept as 'default-notebook'" in loaded.stdout, loaded.text
        assert k.run("%chat use default-notebook").error is None
        assert k.value("__import__('lmchat_jupyter').current('default-notebook').info.message_count") == 2
        # A conversation replaced by `%chat load` is kept beside, and the message says where.
        k.run("%chat use default")
        replaced = k.run("%chat load other.json")
        assert replaced.error is None, replaced.text
        assert "are kept as 'default.replaced-" in replaced.stdout and str(folder) in replaced.stdout, replaced.text
    finally:
        k.shutdown()
    assert users(folder / "default-notebook.history.json") == ["My name is Bob."]
    assert users(folder / "default.history.json") == ["Loaded from a file."]
    (kept,) = folder.glob("default.replaced-*.history.json")
    assert users(kept) == ["My name is Ada.", "I like red apples."]
    assert len(list(folder.glob("default.replaced-*.lmsession"))) == 1


def json_history(messages: list[Message]) -> str:
    return ChatHistory(messages).to_bytes().decode("utf-8")


def test_setting_the_notebook_path_late_keeps_the_folders_conversation(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "nbs").mkdir()
    notebook = notebook_file(tmp_path / "nbs", "nb.ipynb")
    folder = tmp_path / "nbs" / "nb.lmchat"
    folder.mkdir()
    long = [Message("system", "Be brief.")]
    for i in range(4):
        long += [Message("user", f"Question {i}?"), Message("assistant", f"Answer {i}.")]
    ChatHistory(long).save(folder / "default.history.json")

    k = KernelDriver(None, tmp_path / "work")  # no notebook path known: chats start in ./.lmchat
    try:
        k.run("%load_ext lmchat")
        assert k.run(CHAT + "My name is Ada.", cell_id="c1").error is None
        moved = k.run(f"%chat config --notebook {shlex.quote(str(notebook))}")
        assert moved.error is None, moved.text
        assert "already holds another conversation called 'default'" in moved.stdout, moved.text
        assert "saved as 'default-kernel'" in moved.stdout
        assert k.run(CHAT + "What is my name?", cell_id="c2").error is None  # goes on with this kernel's
    finally:
        k.shutdown()
    assert ChatHistory.load(folder / "default.history.json").message_count == 9
    assert users(folder / "default-kernel.history.json") == ["My name is Ada.", "What is my name?"]
    k = KernelDriver(notebook, tmp_path / "nbs")
    try:
        loaded = k.run("%load_ext lmchat")
        assert "default: 9 messages, " in loaded.stdout, loaded.text  # not signed: evaluated at first use
        assert "restored default-kernel: 4 messages" in loaded.stdout, loaded.text
    finally:
        k.shutdown()


def test_a_second_kernel_takes_the_folder_over_when_the_first_is_gone(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "nb.ipynb")
    folder = tmp_path / "nb.lmchat"
    first = KernelDriver(notebook, tmp_path)
    second = KernelDriver(notebook, tmp_path)
    running = [first, second]
    try:
        first.run("%load_ext lmchat")
        first.run(CHAT + "My name is Ada.", cell_id="c1")
        assert "in use by another kernel" in second.run("%load_ext lmchat").stdout
        beside = second.run(CHAT + "Hello from the second kernel.", cell_id="x1")
        assert "saved beside it as 'default-kernel'" in beside.stdout, beside.text
        first.run(CHAT + "I like red apples.", cell_id="c2")
        running.remove(first)
        first.shutdown()
        took = second.run(CHAT + "And again.", cell_id="x2")
        assert "this kernel saves its chats there now" in took.stdout, took.text
        assert "saved as 'default-kernel'" in took.stdout, took.text
        assert second.run(CHAT + "Once more.", cell_id="x3").error is None
    finally:
        for k in running:
            k.shutdown()
    assert users(folder / "default.history.json") == ["My name is Ada.", "I like red apples."]
    assert users(folder / "default-kernel.history.json") == [
        "My name is Ada.",
        "Hello from the second kernel.",
        "And again.",
        "Once more.",
    ]
    assert (folder / "default-kernel.lmsession").is_file()


def test_a_kernel_that_never_held_the_folder_drops_nothing_at_shutdown(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "nb.ipynb")
    folder = tmp_path / "nb.lmchat"
    first = KernelDriver(notebook, tmp_path)
    second = KernelDriver(notebook, tmp_path)
    running = [second, first]
    try:
        first.run("%load_ext lmchat")
        first.run(CHAT + "My name is Ada.", cell_id="c1")
        second.run("%load_ext lmchat")
        second.run(CHAT + "Only the second kernel has this.", cell_id="x1")
        assert "saved beside as 'default-kernel'" in second.run("%chat info").stdout
        running.remove(second)
        second.shutdown()
        assert users(folder / "default-kernel.history.json") == ["My name is Ada.", "Only the second kernel has this."]
        assert (folder / "default-kernel.lmsession").is_file()  # the full session too, at shutdown
    finally:
        for k in running:
            k.shutdown()
    assert users(folder / "default.history.json") == ["My name is Ada."]


def test_the_longer_of_two_versions_wins(tmp_path: Path) -> None:
    import json

    notebook = notebook_file(tmp_path, "nb.ipynb")
    folder = tmp_path / "nb.lmchat"
    k = KernelDriver(notebook, tmp_path)
    try:
        k.run("%load_ext lmchat")
        assert k.run(CHAT + "My name is Ada.", cell_id="c1").error is None
    finally:
        k.shutdown()
    saved = json.loads((folder / "default.history.json").read_text(encoding="utf-8"))
    # The notebook's metadata goes one turn further than the sidecar (a kernel killed before its save, say).
    turn = [
        {"id": "u2", "role": "user", "content": "I like red apples.", "cell_id": "c2"},
        {"id": "a2", "role": "assistant", "content": "Red apples are tasty.", "cell_id": "c2"},
    ]
    longer = {"id": saved["conversation_id"], "model": {"spec": None}, "messages": saved["messages"] + turn}
    notebook_file(tmp_path, "nb.ipynb", {"lmchat": {"format": 1, "conversations": {"default": longer}}})
    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "restored default: 2 messages" in loaded.stdout and "full session" in loaded.stdout, loaded.text
        assert "it continues the 2 saved messages" in loaded.stdout, loaded.text
        replay = k.run("%%chat\nI like red apples.", cell_id="c2")
        assert "Red apples are tasty." in replay.displays[-1] and "not generated again" in replay.displays[-1]
        assert "-notebook" not in k.run("%chat list").stdout  # one conversation, not two
    finally:
        k.shutdown()
    assert users(folder / "default.history.json") == ["My name is Ada.", "I like red apples."]

    # The other way round: a notebook that holds less than the sidecar changes nothing and says nothing.
    shorter = {"id": saved["conversation_id"], "model": {"spec": None}, "messages": saved["messages"]}
    notebook_file(tmp_path, "nb.ipynb", {"lmchat": {"format": 1, "conversations": {"default": shorter}}})
    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "restored default: 4 messages" in loaded.stdout and "metadata" not in loaded.stdout, loaded.text
    finally:
        k.shutdown()
    assert users(folder / "default.history.json") == ["My name is Ada.", "I like red apples."]


def test_a_taken_over_folder_gets_the_longer_conversation_under_its_own_name(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "nb.ipynb")
    folder = tmp_path / "nb.lmchat"
    first = KernelDriver(notebook, tmp_path)
    second = KernelDriver(notebook, tmp_path)
    running = [first, second]
    try:
        first.run("%load_ext lmchat")
        first.run(CHAT + "My name is Ada.", cell_id="c1")
        second.run("%load_ext lmchat")
        assert "saved beside it as 'default-kernel'" in second.run(CHAT + "Hi.", cell_id="x1").stdout
        running.remove(first)
        first.shutdown()  # it added nothing since: the second kernel's conversation extends the folder's
        took = second.run(CHAT + "Hi again.", cell_id="x2")
        assert "this kernel saves its chats there now" in took.stdout and "saved as" not in took.stdout, took.text
        second.value(f"{STORE}.flush() or 1")
    finally:
        for k in running:
            k.shutdown()
    assert users(folder / "default.history.json") == ["My name is Ada.", "Hi.", "Hi again."]
    assert not list(folder.glob("default-kernel*"))  # what was saved beside is in the folder's now


def test_a_history_that_cannot_be_evaluated_waits_until_the_user_chooses(tmp_path: Path) -> None:
    big = "lighthouse " * 12_000  # about 12,000 tokens: more than the default context of 8,192
    metadata = embedded({"default": [(big, "Noted.")]})
    notebook = notebook_file(tmp_path, "nb.ipynb", {"lmchat": metadata})
    folder = tmp_path / "nb.lmchat"
    build = "__import__('lmchat_jupyter.storage.metadata').storage.metadata.build_metadata"
    k = KernelDriver(notebook, tmp_path)
    try:
        assert k.run("%load_ext lmchat").error is None
        for i in range(2):  # every use fails the same clear way: no new, empty conversation in its place
            failed = k.run(CHAT + "Hello.", cell_id=f"c{i}")
            assert "tokens but" in failed.text and "its history is kept" in failed.text, failed.text
            assert "%chat clear" in failed.text and "Traceback" not in failed.text, failed.text
            assert k.value(f"sorted({STORE}.conversations)") == []
            # The notebook's metadata still carries it, and the sidecar holds it too.
            kept = k.value(f"{build}({STORE}.conversations, {STORE}.embedded)")
            assert [m["content"] for m in kept["conversations"]["default"]["messages"]] == [big, "Noted."]
            assert users(folder / "default.history.json") == [big]
        # The user chooses to start over: the history is kept beside, and the conversation goes on.
        cleared = k.run("%chat clear")
        assert cleared.error is None and "kept as 'default.replaced-" in cleared.stdout, cleared.text
        assert k.run(CHAT + "Hello.", cell_id="c3").error is None
    finally:
        k.shutdown()
    (copy,) = folder.glob("default.replaced-*.history.json")
    assert users(copy) == [big]
    assert users(folder / "default.history.json") == ["Hello."]
