"""Restoring one conversation of a notebook from its sidecar files.

The full session when it is signed by this user's kernels and matches the model and settings
(instant), catching up with a newer history file where needed; otherwise the visible history,
evaluated again on the kernel's own model. Unsigned files never choose the model.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable
from typing import Protocol

from ..core.errors import LmchatError, SessionCorruptError, SessionMismatchError
from ..core.history import ChatHistory
from ..core.safe_files import open_regular
from ..engine.conversation import Conversation, Progress
from ..engine.models import Model, model_name_for
from ..engine.session.container import parse
from .metadata import EmbeddedChat
from .reconcile import Relation, length_note, move_aside, relation
from .saved import SavedChat, read_saved, session_history, untrusted_model_note
from .sidecar import SESSION_SUFFIX, Sidecar

__all__ = ["RestoringStore", "restore", "catch_up", "defer_unsigned", "unsigned_history"]


class RestoringStore(Protocol):
    """What restoring needs of the store it restores into (a :class:`~.store.ChatStore`)."""

    sidecar: Sidecar
    model_spec: str | None
    active: str
    notify: Callable[[str], None]
    progress: Callable[[str], Progress | None]
    #: Conversations whose unsigned files' model was named to the user.
    said: set[str]
    kv_cache_off: set[str]
    statuses: dict[str, str]
    embedded: dict[str, EmbeddedChat]

    def model_for(self, spec: str | None) -> Model: ...

    def adopt(self, name: str, conv: Conversation) -> None: ...

    def keep(self, name: str, conv: Conversation) -> None: ...


def restore(store: RestoringStore, name: str, saved: SavedChat | None = None) -> Conversation | None:
    """Restore ``name`` into ``store``; None when nothing is saved or nothing could be used (said).

    ``saved``: its files as already read (by :func:`read_saved`), so that they are not read twice.
    """
    session_path = store.sidecar.session_path(name)
    history_path = store.sidecar.history_path(name)
    if saved is None:
        saved = read_saved(store.sidecar, name)
    for problem in saved.problems:
        store.notify(f"lmchat: {problem}")
    if not saved.exists:
        return None
    history, source = saved.history, history_path.name
    model = store.model_for(saved.trusted_spec())
    _tell_once(store, name, untrusted_model_note(name, saved, model.spec, model.name, store.active))
    conv: Conversation | None = None
    note = ""
    if saved.has_session and saved.header is not None and not saved.session_signed:
        # Its tokens and KV state are not what the user can read: only the visible history is used.
        inside = session_history(session_path)
        if inside is not None and (history is None or relation(inside, history) is Relation.A_EXTENDS):
            history, source = inside, session_path.name
        note = "the saved session is not signed by this user's kernels (copied?), so its KV state was not used"
    elif saved.has_session:
        try:
            conv = Conversation.restore(model, session_path, progress=store.progress(f"Restoring {name}"))
            note = conv.restored_from or ""
        except SessionMismatchError as exc:
            note = f"the saved session belongs to another model or settings ({', '.join(exc.differences)})"
            history = history or _as_history(exc.history)
        except (SessionCorruptError, LmchatError) as exc:
            note = f"the saved session could not be used: {exc}"
    behind = False
    if conv is not None and history is not None:
        restored = conv
        had = len(conv.history)
        conv, behind = catch_up(store, conv, history, model, name)
        if behind and conv is restored:
            added = len(conv.history) - had
            note += f"; caught up with the newer history ({source}): {added} message{'s' * (added != 1)} re-read"
        elif behind:
            note += f"; the history ({source}, {len(conv.history)} messages) was re-read in its place"
    if conv is None and history is not None:
        conv = Conversation.from_history(model, history, progress=store.progress(f"Re-reading {name}"))
        note = f"history from {source}" + (f"; {note}" if note else "")
        if not saved.has_session:
            store.kv_cache_off.add(name)  # removed (`%chat forget`, the size cap): not written back unchanged
    if conv is None:
        store.notify(f"lmchat: {name!r} could not be restored: {note}")
        return None
    store.adopt(name, conv)
    if behind:
        store.keep(name, conv)  # else every restart would catch up again
    store.statuses[name] = f"{name}: {conv.info.message_count} messages, {conv.info.token_count} tokens — {note}"
    return conv


def _tell_once(store: RestoringStore, name: str, message: str | None) -> None:
    """Say which model unsigned files name once per conversation (at ``%load_ext``, or else at first use)."""
    if message is not None and name not in store.said:
        store.said.add(name)
        store.notify(message)


def unsigned_history(store: RestoringStore, name: str, saved: SavedChat) -> ChatHistory | None:
    """The visible history of files that no kernel of this user signed; None for this user's files."""
    if saved.session_signed or saved.history_signed or saved.problems:
        return None
    if saved.has_session and saved.header is None:
        # A session file that cannot be read (damage, a link, a FIFO) brings no KV state: the history
        # file beside it waits like any copied file's; without one, restoring says why now.
        return saved.history
    if saved.history is None and saved.has_session:
        return session_history(store.sidecar.session_path(name))
    return saved.history


