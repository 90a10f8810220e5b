"""Histories from the notebook's metadata: announced when the notebook opens, evaluated when first used.

A notebook may carry up to 32 histories of 8 MB; evaluating them all when the frontend says hello
would cost minutes of CPU before the user asked anything. Each one is compared with the sidecar
(by message ids, which needs no model) and kept until its conversation is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..core.history import ChatHistory
from ..engine.conversation import Conversation, Progress
from ..engine.models import Model
from .metadata import EmbeddedChat
from .reconcile import Relation, free_name, length_note, relation

__all__ = ["EmbeddedStore", "offer", "offer_all", "take", "size_note"]


class EmbeddedStore(Protocol):
    """What the notebook's histories need of the store that keeps them (a :class:`~.store.ChatStore`)."""

    conversations: dict[str, Conversation]
    #: The histories waiting for their conversation's first use.
    embedded: dict[str, EmbeddedChat]
    statuses: dict[str, str]
    notify: Callable[[str], None]
    progress: Callable[[str], Progress | None]

    def names(self) -> list[str]: ...

    def disk_history(self, name: str) -> ChatHistory | None: ...

    def model_for(self, spec: str | None) -> Model: ...

    def adopt(self, name: str, conv: Conversation) -> None: ...

    def keep(self, name: str, conv: Conversation) -> None: ...


def size_note(chat: EmbeddedChat) -> str:
    """How long a history is, before any tokenizer has seen it."""
    return length_note(chat.history)


def _already_held(store: EmbeddedStore, chat: EmbeddedChat) -> bool:
    """Whether some conversation, in memory or waiting, holds all of ``chat`` already."""
    held = [c.history for c in store.conversations.values()] + [p.history for p in store.embedded.values()]
    return any(relation(h, chat.history) in (Relation.SAME, Relation.A_EXTENDS) for h in held)


def offer_all(store: EmbeddedStore, chats: list[EmbeddedChat]) -> list[str]:
    """Keep each of ``chats`` for its first use; one line for each kept, and for each entry the metadata left out."""
    lines = [
        f"{why}. That entry is left out (and not written back when the notebook is saved); "
        "the notebook's other conversations are used"
        for why in getattr(chats, "skipped", ())
    ]
    return lines + [line for chat in chats if (line := offer(store, chat)) is not None]


def offer(store: EmbeddedStore, chat: EmbeddedChat) -> str | None:
    """Keep ``chat`` for its first use; the line that says so, or None where the sidecar holds it all."""
    if not chat.history.message_count or _already_held(store, chat):
        return None  # an empty entry: a conversation cleared, nothing to restore
    conv = store.conversations.get(chat.name)
    have = conv.history if conv is not None else store.disk_history(chat.name)
    note = ""
    if have is not None and have.user_message_count:
        found = relation(have, chat.history)
        if found in (Relation.SAME, Relation.A_EXTENDS):
            # The sidecar's files hold it all (and wait themselves): keep it only for the notebook's metadata.
            store.embedded[chat.name] = chat
            return None
        if found is Relation.DIVERGED:
            other = free_name(chat.name, store.names(), "notebook")
            note = f"; the sidecar's {chat.name!r} is another conversation, so the notebook's is kept as {other!r}"
            chat = EmbeddedChat(other, chat.history, chat.model_spec)
        else:
            note = f"; it continues the {have.message_count} saved messages"
    store.embedded[chat.name] = chat
    return (
        f"{chat.name}: {size_note(chat)}, history from the notebook's metadata{note}. It is evaluated when "
        "the conversation is first used (%%chat, the chat widget or the lmchat panel in the right sidebar)"
    )


def take(store: EmbeddedStore, chat: EmbeddedChat, conv: Conversation | None) -> Conversation | None:
    """Evaluate a waiting notebook history into its conversation (first use); the conversation to use."""
    if conv is not None and conv.history.user_message_count:
        found = relation(conv.history, chat.history)
        if found in (Relation.SAME, Relation.A_EXTENDS):
            return conv
        if found is Relation.DIVERGED:  # the conversation changed since the notebook opened
            other = free_name(chat.name, store.names(), "notebook")
            store.embedded[other] = EmbeddedChat(other, chat.history, chat.model_spec)
            store.notify(f"lmchat: the notebook's history of {chat.name!r} is another conversation; kept as {other!r}")
            return conv
        store.notify(f"lmchat: evaluating the notebook's newer turns of {chat.name!r} ({size_note(chat)})")
        conv.history.messages.extend(chat.history.messages[len(conv.history) :])
        conv.prefill(store.progress("Catching up"))
        how = "continued from the notebook's metadata"
    else:
        store.notify(f"lmchat: evaluating {chat.name!r} from the notebook's metadata ({size_note(chat)})")
        model = conv.model if conv is not None else store.model_for(None)
        conv = Conversation.from_history(model, chat.history, progress=store.progress(f"Re-reading {chat.name}"))
        how = "history from the notebook's metadata (evaluated again)"
    store.adopt(chat.name, conv)
    store.statuses[chat.name] = (
        f"{chat.name}: {conv.info.message_count} messages, {conv.info.token_count} tokens — {how}"
    )
    store.keep(chat.name, conv)
    return conv
