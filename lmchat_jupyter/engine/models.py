"""Loaded models: one instance per file and settings (or per server) and process, on the backend the spec names.

Which backend that is, ``backends.registry`` says; llama.cpp loads with the first local model.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends.interface import Backend, CacheOwner, Persistence
from ..backends.registry import LocalTarget, ServerTarget, target
from ..backends.specs import HF_PREFIX, MODEL_ENV_VAR, resolve_model_path, server_address
from ..core.errors import ContextOverflowError, LmchatError, ServerContextTooSmallError
from .settings import KV_TYPES, ModelSettings, default_gpu_layers, default_threads

if TYPE_CHECKING:
    from ..backends.server.llama_backend import LlamaServerBackend
    from ..backends.server.openai_backend import OpenAIBackend

__all__ = [
    "ModelSettings",
    "Model",
    "ServerModel",
    "load_model",
    "model_name_for",
    "default_threads",
    "default_gpu_layers",
    "KV_TYPES",
]

_MODELS: dict[tuple[str, ModelSettings], Model] = {}
_MODELS_LOCK = threading.Lock()


class Model:
    """A loaded model and its backend, shared by every conversation that uses it.

    Only one conversation's tokens live in the backend at a time; ``lock`` serialises generations
    and ``owner`` is the cache (:class:`~lmchat_jupyter.engine.kvcache.KVCache`) whose tokens it holds.
    """

    def __init__(self, spec: str | None, path: Path, settings: ModelSettings, backend: Backend, name: str) -> None:
        self.spec = spec
        self.path = path
        self.settings = settings
        self.backend = backend
        self.lock = threading.RLock()
        self.owner: CacheOwner | None = None
        self.load_seconds = 0.0
        self.name = name

    def __repr__(self) -> str:
        return f"Model({self.name!r}, n_ctx={self.n_ctx}, path={str(self.path)!r})"

    @property
    def display_name(self) -> str:
        """The model as people call it: its file's name (``SmolLM2-135M-Instruct.Q4_1``).

        GGUF's ``general.name`` is often a converter's guess ("Smollm2 135M 8k Lc100K Mix1 Ep2"); the
        file name, which the Hub repository's files share, is the one users chose and recognise.
        """
        return self.path.name.removesuffix(".gguf")

    @property
    def llm(self) -> Any:
        """The ``llama_cpp.Llama`` under a local model (for tests and measurements; the engine uses ``backend``)."""
        return getattr(self.backend, "llm", None)

    @property
    def n_ctx(self) -> int:
        return self.backend.n_ctx

    @property
    def n_swa(self) -> int:
        """The sliding-window size of the model's attention (0: none)."""
        return int(getattr(self.backend, "n_swa", 0))

    @property
    def sha256(self) -> str:
        """The model file's SHA-256 (hashed once, at first use)."""
        return str(self.fingerprint()["model_sha256"])

    def fingerprint(self) -> dict[str, Any]:
        """Everything a saved KV state depends on; a session loads only where all of it matches."""
        return self.backend.describe()

    @property
    def context_known(self) -> bool:
        """Whether ``n_ctx`` is the model's own context (for a server that does not say, it is a ceiling of lmchat's)."""
        return True

    def context_overflow(self, needed: int) -> ContextOverflowError:
        """The error for a conversation that needs ``needed`` positions, more than the model has."""
        return ContextOverflowError(
            f"the conversation needs {needed:,} tokens but {self.name} was loaded with n_ctx="
            f"{self.n_ctx:,}. In a notebook: load it with a larger context (`%chat config --n-ctx N`), go back "
            "to an earlier turn (`%chat rewind N`), or go on from one in a copy (`%chat fork --at TURN`). In "
            "Python: load_model(n_ctx=N), or Conversation(..., context_policy='drop_oldest') to drop the oldest "
            "turns"
        )

    def describe(self) -> str:
        """``SmolLM2-135M-Instruct.Q4_1 (n_ctx=N)``: the name people know the model by (:attr:`display_name`)."""
        return f"{self.display_name} (n_ctx={self.n_ctx})"

    def describe_load(self) -> str:
        """``Loaded SmolLM2-135M-Instruct.Q4_1 (n_ctx=N) in 0.6 s``: what loading it took."""
        return f"Loaded {self.describe()} in {self.load_seconds:.1f} s"


