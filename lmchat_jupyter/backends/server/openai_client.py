"""A client for any OpenAI-compatible server (vLLM, Ollama, LM Studio, llama-cpp-python's, llama-server's).

Only what a chat needs: the served model names (``GET /v1/models``) and a streamed
``POST /v1/chat/completions``. The whole history goes with every request; the server's own prefix cache,
if it has one, is what spares re-reading it. A URL given with a trailing ``/v1`` works too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...core.errors import ServerError
from .http import HttpEndpoint, ended_early

__all__ = ["OpenAICompatibleClient", "ChatStream"]


@dataclass
class ChatStream:
    """A streamed chat answer: iterate it for text pieces; afterwards ``finish_reason``, ``usage`` and ``model``.

    ``usage`` holds the server's token counts when it sends them (``stream_options.include_usage``).
    """

    events: Iterator[dict[str, Any]]
    where: str
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    model: str | None = None

    def __iter__(self) -> Iterator[str]:
        for event in self.events:
            if isinstance(event.get("model"), str):
                self.model = event["model"]
            if isinstance(event.get("usage"), dict):
                self.usage = event["usage"]
            choices = event.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                continue
            choice = choices[0]
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                yield text
        if self.finish_reason is None:
            raise ended_early(self.where)

    def text(self) -> str:
        """Consume the whole stream and return its text."""
        return "".join(self)


class OpenAICompatibleClient:
    """``/v1/models`` and streamed ``/v1/chat/completions`` over one :class:`HttpEndpoint`."""

    def __init__(self, url: str, api_key: str | None = None, **timeouts: float) -> None:
        base = url.strip().rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        self.http = HttpEndpoint(base, api_key, **timeouts)

    @property
    def url(self) -> str:
        """The server's normalized base URL (without ``/v1``)."""
        return self.http.url

    def models(self) -> list[str]:
        """The ids of the models the server serves."""
        data = self.http.get_json("/v1/models")
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ServerError(f"{self.url}/v1/models is not an OpenAI-compatible model list")
        return [str(e["id"]) for e in entries if isinstance(e, dict) and "id" in e]

    def stream_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        **sampling: Any,
    ) -> ChatStream:
        """Stream the assistant's answer to ``messages``; ``sampling`` (temperature, seed, top_p…) goes as it is."""
        body: dict[str, Any] = {**sampling, "messages": [dict(m) for m in messages], "stream": True}
        if model is not None:
            body["model"] = model
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return ChatStream(self.http.stream_events("/v1/chat/completions", body), self.url)
