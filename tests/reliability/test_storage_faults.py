"""A full disk, a file size limit, a read-only or missing sidecar folder: a clear error, the chat goes on.

Each case drives a real ChatStore (the kernel's sidecar store) on the real model. When a write
fails, the store must say so once per change it could not save (``StorageError`` text through its
notifier), the conversation must keep answering in memory, the last good session file must stay
byte for byte as it was, and no temp file may be left behind. Once writing works again the next
save must succeed and a new store must restore the whole conversation.

The file size limit (RLIMIT_FSIZE, unprivileged) runs in a child process, since it would limit
the test run too. A full disk and a read-only folder use a small tmpfs, where this machine lets
the test mount one (root); elsewhere those cases are skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmchat_jupyter import ModelSettings
from lmchat_jupyter.core.atomic import TEMP_SUFFIX
from lmchat_jupyter.storage.sidecar import Sidecar
from lmchat_jupyter.storage.store import ChatStore

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ModelSettings(n_ctx=1024, n_threads=1)
GREEDY = {"temperature": 0.0, "max_tokens": 6}
PROMPTS = ["Name a colour.", "Name a fruit.", "Name a city.", "Name a river."]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f".*{TEMP_SUFFIX}"))


class Told:
    """The store's notifier: what the user was told."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def since(self, mark: int) -> str:
        return "\n".join(self.lines[mark:])


CHILD = r"""
import hashlib, json, resource, signal, sys
from pathlib import Path
from lmchat_jupyter import ModelSettings, StorageError
from lmchat_jupyter.core.atomic import TEMP_SUFFIX
from lmchat_jupyter.storage.sidecar import Sidecar
from lmchat_jupyter.storage.store import ChatStore

folder, limits = Path(sys.argv[1]), json.loads(sys.argv[2])
told = []
settings = ModelSettings(n_ctx=1024, n_threads=1)
greedy = {"temperature": 0.0, "max_tokens": 6}
prompts = ["Name a fruit.", "Name a city.", "Name a river.", "Name a tree.", "Name a bird.", "Name a hill."]
digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
store = ChatStore(Sidecar(folder), settings=settings, notify=told.append)
conv = store.get("chat")
conv.submit("Name a colour.", **greedy)
store.flush()
session, history = folder / "chat.lmsession", folder / "chat.history.json"
report = {"session_size": session.stat().st_size, "history_size": history.stat().st_size, "cases": []}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an over-limit write then fails with EFBIG instead of killing us
for limit, prompt in zip(limits, prompts):
    good_session, good_history = digest(session), digest(history)
    mark = len(told)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    answer = conv.submit(prompt, **greedy).text
    store.flush()
    try:
        conv.save(folder / "explicit.lmsession")
        explicit = None
    except StorageError as exc:
        explicit = str(exc)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    report["cases"].append({
        "limit": limit,
        "answer": answer,
        "told": told[mark:],
        "last_save_error": store.last_save_error,
        "session_kept": digest(session) == good_session,
        "history_kept": digest(history) == good_history,
        "history_has_turn": prompt in history.read_text(),
        "explicit_error": explicit,
        "temp_files": sorted(p.name for p in folder.glob(".*" + TEMP_SUFFIX)),
        "messages": conv.info.message_count,
    })
assert store.save("chat"), store.last_save_error
store.close()
again = ChatStore(Sidecar(folder), settings=settings, notify=told.append)
restored = again.get("chat")
report["restored_messages"] = restored.info.message_count
report["restored_status"] = again.statuses.get("chat", "")
report["live_messages"] = conv.info.message_count
again.close()
print("@@" + json.dumps(report))
"""


def run_child(folder: Path, limits: list[int]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), json.dumps(limits)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("@@"))
    report: dict[str, Any] = json.loads(line[2:])
    return report


def check_limited_saves(report: dict[str, Any]) -> None:
    for case in report["cases"]:
        limit = case["limit"]
        where = f"file size limit {limit}"
        assert case["answer"], where  # the chat goes on
        assert case["temp_files"] == [], where
        if limit < report["session_size"]:
            assert case["session_kept"], where
            assert case["explicit_error"] and "File too large" in case["explicit_error"], where
            assert "previous file is unchanged" in case["explicit_error"], where
            assert case["last_save_error"] and "File too large" in case["last_save_error"], where
            told = "\n".join(case["told"])
            # Said for each turn that could not be saved (the same failure again too), once per turn.
            assert told.count("could not save") == 1 and "goes on in memory" in told, (where, told)
        if limit < report["history_size"]:
            assert case["history_kept"] and not case["history_has_turn"], where
        if limit > 2 * report["history_size"]:
            assert case["history_has_turn"], where  # the small history still gets written
    assert report["restored_messages"] == report["live_messages"]
    assert "full session" in report["restored_status"], report["restored_status"]


