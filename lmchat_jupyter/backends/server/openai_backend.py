"""A backend on any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, Ollama, LM Studio, llama-cpp-python).

Such a server gives no access to tokens, so the tokens are lmchat's own (:mod:`text_units`): the messages
rendered as records, up to three bytes a unit. :meth:`OpenAIBackend.evaluate` only records them; the first
:meth:`~OpenAIBackend.sampler` call of an answer reads the messages back from them and streams one chat
completion, whose text is then handed out a unit per call, the end of the stream as :data:`END`.
Persistence is history-only: there is no state to save, so a restored conversation is its history (which
costs nothing to evaluate here), and the server reads it again with the next answer unless it caches
prompts itself.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from typing import Any

from ...core import interrupts
from ...core.errors import ServerError, ServerModelError
from ...core.results import GenerationOptions
from ..interface import Capabilities, Persistence, Sampler, ServerReport
from .openai_client import ChatStream, OpenAICompatibleClient
from .probe import ServerTier
from .sequence import ServerSequence
from .text_units import N_UNITS, decode_units, encode_units, read_chat, render_chat

__all__ = ["OpenAIBackend", "END", "UNITS_PER_SERVER_TOKEN", "DEFAULT_N_CTX"]

#: The unit that ends an answer.
END = N_UNITS
#: A server's context in units: a token is rarely more than six bytes of text (two units). Erring large lets
#: the server say when a conversation no longer fits (ServerContextTooSmallError) rather than lmchat guess.
UNITS_PER_SERVER_TOKEN = 2
#: Where the server does not say its context: as many units as the largest history lmchat reads.
DEFAULT_N_CTX = 1 << 24


class OpenAIBackend(ServerSequence):
    """A :class:`~lmchat_jupyter.backends.interface.Backend` (and ``ServerBackend``) on the endpoint ``tier`` describes."""

    capabilities = Capabilities(Persistence.HISTORY_ONLY, model_tokens=False, evaluates_here=False)

    END = END

    def __init__(self, tier: ServerTier, api_key: str | None = None) -> None:
        self.tier = tier
        self.client = OpenAICompatibleClient(tier.url, api_key)
        super().__init__(self.client.http)
        self.model_id = str(tier.fingerprint["model"])
        self.name = self.model_id
        self._answer: Generator[int, None, None] | None = None
        self._stream: ChatStream | None = None
        self._empty_answer = False  # the server's answer ended before a single event

    # --- facts ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server's base address."""
        return self.tier.url

    @property
    def model_file(self) -> str:
        """The model's name for people: its id in ``/v1/models`` without a path (llama-cpp-python's server
        names a model by its file's whole path)."""
        return self.model_id.rstrip("/").rsplit("/", 1)[-1] or self.model_id

    @property
    def context_known(self) -> bool:
        """Whether the server said how large its context is (else ``n_ctx`` is only a ceiling of lmchat's)."""
        return self.tier.n_ctx > 0

    @property
    def n_ctx(self) -> int:
        return self.tier.n_ctx * UNITS_PER_SERVER_TOKEN if self.tier.n_ctx > 0 else DEFAULT_N_CTX

    @property
    def n_batch(self) -> int:
        return self.n_ctx  # evaluating only records tokens: one call takes them all

    @property
    def n_vocab(self) -> int:
        return N_UNITS + 1

    def describe(self) -> dict[str, Any]:
        return {
            "server": "openai",
            "url": self.tier.url,
            "model": self.model_id,
            "model_name": self.model_file,  # what a refused restore's message calls the model
            "tier": "history-only",
        }

    def persistence(self) -> str:
        return f"history-only (server: OpenAI-compatible at {self.tier.url}, model {self.model_file})"

    # --- text -----------------------------------------------------------------------------------

    def format_chat(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return render_chat(messages, generation_prompt)

    def tokenize(self, text: str) -> list[int]:
        return encode_units(text.encode("utf-8"))

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        return decode_units(tokens)

    # --- the answer -----------------------------------------------------------------------------

    def sampler(self, options: GenerationOptions) -> Sampler:
        self._end_answer()  # each answer is a request of its own

        def sample() -> int:
            if self._answer is None:
                self._answer = self._start(options)
            # Waiting for the server is the whole of an answer's time here: Ctrl-C ends the wait (the engine
            # then cuts the sequence back, which closes the stream, and so stops the server's generation).
            try:
                with interrupts.released():
                    unit = next(self._answer, END)
            except ServerError as exc:
                empty = self._empty_answer
                self._end_answer()
                raise self._explained(exc, empty) from None
            self._handed = None if unit == END else unit
            return unit

        return sample

    # --- state: none to keep --------------------------------------------------------------------

    def state_size(self) -> int:
        return 0

    def export_state(self, buffer: bytearray | memoryview, offset: int = 0) -> int:
        return 0

    def import_state(self, data: bytes | memoryview, tokens: Sequence[int]) -> bool:
        return False  # the engine evaluates the tokens again, which here only records them

    def _start(self, options: GenerationOptions) -> Generator[int, None, None]:
        self._report = None
        messages = read_chat(decode_units(self.tokens).decode("utf-8", errors="replace"))
        sampling: dict[str, Any] = {"temperature": options.temperature, "top_p": options.top_p}
        if options.seed is not None:
            sampling["seed"] = options.seed
        # The request goes out at the first unit asked for.
        self._stream = self.client.stream_chat(
            messages,
            model=self.model_id,
            max_tokens=options.max_tokens,
            stream_options={"include_usage": True},
            **sampling,
        )
        self._stream.events = self._watched(self._stream.events)
        return self._units(self._stream)

    def _watched(self, events: Iterator[dict[str, Any]]) -> Generator[dict[str, Any], None, None]:
        self._empty_answer = False
        seen = 0
        try:
            for event in events:
                seen += 1
                yield event
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # the connection closes now, even when the answer is abandoned
        self._empty_answer = seen == 0

    def _units(self, stream: ChatStream) -> Generator[int, None, None]:
        pieces = 0
        for piece in stream:
            pieces += 1
            yield from encode_units(piece.encode("utf-8"))
        usage = stream.usage
        details = usage.get("prompt_tokens_details")
        completion = _count(usage.get("completion_tokens"))
        self._report = ServerReport(
            # Without the server's count (llama-cpp-python sends none while streaming): the pieces, one token
            # each where a server streams token by token (llama-cpp-python's and llama-server do).
            completion_tokens=pieces if completion is None else completion,
            prompt_tokens=_count(usage.get("prompt_tokens")),
            cached_tokens=_count(details.get("cached_tokens")) if isinstance(details, dict) else None,
            finish_reason=stream.finish_reason,
        )

    def _end_answer(self) -> None:
        """End the answer being streamed, if any: its connection closes, and the server stops generating."""
        answer, stream = self._answer, self._stream
        self._answer = self._stream = None
        self._handed = None
        if answer is not None:
            answer.close()
        close = getattr(stream.events, "close", None) if stream is not None else None
        if close is not None:
            close()

    def _explained(self, exc: ServerError, empty: bool) -> ServerError:
        """``exc``, or what it means: :class:`ServerModelError` where the refusal comes from a model the server
        no longer has; an answer that ended before it began is a refusal that gives no reason."""
        if empty:
            return ServerError(
                f"{self.tier.url} ended its answer before it began, without a reason; llama-cpp-python's server "
                "does so for a conversation that does not fit in its context (--n_ctx). Drop turns "
                "(`%chat rewind N`), start a new conversation or give the server a larger context; the "
                "conversation is kept"
            )
        if exc.status not in (400, 404):
            return exc
        try:
            served = self.client.models()
        except ServerError:
            return exc
        if self.model_id in served:
            return exc
        return ServerModelError(
            f"{self.tier.url} does not serve {self.model_id!r} any more (it serves: {', '.join(served) or 'nothing'}). "
            f"Load {self.model_id} on the server, or run `%%chat --model {self.tier.url}` again to use what it serves "
            "now; the conversation is kept",
            exc.status,
        )


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
