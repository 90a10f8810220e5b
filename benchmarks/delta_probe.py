"""Can a turn's KV be saved on its own? A probe of llama.cpp's per-sequence state calls on a scratch sequence.

    python -m benchmarks.delta_probe MODEL.gguf BASE_TOKENS NEW_TOKENS

Evaluates BASE_TOKENS tokens, then NEW_TOKENS more (one turn), and takes the turn's KV alone: its
positions are added to a scratch sequence (``llama_memory_seq_cp``: no KV bytes move) whose state
``llama_state_seq_get_data`` writes. Then it rebuilds the whole state from the base and the delta
alone (base into sequence 0, delta into the scratch sequence, which is then merged into 0) and checks
that llama.cpp hands back byte for byte the state it had. Prints one JSON line: sizes and times.
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from typing import Any

import llama_cpp

__all__ = ["main"]

BASE, SCRATCH = 0, 1


def _state(ctx: Any, seq: int) -> bytes:
    size = llama_cpp.llama_state_seq_get_size(ctx, seq)
    data = bytearray(size)
    written = llama_cpp.llama_state_seq_get_data(ctx, (ctypes.c_uint8 * size).from_buffer(data), size, seq)
    del data[written:]
    return bytes(data)


def _load(ctx: Any, data: bytes, seq: int) -> None:
    buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    if llama_cpp.llama_state_seq_set_data(ctx, buffer, len(data), seq) != len(data):
        raise RuntimeError(f"llama.cpp refused the state for sequence {seq}")


def _decode(ctx: Any, tokens: list[int], start: int) -> None:
    for offset in range(0, len(tokens), 512):
        chunk = tokens[offset : offset + 512]
        batch = llama_cpp.llama_batch_init(len(chunk), 0, 1)
        try:
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i] = token
                batch.pos[i] = start + offset + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = BASE
                batch.logits[i] = i == len(chunk) - 1
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
        finally:
            llama_cpp.llama_batch_free(batch)


def main(argv: list[str]) -> int:
    path, n_base, n_new = argv[0], int(argv[1]), int(argv[2])
    llm = llama_cpp.Llama(model_path=path, n_ctx=64, verbose=False)
    # A context of its own: llama-cpp-python's Llama opens one sequence, the probe needs a scratch one,
    # in the same (unified) cache so that adding positions to it moves no KV bytes.
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_base + n_new + 64
    params.n_batch = params.n_ubatch = 512
    params.n_seq_max = 2
    params.kv_unified = True
    ctx = llama_cpp.llama_init_from_model(llm.model, params)
    memory = llama_cpp.llama_get_memory(ctx)
    tokens = [10 + (i * 7919) % 20000 for i in range(n_base + n_new)]
    _decode(ctx, tokens[:n_base], 0)
    base = _state(ctx, BASE)
    _decode(ctx, tokens[n_base:], n_base)
    start = time.perf_counter()
    full = _state(ctx, BASE)
    full_seconds = time.perf_counter() - start

    start = time.perf_counter()
    llama_cpp.llama_memory_seq_cp(memory, BASE, SCRATCH, n_base, n_base + n_new)
    delta = _state(ctx, SCRATCH)
    llama_cpp.llama_memory_seq_rm(memory, SCRATCH, -1, -1)
    delta_seconds = time.perf_counter() - start

    # Rebuild from the base and the delta alone, and compare with the state llama.cpp had.
    llama_cpp.llama_memory_clear(memory, True)
    start = time.perf_counter()
    _load(ctx, base, BASE)
    _load(ctx, delta, SCRATCH)
    llama_cpp.llama_memory_seq_cp(memory, SCRATCH, BASE, -1, -1)
    llama_cpp.llama_memory_seq_rm(memory, SCRATCH, -1, -1)
    rebuild_seconds = time.perf_counter() - start
    rebuilt = _state(ctx, BASE)
    kv_per_token = (len(full) - len(base)) / n_new
    print(
        json.dumps(
            {
                "base_tokens": n_base,
                "new_tokens": n_new,
                "full_bytes": len(full),
                "delta_bytes": len(delta),
                "delta_over_new_kv": len(delta) / (kv_per_token * n_new),
                "full_over_delta": len(full) / len(delta),
                "full_copy_seconds": full_seconds,
                "delta_copy_seconds": delta_seconds,
                "rebuild_seconds": rebuild_seconds,
                "rebuilt_identical": rebuilt == full,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
