"""Opening a GGUF with llama.cpp: settings to ``Llama`` arguments, clear load errors, llama.cpp's log routed.

With ``llama`` the only module that calls llama-cpp-python. Imported only through the package's
functions (``open_backend`` and the questions about the build), so llama_cpp loads with the first local
model; the package has set llama.cpp's environment (``_env``) before.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp._internals as llama_internals

from ...core.errors import ModelLoadError
from . import DEFAULT_N_CTX, KV_TYPES
from . import _env as _llama_env
from .llama import LlamaBackend

__all__ = ["open_backend", "barriers_sleep", "gpu_offload", "LLAMA_LOGGER"]


def open_backend(path: Path, n_ctx: int | None, settings: dict[str, Any]) -> LlamaBackend:
    """Load ``path`` with ``n_ctx`` positions (None: the default, capped by the model's training context)
    and ``settings`` (ModelSettings' fields, the thread counts resolved); raises ModelLoadError."""
    size = n_ctx or DEFAULT_N_CTX
    kwargs = {k: v for k, v in settings.items() if k not in ("n_ctx", "type_k", "type_v")}
    _quiet_llama_log()
    _LLAMA_LOG_RECENT.clear()
    try:
        with _scratch_sequence():
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=size,
                type_k=KV_TYPES[settings["type_k"]],
                type_v=KV_TYPES[settings["type_v"]],
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
    if n_ctx is None and n_train < size:
        # The default context is capped by what the model was trained for.
        del llm
        return open_backend(path, n_train, settings)
    kv_settings = {k: settings[k] for k in ("type_k", "type_v", "flash_attn", "swa_full")}
    return LlamaBackend(llm, path, kv_settings)


class _ContextWithScratch(llama_internals.LlamaContext):
    """llama-cpp-python's context, opened with a second (scratch) sequence for a full-attention model.

    ``Llama`` takes no ``n_seq_max``. Both sequences share one unified cache of ``n_ctx`` cells, so
    the cache's size, the positions a conversation may use and the state of sequence 0 (what a
    session holds, byte for byte) are those of a one-sequence context. A sliding-window model keeps
    one sequence: its window cache would grow with the number of sequences.
    """

    def __init__(self, *, model: Any, params: Any, verbose: bool = True) -> None:
        if int(llama_cpp.llama_model_n_swa(model.model)) == 0:
            params.n_seq_max = 2
            params.kv_unified = True
        super().__init__(model=model, params=params, verbose=verbose)


_SCRATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _scratch_sequence() -> Iterator[None]:
    """While a ``Llama`` is built, its context is a :class:`_ContextWithScratch`."""
    with _SCRATCH_LOCK:
        original = llama_internals.LlamaContext
        llama_internals.LlamaContext = _ContextWithScratch  # type: ignore[misc]
        try:
            yield
        finally:
            llama_internals.LlamaContext = original  # type: ignore[misc]


def gpu_offload() -> bool:
    """Whether this llama-cpp-python was built with a GPU backend (CUDA, Metal, …)."""
    return bool(llama_cpp.llama_supports_gpu_offload())


def barriers_sleep() -> bool:
    """Whether llama.cpp's waiting threads sleep rather than spin (so extra threads cannot stall it)."""
    openmp = b"OPENMP = 1" in llama_cpp.llama_print_system_info()
    return openmp and _llama_env.wait_policy_passive()


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
