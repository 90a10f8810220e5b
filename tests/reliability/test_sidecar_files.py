"""A sidecar folder is untrusted input: what stands in lmchat's files' places is never followed or waited on.

One test per way a cloned ``NAME.lmchat/`` folder once wrote outside itself, blocked the kernel, read
without bound, slipped a name past the rule or carried bytes lmchat did not write. Each goes
through a real :class:`ChatStore` (the kernel's store) or the session reader, on real files.
"""

from __future__ import annotations

import os
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from lmchat_jupyter import (
    ChatHistory,
    Conversation,
    HistoryFormatError,
    LmchatError,
    Model,
    ModelSettings,
    SessionCorruptError,
    UnsafeFileError,
)
from lmchat_jupyter.core.safe_files import read_bounded
from lmchat_jupyter.engine.session.container import read_header
from lmchat_jupyter.storage.sidecar import Sidecar, check_name
from lmchat_jupyter.storage.store import ChatStore

from .forge import forge, split
from .hostile_sidecars import put_hostile

GREEDY = {"temperature": 0.0, "max_tokens": 6}


class Told:
    """The store's notifier: what the user was told."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def victim(tmp_path: Path) -> Path:
    """A file of the user's, outside any sidecar."""
    path = tmp_path / "victim" / "notes.txt"
    path.parent.mkdir()
    path.write_text("precious\n")
    os.utime(path, (1_000_000_000, 1_000_000_000))
    return path


def untouched(path: Path) -> bool:
    return path.read_text() == "precious\n" and path.stat().st_mtime == 1_000_000_000


def within(seconds: float, action: Callable[[], object]) -> object:
    """``action()``'s result, failing the test (not hanging it) when it takes longer than ``seconds``."""
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(_attempt(action)), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"still blocked after {seconds} s")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _attempt(action: Callable[[], object]) -> object:
    try:
        return action()
    except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
        return exc


# --- the lock file ----------------------------------------------------------------------------------


def test_a_lock_file_linked_to_a_users_file_does_not_truncate_it(tmp_path: Path) -> None:
    target = victim(tmp_path)
    folder = tmp_path / "nb.lmchat"
    folder.mkdir()
    (folder / ".lock").symlink_to(target)
    told = Told()
    store = ChatStore(Sidecar(folder), notify=told)
    try:
        assert untouched(target)
        assert not store.sidecar.writable
        assert ".lock cannot be used as a lock: it is a symbolic link" in told.text, told.text
        assert "Chats stay in memory only" in told.text
    finally:
        store.close()
    assert untouched(target)


@pytest.mark.parametrize("kind", ["hard link", "FIFO", "folder"])
def test_a_lock_file_that_is_not_a_plain_file_of_its_own_is_refused(tmp_path: Path, kind: str) -> None:
    target = victim(tmp_path)
    folder = tmp_path / "nb.lmchat"
    folder.mkdir()
    lock = folder / ".lock"
    {"hard link": lambda: os.link(target, lock), "FIFO": lambda: os.mkfifo(lock), "folder": lock.mkdir}[kind]()
    sidecar = Sidecar(folder)
    with pytest.raises(UnsafeFileError, match=r"\.lock"):
        within(10, sidecar.acquire)
    assert untouched(target) and not sidecar.writable


def test_a_sidecar_folder_that_is_a_link_is_neither_read_nor_written(tmp_path: Path, model: Model) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    conv = Conversation(model)
    conv.submit("Name a colour.", **GREEDY)
    conv.history.save(elsewhere / "default.history.json")
    (tmp_path / "nb.lmchat").symlink_to(elsewhere)
    before = sorted(os.listdir(elsewhere))
    told = Told()
    store = ChatStore(Sidecar(tmp_path / "nb.lmchat"), notify=told, settings=ModelSettings(n_ctx=4096))
    try:
        assert "is a symbolic link, not a folder" in told.text, told.text
        assert store.names() == [] and store.restore("default") is None
        store.get().submit("Name a fruit.", **GREEDY)  # the chat goes on, in memory
    finally:
        store.close()
    assert sorted(os.listdir(elsewhere)) == before


# --- reading history files ------------------------------------------------------------------------


HOSTILE_HISTORIES = {
    "FIFO": "it is a FIFO",
    "link to /dev/zero": "it is a symbolic link",
    "link to a valid file outside": "it is a symbolic link",
    "sparse 10 GB file": "10,737,418,240 bytes, more than the 33,554,432",
    "folder": "it is a folder",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_HISTORIES))
def test_a_history_file_that_is_not_a_plain_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "nb.lmchat"
    folder.mkdir()
    ChatHistory().save(tmp_path / "outside.history.json")
    put_hostile(folder / "default.history.json", kind, tmp_path)
    told = Told()
    store = ChatStore(Sidecar(folder), notify=told)
    try:
        assert within(20, lambda: store.restore("default")) is None
        assert "ignoring default.history.json" in told.text and HOSTILE_HISTORIES[kind] in told.text, told.text
        with pytest.raises(HistoryFormatError, match=HOSTILE_HISTORIES[kind]):
            within(20, lambda: ChatHistory.load(folder / "default.history.json"))
    finally:
        store.close()


