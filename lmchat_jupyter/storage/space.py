"""What a sidecar folder takes: its size per conversation, removing KV caches, staying out of git.

A conversation's KV cache (``NAME.lmsession``) is a cache: it makes a restart instant, and can be
rebuilt from the history. Its history (``NAME.history.json``) is never removed here. A sidecar
holds tens to thousands of megabytes beside a notebook that often lives in git, while the history
travels in the notebook's metadata: each folder gets a ``.gitignore`` of ``*``, as pytest and ruff
give their caches.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..core.errors import LmchatError, StorageError
from ..core.safe_files import create_new
from .sidecar import Sidecar, check_name

if TYPE_CHECKING:
    from ..engine.conversation import Conversation

__all__ = [
    "GITIGNORE",
    "SpaceStore",
    "ConversationFiles",
    "cap_from_environment",
    "conversation_files",
    "drop_kv_cache",
    "enforce_cap",
    "folder_size",
    "format_size",
    "keep_out_of_git",
    "plan_eviction",
    "remove_kv_cache",
]

GITIGNORE = (
    b"# Written by lmchat: KV caches are big and stay on this machine; the chat history travels in the\n"
    b"# notebook's metadata. Empty this file to keep the folder in git: lmchat never overwrites it.\n"
    b"*\n"
)


class SpaceStore(Protocol):
    """What removing KV caches needs of the store that saves them (a :class:`~.store.ChatStore`)."""

    sidecar: Sidecar
    conversations: dict[str, Conversation]
    active: str
    #: Conversations whose KV cache stays off the disk until they change.
    kv_cache_off: set[str]
    #: Past this size, saving removes the KV caches of the least recently saved conversations.
    max_sidecar_bytes: int | None
    notify: Callable[[str], None]

    def names(self) -> list[str]: ...

    def flush(self, timeout: float = 60.0) -> None: ...


@dataclass(frozen=True)
class ConversationFiles:
    """The bytes one conversation takes in a sidecar folder."""

    name: str
    kv_cache_bytes: int
    history_bytes: int
    kv_cache_mtime: float

    @property
    def total(self) -> int:
        return self.kv_cache_bytes + self.history_bytes


def _regular_file(path: Path) -> os.stat_result | None:
    """``lstat`` of a regular file; None for anything else (missing, link, folder, FIFO)."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def folder_size(folder: Path) -> int:
    """Bytes of the regular files directly in ``folder`` (links are not followed)."""
    total = 0
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def conversation_files(sidecar: Sidecar) -> list[ConversationFiles]:
    """Each conversation in the folder with the size of its KV cache and of its history."""
    found = []
    for name in sidecar.names():
        session = _regular_file(sidecar.session_path(name))
        history = _regular_file(sidecar.history_path(name))
        found.append(
            ConversationFiles(
                name,
                session.st_size if session else 0,
                history.st_size if history else 0,
                session.st_mtime if session else 0.0,
            )
        )
    return found


def format_size(n_bytes: int) -> str:
    """``n_bytes`` for people: 0 B, 812 KB, 12.3 MB, 1.2 GB."""
    if n_bytes < 1000:
        return f"{n_bytes} B"
    for unit, scale in (("KB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        value = n_bytes / scale
        if value < 999.5 or unit == "GB":
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def remove_kv_cache(sidecar: Sidecar, name: str) -> int:
    """Delete ``name``'s KV cache file (never its history); the bytes freed, 0 when there was none."""
    path = sidecar.session_path(name)
    st = _regular_file(path)
    if st is None:
        return 0
    path.unlink()
    return st.st_size


def plan_eviction(sidecar: Sidecar, cap_bytes: int, keep: set[str]) -> list[ConversationFiles]:
    """The KV caches to remove, least recently saved first, to bring the folder under ``cap_bytes``.

    Conversations in ``keep`` are never chosen; the folder can stay over the cap when they alone
    exceed it.
    """
    excess = folder_size(sidecar.folder) - cap_bytes
    if excess <= 0:
        return []
    chosen = []
    candidates = [f for f in conversation_files(sidecar) if f.kv_cache_bytes and f.name not in keep]
    for files in sorted(candidates, key=lambda f: f.kv_cache_mtime):
        if excess <= 0:
            break
        chosen.append(files)
        excess -= files.kv_cache_bytes
    return chosen


def keep_out_of_git(folder: Path) -> None:
    """Write ``folder/.gitignore`` unless something is there already (a file the user changed, a link)."""
    try:
        fd = create_new(folder / ".gitignore")
    except OSError:
        return  # there already, or a folder we cannot write: saving says so where it matters
    try:
        os.write(fd, GITIGNORE)
    finally:
        os.close(fd)


def drop_kv_cache(store: SpaceStore, name: str) -> int:
    """Remove ``name``'s KV cache file, never its history; the store saves it again once it changes.

    Returns the bytes freed. The conversation goes on in this kernel; a later kernel evaluates its
    history again.
    """
    name = check_name(name)
    if name not in store.names():
        raise LmchatError(f"there is no conversation called {name!r}; `%chat list` shows them")
    if not store.sidecar.writable:
        raise StorageError(f"{store.sidecar.folder} is held by another kernel: remove KV caches from that kernel")
    store.kv_cache_off.add(name)
    store.flush()  # a save already under way would write the file back
    try:
        return remove_kv_cache(store.sidecar, name)
    except OSError as exc:
        raise StorageError(f"cannot remove the KV cache of {name!r}: {exc.strerror or exc}") from exc


def enforce_cap(store: SpaceStore, keep: set[str] | None = None) -> list[str]:
    """Bring the sidecar under ``store.max_sidecar_bytes``: remove the least recently saved KV caches.

    The active conversation, busy ones and those in ``keep`` are never chosen. Returns one
    ``'NAME' (SIZE)`` per cache removed, and says so.
    """
    cap = store.max_sidecar_bytes
    if cap is None or not store.sidecar.writable:
        return []
    spared = (keep or set()) | {store.active} | {n for n, c in store.conversations.items() if c.busy}
    removed = []
    for files in plan_eviction(store.sidecar, cap, spared):
        store.kv_cache_off.add(files.name)
        try:
            freed = remove_kv_cache(store.sidecar, files.name)
        except OSError:
            continue  # gone already, or not ours to remove: the next save tries again
        removed.append(f"{files.name!r} ({format_size(freed)})")
    if removed:
        store.notify(
            f"lmchat: {store.sidecar.folder.name} is over its cap of {format_size(cap)}: removed the KV caches of "
            f"{', '.join(removed)}; their histories stay (a later kernel evaluates them again)"
        )
    return removed


def cap_from_environment() -> int | None:
    """``$LMCHAT_MAX_SIDECAR_MB`` in bytes; None (no cap) when unset, empty, 0 or not a number."""
    try:
        megabytes = float(os.environ.get("LMCHAT_MAX_SIDECAR_MB") or 0)
    except ValueError:
        return None
    return int(megabytes * 1e6) if megabytes > 0 else None
