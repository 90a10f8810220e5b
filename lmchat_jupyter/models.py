"""Loaded models: llama.cpp behind a small wrapper, one instance per file and settings per process."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp

from . import _llama_env
from .errors import ModelLoadError
from .fingerprint import file_sha256
from .model_specs import resolve_model_path

if TYPE_CHECKING:
    from .conversation import Conversation

__all__ = ["ModelSettings", "Model", "load_model", "loaded_models", "default_threads", "default_gpu_layers", "KV_TYPES"]

#: KV cache types a user may name, mapped to ggml's type ids.
KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
_FLOAT_KV_TYPES = ("f32", "f16", "bf16")
DEFAULT_N_CTX = 8192


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
    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


def default_threads() -> tuple[int, int]:
    """Threads for generation and for prompt evaluation on this machine.

    Where llama.cpp's waiting threads sleep (OpenMP with ``OMP_WAIT_POLICY=PASSIVE``, which importing
    lmchat sets unless the user chose otherwise) that is llama.cpp's own choice: half the cores for
    generation, which is bound by memory bandwidth, and every core for prompts. Where they spin, a
    thread that loses its core to another process stalls the others, so a core is left free:
    ``(min(cpus // 2, cpus - 1), cpus - 1)``, at least 1 each.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if _llama_env.barriers_sleep():
        return max(1, cpus // 2), cpus
    spare = max(1, cpus - 1)
    return max(1, min(cpus // 2, spare)), spare


_MODELS: dict[tuple[str, ModelSettings], Model] = {}
_MODELS_LOCK = threading.Lock()


class Model:
    """A loaded GGUF model and its fingerprint, shared by every conversation that uses it.

    Only one conversation's tokens live in the llama.cpp context at a time; ``lock`` serialises
    generations and ``owner`` says whose tokens are in the KV cache.
    """

    def __init__(self, spec: str | None, path: Path, settings: ModelSettings, llm: llama_cpp.Llama) -> None:
        self.spec = spec
        self.path = path
        self.settings = settings
        self.llm = llm
        self.lock = threading.RLock()
        self.owner: Conversation | None = None
        self.load_seconds = 0.0
        self._sha256: str | None = None
        self.metadata: dict[str, str] = dict(llm.metadata)
        architecture = self.metadata.get("general.architecture", "")
        self.chat_template = self.metadata.get("tokenizer.chat_template") or _fallback_template(architecture)
        self.name = self.metadata.get("general.name") or path.stem

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
    def n_ctx(self) -> int:
        return int(self.llm.n_ctx())

    @property
    def n_swa(self) -> int:
        return int(llama_cpp.llama_model_n_swa(self.llm.model))

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    def fingerprint(self) -> dict[str, Any]:
        """Everything a saved KV state depends on; a session loads only where all of it matches."""
        model = self.llm.model
        return {
            "llama_cpp_python": llama_cpp.__version__,
            "model_sha256": self.sha256,
            "model_name": self.name,
            "architecture": self.metadata.get("general.architecture", "?"),
            "n_layer": int(llama_cpp.llama_model_n_layer(model)),
            "n_embd": int(llama_cpp.llama_model_n_embd(model)),
            "n_vocab": int(self.llm.n_vocab()),
            "n_ctx": self.n_ctx,
            "type_k": self.settings.type_k,
            "type_v": self.settings.type_v,
            "flash_attn": self.settings.flash_attn,
            "n_swa": self.n_swa,
            "swa_full": self.settings.swa_full,
            "chat_template_sha256": hashlib.sha256(self.chat_template.encode()).hexdigest(),
        }

    def describe(self) -> str:
        """``name (file.gguf, n_ctx=N)``."""
        return f"{self.name} ({self.path.name}, n_ctx={self.n_ctx})"

    def describe_load(self) -> str:
        """``Loaded name (file.gguf, n_ctx=N) in 0.6 s``: what loading it took."""
        return f"Loaded {self.describe()} in {self.load_seconds:.1f} s"


# Used only when a GGUF carries no chat template (base models): the family's own turn format where
# known, else ChatML. Contents are not trimmed, so earlier turns render exactly as they were cached.
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_GEMMA = (
    "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] + "
    "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def _fallback_template(architecture: str) -> str:
    return _GEMMA if architecture.startswith("gemma") else _CHATML


def load_model(
    spec: str | os.PathLike[str] | None = None,
    settings: ModelSettings | None = None,
    *,
    reuse: bool = True,
    progress: bool | Callable[[str], None] = False,
    **overrides: Any,
) -> Model:
    """Load a model once per process: the embedded default, a ``.gguf`` path or ``hf:owner/repo/file.gguf``.

    Settings come from ``settings`` and/or keyword overrides (``load_model(path, n_ctx=4096)``).
    Loading the same file with the same settings again returns the already loaded model, unless
    ``reuse=False`` asks for a separate instance.

    ``progress=True`` prints ``Loading file.gguf …`` and then ``Loaded name (file.gguf, n_ctx=N) in 0.6 s``
    (a Hub download shows huggingface_hub's own progress bar first); a callable receives those lines
    instead; an already loaded model is returned silently. llama.cpp's own log never reaches stderr:
    it goes to the ``lmchat_jupyter.llama`` logger.
    """
    settings = replace(settings or ModelSettings(), **overrides)
    report = _reporter(progress)
    path = resolve_model_path(spec)
    key = (str(path.resolve()), settings)
    with _MODELS_LOCK:
        if reuse and key in _MODELS:
            return _MODELS[key]  # nothing to report: nothing was loaded
        report(f"Loading {path.name} …")
        start = time.perf_counter()
        llm = _open_llama(path, settings)
        model = Model(None if spec is None else str(spec), path, settings, llm)
        model.load_seconds = time.perf_counter() - start
        if reuse:
            _MODELS[key] = model
    report(model.describe_load())
    return model


def _reporter(progress: bool | Callable[[str], None]) -> Callable[[str], None]:
    if callable(progress):
        return progress
    if progress:
        return lambda line: print(line, flush=True)
    return lambda line: None


def loaded_models() -> list[Model]:
    """Models loaded in this process."""
    return list(_MODELS.values())


def _open_llama(path: Path, settings: ModelSettings) -> llama_cpp.Llama:
    n_ctx = settings.n_ctx or DEFAULT_N_CTX
    kwargs = {k: v for k, v in asdict(settings).items() if k not in ("n_ctx", "type_k", "type_v")}
    kwargs["n_threads"], kwargs["n_threads_batch"] = settings.threads()
    _quiet_llama_log()
    _LLAMA_LOG_RECENT.clear()
    try:
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            type_k=KV_TYPES[settings.type_k],
            type_v=KV_TYPES[settings.type_v],
            verbose=False,
            **kwargs,
        )
    except (ValueError, RuntimeError) as exc:
        reasons = [line.strip() for line in _LLAMA_LOG_RECENT if "error" in line.lower()]
        why = f" ({'; '.join(reasons)})" if reasons else ""
        raise ModelLoadError(
            f"llama.cpp could not load {path}{why}. Is it a complete GGUF of an architecture "
            f"llama-cpp-python {llama_cpp.__version__} supports? A partial download: delete it and fetch it again"
        ) from exc
    n_train = int(llm._model.n_ctx_train())
    if settings.n_ctx is None and n_train < n_ctx:
        # The default context is capped by what the model was trained for.
        del llm
        return _open_llama(path, replace(settings, n_ctx=n_train))
    return llm


# llama.cpp logs through one process-wide callback. Ours sends it to a logger (silent unless the user
# configures logging) instead of stderr, and keeps the latest warnings and errors for error messages.
LLAMA_LOGGER = logging.getLogger("lmchat_jupyter.llama")
LLAMA_LOGGER.addHandler(logging.NullHandler())
_LLAMA_LOG_RECENT: deque[str] = deque(maxlen=32)
# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues the previous line).
_GGML_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_llama_log_state = {"level": logging.DEBUG, "installed": False}


def _on_llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    try:
        # Level 5 continues the previous line; 0 carries no level.
        py_level = _llama_log_state["level"] if level == 5 else _GGML_LEVELS.get(level, logging.DEBUG)
        _llama_log_state["level"] = py_level
        if py_level >= logging.WARNING:
            _LLAMA_LOG_RECENT.append(text.decode("utf-8", "replace"))
        if LLAMA_LOGGER.isEnabledFor(py_level):
            LLAMA_LOGGER.log(py_level, "%s", text.decode("utf-8", "replace").rstrip("\n"))
    except Exception:  # an exception cannot cross back into C
        pass


# Module-level so the C function pointer outlives every call llama.cpp makes through it.
_LLAMA_LOG_CALLBACK = llama_cpp.llama_log_callback(_on_llama_log)


def _quiet_llama_log() -> None:
    if not _llama_log_state["installed"]:
        llama_cpp.llama_log_set(_LLAMA_LOG_CALLBACK, ctypes.c_void_p(0))
        _llama_log_state["installed"] = True
