"""``%chat fork NEW [--at TURN]``: a second conversation that starts where another one is, KV cache included.

The fork is :meth:`Conversation.fork` (history under a new id, the KV state copied), cut back to
``TURN`` user turns when asked (the cached prefix stays), and saved like any conversation. Its
history records where it came from, so ``%chat list`` says so after a restart too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.errors import LmchatError
from ..core.history import ChatHistory, ForkOrigin
from ..storage.sidecar import check_name

if TYPE_CHECKING:
    from ..engine.conversation import Conversation
    from ..storage.store import ChatStore

__all__ = ["fork", "origin_note", "origin_of"]


def fork(store: ChatStore, source: str, new: str, at: int | None = None) -> Conversation:
    """Copy the conversation ``source`` as ``new`` (keeping its first ``at`` user turns) and save it."""
    new = check_name(new)
    if new in store.names():
        raise LmchatError(f"there is already a conversation called {new!r}; fork into another name")
    conv = store.get(source)
    turns = conv.history.user_message_count
    at = turns if at is None else at
    if not 0 <= at <= turns:
        raise LmchatError(f"--at {at}: {source!r} has {turns} turn{'s' * (turns != 1)}, so TURN is from 0 to {turns}")
    twin = conv.fork()
    if at < turns:
        users = [i for i, m in enumerate(twin.history) if m.role == "user"]
        twin.rewind_to(users[at])
    twin.history.forked_from = ForkOrigin(source, conv.history.conversation_id, at)
    store.adopt(new, twin)
    store.keep(new, twin)
    return twin


def origin_note(history: ChatHistory) -> str:
    """``forked from 'default' at turn 2``, or nothing for a conversation that is no fork."""
    origin = history.forked_from
    return f"forked from {origin.name!r} at turn {origin.turns}" if origin is not None else ""


def origin_of(store: ChatStore, name: str) -> str:
    """Where the conversation ``name`` came from, read without evaluating anything (for ``%chat list``)."""
    history = _history(store, name)
    return origin_note(history) if history is not None else ""


def _history(store: ChatStore, name: str) -> ChatHistory | None:
    """``name``'s history without evaluating anything: in memory, waiting in the notebook, or on disk."""
    conv = store.conversations.get(name)
    if conv is not None:
        return conv.history
    waiting = store.embedded.get(name)
    if waiting is not None:
        return waiting.history
    try:
        return store.disk_history(name)
    except LmchatError:
        return None
