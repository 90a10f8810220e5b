"""A kernel meeting a sidecar folder that holds conversations it did not write, and a folder another kernel holds.

Two moments: a kernel takes a folder that already holds chats (the notebook's path was set after
chatting, or the kernel that held the folder is gone), and a kernel saves while another holds
the folder. In both, no conversation is lost: the longer of two versions wins where one extends
the other, otherwise this kernel's is kept under a new name, and the user is told which.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..core.errors import StorageError
from ..core.history import ChatHistory
from ..engine.conversation import Conversation
from .reconcile import Relation, free_name, relation
from .sidecar import Sidecar

__all__ = ["SharingStore", "settle", "take_over", "save_beside"]


class SharingStore(Protocol):
    """What sharing a folder needs of the store that saves there (a :class:`~.store.ChatStore`)."""

    sidecar: Sidecar
    conversations: dict[str, Conversation]
    active: str
    #: Conversations saved beside a folder that another kernel holds: name -> the name saved under.
    beside: dict[str, str]
    notify: Callable[[str], None]

    def names(self) -> list[str]: ...

    def disk_history(self, name: str) -> ChatHistory | None: ...

    def adopt(self, name: str, conv: Conversation) -> None: ...

    def forget(self, name: str) -> None: ...

    def keep(self, name: str, conv: Conversation) -> None: ...

    def write_history_file(self, path: Path, conv: Conversation) -> bool: ...

    def save(self, name: str, path: Path | None = None) -> bool: ...


def take_over(store: SharingStore) -> bool:
    """Take the folder if the kernel that held it is gone (checked at each save); True when this kernel holds it."""
    if store.sidecar.writable:
        return True
    try:
        if not store.sidecar.acquire():
            return False
    except StorageError:
        return False
    store.sidecar.remove_stale_temp_files()
    store.notify(f"lmchat: the kernel that held {store.sidecar.folder} is gone; this kernel saves its chats there now.")
    settle(store)
    return True


def settle(store: SharingStore) -> None:
    """Save this kernel's conversations into a folder that may hold other versions of them, keeping all."""
    for name, conv in list(store.conversations.items()):
        beside = store.beside.pop(name, None)
        disk = store.disk_history(name)
        if not conv.history.user_message_count:
            if disk is not None:
                store.forget(name)  # nothing said here yet: the folder's conversation is the one to use
            continue
        found = relation(conv.history, disk) if disk is not None else Relation.A_EXTENDS
        if found is Relation.DIVERGED:
            new = beside or free_name(name, store.names(), "kernel")
            store.forget(name)
            store.adopt(new, conv)
            if store.active == name:
                store.active = new
            store.keep(new, conv)
            store.notify(
                f"lmchat: {store.sidecar.folder} already holds another conversation called {name!r}; this kernel's "
                f"({conv.info.message_count} messages) is saved as {new!r}, which %%chat now uses "
                f"(`%chat use {name}` opens the folder's)."
            )
            continue
        if beside is not None:
            _remove(store, beside)  # what was saved beside is part of what is saved now
        if found is Relation.B_EXTENDS:
            assert disk is not None
            store.forget(name)
            store.notify(
                f"lmchat: {store.sidecar.folder} holds {name!r} with {disk.message_count} messages, continuing "
                f"this kernel's {conv.info.message_count}; %%chat goes on from the folder's."
            )
        elif found is Relation.A_EXTENDS:
            store.keep(name, conv)


def _remove(store: SharingStore, name: str) -> None:
    for path in (store.sidecar.session_path(name), store.sidecar.history_path(name)):
        with contextlib.suppress(OSError):
            os.unlink(path)


def save_beside(store: SharingStore, name: str, conv: Conversation, *, with_session: bool = False) -> None:
    """Another kernel holds the folder: save what only this kernel has under a name of its own, and say where."""
    if not conv.history.user_message_count or not store.sidecar.folder_ok():
        return  # not a real folder (a link, a file): nothing is written through it, as said when it was opened
    disk = store.disk_history(name)
    if disk is not None and relation(conv.history, disk) in (Relation.SAME, Relation.B_EXTENDS):
        return  # the folder holds all of it
    new = store.beside.get(name)
    first = new is None
    if new is None:
        new = free_name(name, store.names(), "kernel")
        store.beside[name] = new
    path = store.sidecar.history_path(new)
    if not store.write_history_file(path, conv):
        return
    if with_session:
        store.save(name, store.sidecar.session_path(new))
    if first or with_session:
        holder = store.sidecar.locked_by_other or "another kernel"
        store.notify(
            f"lmchat: {store.sidecar.folder} is in use by {holder}; this kernel's {name!r} "
            f"({conv.info.message_count} messages) is saved beside it as {new!r} ({path})"
            + ("" if with_session else "; this kernel takes the folder over once the other one is gone")
        )
