"""Clearing and rewinding, on disk: what the user took out of a conversation leaves its sidecar files.

A rewind writes the session file whole again (no record after a base that still holds the text
taken out), and a conversation left without turns loses its session file: its history file alone
(the system prompt, if any) is what a restart restores. Copies that lmchat made of a conversation
(``NAME.replaced-<time>``, kept when something replaced it) are removed only when the user asks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from ..engine.conversation import Conversation
from ..engine.models import Model
from . import waiting
from .metadata import EmbeddedChat, mark_emptied
from .reconcile import REPLACED_MARK, Relation, free_name, relation
from .sidecar import Sidecar

__all__ = ["ClearingStore", "clear", "on_disk", "taken_out", "drop_session", "copies", "forget_copies"]


class ClearingStore(waiting.WaitingStore, Protocol):
    """What clearing needs of the store (a :class:`~.store.ChatStore`)."""

    sidecar: Sidecar
    autosave: bool
    last_save_error: str | None
    embedded: dict[str, EmbeddedChat]
    notify: Callable[[str], None]

    def model_for(self, spec: str | None) -> Model: ...


def taken_out(store: ClearingStore, name: str, conv: Conversation) -> None:
    """Messages were taken out of ``conv`` (a clear, a rewind): its session file goes at once.

    The session still holds them, and a restart takes the session where it extends the history
    file: removed now, before the shorter history is written, no kill brings them back. The save
    that follows writes the session whole again (none where no turn is left).
    """
    if not conv.history.message_count:
        mark_emptied(conv)  # the notebook's metadata then holds it empty, not as it was
    if store.autosave and store.sidecar.writable and store.conversations.get(name) is conv:
        drop_session(store, name)


def drop_session(store: ClearingStore, name: str) -> bool:
    """Remove the session file of ``name``, a conversation left without turns; whether one was there."""
    path = store.sidecar.session_path(name)
    if not os.path.lexists(path):
        return False
    try:
        os.unlink(path)  # the name alone: a link there is removed, never what it points to
    except OSError as exc:
        store.notify(f"lmchat: could not remove {path}: {exc.strerror or exc}; it still holds the messages taken out")
        return False
    return True


def clear(store: ClearingStore, name: str, forget: bool = False) -> str:
    """Empty ``name`` (the system prompt stays) in memory and on disk; the message that says what happened.

    A history that waits to be evaluated (or that cannot be) is not evaluated to be cleared: it is
    kept beside as a copy, as lmchat keeps whatever it replaces. ``forget`` removes the copies too.
    """
    conv = store.conversations.get(name)
    model = store.model_for(None) if conv is None else conv.model  # first: a model that fails to load drops nothing
    pending = store.embedded.pop(name, None)  # the notebook's history of it: cleared with it
    if conv is None:
        if pending is not None and not waiting.write_history(store, name, pending.history):
            other = free_name(name, store.names(), "notebook")  # no file to keep it in: the notebook keeps it
            store.embedded[other] = EmbeddedChat(other, pending.history, pending.model_spec)
            store.notify(f"lmchat: the notebook's history of {name!r} is kept as {other!r} (`%chat use {other}`)")
        store.keep_aside(name, "cleared before its history was evaluated")
        conv = Conversation(model, system=pending.history.system if pending is not None else None)
        mark_emptied(conv)
        store.adopt(name, conv)
        store.keep(name, conv)
    else:
        conv.clear()
    return "lmchat: conversation cleared" + on_disk(store, name, "removed") + _copies_note(store, name, forget)


def on_disk(store: ClearingStore, name: str, what: str) -> str:
    """After a clear or rewind: whether the sidecar's files no longer hold the ``what`` messages, in a clause."""
    if not store.autosave:
        return f"; autosave is off, so the files in {store.sidecar.folder} still hold the {what} messages"
    if not store.sidecar.writable:
        return f"; another kernel holds {store.sidecar.folder}: its files there still hold the {what} messages"
    store.flush()
    conv = store.conversations.get(name)
    disk = store.disk_history(name)
    if conv is None or disk is None or relation(disk, conv.history) is not Relation.SAME:
        return f"; the sidecar's history of it could not be written, so it may still hold the {what} messages"
    if conv.history.user_message_count:
        kept = store.last_save_error is None  # the save after a rewind writes the session file whole
    else:
        kept = not os.path.lexists(store.sidecar.session_path(name))
    if not kept:
        return f"; the session file could not be written, so it may still hold the {what} messages"
    return (
        f"; the session file and history no longer hold the {what} messages "
        "(the notebook's metadata drops them when the notebook is next saved)"
    )


def copies(store: ClearingStore, name: str) -> list[str]:
    """The copies lmchat kept of ``name`` in the sidecar (``NAME.replaced-<time>``), oldest first."""
    return sorted(n for n in store.sidecar.names() if n.startswith(f"{name}{REPLACED_MARK}"))


def forget_copies(store: ClearingStore, name: str) -> list[str]:
    """Remove the copies of ``name`` from the sidecar and from memory; the names removed."""
    removed = []
    for copy in copies(store, name):
        store.forget(copy)
        store.embedded.pop(copy, None)
        gone = True
        for path in (store.sidecar.session_path(copy), store.sidecar.history_path(copy)):
            try:
                if os.path.lexists(path):
                    os.unlink(path)
            except OSError as exc:
                store.notify(f"lmchat: could not remove {path}: {exc.strerror or exc}")
                gone = False
        if gone:
            removed.append(copy)
    return removed


def _copies_note(store: ClearingStore, name: str, forget: bool) -> str:
    if not store.sidecar.writable:
        return ""
    if forget:
        removed = forget_copies(store, name)
        return f"; removed lmchat's copies of it: {', '.join(removed)}" if removed else "; it had no copies to remove"
    kept = copies(store, name)
    if not kept:
        return ""
    return (
        f"; lmchat's own copies of {name!r} still hold earlier messages: {', '.join(kept)} "
        "(`%chat clear --forget-copies` removes them too)"
    )