def test_a_file_that_grows_past_the_bound_while_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "growing.json"
    path.write_bytes(b"x" * 100)
    with pytest.raises(UnsafeFileError, match="more than the 99"):
        read_bounded(path, 99)
    assert read_bounded(path, 100) == b"x" * 100


# --- names ----------------------------------------------------------------------------------------

REFUSED_NAMES = [
    "default\n",
    "default\r",
    "\ndefault",
    "de\nfault",
    "default\x00",
    "a\x00b",
    "default\u2028",
    "",
    ".",
    "..",
    ".lock",
    ".default",
    "a..b",
    "chat.",
    "chat ",
    " chat",
    "a/b",
    "a\\b",
    "CON",
    "con",
    "nul.txt",
    "Aux",
    "com1",
    "LPT9",
    "com\u00b9",
    "prn .x",
    "a" * 65,
    "\U00020000" * 49,  # 49 characters of 4 bytes: a file name past 255 bytes with its temp suffix
    "ab\udc80",
]


@pytest.mark.parametrize("name", REFUSED_NAMES, ids=ascii)
def test_names_outside_the_rule_are_refused(name: str) -> None:
    with pytest.raises(LmchatError, match="not a valid conversation name"):
        check_name(name)


@pytest.mark.parametrize("name", ["default", "Été 2024 v1.2", "con2", "console", "nul_", "a.b.c", "日本語"])
def test_names_inside_the_rule_are_taken(name: str) -> None:
    assert check_name(name) == name


def test_a_name_in_nfd_is_taken_in_nfc() -> None:
    assert check_name(unicodedata.normalize("NFD", "café")) == "café"


def test_a_name_with_a_trailing_newline_cannot_make_a_file(tmp_path: Path) -> None:
    with pytest.raises(LmchatError):
        Sidecar(tmp_path).session_path("default\n")


def test_files_whose_names_break_the_rule_are_left_out_and_said(tmp_path: Path) -> None:
    folder = tmp_path / "nb.lmchat"
    folder.mkdir()
    nfc, nfd = "café", unicodedata.normalize("NFD", "café")
    for name in (nfc, nfd, "default", "CON", "default\n"):
        ChatHistory().save(folder / f"{name}.history.json")
    sidecar = Sidecar(folder)
    assert sidecar.names() == ["café", "default"]
    ignored = sidecar.ignored()
    assert sorted(ignored) == sorted(f"{n}.history.json" for n in (nfd, "CON", "default\n"))
    assert "Unicode form" in ignored[f"{nfd}.history.json"]
    told = Told()
    store = ChatStore(sidecar, notify=told)
    try:
        store.restore_all()
    finally:
        store.close()
    assert f"ignoring {nfd}.history.json" in told.text and "ignoring CON.history.json" in told.text, told.text


# --- session files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def session_blob(model: Model) -> bytes:
    conv = Conversation(model)
    conv.submit("Name a colour.", **GREEDY)
    blob = conv.save()
    assert blob is not None
    return blob


@pytest.mark.parametrize("extra", [b"\x00", b"x" * 64, b"\x00" * 4096])
def test_bytes_appended_to_a_session_are_refused(model: Model, session_blob: bytes, extra: bytes) -> None:
    with pytest.raises(SessionCorruptError, match="after the end of its last section") as info:
        Conversation.restore(model, session_blob + extra)
    assert isinstance(info.value.history, ChatHistory) and info.value.history.user_message_count == 1


def test_a_session_file_with_bytes_appended_is_refused_and_its_header_too(
    model: Model, session_blob: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "default.lmsession"
    path.write_bytes(session_blob + b"appended")
    with pytest.raises(SessionCorruptError, match="8 bytes after the end"):
        Conversation.restore(model, path)
    with pytest.raises(SessionCorruptError, match="its header records"):
        read_header(path)
    path.write_bytes(session_blob)
    assert read_header(path)["size"] == len(session_blob)


def test_a_session_written_before_its_length_was_recorded_still_loads(model: Model, session_blob: bytes) -> None:
    layout = split(session_blob)
    header = {k: v for k, v in layout.header.items() if k != "size"}
    old = forge(header, session_blob[layout.data_start :])
    assert Conversation.restore(model, old).history.user_message_count == 1
    with pytest.raises(SessionCorruptError, match="after the end of its last section"):
        Conversation.restore(model, old + b"\x00" * 64)


def test_a_header_that_lies_about_the_length_is_refused(model: Model, session_blob: bytes) -> None:
    layout = split(session_blob)
    for claim in (len(session_blob) + 64, len(session_blob) - 64, "12", None):
        forged = forge(dict(layout.header, size=claim), session_blob[layout.data_start :])
        with pytest.raises(SessionCorruptError, match="header records a length"):
            Conversation.restore(model, forged)


@pytest.mark.parametrize("kind", ["link to a valid file outside", "link to /dev/zero", "FIFO", "folder"])
def test_a_session_file_that_is_not_a_plain_file_is_refused(
    model: Model, session_blob: bytes, tmp_path: Path, kind: str
) -> None:
    (tmp_path / "outside.lmsession").write_bytes(session_blob)
    path = tmp_path / "nb.lmchat" / "default.lmsession"
    path.parent.mkdir()
    put_hostile(path, kind, tmp_path)
    with pytest.raises(SessionCorruptError, match="default.lmsession"):
        within(20, lambda: Conversation.restore(model, path))
