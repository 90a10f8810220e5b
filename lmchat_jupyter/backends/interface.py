"""The seam between the conversation engine and a model runtime: one sequence of tokens, held by the runtime.

The engine (``kvcache``, ``conversation``, ``session``, ``rendering``) talks to a runtime only through
:class:`Backend`, and asks its :class:`Capabilities` what it can do rather than which class it is;
``local.llama.LlamaBackend`` implements it on llama.cpp in this process, ``server/`` on inference servers.
Which runtime a model spec names is ``registry``'s to say.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from ..core.results import GenerationOptions

__all__ = [
    "Backend",
    "Capabilities",
    "Persistence",
    "CacheOwner",
    "Sampler",
    "ServerBackend",
    "ServerReport",
    "on_server",
    "DeltaStates",
    "delta_states",
]

#: Picks the next token from the logits of the last evaluated position.
Sampler = Callable[[], int]


class Persistence(Enum):
    """What of a conversation a saved session keeps, beside its history."""

    #: The KV state itself, in the session file: a restore evaluates nothing again.
    FULL_SESSION = "full session"
    #: The KV state in a file the server keeps (a llama-server slot file); the session names it.
    SERVER_SLOT = "server slot file"
    #: The history alone: a restore has the model read it again.
    HISTORY_ONLY = "history only"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, for the layers above to ask instead of checking its class."""

    persistence: Persistence
    #: Tokens are the model's own (False: units of lmchat's own; the server counts its own tokens).
    model_tokens: bool = True
    #: The model runs in this process: :meth:`Backend.evaluate` is work worth a progress bar, and an answer
    #: stops at ``max_tokens`` counted here. False where evaluating only records tokens for a server, which
    #: reads them with the next answer and stops that answer itself.
    evaluates_here: bool = True


class Backend(Protocol):
    """A runtime that holds one sequence's KV cache: positions ``0 .. n-1`` for the tokens evaluated so far."""

    #: What this backend can do (persistence tier, token access, where evaluation happens).
    capabilities: Capabilities

    #: The id of the conversation whose tokens the sequence holds, set by the engine whenever another
    #: conversation takes the backend: a runtime that keeps states outside the process names them after it.
    label: str | None

    @property
    def n_ctx(self) -> int:
        """How many positions the sequence can hold."""

    @property
    def n_batch(self) -> int:
        """The most tokens one :meth:`evaluate` call takes."""

    @property
    def n_vocab(self) -> int:
        """Token ids run from 0 to ``n_vocab - 1``."""

    def describe(self) -> dict[str, Any]:
        """The compatibility fingerprint: everything a saved state depends on (model file, settings, versions)."""

    def format_chat(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        """The messages rendered with the model's chat template."""

    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text``, special tokens parsed, no BOS added (the template writes its own)."""

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        """The bytes the tokens stand for (special tokens written out with ``special``)."""

    def evaluate(self, tokens: Sequence[int]) -> None:
        """Append ``tokens`` (at most ``n_batch``) to the sequence; the logits of the last one become current."""

    def sampler(self, options: GenerationOptions) -> Sampler:
        """A sampler with these settings (its seed set), reading the current logits."""

    def is_end(self, token: int) -> bool:
        """Whether ``token`` ends a turn (end of generation)."""

    def cut(self, n_tokens: int) -> bool:
        """Keep the first ``n_tokens`` positions; False if what is left is unusable (then :meth:`clear`)."""

    def clear(self) -> None:
        """Empty the sequence."""

    def top_logits(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` best (token, logit) pairs of the last evaluated position, best first."""

    def state_size(self) -> int:
        """Bytes :meth:`export_state` needs."""

    def export_state(self, buffer: bytearray | memoryview, offset: int = 0) -> int:
        """Copy the sequence's state into ``buffer[offset:]``; returns the bytes written."""

    def import_state(self, data: bytes | memoryview, tokens: Sequence[int]) -> bool:
        """Load a state exported for ``tokens`` into the emptied sequence; False (sequence empty) if refused."""


@runtime_checkable
class DeltaStates(Protocol):
    """Optional: a backend that can take the state of the positions from one point on alone, and add
    such a state back after the positions it holds (what lets a save append only what a turn added).
    A backend without it is saved whole every time."""

    @property
    def deltas_supported(self) -> bool:
        """Whether this backend, as loaded, can do it (a llama.cpp context with a scratch sequence)."""

    def export_delta(self, first: int) -> memoryview:
        """The state of positions ``first ..`` to the end alone (empty when there are none)."""

    def import_delta(self, data: bytes | memoryview, tokens: Sequence[int]) -> bool:
        """Add a state exported by :meth:`export_delta` after the positions held now, which brings them to
        ``tokens``; False (the positions held before unchanged) if refused."""


def delta_states(backend: object) -> DeltaStates | None:
    """``backend`` where it can take and add back the states of later positions alone; else None."""
    if isinstance(backend, DeltaStates) and backend.deltas_supported:
        return backend
    return None


class CacheOwner(Protocol):
    """Whoever's tokens a backend holds now; asked to keep them aside before another takes the backend."""

    def park(self) -> None:
        """Copy the tokens' state out of the backend, to bring it back later."""


@dataclass(frozen=True)
class ServerReport:
    """What a server said about the answer it last streamed; None where it did not say."""

    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str | None = None  #: "stop" or "length" (the server's own max_tokens)


@runtime_checkable
class ServerBackend(Protocol):
    """A :class:`Backend` whose answers come from a server that reads the whole conversation when asked.

    What only a server can tell, beside its :class:`Capabilities` (``evaluates_here`` False: evaluating
    records tokens, and the server limits an answer to ``max_tokens`` in its own tokens).
    """

    def persistence(self) -> str:
        """How a conversation on it persists, for the user: ``history-only (server: …)``."""

    def last_report(self) -> ServerReport | None:
        """The server's figures for the answer just finished (None: none, or it was cut short)."""


def on_server(backend: Backend) -> ServerBackend | None:
    """``backend`` as a :class:`ServerBackend`, or None for a runtime in this process."""
    return backend if isinstance(backend, ServerBackend) else None
