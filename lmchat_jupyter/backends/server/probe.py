"""Ask a server what it is: llama-server (full sessions through slot files) or any OpenAI-compatible endpoint.

llama-server answers ``GET /props`` with its slot layout and model; anything else that serves
``GET /v1/models`` is used as an OpenAI-compatible endpoint, whose conversations persist as history only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ...core.errors import ServerAuthError, ServerError, ServerUnreachableError
from .llama_client import LlamaServerClient
from .openai_client import OpenAICompatibleClient

__all__ = ["ServerTier", "probe_server"]


@dataclass(frozen=True)
class ServerTier:
    """What a server offers lmchat: ``kind`` (which backend runs on it), and what it serves (``fingerprint``)."""

    kind: Literal["llama-server", "openai"]
    url: str
    fingerprint: dict[str, Any]
    total_slots: int
    n_ctx: int


def probe_server(url: str, api_key: str | None = None) -> ServerTier:
    """The tier ``url`` offers; ServerUnreachableError, ServerAuthError or ServerError when it offers none."""
    llama = LlamaServerClient(url, api_key)
    try:
        props = llama.props()
    except (ServerUnreachableError, ServerAuthError):
        raise
    except ServerError:
        props = None
    if props is not None:
        fingerprint = {
            "server": "llama-server",
            "model": props.model_path.rsplit("/", 1)[-1],
            "model_path": props.model_path,
            "n_ctx": props.n_ctx_per_slot,
            "build_info": props.build_info,
        }
        return ServerTier("llama-server", llama.url, fingerprint, props.total_slots, props.n_ctx_per_slot)
    chat = OpenAICompatibleClient(url, api_key)
    try:
        models = chat.models()
    except (ServerUnreachableError, ServerAuthError):
        raise
    except ServerError as exc:
        raise ServerError(
            f"{chat.url} is neither llama-server (GET /props) nor an OpenAI-compatible server (GET /v1/models): {exc}"
        ) from None
    if not models:
        raise ServerError(f"{chat.url}/v1/models lists no model; load one on the server first")
    return ServerTier("openai", chat.url, {"server": "openai", "model": models[0]}, 0, 0)
