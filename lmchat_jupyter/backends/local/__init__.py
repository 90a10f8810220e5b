"""llama.cpp in this process: the only place that imports llama_cpp.

llama_cpp loads with the first local model (:func:`open_backend`), or when a question only it can
answer is first asked (:func:`gpu_offload`, :func:`barriers_sleep`, each answered once); importing this
package, or lmchat, loads nothing of it. ``_env`` comes first: it sets what llama.cpp reads when it loads.

``llama`` is the backend on a ``llama_cpp.Llama``; ``loading`` opens one (settings, errors, llama.cpp's
log); ``templates`` holds the chat templates of models that carry none.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _env  # noqa: F401  (first: llama.cpp reads the environment it sets when llama_cpp loads)

if TYPE_CHECKING:
    from .llama import LlamaBackend

__all__ = ["open_backend", "gpu_offload", "barriers_sleep", "KV_TYPES", "DEFAULT_N_CTX"]

#: KV cache types a user may name, mapped to ggml's type ids.
KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30}
#: Positions a model gets unless told otherwise (fewer where it was trained for fewer).
DEFAULT_N_CTX = 8192


def open_backend(path: Path, n_ctx: int | None, settings: dict[str, Any]) -> LlamaBackend:
    """Load ``path`` with llama.cpp (loading llama_cpp the first time): see :func:`.loading.open_backend`."""
    from . import loading

    return loading.open_backend(path, n_ctx, settings)


@functools.cache
def gpu_offload() -> bool:
    """Whether this llama-cpp-python was built with a GPU backend (CUDA, Metal, …); loads llama_cpp once."""
    from . import loading

    return loading.gpu_offload()


@functools.cache
def barriers_sleep() -> bool:
    """Whether llama.cpp's waiting threads sleep rather than spin (so extra threads cannot stall it); loads llama_cpp once."""
    from . import loading

    return loading.barriers_sleep()
