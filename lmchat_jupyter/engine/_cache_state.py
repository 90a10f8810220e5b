"""What a KV cache holds, in the conversation's terms: its tokens, the text they stand for, and checkpoints.

A checkpoint ``(text length, token count)`` marks a message boundary: the cache cuts back to one
when a new render no longer starts with the cached text. A :class:`KeptPrefix` is how much of the
cache a save relies on still being there; every cut lowers those handed out.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

__all__ = ["EngineState", "KeptPrefix", "KeptPrefixes"]


@dataclass
class EngineState:
    """What the KV cache holds, in the conversation's terms; saved beside the raw KV bytes."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    checkpoints: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])

    def cut(self, text_len: int, n_tokens: int) -> None:
        """Keep the first ``n_tokens`` tokens, standing for the first ``text_len`` characters."""
        self.text = self.text[:text_len]
        del self.tokens[n_tokens:]
        self.checkpoints = [c for c in self.checkpoints if c[1] <= n_tokens and c[0] <= text_len]
        if self.checkpoints[-1] != (text_len, n_tokens):
            self.checkpoints.append((text_len, n_tokens))

    def mark(self) -> None:
        """Checkpoint the current end (a message boundary)."""
        point = (len(self.text), len(self.tokens))
        if self.checkpoints[-1] != point:
            self.checkpoints.append(point)


class KeptPrefix:
    """How many leading tokens of a cache have stayed as they were (KV bytes included) since it was taken.

    A save keeps one: the next save may append only what follows a prefix that is still there.
    """

    __slots__ = ("n", "__weakref__")

    def __init__(self, n: int) -> None:
        self.n = n


class KeptPrefixes:
    """The :class:`KeptPrefix` objects one cache handed out (held weakly: a save that is gone needs none)."""

    def __init__(self) -> None:
        self._handed_out: weakref.WeakSet[KeptPrefix] = weakref.WeakSet()

    def take(self, n_tokens: int) -> KeptPrefix:
        """A new :class:`KeptPrefix` of ``n_tokens``, lowered by every later :meth:`cut`."""
        kept = KeptPrefix(n_tokens)
        self._handed_out.add(kept)
        return kept

    def cut(self, n_tokens: int) -> None:
        """The positions from ``n_tokens`` on were dropped or computed again."""
        for kept in self._handed_out:
            kept.n = min(kept.n, n_tokens)
