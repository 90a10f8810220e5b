"""The engine state a session brings (tokens, their text, checkpoints), checked as untrusted input.

A base's state is checked against the model that is to hold it; a record adds its tokens and text
to the state before it, and what they make is checked again, as a base's state is.
"""

from __future__ import annotations

import json

import numpy as np

from ...core.errors import SessionCorruptError
from ...core.history import ChatHistory
from ..kvcache import EngineState
from ..models import Model
from . import records as session_records
from .history_patches import patched_history

__all__ = ["checked_engine_state", "with_record"]


def checked_engine_state(engine: object, tokens: list[int], model: Model, source: str) -> EngineState:
    """The state a session's engine section and tokens describe, for ``model``; raises
    :class:`SessionCorruptError` where they do not fit it or each other."""

    def corrupt(why: str) -> SessionCorruptError:
        return SessionCorruptError(f"{source}: {why}; the session was not loaded")

    if not isinstance(engine, dict) or not isinstance(engine.get("text"), str):
        raise corrupt("its engine section is malformed")
    if len(tokens) > model.n_ctx:
        raise corrupt(f"it holds {len(tokens):,} tokens, more than n_ctx={model.n_ctx:,}")
    n_vocab = model.backend.n_vocab
    if tokens and (min(tokens) < 0 or max(tokens) >= n_vocab):
        raise corrupt("it holds token ids outside the model's vocabulary")
    text = engine["text"]
    raw = engine.get("checkpoints")
    if not isinstance(raw, list) or not raw:
        raise corrupt("its checkpoints are malformed")
    checkpoints: list[tuple[int, int]] = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, int) for x in item)):
            raise corrupt("its checkpoints are malformed")
        t, n = item
        if not (0 <= t <= len(text) and 0 <= n <= len(tokens)) or (checkpoints and n < checkpoints[-1][1]):
            raise corrupt("its checkpoints point outside the saved state")
        checkpoints.append((t, n))
    if checkpoints[0] != (0, 0):
        checkpoints.insert(0, (0, 0))
    return EngineState(tokens, text, checkpoints)


def with_record(
    history: ChatHistory, state: EngineState, record: session_records.ParsedRecord, model: Model, source: str
) -> tuple[ChatHistory, EngineState, tuple[int, int, memoryview]]:
    """What the session holds with ``record`` added: its history, engine state and the delta's positions."""
    header = record.header
    first, end = header["from"], header["to"]
    if first != len(state.tokens) or header.get("text_from") != len(state.text):
        raise SessionCorruptError(f"it starts at position {first}, not {len(state.tokens)}")
    raw_tokens, kv = record.sections["tokens"], record.sections["kv"]
    if len(raw_tokens) != 4 * (end - first) or (len(kv) == 0) != (end == first):
        raise SessionCorruptError("its tokens or KV state do not match its positions")
    try:
        engine = json.loads(bytes(record.sections["engine"]).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SessionCorruptError("its engine section does not parse") from None
    if not isinstance(engine, dict) or not isinstance(engine.get("text"), str):
        raise SessionCorruptError("its engine section is malformed")
    tokens = state.tokens + np.frombuffer(raw_tokens, dtype="<i4").tolist()
    combined = {"text": state.text + engine["text"], "checkpoints": engine.get("checkpoints")}
    new_state = checked_engine_state(combined, tokens, model, source)
    return patched_history(history, record.sections["history"]), new_state, (first, end, kv)
