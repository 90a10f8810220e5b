"""Which runtime a model spec names, and how its backend is made: the one place that maps specs to backends.

* nothing, a path or ``hf:OWNER/REPO/FILE.gguf`` (:mod:`.specs`): a :class:`LocalTarget`, a GGUF file
  that llama.cpp runs in this process (llama_cpp loads when the first one is opened);
* ``http://…`` / ``https://…``: a :class:`ServerTarget`; connecting asks the server what it is
  (``server.probe``) and :data:`SERVER_KINDS` makes the backend for that kind: llama-server (full
  sessions through slot files) or any OpenAI-compatible endpoint (history only).

Nothing of a runtime is imported before its backend is made. ``load_model`` keeps the loaded models.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .specs import resolve_model_path, server_address

if TYPE_CHECKING:
    from .local.llama import LlamaBackend
    from .server.llama_backend import LlamaServerBackend
    from .server.openai_backend import OpenAIBackend
    from .server.probe import ServerTier

    ServerSide = LlamaServerBackend | OpenAIBackend

__all__ = ["LocalTarget", "ServerTarget", "SERVER_KINDS", "target"]


@dataclass(frozen=True)
class LocalTarget:
    """A GGUF file to run with llama.cpp in this process, as ``spec`` names it."""

    spec: str | os.PathLike[str] | None

    @functools.cached_property
    def path(self) -> Path:
        """The file (found, or downloaded from the Hub, when first asked): ModelNotFoundError or ModelLoadError
        when the spec names no usable GGUF."""
        return resolve_model_path(self.spec)

    @property
    def key(self) -> str:
        """The file, however it was named: a model loaded from it once is shared."""
        return str(self.path.resolve())

    def open(self, n_ctx: int | None, settings: dict[str, Any]) -> LlamaBackend:
        """The file loaded with ``n_ctx`` positions (None: the default) and ``settings`` (``ModelSettings``'
        fields, thread counts resolved); ModelLoadError when llama.cpp cannot load it."""
        from .local import open_backend

        return open_backend(self.path, n_ctx, settings)


@dataclass(frozen=True)
class ServerTarget:
    """An inference server at ``url`` (its canonical form: ``http://host:port[/path]``)."""

    url: str

    @property
    def key(self) -> str:
        """The server: a model connected to it once is shared."""
        return self.url

    def connect(self, api_key: str | None) -> ServerSide:
        """The backend for what the server turns out to be; ServerError (a subclass saying why) when it is none."""
        from .server.probe import probe_server

        tier = probe_server(self.url, api_key)
        return SERVER_KINDS[tier.kind](tier, api_key)


def _llama_server(tier: ServerTier, api_key: str | None) -> ServerSide:
    from .server.llama_backend import LlamaServerBackend

    return LlamaServerBackend.connect(tier.url, api_key)


def _openai(tier: ServerTier, api_key: str | None) -> ServerSide:
    from .server.openai_backend import OpenAIBackend

    return OpenAIBackend(tier, api_key)


#: The backend for each kind of server ``probe_server`` tells apart.
SERVER_KINDS: dict[str, Callable[[ServerTier, str | None], ServerSide]] = {
    "llama-server": _llama_server,
    "openai": _openai,
}


def target(spec: str | os.PathLike[str] | None) -> LocalTarget | ServerTarget:
    """What ``spec`` names (nothing: ``$LMCHAT_MODEL``, else the embedded default model). Nothing is looked
    up yet: a local file when its ``path`` is first asked for; a server address is only checked for its form
    (ServerError)."""
    url = server_address(spec)
    if url is not None:
        from .server.http import HttpEndpoint

        return ServerTarget(HttpEndpoint(url).url)
    return LocalTarget(spec)
