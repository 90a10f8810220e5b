"""A conversation whose model runs on an inference server, kept across kernel restarts.

On llama-server (full sessions) every turn sends the whole conversation as tokens to one slot with prompt
caching on, so the server evaluates only what its slot does not hold yet and never answers from another
conversation's cache; after the answer the slot is saved to the conversation's own slot file. A conversation
resumed from its record (a new kernel) restores that file into a slot before its next turn, so the first
answer is as quick as in a conversation that never stopped. On any other OpenAI-compatible server the whole
history goes with every request (history-only persistence).

Whatever fails on the server, the conversation in memory stays as it was before the failed turn, and the
next turn tries again; a slot that cannot be restored, or a server that now runs another model, only costs
re-reading the history, and :attr:`ServerChat.notice` says why.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import asdict, replace
from typing import Any

from .errors import LmchatError, ServerError, SlotStorageError
from .history import ChatHistory, Message
from .llama_server_client import LlamaServerClient
from .openai_client import OpenAICompatibleClient
from .results import GenerationOptions, TurnResult
from .server_probe import ServerTier, probe_server
from .server_slots import SlotClaim, choose_slot, idle_slots, slot_file_name

__all__ = ["ServerChat", "RECORD_FORMAT"]

RECORD_FORMAT = 1
# The fingerprint fields a slot file depends on: the same model file and the same llama.cpp build.
_SLOT_COMPAT = ("server", "model_path", "build_info")


class ServerChat:
    """A chat with a model on a server at ``url`` (``http://HOST:PORT``); the API key from ``$LMCHAT_API_KEY``.

    >>> chat = ServerChat("http://127.0.0.1:8080", system="You are terse.")
    >>> chat.submit("Hi!").text
    >>> record = chat.record()          # JSON-ready: history, slot file name, server fingerprint
    >>> ServerChat.resume(record).submit("And then?")
    """

    def __init__(
        self,
        url: str,
        system: str | None = None,
        *,
        history: ChatHistory | None = None,
        options: GenerationOptions | None = None,
        api_key: str | None = None,
    ) -> None:
        self.tier: ServerTier = probe_server(url, api_key)
        self.history = history if history is not None else ChatHistory()
        if system is not None and self.history.system is None:
            self.history.messages.insert(0, Message("system", system))
        self.options = options or GenerationOptions()
        self.notice: str | None = None
        self.last_result: TurnResult | None = None
        self._api_key = api_key
        self.slot_file = slot_file_name(self.history.conversation_id, self.tier.url)
        #: Whether the slot file holds this conversation (False until the first answer on llama-server).
        self.slot_saved = False
        self._claim: SlotClaim | None = None
        # What the slot holds for this conversation: the rendered text and the tokens it stands for.
        self._text = ""
        self._tokens: list[int] = []
        self._llama = LlamaServerClient(self.tier.url, api_key) if self.tier.full_sessions else None
        self._openai = None if self.tier.full_sessions else OpenAICompatibleClient(self.tier.url, api_key)

    # --- persistence ----------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """What a sidecar keeps: the history, the server, its fingerprint and the slot file's name (no key)."""
        return {
            "format": RECORD_FORMAT,
            "url": self.tier.url,
            "tier": self.tier.kind,
            "fingerprint": self.tier.fingerprint,
            "slot_file": self.slot_file if self.slot_saved else None,
            "n_tokens": self.history.token_count,
            "history": self.history.to_json(),
        }

    @classmethod
    def resume(cls, record: dict[str, Any], *, api_key: str | None = None, url: str | None = None) -> ServerChat:
        """The conversation a :meth:`record` describes; its slot file is restored before the next turn.

        When the server now runs another model or llama.cpp build, or is no llama-server any more, the
        history is sent again instead and :attr:`notice` says why.
        """
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise LmchatError(f"not a server conversation record of format {RECORD_FORMAT}")
        chat = cls(url or str(record["url"]), history=ChatHistory.from_json(record["history"]), api_key=api_key)
        n_tokens = record.get("n_tokens")
        chat.history.token_count = n_tokens if isinstance(n_tokens, int) and n_tokens >= 0 else 0
        found = record.get("fingerprint")
        saved: dict[str, Any] = found if isinstance(found, dict) else {}
        slot_file = record.get("slot_file")
        if not chat.tier.full_sessions:
            chat.notice = f"resumed on {chat.tier.describe()}"
        elif not isinstance(slot_file, str):
            chat.notice = f"resumed on {chat.tier.describe()}; no saved slot yet, the history is sent again"
        elif any(saved.get(k) != chat.tier.fingerprint.get(k) for k in _SLOT_COMPAT):
            chat.notice = (
                f"the saved slot was made by {saved.get('server')} with {saved.get('model_path')} "
                f"({saved.get('build_info')}); the server now runs {chat.tier.fingerprint.get('model_path')} "
                f"({chat.tier.fingerprint.get('build_info')}). The history is sent again"
            )
        else:
            chat.slot_file, chat.slot_saved = slot_file, True
            chat.notice = f"resumed on {chat.tier.describe()}; its slot is restored before the next answer"
        return chat

    # --- turns ----------------------------------------------------------------------------------

    def submit(self, prompt: str, **options: Any) -> TurnResult:
        """Send ``prompt`` and wait for the whole answer."""
        for _ in self.stream(prompt, **options):
            pass
        assert self.last_result is not None
        return self.last_result

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        """Send ``prompt`` and yield the answer's text as it arrives; ``options`` override GenerationOptions.

        A ServerError leaves the history as it was before the turn (the next call tries again).
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the message is empty; write something to send")
        opts = replace(self.options, **options)
        user = Message("user", prompt)
        self.history.messages.append(user)
        try:
            if self._llama is not None:
                yield from self._llama_turn(opts)
            else:
                yield from self._openai_turn(opts)
        except BaseException:
            # No half turn: the history ends as it did before this prompt.
            while self.history.messages and self.history.messages[-1] is not user:
                self.history.messages.pop()
            self.history.messages.pop()
            raise

    def _sampling(self, opts: GenerationOptions) -> dict[str, Any]:
        return {k: v for k, v in asdict(opts).items() if k != "max_tokens" and v is not None}

    def _llama_turn(self, opts: GenerationOptions) -> Iterator[str]:
        assert self._llama is not None
        client, start = self._llama, time.perf_counter()
        target = client.apply_template(self.history.as_chat_messages())
        if self._text and target.startswith(self._text):
            tokens = self._tokens + client.tokenize(target[len(self._text) :])
        else:
            tokens = client.tokenize(target)
        slot = self._take_slot()
        stream = client.stream_completion(tokens, id_slot=slot, n_predict=opts.max_tokens, **self._sampling(opts))
        pieces: list[str] = []
        first = yield from _relay(stream, pieces)
        final = stream.final
        self._text, self._tokens = target + "".join(pieces), tokens + stream.tokens
        timings = final.get("timings") or {}
        finish = "length" if final.get("stop_type") == "limit" else "stop"
        self._finish(pieces, start, first, len(stream.tokens), finish, timings.get("prompt_n"), timings.get("cache_n"))
        self._save_slot(slot, len(self._tokens))

    def _take_slot(self) -> int:
        """A slot for this turn, with this conversation's saved state restored into it where needed."""
        assert self._llama is not None
        slots = idle_slots(self._llama)
        fallback = int(self.slot_file[7:15], 16) % max(1, self.tier.total_slots)
        slot, holds_it = choose_slot(slots, self._claim, fallback)
        if not holds_it and self.slot_saved:
            try:
                self._llama.restore_slot(slot, self.slot_file)
            except SlotStorageError as exc:
                self.slot_saved = False
                self.notice = f"the saved slot could not be restored ({exc}); the history is sent again"
            except ServerError as exc:
                self.notice = f"the saved slot was not restored in time ({exc}); the history is sent again"
        return slot

    def _save_slot(self, slot: int, n_tokens: int) -> None:
        """Save the slot to this conversation's file, unless another conversation took the slot first.

        llama-server runs the next request queued for a slot as soon as an answer ends; a save that came
        after it would write that other conversation into this one's file. So the save happens only while
        the slot is idle, and counts as this conversation's only if it wrote this conversation's number of
        tokens (the last sampled token is never evaluated). Otherwise the previous file stays: it still
        holds an earlier prefix of this conversation, and only the turns after it are read again.
        """
        assert self._llama is not None
        try:
            slots = {s.id: s for s in self._llama.slots()}
        except ServerError:
            slots = {}
        if slot in slots and slots[slot].is_processing:
            self._claim = None
            return
        try:
            saved = self._llama.save_slot(slot, self.slot_file)
        except SlotStorageError as exc:
            self.slot_saved = False
            self.notice = f"the slot was not saved ({exc}); after a restart the history is sent again"
            return
        except ServerError:
            self.slot_saved, self._claim = False, None  # a save that may still run later: do not trust the file
            return
        if saved.n_tokens not in (n_tokens - 1, n_tokens):
            self.slot_saved, self._claim = False, None  # the slot held another conversation by then
            return
        self.slot_saved = True
        try:
            last = next((s.last_task for s in self._llama.slots() if s.id == slot), None)
        except ServerError:
            last = None
        self._claim = SlotClaim(slot, last)

    def _openai_turn(self, opts: GenerationOptions) -> Iterator[str]:
        assert self._openai is not None
        start = time.perf_counter()
        stream = self._openai.stream_chat(
            self.history.as_chat_messages(),
            model=str(self.tier.fingerprint["model"]),
            max_tokens=opts.max_tokens,
            temperature=opts.temperature,
            top_p=opts.top_p,
            **({"seed": opts.seed} if opts.seed is not None else {}),
        )
        pieces: list[str] = []
        first = yield from _relay(stream, pieces)
        usage = stream.usage
        generated = int(usage.get("completion_tokens", len(pieces)))
        finish = "length" if stream.finish_reason == "length" else "stop"
        self._finish(pieces, start, first, generated, finish, usage.get("prompt_tokens"), None)

    def _finish(
        self,
        pieces: list[str],
        start: float,
        first: float | None,
        generated: int,
        finish: str,
        prompt_n: object,
        cache_n: object,
    ) -> None:
        end = time.perf_counter()
        first_at = first or end
        meta: dict[str, Any] = {} if finish == "stop" else {"finish_reason": finish}
        answer = Message("assistant", "".join(pieces), meta=meta)
        self.history.messages.append(answer)
        self.history.token_count = len(self._tokens)
        self.last_result = TurnResult(
            text=answer.content,
            message=answer,
            generated_tokens=generated,
            prompt_tokens=int(prompt_n) if isinstance(prompt_n, int) else 0,
            cached_tokens=int(cache_n) if isinstance(cache_n, int) else 0,
            time_to_first_token=first_at - start,
            tokens_per_second=(generated - 1) / (end - first_at) if generated > 1 and end > first_at else 0.0,
            total_seconds=end - start,
            finish_reason=finish,
        )


def _relay(stream: Iterable[str], pieces: list[str]) -> Generator[str, None, float | None]:
    """Hand on each piece of ``stream``, keeping it in ``pieces``; returns when the first one arrived."""
    first = None
    for piece in stream:
        first = first or time.perf_counter()
        pieces.append(piece)
        yield piece
    return first
