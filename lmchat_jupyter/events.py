"""Conversation events: what the magic, the widget and the frontend bridge listen to."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .conversation import Conversation
    from .history import Message

__all__ = ["ConversationEvent", "EventHub", "EVENT_KINDS"]

log = logging.getLogger("lmchat")

#: turn_started (a user message was added), token (a piece of the answer), message_added,
#: turn_finished, rewound, cleared, restored, saved, save_failed, model_changed.
EVENT_KINDS = (
    "turn_started",
    "token",
    "message_added",
    "turn_finished",
    "rewound",
    "cleared",
    "restored",
    "saved",
    "save_failed",
    "model_changed",
)


@dataclass(frozen=True)
class ConversationEvent:
    """One change of a conversation. ``text`` is the token text for ``token`` and a note otherwise."""

    kind: str
    conversation: Conversation
    message: Message | None = None
    text: str = ""


Listener = Callable[[ConversationEvent], None]


class EventHub:
    """A list of listeners; a listener that raises is logged and never breaks a generation."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def emit(self, event: ConversationEvent) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                log.exception("lmchat listener %r failed on %s", listener, event.kind)
