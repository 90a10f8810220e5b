"""The few llama.cpp calls that move a sequence's KV state, kept in one place.

Sequence 0 is the only one used. Python's own bookkeeping in ``Llama`` (``input_ids``,
``n_tokens``) is kept in step with the cache after every change, so llama-cpp-python never
decodes on top of a cache it misunderstands.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Sequence

import llama_cpp
import numpy as np

__all__ = [
    "state_size",
    "read_state_into",
    "load_state",
    "positions",
    "truncate",
    "clear",
    "last_logits_top",
    "logits_agree",
    "is_eog",
]

SEQ = 0
_TOP_BLOCK = 16384

#: Contexts whose KV buffers may hold bytes that came from outside (a session's KV state) since they
#: were last zeroed. A context starts zeroed (llama.cpp clears its buffers when it creates them) and
#: only states loaded with :func:`load_state` can bring non-finite values into it.
_LOADED_SINCE_ZEROED: weakref.WeakSet[llama_cpp.Llama] = weakref.WeakSet()


def state_size(llm: llama_cpp.Llama) -> int:
    """Bytes that :func:`read_state_into` needs for sequence 0."""
    return int(llama_cpp.llama_state_seq_get_size(llm.ctx, SEQ))


def read_state_into(llm: llama_cpp.Llama, buffer: bytearray | memoryview, offset: int = 0) -> int:
    """Copy sequence 0's KV state into ``buffer[offset:]`` without an intermediate copy."""
    view = memoryview(buffer)[offset:]
    dst = (ctypes.c_uint8 * len(view)).from_buffer(view)
    try:
        return int(llama_cpp.llama_state_seq_get_data(llm.ctx, dst, len(view), SEQ))
    finally:
        del dst
        view.release()


def load_state(llm: llama_cpp.Llama, address: int, size: int, tokens: Sequence[int]) -> bool:
    """Load a KV state from memory at ``address`` into sequence 0; True when llama.cpp accepted it.

    The cache must have just been emptied with :func:`clear` (both callers do so while activating
    a conversation; clearing again would zero the whole n_ctx buffer a second time). On refusal the
    cache is cleared, so a failed load never leaves half a state behind.
    """
    src = ctypes.cast(ctypes.c_void_p(address), ctypes.POINTER(ctypes.c_uint8))
    _LOADED_SINCE_ZEROED.add(llm)
    read = int(llama_cpp.llama_state_seq_set_data(llm.ctx, src, size, SEQ))
    if read != size or not _holds(llm, len(tokens)):
        clear(llm)
        return False
    n = len(tokens)
    llm.input_ids[:n] = np.asarray(tokens, dtype=np.intc)
    llm.n_tokens = n
    return True


def positions(llm: llama_cpp.Llama) -> tuple[int, int]:
    """The lowest and highest position sequence 0 holds in the cache; (-1, -1) when it is empty."""
    memory = llm._ctx.memory
    return (
        int(llama_cpp.llama_memory_seq_pos_min(memory, SEQ)),
        int(llama_cpp.llama_memory_seq_pos_max(memory, SEQ)),
    )


def _holds(llm: llama_cpp.Llama, n_tokens: int) -> bool:
    """Whether the cache holds what decoding position ``n_tokens`` needs: every position up to
    ``n_tokens - 1`` and nothing after it.

    llama.cpp checks a loaded state's structure, not that its cells fit the tokens they are loaded
    for, and cutting a cache back always "succeeds". A sliding-window cache keeps only its window
    (after a restore even with ``swa_full``: llama.cpp saves no more), so cutting back past the
    window's start leaves its layers without their context. Where the window (a query at ``p``
    sees ``p - n_swa < p0 <= p``) is not covered, the caller must evaluate the tokens again.
    """
    low, high = positions(llm)
    if high != n_tokens - 1:
        return False
    if n_tokens == 0:
        return True
    n_swa = int(llama_cpp.llama_model_n_swa(llm.model))
    first_needed = max(0, n_tokens - n_swa + 1) if n_swa > 0 else 0
    return 0 <= low <= first_needed


def truncate(llm: llama_cpp.Llama, n_tokens: int) -> bool:
    """Drop every cached position from ``n_tokens`` on; False if what is left is not a usable prefix.

    On False the cache may be cut already: the caller must clear it and evaluate again.
    """
    ok = bool(llm._ctx.kv_cache_seq_rm(-1, n_tokens, -1)) and _holds(llm, n_tokens)
    if ok:
        llm.n_tokens = n_tokens
    return ok


def clear(llm: llama_cpp.Llama) -> None:
    """Empty the cache; zero its buffers if a loaded state may have left foreign bytes in them.

    Emptied cells are masked out but still read: attention without flash-attn multiplies them by
    a weight of 0, and 0 x NaN is NaN. One loaded state with non-finite values (a forged session)
    would otherwise poison every later evaluation on this model. Zeroing costs about 10 ms for an
    8k context of a small model, so it is done only when a state was loaded since the last time:
    the cells of a fresh context, and those this process evaluated itself, are finite.
    """
    memory = llm._ctx.memory
    if memory is not None:
        zero = llm in _LOADED_SINCE_ZEROED
        llama_cpp.llama_memory_clear(memory, zero)
        if zero:
            _LOADED_SINCE_ZEROED.discard(llm)
    llm.n_tokens = 0


def last_logits_top(llm: llama_cpp.Llama, k: int = 8) -> list[tuple[int, float]]:
    """The ``k`` best (token, logit) pairs of the last decoded position, best first."""
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    logits = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))
    # Block by block: one argpartition over the whole vocabulary allocates an 8-byte index per
    # token (2 MB for Gemma's 262k) on every save and checked restore, which shows in their peak memory.
    best: list[tuple[int, float]] = []
    for start in range(0, len(logits), _TOP_BLOCK):
        block = logits[start : start + _TOP_BLOCK]
        picks = np.argpartition(block, -k)[-k:] if len(block) > k else range(len(block))
        best.extend((start + int(i), float(block[i])) for i in picks)
    best.sort(key=lambda pair: -pair[1])
    return best[:k]


def logits_agree(now: Sequence[tuple[int, float]], saved: Sequence[tuple[int, float]]) -> bool:
    """Same best token, and every best logit within 0.05 + 1% of the saved value where both have it."""
    if not now or not saved or now[0][0] != saved[0][0]:
        return False
    saved_map = dict(saved)
    return all(abs(v - saved_map[t]) <= 0.05 + 0.01 * abs(v) for t, v in now if t in saved_map)


def is_eog(llm: llama_cpp.Llama, token: int) -> bool:
    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))
