"""Ask a server what it is: llama-server (full sessions through slot files) or any OpenAI-compatible endpoint.

llama-server answers ``GET /props`` with its slot layout and model; anything else that serves
``GET /v1/models`` is used as an OpenAI-compatible endpoint, whose conversations persist as history only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .errors import ServerAuthError, ServerError, ServerUnreachableError
from .llama_server_client import LlamaServerClient
from .openai_client import OpenAICompatibleClient

__all__ = ["ServerTier", "probe_server"]


@dataclass(frozen=True)
class ServerTier:
    """What a server offers lmchat: ``kind``, the model ``fingerprint`` a session is bound to, and a message."""

    kind: Literal["llama-server", "openai"]
    url: str
    fingerprint: dict[str, Any]
    total_slots: int
    n_ctx: int

    @property
    def full_sessions(self) -> bool:
        """True where the KV cache itself is saved and restored (llama-server slot files)."""
        return self.kind == "llama-server"

    def describe(self) -> str:
        """One line for the user: which server, which model, which persistence tier."""
        if self.kind == "llama-server":
            return (
                f"llama-server at {self.url} ({self.fingerprint['model']}, {self.total_slots} slots of "
                f"{self.n_ctx} tokens): full sessions, the KV cache is saved on the server after each answer"
            )
        return (
            f"OpenAI-compatible server at {self.url} (model {self.fingerprint['model']}): history only, "
            "the server reads the history again after a restart unless it caches prompts itself"
        )


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