class ServerModel(Model):
    """A model that runs on an inference server: ``spec`` is the server's address, ``path`` its model file's name.

    The settings of a model in the kernel do not apply (the server was started with its own).
    """

    def __init__(self, spec: str | None, backend: LlamaServerBackend | OpenAIBackend) -> None:
        name = backend.model_file.removesuffix(".gguf")
        super().__init__(spec, Path(backend.model_file), ModelSettings(n_gpu_layers=0), backend, name)
        self.server = backend
        self.url = backend.url

    def __repr__(self) -> str:
        return f"ServerModel({self.name!r}, n_ctx={self.n_ctx}, url={self.url!r})"

    @property
    def sha256(self) -> str:
        """Empty: the server does not say (its fingerprint names the model file and the llama.cpp build)."""
        return ""

    @property
    def context_known(self) -> bool:
        return bool(getattr(self.server, "context_known", True))

    @property
    def notice(self) -> str | None:
        """Why a saved slot could not be used or written on the server, the last time that happened."""
        return self.server.notice

    def set_api_key(self, api_key: str | None) -> None:
        """Send ``api_key`` from now on (None: ``$LMCHAT_API_KEY`` or none)."""
        from ..backends.server.http import api_key_from_env

        self.server.api_key = api_key if api_key is not None else api_key_from_env()

    def context_overflow(self, needed: int) -> ContextOverflowError:
        return ServerContextTooSmallError(
            f"the conversation needs {needed:,} tokens but the server at {self.url} gives a conversation "
            f"{self.n_ctx:,} (its context per slot). Give the server a larger context (llama-server: a "
            "larger -c, or fewer --parallel slots), go back to an earlier turn (`%chat rewind N`), or go on "
            "from one in a copy (`%chat fork --at TURN`); in Python, context_policy='drop_oldest' drops the "
            "oldest turns"
        )

    def describe(self) -> str:
        """``name (llama-server at URL, n_ctx=N, full sessions)``, or ``name (OpenAI-compatible server at URL,
        history-only)``."""
        if self.server.capabilities.persistence is Persistence.SERVER_SLOT:
            return f"{self.name} (llama-server at {self.url}, n_ctx={self.n_ctx}, full sessions)"
        return f"{self.name} (OpenAI-compatible server at {self.url}, history-only)"

    def describe_load(self) -> str:
        return f"Connected to {self.describe()} in {self.load_seconds:.1f} s"


def load_model(
    spec: str | os.PathLike[str] | None = None,
    settings: ModelSettings | None = None,
    *,
    reuse: bool = True,
    progress: bool | Callable[[str], None] = False,
    api_key: str | None = None,
    **overrides: Any,
) -> Model:
    """Load a model once per process: the embedded default, a ``.gguf`` path or ``hf:owner/repo/file.gguf``;
    or connect to the inference server a spec names (``http://HOST:PORT``, ``https://…``).

    A server's API key is ``api_key``, else ``$LMCHAT_API_KEY``; it is kept in memory only. A server
    model is one per address and process; ``settings`` do not apply to it.

    Settings come from ``settings`` and/or keyword overrides (``load_model(path, n_ctx=4096)``).
    Loading the same file with the same settings again returns the already loaded model, unless
    ``reuse=False`` asks for a separate instance.

    ``progress=True`` prints ``Loading file.gguf …`` and then ``Loaded SmolLM2-135M-Instruct.Q4_1 (n_ctx=N) in 0.6 s``
    (a Hub download shows huggingface_hub's own progress bar first); a callable receives those lines
    instead; an already loaded model is returned silently. llama.cpp's own log never reaches stderr:
    it goes to the ``lmchat_jupyter.llama`` logger.
    """
    report = _reporter(progress)
    where = target(spec)
    if isinstance(where, ServerTarget):
        return _connect(
            None if spec is None or str(spec).strip() == "" else str(spec).strip(), where, api_key, reuse, report
        )
    settings = replace(settings or ModelSettings(), **overrides)  # checked before the file is looked for
    return _load(None if spec is None else str(spec), where, settings, reuse, report)


def _load(
    spec: str | None, where: LocalTarget, settings: ModelSettings, reuse: bool, report: Callable[[str], None]
) -> Model:
    """The model in the file ``where`` names, loaded with ``settings`` unless it already is."""
    key = (where.key, settings)
    with _MODELS_LOCK:
        if reuse and key in _MODELS:
            return _MODELS[key]  # nothing to report: nothing was loaded
        report(f"Loading {where.path.name} …")
        start = time.perf_counter()
        llama_settings = asdict(settings)
        llama_settings["n_threads"], llama_settings["n_threads_batch"] = settings.threads()
        backend = where.open(settings.n_ctx, llama_settings)
        # Named as its file is, everywhere (``Loaded …``, conv.info, errors): general.name is a converter's guess.
        model = Model(spec, where.path, settings, backend, where.path.name.removesuffix(".gguf"))
        model.load_seconds = time.perf_counter() - start
        if reuse:
            _MODELS[key] = model
    report(model.describe_load())
    return model


_SERVERS: dict[str, ServerModel] = {}


def _connect(
    spec: str | None, where: ServerTarget, api_key: str | None, reuse: bool, report: Callable[[str], None]
) -> ServerModel:
    """The model on the server ``where`` names: what it is decides the backend (ServerError when it is none)."""
    with _MODELS_LOCK:
        known = _SERVERS.get(where.key) if reuse else None
        if known is not None:
            if api_key is not None:
                known.set_api_key(api_key)
            return known
        report(f"Connecting to {where.url} …")
        start = time.perf_counter()
        model = ServerModel(spec, where.connect(api_key))
        model.load_seconds = time.perf_counter() - start
        if reuse:
            _SERVERS[where.key] = model
    report(model.describe_load())
    return model


def _reporter(progress: bool | Callable[[str], None]) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress:
        return lambda line: print(line, flush=True)
    return lambda line: None


def model_name_for(spec: str | None) -> str:
    """The name ``Loaded …`` prints for the model ``spec`` names (None: the kernel's default), found without
    loading it or using the network; a Hub spec or a server address as written."""
    written = spec if spec is not None and spec.strip() else os.environ.get(MODEL_ENV_VAR, "").strip() or None
    if written is not None and (written.startswith(HF_PREFIX) or server_address(written) is not None):
        return written
    try:
        return resolve_model_path(written).name.removesuffix(".gguf")
    except LmchatError:
        return written or "the default model"
