"""A client for llama.cpp's llama-server: model properties, slots, tokens, streamed completions, slot files.

Completions go as token ids with ``cache_prompt`` on and a fixed ``id_slot``: the server keeps the longest
common prefix of what the slot holds and evaluates only the rest, and the conversation never lands in a slot
that holds another one's text unless the caller sends it there. Slot files (``--slot-save-path``) hold a slot's
tokens and KV cache on the server's disk, under plain file names the caller chooses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...core.errors import ServerError, SlotStorageError
from .http import HttpEndpoint, ended_early

__all__ = ["LlamaServerClient", "ServerProps", "SlotInfo", "SlotFileResult", "CompletionStream", "SLOT_FILE_NAME"]

SLOT_ACTION_TIMEOUT = 120.0
SLOT_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


@dataclass(frozen=True)
class ServerProps:
    """What ``GET /props`` says about the loaded model: enough to tell whether a saved slot still fits."""

    model_path: str
    n_ctx_per_slot: int
    total_slots: int
    build_info: str
    chat_template: str
    bos_token: str
    eos_token: str

    @classmethod
    def from_json(cls, data: Any, where: str) -> ServerProps:
        """Parse a /props answer; ServerError when it is not llama-server's."""
        settings = data.get("default_generation_settings") if isinstance(data, dict) else None
        if not isinstance(settings, dict) or not isinstance(data.get("total_slots"), int):
            raise ServerError(f"{where}/props is not llama-server's (no total_slots / default_generation_settings)")
        return cls(
            model_path=str(data.get("model_path", "")),
            n_ctx_per_slot=int(settings.get("n_ctx", 0)),
            total_slots=int(data["total_slots"]),
            build_info=str(data.get("build_info", "")),
            chat_template=str(data.get("chat_template", "")),
            bos_token=str(data.get("bos_token", "")),
            eos_token=str(data.get("eos_token", "")),
        )


@dataclass(frozen=True)
class SlotInfo:
    """One slot from ``GET /slots``: ``last_task`` is the id of the newest request it ran (ids only grow)."""

    id: int
    n_ctx: int
    is_processing: bool
    n_tokens: int
    last_task: int | None

    @classmethod
    def from_json(cls, data: Any) -> SlotInfo:
        """One entry of a /slots answer."""
        task = data.get("id_task")
        return cls(
            id=int(data["id"]),
            n_ctx=int(data.get("n_ctx", 0)),
            is_processing=bool(data.get("is_processing")),
            n_tokens=int(data.get("n_prompt_tokens", 0)),
            last_task=int(task) if isinstance(task, int) else None,
        )


@dataclass(frozen=True)
class SlotFileResult:
    """What a slot save or restore did: tokens and bytes moved, and the server's own time for it."""

    id_slot: int
    filename: str
    n_tokens: int
    n_bytes: int
    ms: float


@dataclass
class CompletionStream:
    """A streamed completion: iterate it for text pieces; afterwards ``tokens`` and ``final`` are complete.

    ``final`` is the server's last event (``stop_type``, ``tokens_cached``, ``tokens_evaluated``, ``timings``);
    it stays empty when the consumer stopped early.
    """

    events: Iterator[dict[str, Any]]
    where: str
    tokens: list[int] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[str]:
        for event in self.events:
            pieces = event.get("tokens")
            if isinstance(pieces, list):
                self.tokens.extend(int(t) for t in pieces)
            text = event.get("content")
            if event.get("stop"):
                self.final = event
            if isinstance(text, str) and text:
                yield text
        if not self.final:
            raise ended_early(self.where)

    def text(self) -> str:
        """Consume the whole stream and return its text."""
        return "".join(self)


