"""A history that waits to be evaluated (the notebook's, or a copied sidecar's) and cannot be: it stays.

Evaluating a waiting history can fail: it may need more tokens than the model's context holds, or
the model may not load. The history is then put back where it waited (so the notebook's metadata
keeps carrying it), written to the sidecar's history file (so a lost notebook loses nothing), and
every later use fails the same way, saying so, until the user chooses: a bigger context, or
``%chat clear``, which starts over and keeps the history beside under another name.
"""

from __future__ import annotations

import os
from typing import Protocol

from ..core import signing
from ..core.atomic import atomic_write
from ..core.errors import LmchatError, StorageError
from ..core.history import ChatHistory
from ..engine.conversation import Conversation
from . import embedded_chats
from .embedded_chats import EmbeddedStore
from .metadata import EmbeddedChat
from .reconcile import Relation, relation
from .sidecar import Sidecar

__all__ = ["WaitingStore", "take", "write_history", "explain"]


class WaitingStore(EmbeddedStore, Protocol):
    """What keeping a waiting history needs of its store (a :class:`~.store.ChatStore`)."""

    sidecar: Sidecar
    autosave: bool

    def flush(self, timeout: float = 60.0) -> None: ...

    def forget(self, name: str) -> None: ...

    def keep_aside(self, name: str, why: str) -> str | None: ...


def take(store: WaitingStore, chat: EmbeddedChat, conv: Conversation | None) -> Conversation | None:
    """Evaluate the waiting ``chat`` into its conversation; where that fails, nothing of it is dropped.

    On failure the history keeps waiting in ``store.embedded``, a conversation it was to continue
    goes back to what it was and leaves memory (its files stay: the next use restores them and tries
    again), the whole history is written to the sidecar, and the error is raised.
    """
    before = len(conv.history) if conv is not None else 0
    try:
        taken = embedded_chats.take(store, chat, conv)
    except BaseException:  # Ctrl-C too: the history is put back before anything else
        store.embedded[chat.name] = chat
        if conv is not None:
            del conv.history.messages[before:]
            if store.conversations.get(chat.name) is conv:
                store.flush()
                store.forget(chat.name)  # else the notebook would be given this shorter conversation
        write_history(store, chat.name, chat.history)
        raise
    if store.embedded.get(chat.name) is chat:
        del store.embedded[chat.name]
    return taken


def write_history(store: WaitingStore, name: str, history: ChatHistory) -> bool:
    """Write ``history`` to ``name``'s history file in the sidecar, keeping aside one it does not extend.

    The file names no model (the kernel's own is used when it is read back: a notebook's metadata
    never chooses a model). False where the folder is not this kernel's or the write failed (said).
    """
    if not (store.autosave and store.sidecar.writable):
        return False
    disk = store.disk_history(name)
    if disk is not None and relation(history, disk) is Relation.SAME:
        return True
    if disk is not None and disk.user_message_count and relation(history, disk) is not Relation.A_EXTENDS:
        store.keep_aside(name, "a history that could not be evaluated is saved in their place")
    data = history.to_json()
    data["model"] = {"spec": None, "name": None}
    try:
        atomic_write(store.sidecar.history_path(name), [signing.history_document(data)])
    except StorageError as exc:
        store.notify(f"lmchat: could not save the history of {name!r} ({exc}); the notebook's metadata still has it")
        return False
    return True


def explain(store: WaitingStore, name: str, exc: LmchatError) -> LmchatError:
    """``exc``, its message followed by what happened to the history and what the user can do."""
    path = store.sidecar.history_path(name)
    places = [path.name] if os.path.lexists(path) else []
    places += ["the notebook's metadata"] if name in store.embedded else []
    where = " and ".join(places) or "memory"
    exc.args = (
        f"{exc} — {name!r} was not evaluated; its history is kept (in {where}) and every use of it tries again. "
        "To go on, fix what stopped it (a context too small: `%chat config --n-ctx N`, then run the cell again), "
        "or start over with `%chat clear` (the history is then kept beside as a copy)",
    )
    return exc