def defer_unsigned(store: RestoringStore, name: str, saved: SavedChat) -> bool:
    """Files that no kernel of this user signed (a cloned notebook) wait for their conversation's first use.

    Their history is evaluated then, not at ``%load_ext``: a cloned repository with many
    conversations must not cost minutes before anything is asked. Meanwhile the history waits with
    the notebook's (``store.embedded``), so the notebook's metadata keeps it. False (nothing done)
    where the files are this user's (restored at once) or cannot be read (restoring says why). A
    session file that cannot be read beside an unsigned history file does not stop the history waiting.
    """
    history = unsigned_history(store, name, saved)
    if history is None:
        return False
    store.embedded.setdefault(name, EmbeddedChat(name, history, None))
    model = model_name_for(store.model_spec)
    _tell_once(store, name, untrusted_model_note(name, saved, store.model_spec, model, store.active))
    unread = saved.has_session and saved.header is None
    why = f"; its session file is not used: {_unreadable(store, name)}" if unread else ""
    store.notify(
        f"lmchat: {name}: {length_note(history)}, in files that this user's kernels did not sign (a copied or "
        f"cloned notebook?){why}; its history is evaluated when the conversation is first used (%%chat, the "
        "chat widget or the lmchat panel in the right sidebar)"
    )
    return True


def _unreadable(store: RestoringStore, name: str) -> str:
    """Why ``name``'s session file cannot be used, as restoring it would say (it is checked, not loaded)."""
    path = store.sidecar.session_path(name)
    try:
        fd = open_regular(path, error=SessionCorruptError)
        try:
            size = os.fstat(fd).st_size
            mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
        finally:
            os.close(fd)
        if mapped is None:
            return f"{path} is empty"
        try:
            parse(memoryview(mapped), str(path))
        finally:
            with contextlib.suppress(BufferError):
                mapped.close()  # a view still held by the error's frames keeps the map until it is freed
    except (LmchatError, OSError, ValueError) as exc:
        return str(exc)
    return f"{path} could not be read"


def catch_up(
    store: RestoringStore, conv: Conversation, history: ChatHistory, model: Model, name: str
) -> tuple[Conversation, bool]:
    """Bring a restored session up to the (newer or equal) history written after each turn.

    Returns the conversation and whether it differs from the saved session (then it needs saving).
    A session that differs from the history is moved aside, not overwritten.
    """
    found = relation(history, conv.history)
    if found is Relation.A_EXTENDS:
        conv.history.messages.extend(history.messages[len(conv.history) :])
        conv.prefill(store.progress("Catching up"))
        return conv, True
    if found in (Relation.SAME, Relation.B_EXTENDS):
        return conv, False  # B_EXTENDS: the session is newer than the history file
    if store.sidecar.writable:
        kept = move_aside(store.sidecar.folder, name, [SESSION_SUFFIX])
        if kept is not None:
            store.notify(
                f"lmchat: {name!r}: its session differs from its history file; the history is used, and the "
                f"session is kept as {kept!r} in {store.sidecar.folder}"
            )
    return Conversation.from_history(model, history, progress=store.progress("Re-reading")), True


def _as_history(value: object) -> ChatHistory | None:
    return value if isinstance(value, ChatHistory) else None