def test_a_file_size_limit_keeps_the_last_good_files(tmp_path: Path) -> None:
    # Below the history (nothing can be written), between history and session, then no room at all.
    report = run_child(tmp_path / "nb.lmchat", [2000, 64 * 1024, 0])
    check_limited_saves(report)


@pytest.mark.slow
def test_file_size_limits_from_zero_to_the_session_size(tmp_path: Path) -> None:
    probe = run_child(tmp_path / "probe.lmchat", [])
    size = probe["session_size"]
    limits = [0, 1, 64, 4096, probe["history_size"] - 1, probe["history_size"] + 1, size // 4, size // 2, size - 1]
    for start in range(0, len(limits), 6):
        check_limited_saves(run_child(tmp_path / f"nb{start}.lmchat", limits[start : start + 6]))


def test_a_sidecar_folder_that_cannot_be_made_keeps_chats_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the sidecar's parent folder should be")
    told = Told()
    store = ChatStore(Sidecar(blocker / "nb.lmchat"), settings=SETTINGS, notify=told)
    assert "in memory" in told.since(0), told.lines
    conv = store.get("chat")
    for prompt in PROMPTS[:2]:
        assert conv.submit(prompt, **GREEDY).text
    store.flush()
    assert conv.info.message_count == 4
    assert blocker.is_file() and not (blocker / "nb.lmchat").exists()
    store.close()


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def start_chat(folder: Path) -> tuple[ChatStore, Told, Path, Path]:
    told = Told()
    store = ChatStore(Sidecar(folder / "nb.lmchat"), settings=SETTINGS, notify=told)
    store.get("chat").submit(PROMPTS[0], **GREEDY)
    store.flush()
    session = folder / "nb.lmchat" / "chat.lmsession"
    history = folder / "nb.lmchat" / "chat.history.json"
    assert session.is_file() and history.is_file() and store.last_save_error is None
    return store, told, session, history


def fill(disk: Path, leave: int) -> Path:
    """A file that takes all of ``disk``'s free space but ``leave`` bytes."""
    info = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, info.f_bavail * info.f_frsize - leave))
    return filler


def test_a_full_disk_keeps_the_last_good_session(tmp_path: Path) -> None:
    # Room for one session file and its history, then 8 KiB: not for a turn's record (a few
    # hundred KB), nor for the temp copy a whole save writes first.
    with tmpfs(tmp_path / "disk", "4m") as disk:
        store, told, session, history = start_chat(disk)
        good = digest(session)
        filler = fill(disk, 8192)
        conv = store.get("chat")
        for prompt in PROMPTS[1:3]:
            mark = len(told.lines)
            assert conv.submit(prompt, **GREEDY).text
            store.flush()
            said = told.since(mark)
            # Said for every turn that could not be saved (in the cell that ran it), once: not once per kernel.
            assert said.count("could not save") == 1 and "goes on in memory" in said, said
            assert ".)" not in said and ".." not in said, said
        assert digest(session) == good  # a record that did not fit was cut off again
        assert temp_files(session.parent) == []
        assert store.last_save_error and "No space left" in store.last_save_error
        # Room again: the next save writes the session whole, and it holds every turn.
        filler.unlink()
        assert conv.submit(PROMPTS[3], **GREEDY).text
        store.flush()
        assert store.last_save_error is None
        filler = fill(disk, 0)  # no room at all: a turn, then the shutdown, each fail and each is said
        assert conv.submit(PROMPTS[0], **GREEDY).text
        store.flush()
        mark = len(told.lines)
        store.close()
        assert told.since(mark).count("could not save") == 1, told.since(mark)
        filler.unlink()
        again = ChatStore(Sidecar(disk / "nb.lmchat"), settings=SETTINGS, notify=told)
        assert again.get("chat").info.user_message_count == 4  # the last good files: the fifth turn never fit
        assert "full session" in again.statuses.get("chat", ""), again.statuses
        again.close()


def test_a_read_only_folder_is_read_and_left_as_it_was(tmp_path: Path) -> None:
    """A notebook on a read-only mount: its chats are restored, go on in memory, and nothing is written.

    (A store holds its folder's lock file open for writing, so a live remount to read-only is
    refused; mid-session write failures are the file size limit and full disk cases.)
    """
    with tmpfs(tmp_path / "disk", "8m") as disk:
        store, told, session, history = start_chat(disk)
        live = store.get("chat")
        store.close()
        good_session, good_history = digest(session), digest(history)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        mark = len(told.lines)
        again = ChatStore(Sidecar(disk / "nb.lmchat"), settings=SETTINGS, notify=told)
        assert "in memory" in told.since(mark), told.since(mark)
        conv = again.get("chat")
        assert [m.content for m in conv.history] == [m.content for m in live.history]
        assert "full session" in again.statuses.get("chat", ""), again.statuses
        assert conv.submit(PROMPTS[1], **GREEDY).text  # the chat goes on in memory
        again.flush()
        again.close()
        assert (digest(session), digest(history)) == (good_session, good_history)
        assert temp_files(session.parent) == []
