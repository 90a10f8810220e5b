"""Conversation events: what the magic, the widget and the frontend bridge listen to."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .history import Message

__all__ = ["ConversationEvent", "EventHub"]

log = logging.getLogger("lmchat")


@dataclass(frozen=True)
class ConversationEvent:
    """One change of a conversation. ``text`` is the token text for ``token`` and a note otherwise.

    ``kind``: turn_started (a user message was added), token (a piece of the answer), message_added,
    turn_finished, rewound, cleared, restored, model_changed; saved and save_failed from :class:`AutoSave`.
    """

    kind: str
    #: The Conversation that changed (typed loosely: this module sits below it).
    conversation: Any
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
