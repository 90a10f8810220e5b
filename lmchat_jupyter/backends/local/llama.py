"""The llama.cpp backend in this process: every call into llama-cpp-python goes through here or ``loading``.

Sequence 0 holds the conversation. Sequence 1, where the context has room for it (``loading`` opens
full-attention models with two sequences in one unified cache), is a scratch sequence: the positions
of one turn are added to it (no KV bytes move) to take their state alone, and a state loaded into it
is merged into sequence 0; it is empty at every other moment. Python's own bookkeeping in ``Llama`` (``input_ids``, ``n_tokens``)
is kept in step with the cache after every change, so llama-cpp-python never decodes on top of a
cache it misunderstands.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ...core.errors import LmchatError
from ...core.fingerprint import file_sha256
from ...core.results import GenerationOptions
from ..interface import Capabilities, Persistence
from .templates import template_for

if TYPE_CHECKING:
    from ..interface import Sampler

__all__ = ["LlamaBackend", "positions", "SEQ", "SCRATCH"]

SEQ = 0
SCRATCH = 1
_TOP_BLOCK = 16384

#: Contexts whose KV buffers may hold bytes that came from outside (a session's KV state) since they
#: were last zeroed. A context starts zeroed (llama.cpp clears its buffers when it creates them) and
#: only states loaded with :meth:`LlamaBackend.import_state` can bring non-finite values into it.
_LOADED_SINCE_ZEROED: weakref.WeakSet[llama_cpp.Llama] = weakref.WeakSet()


class LlamaBackend:
    """A :class:`~lmchat_jupyter.backends.interface.Backend` on a ``llama_cpp.Llama`` loaded from ``path``.

    ``kv_settings`` are the load settings a saved KV state depends on (cache types, flash attention,
    sliding-window cache size); they go into :meth:`describe`.
    """

    #: The KV state itself is saved in a session, and evaluating is llama.cpp's work here.
    capabilities = Capabilities(Persistence.FULL_SESSION)

    def __init__(self, llm: llama_cpp.Llama, path: Path, kv_settings: dict[str, Any]) -> None:
        self.llm = llm
        self.path = path
        self.kv_settings = kv_settings
        self.label: str | None = None  # the states are bytes in this process: nothing is named after it
        self.metadata: dict[str, str] = dict(llm.metadata)
        self.chat_template = template_for(self.metadata)
        #: GGUF's general.name: saved sessions' fingerprints hold it, so it stays; people see the file's name.
        self.name = self.metadata.get("general.name") or path.stem
        self._sha256: str | None = None
        #: The texts of the end- and beginning-of-sequence tokens, as chat templates name them.
        self.eos_text = self._token_text(llm.token_eos())
        self.bos_text = self._token_text(llm.token_bos())

    # --- facts ----------------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return int(self.llm.n_ctx())

    @property
    def n_batch(self) -> int:
        return int(self.llm.n_batch)

    @property
    def n_vocab(self) -> int:
        return int(self.llm.n_vocab())

    @property
    def n_swa(self) -> int:
        """The sliding-window size of the model's attention (0: none)."""
        return int(llama_cpp.llama_model_n_swa(self.llm.model))

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    def describe(self) -> dict[str, Any]:
        model = self.llm.model
        return {
            "llama_cpp_python": llama_cpp.__version__,
            "model_sha256": self.sha256,
            "model_name": self.name,
            "architecture": self.metadata.get("general.architecture", "?"),
            "n_layer": int(llama_cpp.llama_model_n_layer(model)),
            "n_embd": int(llama_cpp.llama_model_n_embd(model)),
            "n_vocab": self.n_vocab,
            "n_ctx": self.n_ctx,
            "type_k": self.kv_settings["type_k"],
            "type_v": self.kv_settings["type_v"],
            "flash_attn": self.kv_settings["flash_attn"],
            "n_swa": self.n_swa,
            "swa_full": self.kv_settings["swa_full"],
            "chat_template_sha256": hashlib.sha256(self.chat_template.encode()).hexdigest(),
        }

    # --- text -----------------------------------------------------------------------------------

    def format_chat(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        formatter = _formatter(self.chat_template, self.eos_text, self.bos_text, generation_prompt)
        try:
            return str(formatter(messages=messages).prompt)
        except Exception as exc:
            raise LmchatError(f"the chat template of {self.path.stem} refused these messages: {exc}") from None

    def tokenize(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        return bytes(self.llm.detokenize(list(tokens), special=special))

    def _token_text(self, token: int) -> str:
        return "" if token < 0 else self.detokenize([token], special=True).decode("utf-8", errors="ignore")

    # --- the sequence ---------------------------------------------------------------------------

    def evaluate(self, tokens: Sequence[int]) -> None:
        self.llm.eval(tokens)

    def sampler(self, options: GenerationOptions) -> Sampler:
        llm = self.llm
        if options.seed is not None:
            llm.set_seed(options.seed)
        chain = llm._init_sampler(
            temp=options.temperature,
            top_k=options.top_k,
            top_p=options.top_p,
            min_p=options.min_p,
            repeat_penalty=options.repeat_penalty,
        )
        context = llm._ctx
        return lambda: int(chain.sample(context, -1))

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def cut(self, n_tokens: int) -> bool:
        """Drop every cached position from ``n_tokens`` on; False if what is left is not a usable prefix.

        On False the cache may be cut already: the caller must clear it and evaluate again.
        """
        llm = self.llm
        ok = bool(llm._ctx.kv_cache_seq_rm(-1, n_tokens, -1)) and self._holds(n_tokens)
        if ok:
            llm.n_tokens = n_tokens
        return ok

    def clear(self) -> None:
        """Empty the cache; zero its buffers if a loaded state may have left foreign bytes in them.

        Emptied cells are masked out but still read: attention without flash-attn multiplies them by
        a weight of 0, and 0 x NaN is NaN. One loaded state with non-finite values (a forged session)
        would otherwise poison every later evaluation on this model. Zeroing costs about 10 ms for an
        8k context of a small model, so it is done only when a state was loaded since the last time:
        the cells of a fresh context, and those this process evaluated itself, are finite.
        """
        llm = self.llm
        memory = llm._ctx.memory
        if memory is not None:
            zero = llm in _LOADED_SINCE_ZEROED
            llama_cpp.llama_memory_clear(memory, zero)
            if zero:
                _LOADED_SINCE_ZEROED.discard(llm)
        llm.n_tokens = 0

    def top_logits(self, k: int) -> list[tuple[int, float]]:
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
        # Block by block: one argpartition over the whole vocabulary allocates an 8-byte index per
        # token (2 MB for Gemma's 262k) on every save and checked restore, which shows in their peak memory.
        best: list[tuple[int, float]] = []
        for start in range(0, len(logits), _TOP_BLOCK):
            block = logits[start : start + _TOP_BLOCK]
            picks = np.argpartition(block, -k)[-k:] if len(block) > k else range(len(block))
            best.extend((start + int(i), float(block[i])) for i in picks)
        best.sort(key=lambda pair: -pair[1])
        return best[:k]

    # --- state in and out -----------------------------------------------------------------------

    @property
    def deltas_supported(self) -> bool:
        """Whether the context has a scratch sequence in a unified cache, and no sliding window.

        A sliding-window cache keeps only its window and saves it whole; its states are taken whole.
        """
        ctx = self.llm.ctx
        return self.n_swa == 0 and int(llama_cpp.llama_n_seq_max(ctx)) > SCRATCH

    def export_delta(self, first: int) -> memoryview:
        """The state of positions ``first`` .. the end alone: they are added to the scratch sequence
        (the cells are shared, no KV bytes move), whose state llama.cpp writes, and removed from it."""
        ctx, memory = self.llm.ctx, self.llm._ctx.memory
        llama_cpp.llama_memory_seq_cp(memory, SEQ, SCRATCH, first, -1)
        try:
            size = int(llama_cpp.llama_state_seq_get_size(ctx, SCRATCH))
            buffer = np.empty(size, dtype=np.uint8)  # not zero-filled: llama.cpp writes every byte
            dst = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
            written = int(llama_cpp.llama_state_seq_get_data(ctx, dst, size, SCRATCH))
        finally:
            llama_cpp.llama_memory_seq_rm(memory, SCRATCH, -1, -1)
        return buffer.data[:written]

    def import_delta(self, data: bytes | memoryview, tokens: Sequence[int]) -> bool:
        """Load a state of later positions into the scratch sequence and merge it into sequence 0,
        which then holds ``tokens``; False, sequence 0 as it was, when llama.cpp refuses it or its
        positions do not continue those held."""
        llm = self.llm
        ctx, memory = llm.ctx, llm._ctx.memory
        held = int(llm.n_tokens)
        array = np.frombuffer(data, dtype=np.uint8)
        src = ctypes.cast(ctypes.c_void_p(array.ctypes.data), ctypes.POINTER(ctypes.c_uint8))
        _LOADED_SINCE_ZEROED.add(llm)
        try:
            read = int(llama_cpp.llama_state_seq_set_data(ctx, src, len(array), SCRATCH))
            fits = (
                read == len(array)
                and int(llama_cpp.llama_memory_seq_pos_min(memory, SCRATCH)) == held
                and int(llama_cpp.llama_memory_seq_pos_max(memory, SCRATCH)) == len(tokens) - 1
            )
            if fits:
                llama_cpp.llama_memory_seq_cp(memory, SCRATCH, SEQ, -1, -1)
        finally:
            llama_cpp.llama_memory_seq_rm(memory, SCRATCH, -1, -1)
            del src, array  # an mmap cannot close while a view of it lives
        if not fits or not self._holds(len(tokens)):
            if not self.cut(held):
                self.clear()
            return False
        n = len(tokens)
        llm.input_ids[held:n] = np.asarray(tokens[held:], dtype=np.intc)
        llm.n_tokens = n
        return True

    def state_size(self) -> int:
        return int(llama_cpp.llama_state_seq_get_size(self.llm.ctx, SEQ))

    def export_state(self, buffer: bytearray | memoryview, offset: int = 0) -> int:
        """Copy sequence 0's KV state into ``buffer[offset:]`` without an intermediate copy."""
        view = memoryview(buffer)[offset:]
        dst = (ctypes.c_uint8 * len(view)).from_buffer(view)
        try:
            return int(llama_cpp.llama_state_seq_get_data(self.llm.ctx, dst, len(view), SEQ))
        finally:
            del dst
            view.release()

    def import_state(self, data: bytes | memoryview, tokens: Sequence[int]) -> bool:
        """Load a KV state into sequence 0, read in place; True when llama.cpp accepted it.

        The cache must have just been emptied with :meth:`clear` (every caller does so while activating
        a conversation; clearing again would zero the whole n_ctx buffer a second time). On refusal the
        cache is cleared, so a failed load never leaves half a state behind.
        """
        llm = self.llm
        array = np.frombuffer(data, dtype=np.uint8)  # no copy, read-only buffers too
        src = ctypes.cast(ctypes.c_void_p(array.ctypes.data), ctypes.POINTER(ctypes.c_uint8))
        _LOADED_SINCE_ZEROED.add(llm)
        try:
            read = int(llama_cpp.llama_state_seq_set_data(llm.ctx, src, len(array), SEQ))
        finally:
            size = len(array)
            del src, array  # an mmap cannot close while a view of it lives
        if read != size or not self._holds(len(tokens)):
            self.clear()
            return False
        n = len(tokens)
        llm.input_ids[:n] = np.asarray(tokens, dtype=np.intc)
        llm.n_tokens = n
        return True

    def _holds(self, n_tokens: int) -> bool:
        """Whether the cache holds what decoding position ``n_tokens`` needs: every position up to
        ``n_tokens - 1`` and nothing after it.

        llama.cpp checks a loaded state's structure, not that its cells fit the tokens they are loaded
        for, and cutting a cache back always "succeeds". A sliding-window cache keeps only its window
        (after a restore even with ``swa_full``: llama.cpp saves no more), so cutting back past the
        window's start leaves its layers without their context. Where the window (a query at ``p``
        sees ``p - n_swa < p0 <= p``) is not covered, the caller must evaluate the tokens again.
        """
        low, high = positions(self.llm)
        if high != n_tokens - 1:
            return False
        if n_tokens == 0:
            return True
        n_swa = self.n_swa
        first_needed = max(0, n_tokens - n_swa + 1) if n_swa > 0 else 0
        return 0 <= low <= first_needed


def positions(llm: llama_cpp.Llama) -> tuple[int, int]:
    """The lowest and highest position sequence 0 holds in the cache; (-1, -1) when it is empty."""
    memory = llm._ctx.memory
    return (
        int(llama_cpp.llama_memory_seq_pos_min(memory, SEQ)),
        int(llama_cpp.llama_memory_seq_pos_max(memory, SEQ)),
    )


@functools.lru_cache(maxsize=32)
def _formatter(template: str, eos: str, bos: str, generation_prompt: bool) -> Callable[..., Any]:
    # Compiling a template takes tens of milliseconds, more than restoring a session; a compiled
    # template only renders, so every conversation on the same model shares one.
    return Jinja2ChatFormatter(template, eos, bos, generation_prompt)
