"""Loaded models: llama.cpp behind a small wrapper, one instance per file and settings per process."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backend import Backend, CacheOwner
from .errors import ContextOverflowError, ServerContextTooSmallError
from .llama_load import DEFAULT_N_CTX, KV_TYPES, barriers_sleep, gpu_offload, open_backend
from .model_specs import resolve_model_path, server_address

if TYPE_CHECKING:
    from .openai_backend import OpenAIBackend
    from .server_backend import LlamaServerBackend

__all__ = ["ModelSettings", "Model", "ServerModel", "load_model", "default_threads", "default_gpu_layers", "KV_TYPES"]

_FLOAT_KV_TYPES = ("f32", "f16", "bf16")


@dataclass(frozen=True)
class ModelSettings:
    """The llama.cpp settings that matter for chats and their saved sessions.

    ``n_ctx=None`` means 8192, capped by the model's training context. ``swa_full`` keeps the whole
    sliding-window cache, which makes rewinds and restores of sliding-window models (Gemma 3) exact.
    ``n_threads`` (generation) and ``n_threads_batch`` (prompt evaluation) default to
    :func:`default_threads`; ``n_threads`` alone sets both. ``n_gpu_layers`` (-1: every layer) defaults
    to :func:`default_gpu_layers`: all of them where llama-cpp-python was built with a GPU backend.
    """

    n_ctx: int | None = None
    n_batch: int = 512
    n_threads: int | None = None
    n_threads_batch: int | None = None
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = False
    n_gpu_layers: int = field(default_factory=lambda: default_gpu_layers())
    swa_full: bool = True

    def __post_init__(self) -> None:
        for name in ("type_k", "type_v"):
            if getattr(self, name) not in KV_TYPES:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(KV_TYPES)}")
        if self.type_v not in _FLOAT_KV_TYPES and not self.flash_attn:
            # llama.cpp refuses to create such a context; say why instead of blaming the model file.
            raise ValueError(f"type_v={self.type_v!r} needs flash_attn=True: llama.cpp quantizes the V cache only then")
        if self.n_ctx is not None and self.n_ctx < 64:
            raise ValueError(f"n_ctx={self.n_ctx} is too small; use at least 64 (default: {DEFAULT_N_CTX})")
        if self.n_gpu_layers < -1:
            raise ValueError(f"n_gpu_layers={self.n_gpu_layers}; use -1 (every layer), 0 (none) or a layer count")
        for name in ("n_threads", "n_threads_batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value}; use at least 1, or None for the default ({default_threads()})")

    def threads(self) -> tuple[int, int]:
        """The (generation, prompt evaluation) thread counts these settings give on this machine."""
        auto_gen, auto_batch = default_threads()
        if self.n_threads is None:
            return auto_gen, self.n_threads_batch or auto_batch
        return self.n_threads, self.n_threads_batch or self.n_threads


def default_gpu_layers() -> int:
    """-1 (every layer offloaded) where llama-cpp-python was built with a GPU backend (CUDA, Metal, …), else 0."""
    return -1 if gpu_offload() else 0


def default_threads() -> tuple[int, int]:
    """Threads for generation and for prompt evaluation on this machine.

    Where llama.cpp's waiting threads sleep (OpenMP with ``OMP_WAIT_POLICY=PASSIVE``, which importing
    lmchat sets unless the user chose otherwise) that is llama.cpp's own choice: half the cores for
    generation, which is bound by memory bandwidth, and every core for prompts. Where they spin, a
    thread that loses its core to another process stalls the others, so a core is left free:
    ``(min(cpus // 2, cpus - 1), cpus - 1)``, at least 1 each.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if barriers_sleep():
        return max(1, cpus // 2), cpus
    spare = max(1, cpus - 1)
    return max(1, min(cpus // 2, spare)), spare


_MODELS: dict[tuple[str, ModelSettings], Model] = {}
_MODELS_LOCK = threading.Lock()


class Model:
    """A loaded model and its backend, shared by every conversation that uses it.

    Only one conversation's tokens live in the backend at a time; ``lock`` serialises generations
    and ``owner`` is the cache (:class:`~lmchat_jupyter.kvcache.KVCache`) whose tokens it holds.
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
            f"{self.n_ctx:,}. Rewind or clear it, load the model with a larger n_ctx, or use "
            "context_policy='drop_oldest'"
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
        from .server_http import api_key_from_env

        self.server.api_key = api_key if api_key is not None else api_key_from_env()

    def context_overflow(self, needed: int) -> ContextOverflowError:
        return ServerContextTooSmallError(
            f"the conversation needs {needed:,} tokens but the server at {self.url} gives a conversation "
            f"{self.n_ctx:,} (its context per slot). Rewind or clear it (`%chat rewind N`), use "
            "context_policy='drop_oldest', or give the server a larger context (llama-server: a larger -c, "
            "or fewer --parallel slots)"
        )

    def describe(self) -> str:
        """``name (llama-server at URL, n_ctx=N, full sessions)``, or ``name (OpenAI-compatible server at URL,
        history-only)``."""
        if self.server.describe().get("server") == "llama-server":
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
    url = server_address(spec)
    if url is not None:
        return _connect(
            None if spec is None or str(spec).strip() == "" else str(spec).strip(), url, api_key, reuse, report
        )
    settings = replace(settings or ModelSettings(), **overrides)
    path = resolve_model_path(spec)
    key = (str(path.resolve()), settings)
    with _MODELS_LOCK:
        if reuse and key in _MODELS:
            return _MODELS[key]  # nothing to report: nothing was loaded
        report(f"Loading {path.name} …")
        start = time.perf_counter()
        llama_settings = asdict(settings)
        llama_settings["n_threads"], llama_settings["n_threads_batch"] = settings.threads()
        backend = open_backend(path, settings.n_ctx, llama_settings)
        model = Model(None if spec is None else str(spec), path, settings, backend, backend.name)
        model.load_seconds = time.perf_counter() - start
        if reuse:
            _MODELS[key] = model
    report(model.describe_load())
    return model


_SERVERS: dict[str, ServerModel] = {}


def _connect(
    spec: str | None, url: str, api_key: str | None, reuse: bool, report: Callable[[str], None]
) -> ServerModel:
    """The model on the server at ``url``: what it is decides the backend (ServerError when it is none)."""
    from .openai_backend import OpenAIBackend
    from .server_backend import LlamaServerBackend
    from .server_http import HttpEndpoint
    from .server_probe import probe_server

    address = HttpEndpoint(url).url
    with _MODELS_LOCK:
        known = _SERVERS.get(address) if reuse else None
        if known is not None:
            if api_key is not None:
                known.set_api_key(api_key)
            return known
        report(f"Connecting to {address} …")
        start = time.perf_counter()
        tier = probe_server(address, api_key)
        backend: LlamaServerBackend | OpenAIBackend
        if tier.kind == "llama-server":
            backend = LlamaServerBackend.connect(address, api_key)
        else:
            backend = OpenAIBackend(tier, api_key)
        model = ServerModel(spec, backend)
        model.load_seconds = time.perf_counter() - start
        if reuse:
            _SERVERS[address] = model
    report(model.describe_load())
    return model


def _reporter(progress: bool | Callable[[str], None]) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress:
        return lambda line: print(line, flush=True)
    return lambda line: None
