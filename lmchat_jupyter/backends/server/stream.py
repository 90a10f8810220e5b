"""The tokens of one streamed llama-server ``/completion``, handed out one at a time with the text each adds.

llama-server sends one event per sampled token (``return_tokens``: its id, ``content``: the text it adds) and
a last event with ``stop: true``. Two of its habits need care here:

* the end-of-generation token is sent like any other, with no text, before the last event says ``stop_type:
  eos``; so a token without text is handed out only once the next event shows it was not the end;
* a token that leaves a UTF-8 character unfinished is not sent at all: its text comes with the next one. The
  gap shows in the count of generated tokens (``tokens_predicted``); the text of the event that closes it is
  tokenized again, so the tokens handed out stand for exactly the text handed out (they may split it
  differently from the model: the server then keeps the prefix before the split and reads the rest again).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .http import ended_early

__all__ = ["TokenStream", "END"]

#: What :meth:`TokenStream.next` hands out at the end of the answer (no token has a negative id).
END = -1


class TokenStream:
    """``events`` of a streamed completion as ``(token, text bytes)`` pairs; ``final`` is the last event."""

    def __init__(self, events: Iterator[dict[str, Any]], where: str, tokenize: Callable[[str], list[int]]) -> None:
        self._events = events
        self._where = where
        self._tokenize = tokenize
        self._ready: deque[tuple[int, bytes]] = deque()
        self._peeked: dict[str, Any] | None = None
        self._generated = 0  # the server's count of generated tokens at the last event
        #: The server's last event (``stop_type``, ``tokens_cached``, ``timings``); None until it came.
        self.final: dict[str, Any] | None = None
        #: Tokens handed out so far.
        self.handed_out = 0

    @property
    def done(self) -> bool:
        """Whether the last event has come and every token before it was handed out."""
        return self.final is not None and not self._ready and self._peeked is None

    def next(self) -> tuple[int, bytes]:
        """The next token and the bytes of text it adds; ``(END, b"")`` once the answer is over."""
        while not self._ready:
            event = self._take()
            if event is None:
                return END, b""
            tokens = event.get("tokens")
            if not isinstance(tokens, list) or not tokens:
                continue  # an event that carries no token (the stream's opening)
            text = str(event.get("content") or "")
            count = event.get("tokens_predicted")
            skipped = count - self._generated - 1 if isinstance(count, int) else 0
            self._generated = count if isinstance(count, int) else self._generated + 1
            ids = [int(tokens[-1])]
            if skipped > 0 and text:
                ids = self._tokenize(text) or ids
            if not text and self._ends_here():
                return END, b""
            self._ready.extend((t, b"") for t in ids[:-1])
            self._ready.append((ids[-1], text.encode("utf-8")))
        self.handed_out += 1
        return self._ready.popleft()

    def drain(self) -> None:
        """Read up to the last event (the server stops by itself: the answer reached its length)."""
        while self.final is None:
            self._ready.clear()
            if self._take() is None:
                break
        self._ready.clear()

    def close(self) -> None:
        """Stop reading: the connection closes, which tells the server to stop generating."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    def _ends_here(self) -> bool:
        """Whether the event after a token without text is the last one, saying the token ended the answer."""
        following = self._take()
        if following is None:
            return (self.final or {}).get("stop_type") == "eos"
        self._peeked = following
        return False

    def _take(self) -> dict[str, Any] | None:
        """The next event that is not the last one; None once the last one came (kept in ``final``)."""
        if self._peeked is not None:
            event, self._peeked = self._peeked, None
            return event
        if self.final is not None:
            return None
        for event in self._events:
            if event.get("stop"):
                self.final = event
                return None
            return event
        raise ended_early(self._where)
