"""Conversations of thousands of tokens on a KV-shape twin without evaluating them all.

Evaluating 8,192 tokens on the 8B twin takes over ten minutes on two cores (attention grows with
the square of the length), and the benchmarks measure bytes and time, not answers. So the first
``SEED_TOKENS`` tokens of the history are evaluated, and llama.cpp's state of them is tiled, cell
by cell, into a state of the whole history: every position, every layer, the exact size and layout
llama.cpp writes, its bytes copies of real ones. llama.cpp loads it like any state; what follows
(the next turn, its save, a restore) costs what it costs after a real prefill.
"""

from __future__ import annotations

import struct

import numpy as np

from lmchat_jupyter import ChatHistory, Conversation, Model
from lmchat_jupyter.engine.kvcache import EngineState
from lmchat_jupyter.engine.rendering import ChatRenderer

__all__ = ["tiled_state", "conversation_at", "SEED_TOKENS"]

SEED_TOKENS = 256
_HEAD = struct.Struct("<IIII")  # state magic, version, stream count, cell count
_CELL = 12  # i32 position, u32 sequence count, i32 sequence id


def tiled_state(state: bytes, n_cells: int) -> bytes:
    """``state`` (one stream, its cells at positions 0..n-1 of one sequence) stretched to ``n_cells``."""
    magic, version, n_stream, count = _HEAD.unpack_from(state, 0)
    if n_stream != 1:
        raise ValueError(f"a state of {n_stream} streams")
    at = _HEAD.size
    cells = np.frombuffer(state, dtype="<i4", count=3 * count, offset=at).reshape(count, 3)
    out = [_HEAD.pack(magic, version, n_stream, n_cells)]
    new_cells = np.empty((n_cells, 3), dtype="<i4")
    new_cells[:, 0] = np.arange(n_cells)
    new_cells[:, 1] = 1
    new_cells[:, 2] = cells[0, 2]
    out.append(new_cells.tobytes())
    at += _CELL * count
    v_trans, n_layer = struct.unpack_from("<II", state, at)
    out.append(state[at : at + 8])
    at += 8
    for _ in range(n_layer):  # K: a row per cell
        _type, row = struct.unpack_from("<iQ", state, at)
        out.append(state[at : at + 12])
        at += 12
        rows = np.frombuffer(state, dtype=np.uint8, count=row * count, offset=at).reshape(count, row)
        out.append(np.resize(rows, (n_cells, row)).tobytes())
        at += row * count
    for _ in range(n_layer):  # V: a row per cell, or transposed (a run of cells per element)
        if not v_trans:
            _type, row = struct.unpack_from("<iQ", state, at)
            out.append(state[at : at + 12])
            at += 12
            rows = np.frombuffer(state, dtype=np.uint8, count=row * count, offset=at).reshape(count, row)
            out.append(np.resize(rows, (n_cells, row)).tobytes())
            at += row * count
            continue
        _type, size, n_embd = struct.unpack_from("<iII", state, at)
        out.append(state[at : at + 12])
        at += 12
        runs = np.frombuffer(state, dtype=np.uint8, count=n_embd * count * size, offset=at)
        runs = runs.reshape(n_embd, count, size)
        tiled = np.concatenate([runs] * (-(-n_cells // count)), axis=1)[:, :n_cells]
        out.append(np.ascontiguousarray(tiled).tobytes())
        at += n_embd * count * size
    if at != len(state):
        raise ValueError(f"{len(state) - at} bytes of the state were not understood")
    return b"".join(out)


def conversation_at(model: Model, history: ChatHistory) -> Conversation:
    """A conversation holding ``history`` in its cache as after a prefill (the state tiled, see above)."""
    renderer = ChatRenderer(model.backend)
    text = renderer.render(history.as_chat_messages(), generation_prompt=False)
    tokens = renderer.tokenize(text)
    conv = Conversation(model, history=history)
    backend = model.backend
    with model.lock:
        conv.cache.activate()
        seed = tokens[:SEED_TOKENS]
        for i in range(0, len(seed), backend.n_batch):
            backend.evaluate(seed[i : i + backend.n_batch])
        buffer = bytearray(backend.state_size())
        state = bytes(buffer[: backend.export_state(buffer)])
        backend.clear()
        whole = tiled_state(state, len(tokens))
        if not conv.cache.load(EngineState(list(tokens), text, [(0, 0), (len(text), len(tokens))]), whole):
            raise RuntimeError("llama.cpp refused the tiled state")
    conv.history.token_count = len(tokens)
    return conv
