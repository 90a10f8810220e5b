"""What both server backends share: the conversation's tokens kept in the kernel, and an answer streamed for them.

Evaluating only records tokens here; the server reads them all when an answer is asked for. The token an
answer just handed out comes back through :meth:`ServerSequence.evaluate` (the engine keeps what it samples),
and then the answer goes on; anything else ends the answer under way first (:meth:`_end_answer`), as do
:meth:`cut` and :meth:`clear`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar

from ..interface import ServerReport
from .http import HttpEndpoint

__all__ = ["ServerSequence"]

log = logging.getLogger("lmchat")


class ServerSequence:
    """The token list and the answer bookkeeping of a backend on a server (``http``: its endpoint)."""

    #: The token that ends an answer.
    END: ClassVar[int]

    def __init__(self, http: HttpEndpoint) -> None:
        self.http = http
        #: The conversation whose tokens the sequence holds (set by the engine).
        self.label: str | None = None
        #: The tokens of the conversation held now: what the next answer's request carries.
        self.tokens: list[int] = []
        #: Why the server could not be used as expected, the last time that happened (None: it never did).
        self.notice: str | None = None
        self._report: ServerReport | None = None
        self._handed: int | None = None  # the token just handed out, which the engine evaluates next

    @property
    def api_key(self) -> str | None:
        return self.http.api_key

    @api_key.setter
    def api_key(self, key: str | None) -> None:
        self.http.api_key = key

    def last_report(self) -> ServerReport | None:
        return self._report

    def evaluate(self, tokens: Sequence[int]) -> None:
        if self._handed is not None and len(tokens) == 1 and tokens[0] == self._handed:
            self._handed = None  # the engine keeps the token just sampled: the answer goes on
        else:
            self._end_answer()
        self.tokens.extend(tokens)

    def is_end(self, token: int) -> bool:
        return token == self.END

    def cut(self, n_tokens: int) -> bool:
        self._end_answer()
        del self.tokens[n_tokens:]
        return True

    def clear(self) -> None:
        self._end_answer()
        self.tokens.clear()

    def top_logits(self, k: int) -> list[tuple[int, float]]:
        return []  # the logits stay on the server: a saved session carries none to check

    def _end_answer(self) -> None:
        """End the answer under way, if any (its request closes, or is read to its end)."""
        raise NotImplementedError

    def _tell(self, notice: str) -> None:
        self.notice = notice
        log.warning("lmchat: %s", notice)