class LlamaServerClient:
    """The llama-server API lmchat uses, over one :class:`HttpEndpoint`."""

    def __init__(self, url: str, api_key: str | None = None, **timeouts: float) -> None:
        self.http = HttpEndpoint(url, api_key, **timeouts)

    @property
    def url(self) -> str:
        """The server's normalized base URL."""
        return self.http.url

    def is_ready(self) -> bool:
        """True when the model is loaded (``/health`` 200); False while it loads; ServerError when unreachable."""
        try:
            self.http.get_json("/health")
        except ServerError as exc:
            if exc.status == 503:
                return False
            raise
        return True

    def props(self) -> ServerProps:
        """The loaded model and the slot layout."""
        return ServerProps.from_json(self.http.get_json("/props"), self.url)

    def n_vocab(self) -> int:
        """The model's vocabulary size (``meta.n_vocab`` in ``/v1/models``)."""
        data = self.http.get_json("/v1/models")
        models = data.get("data") if isinstance(data, dict) else None
        meta = models[0].get("meta") if isinstance(models, list) and models and isinstance(models[0], dict) else None
        n_vocab = meta.get("n_vocab") if isinstance(meta, dict) else None
        if not isinstance(n_vocab, int) or n_vocab <= 0:
            raise ServerError(f"{self.url}/v1/models does not give the model's vocabulary size (meta.n_vocab)")
        return n_vocab

    def slots(self) -> list[SlotInfo]:
        """Every slot and whether it is busy (a server started with --no-slots answers ServerError 501)."""
        data = self.http.get_json("/slots")
        if not isinstance(data, list):
            raise ServerError(f"{self.url}/slots answered {type(data).__name__}, not a list of slots")
        try:
            return [SlotInfo.from_json(s) for s in data]
        except (KeyError, TypeError, ValueError):
            raise ServerError(f"{self.url}/slots answered slots without ids; is it llama-server?") from None

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = True) -> list[int]:
        """The server model's tokens for ``text`` (special tokens such as <|im_start|> parsed by default)."""
        data = self.http.post_json(
            "/tokenize", {"content": text, "add_special": add_special, "parse_special": parse_special}
        )
        return [int(t) for t in data["tokens"]]

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``."""
        return str(self.http.post_json("/detokenize", {"tokens": list(tokens)})["content"])

    def apply_template(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The server's chat template applied to ``messages`` (ending with the assistant's opening)."""
        return str(self.http.post_json("/apply-template", {"messages": list(messages)})["prompt"])

    def stream_completion(
        self, tokens: Sequence[int], *, id_slot: int, n_predict: int, **sampling: Any
    ) -> CompletionStream:
        """Evaluate ``tokens`` in slot ``id_slot`` (reusing its cached prefix) and stream up to ``n_predict`` tokens.

        ``sampling`` goes to the server as it is (temperature, seed, top_k, top_p, min_p, repeat_penalty, stop…).
        ``n_predict=0`` only evaluates the prompt into the slot.
        """
        body: dict[str, Any] = {
            **sampling,
            "prompt": list(tokens),
            "id_slot": id_slot,
            "n_predict": n_predict,
            "cache_prompt": True,
            "stream": True,
            "return_tokens": True,
        }
        return CompletionStream(self.http.stream_events("/completion", body), self.url)

    def save_slot(self, id_slot: int, filename: str) -> SlotFileResult:
        """Write slot ``id_slot`` (tokens + KV cache) to ``filename`` in the server's --slot-save-path."""
        return self._slot_action(id_slot, "save", filename)

    def restore_slot(self, id_slot: int, filename: str) -> SlotFileResult:
        """Load ``filename`` into slot ``id_slot``; SlotStorageError when the server refuses (missing, unusable)."""
        return self._slot_action(id_slot, "restore", filename)

    def erase_slot(self, id_slot: int) -> int:
        """Forget what slot ``id_slot`` holds; returns the number of tokens erased."""
        data = self._post_slot(id_slot, "erase", {})
        return int(data.get("n_erased", 0))

    def _slot_action(self, id_slot: int, action: str, filename: str) -> SlotFileResult:
        if not SLOT_FILE_NAME.fullmatch(filename) or ".." in filename:
            raise SlotStorageError(f"{filename!r} is not a plain slot file name (letters, digits, . _ -)")
        data = self._post_slot(id_slot, action, {"filename": filename})
        n_tokens = data.get("n_saved" if action == "save" else "n_restored", 0)
        n_bytes = data.get("n_written" if action == "save" else "n_read", 0)
        ms = (data.get("timings") or {}).get(f"{action}_ms", 0.0)
        return SlotFileResult(id_slot, filename, int(n_tokens), int(n_bytes), float(ms))

    def _post_slot(self, id_slot: int, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            # Bounded: llama-server defers a slot action while the slot is busy, and may leave it waiting.
            data = self.http.post_json(f"/slots/{int(id_slot)}?action={action}", body, read_timeout=SLOT_ACTION_TIMEOUT)
        except ServerError as exc:
            if exc.status in (400, 404, 500, 501):
                raise SlotStorageError(
                    f"llama-server at {self.url} refused to {action} slot {id_slot}: {exc}", exc.status
                ) from None
            raise
        if not isinstance(data, dict):
            raise ServerError(f"{self.url}/slots answered {type(data).__name__} to {action}, not an object")
        return data
