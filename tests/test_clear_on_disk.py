"""`%chat clear` and `%chat rewind` honour the user on disk: after a restart the conversation is what the user
left, and no file in the sidecar (session base, its appended records, history) holds the text taken out."""

from __future__ import annotations

from pathlib import Path

from lmchat_jupyter import ChatHistory

from .kernel_driver import KernelDriver, notebook_file
from .test_metadata import open_frontend_comm

CHAT = "%%chat --temperature 0 --max-tokens 6\n"
STORE = "__import__('lmchat_jupyter.notebook.kernel').notebook.kernel.chats().store"
#: One word per turn that no answer of a few tokens can hold.
WORDS = ["quokkaplum", "zebrinatwist", "marmotfizz"]


def sidecar_bytes(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file())


def chat_turns(k: KernelDriver, words: list[str]) -> None:
    for i, word in enumerate(words):
        assert k.run(CHAT + f"Remember the word {word}.", cell_id=f"c{i}").error is None
        k.value(f"{STORE}.flush() or 1")  # each turn's save on disk before the next: a base, then records


def test_a_cleared_conversation_stays_cleared_after_a_restart(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "nb.ipynb")
    folder = tmp_path / "nb.lmchat"
    k = KernelDriver(notebook, tmp_path)
    try:
        k.run("%load_ext lmchat")
        open_frontend_comm(k, {"type": "hello", "format": 1, "notebook_path": "nb.ipynb", "metadata": None})
        chat_turns(k, WORDS)
        assert all(word.encode() in sidecar_bytes(folder) for word in WORDS)
        cleared = k.run("%chat clear")
        assert cleared.error is None, cleared.text
        assert "the session file and history no longer hold the removed messages" in cleared.stdout, cleared.text
        # What the notebook is given to save holds the conversation empty, not as it was.
        (sent,) = [c for c in cleared.comms if c.get("type") == "metadata"][-1:]
        assert sent["value"]["conversations"]["default"]["messages"] == []
    finally:
        k.shutdown()
    assert not (folder / "default.lmsession").exists()
    assert not any(word.encode() in sidecar_bytes(folder) for word in WORDS)
    k = KernelDriver(notebook, tmp_path)
    try:
        k.run("%load_ext lmchat")
        assert k.value("__import__('lmchat_jupyter').current().info.message_count") == 0
    finally:
        k.shutdown()
    assert not any(word.encode() in sidecar_bytes(folder) for word in WORDS)


def test_a_rewind_removes_the_dropped_turns_from_every_file(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "nb.ipynb")
    folder = tmp_path / "nb.lmchat"
    k = KernelDriver(notebook, tmp_path)
    try:
        k.run("%load_ext lmchat")
        chat_turns(k, WORDS)
        assert k.value(f"{STORE}.conversations['default'].last_save.point.records") == 2  # appended records
        rewound = k.run("%chat rewind 2")
        assert rewound.error is None, rewound.text
        assert "1 turn left; the session file and history no longer hold the dropped messages" in rewound.stdout
    finally:
        k.shutdown()
    data = sidecar_bytes(folder)
    assert WORDS[0].encode() in data and not any(word.encode() in data for word in WORDS[1:])
    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "restored default: 2 messages" in loaded.stdout and "full session" in loaded.stdout, loaded.text
    finally:
        k.shutdown()
    assert [m.content for m in ChatHistory.load(folder / "default.history.json") if m.role == "user"] == [
        f"Remember the word {WORDS[0]}."
    ]


def test_the_copies_lmchat_kept_go_only_when_the_user_asks(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "nb.ipynb")
    folder = tmp_path / "nb.lmchat"
    other = ChatHistory.from_json(
        {
            "format": 1,
            "messages": [{"role": "user", "content": "Loaded."}, {"role": "assistant", "content": "Fine."}],
        }
    )
    other.save(tmp_path / "other.json")
    k = KernelDriver(notebook, tmp_path)
    try:
        k.run("%load_ext lmchat")
        chat_turns(k, WORDS[:1])
        assert "are kept as 'default.replaced-" in k.run("%chat load other.json").stdout  # lmchat's own copy
        (copy,) = {p.name.split(".lmsession")[0].split(".history.json")[0] for p in folder.glob("default.replaced-*")}
        cleared = k.run("%chat clear")
        assert f"lmchat's own copies of 'default' still hold earlier messages: {copy}" in cleared.stdout, cleared.text
        assert "--forget-copies" in cleared.stdout and WORDS[0].encode() in sidecar_bytes(folder)
        forgot = k.run("%chat clear --forget-copies")
        assert forgot.error is None and f"removed lmchat's copies of it: {copy}" in forgot.stdout, forgot.text
        assert copy not in k.run("%chat list").stdout
    finally:
        k.shutdown()
    assert not list(folder.glob("default.replaced-*")) and WORDS[0].encode() not in sidecar_bytes(folder)
