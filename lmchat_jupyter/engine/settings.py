"""The llama.cpp settings of a model loaded in the kernel, and the defaults they take on this machine.

Made without llama.cpp: what only llama.cpp can tell (whether it has a GPU backend, whether its threads
sleep while they wait) is asked when a value that depends on it is first read, which loads llama_cpp.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, overload

from ..backends.local import DEFAULT_N_CTX, KV_TYPES, barriers_sleep, gpu_offload

__all__ = ["ModelSettings", "default_threads", "default_gpu_layers", "KV_TYPES"]

_FLOAT_KV_TYPES = ("f32", "f16", "bf16")


class _GpuLayers:
    """``ModelSettings.n_gpu_layers``: left unset (None), it reads as :func:`default_gpu_layers`, asked only
    then, so that settings made before any model loads (a notebook's, a server model's) load no llama.cpp."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}"

    @overload
    def __get__(self, obj: None, owner: Any) -> int | None: ...
    @overload
    def __get__(self, obj: object, owner: Any) -> int: ...
    def __get__(self, obj: object | None, owner: Any = None) -> int | None:
        if obj is None:
            return None  # the dataclass's default
        value = self.given(obj)
        return default_gpu_layers() if value is None else value

    def __set__(self, obj: object, value: int | None) -> None:
        obj.__dict__[self._slot] = value

    def given(self, obj: object) -> int | None:
        """The value the settings were made with (None: the default), without asking llama.cpp."""
        value: int | None = obj.__dict__[self._slot]
        return value


_GPU_LAYERS = _GpuLayers()


@dataclass(frozen=True)
class ModelSettings:
    """The llama.cpp settings that matter for chats and their saved sessions.

    ``n_ctx=None`` means 8192, capped by the model's training context. ``swa_full`` keeps the whole
    sliding-window cache, which makes rewinds and restores of sliding-window models (Gemma 3) exact.
    ``n_threads`` (generation) and ``n_threads_batch`` (prompt evaluation) default to
    :func:`default_threads`; ``n_threads`` alone sets both. ``n_gpu_layers`` (-1: every layer) left out
    (or None) reads as :func:`default_gpu_layers`: all of them where llama-cpp-python was built with a GPU
    backend. That is asked, which loads llama.cpp, only when the value is first read (or compared).
    """

    n_ctx: int | None = None
    n_batch: int = 512
    n_threads: int | None = None
    n_threads_batch: int | None = None
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = False
    n_gpu_layers: _GpuLayers = _GPU_LAYERS
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
        gpu_layers = _GPU_LAYERS.given(self)
        if gpu_layers is not None and gpu_layers < -1:
            raise ValueError(f"n_gpu_layers={gpu_layers}; use -1 (every layer), 0 (none) or a layer count")
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
    """-1 (every layer offloaded) where llama-cpp-python was built with a GPU backend (CUDA, Metal, …), else 0.

    The first call loads llama_cpp to ask; the answer is kept.
    """
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
