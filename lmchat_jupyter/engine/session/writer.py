"""What a save writes: the whole session, or a record of what changed since the file was last written.

A conversation remembers the file it last saved to (or restored from) as a :class:`SessionPoint`.
The next save to that file appends a record (:mod:`session_records`) when everything the file holds
is still a prefix of the conversation: the same tokens with the same KV bytes (a :class:`KeptPrefix`
of the cache, lowered by every cut), the same text, and the file as this process left it. Otherwise
(a rewind or cut into what was saved, another file in its place, records already as large as the
base, a backend that cannot take a state in parts) the save writes the whole session again, which
also compacts base and records into one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._version import __version__
from ...backends.interface import delta_states
from ...core import signing
from ...core.atomic import append_whole, atomic_write_stat
from ...core.history import ChatHistory
from ..kvcache import KeptPrefix, KVCache
from ..models import Model
from . import container as session_format
from . import records as session_records

__all__ = [
    "SessionPoint",
    "SavePlan",
    "plan_save",
    "write_plan",
    "full_chunks",
    "message_keys",
    "FileIdentity",
    "MAX_WRITTEN_RECORDS",
]

TOP_K = 8
#: A save writes the whole session again once the file holds this many records.
MAX_WRITTEN_RECORDS = 256

#: ``(st_dev, st_ino, st_size, st_mtime_ns)``: the file as this process left it.
FileIdentity = tuple[int, int, int, int]


@dataclass
class SessionPoint:
    """What a session file holds, as this process wrote or read it last: where the next record goes."""

    path: Path
    tokens: list[int]
    text: str
    messages: list[str]
    conversation_id: str
    chain: str
    records: int
    base_bytes: int
    record_bytes: int
    kept: KeptPrefix
    identity: FileIdentity | None = None


@dataclass
class SavePlan:
    """The chunks to write and, once written, what the file holds."""

    chunks: list[memoryview]
    point: SessionPoint
    append: bool
    #: Bytes in all, and the KV bytes among them (the new positions' alone for a record).
    size: int = 0
    kv_bytes: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    #: Seconds the save held the conversation (the next turn waits for at most this), and spent writing.
    locked_seconds: float = 0.0
    write_seconds: float = 0.0


def message_keys(history: ChatHistory) -> list[str]:
    """One string per message that changes whenever the message does (what a record compares)."""
    return [json.dumps(m.to_json(), ensure_ascii=False, sort_keys=True) for m in history.messages]


def plan_save(
    history: ChatHistory, model: Model, cache: KVCache, point: SessionPoint | None, path: Path | None
) -> SavePlan:
    """The bytes a save of ``cache`` (active, model lock held) writes: a record after ``point`` where it can."""
    appendable = path is not None and point is not None and _can_append(history, model, cache, point, path)
    if appendable and point is not None and _unchanged(history, cache, point):
        # Nothing to append. Checked before the logits below: taking them may decode the last token
        # again, which would count as a change to what the file holds.
        return SavePlan([], point, True)
    verify = cache.top_logits_for_save(TOP_K)
    if appendable and point is not None and _can_append(history, model, cache, point, path):
        return _record(history, model, cache, point, verify)
    return full_chunks(history, model, cache, verify, path)


def write_plan(target: Path, plan: SavePlan, whole: Callable[[], SavePlan]) -> SavePlan:
    """Write ``plan`` to ``target``; returns the plan written, its point now the file (its chunks let go).

    A record is appended only where ``target`` is still the file as this process left it; otherwise
    the whole session, ``whole()``, is written in its place, atomically.
    """
    started = time.perf_counter()
    written = None
    if plan.append and plan.point.identity is not None:
        written = append_whole(target, plan.chunks, plan.point.identity)
        if written is None:  # not the file this process wrote: write it whole
            plan = whole()
            started = time.perf_counter()
    if written is None:
        written = atomic_write_stat(target, plan.chunks)
    plan.write_seconds = time.perf_counter() - started
    plan.point.path = target
    plan.point.identity = identity_of(written)
    plan.chunks = []  # the sizes stay; the KV bytes go
    return plan


def _unchanged(history: ChatHistory, cache: KVCache, point: SessionPoint) -> bool:
    state = cache.state
    return (
        len(state.tokens) == len(point.tokens) and state.text == point.text and message_keys(history) == point.messages
    )


def _can_append(history: ChatHistory, model: Model, cache: KVCache, point: SessionPoint, path: Path | None) -> bool:
    state = cache.state
    n = len(point.tokens)
    return (
        point.path == path
        and point.identity is not None
        and delta_states(model.backend) is not None
        and point.kept.n >= n
        and len(state.tokens) >= n
        and state.tokens[:n] == point.tokens
        and state.text.startswith(point.text)
        and history.conversation_id == point.conversation_id
        and point.records < MAX_WRITTEN_RECORDS
        and point.record_bytes <= point.base_bytes
    )


def full_chunks(
    history: ChatHistory, model: Model, cache: KVCache, verify: list[list[float]] | None, path: Path | None
) -> SavePlan:
    """The whole session: the KV state copied once, straight from the backend into the buffer written."""
    state = cache.state
    # np.empty, not bytearray(size): a bytearray is zero-filled first, touching every page before
    # llama.cpp writes it (about 0.2 s for the 190 MB of an 8k context).
    size = model.backend.state_size()
    kv = np.empty(size, dtype=np.uint8).data
    written = model.backend.export_state(kv)
    if written != size:
        kv = kv[:written]
    engine = {"text": state.text, "checkpoints": state.checkpoints}
    header: dict[str, Any] = {
        "lmchat": __version__,
        "saved_at": time.time(),
        "conversation_id": history.conversation_id,
        "model_spec": model.spec,
        "n_tokens": len(state.tokens),
        "compat": model.fingerprint(),
        "verify": verify,
    }
    chunks = session_format.build(
        header,
        [
            ("history", history.to_bytes()),
            ("engine", json.dumps(engine, ensure_ascii=False).encode("utf-8")),
            ("tokens", np.asarray(state.tokens, dtype="<i4").tobytes()),
            ("kv", kv),
        ],
        seal=signing.sign_header,
    )
    total = sum(len(c) for c in chunks)
    point = SessionPoint(
        path or Path(),
        list(state.tokens),
        state.text,
        message_keys(history),
        history.conversation_id,
        session_format.lead_digest(chunks[0]),
        0,
        total,
        0,
        cache.watch(),
    )
    return SavePlan(chunks, point, False, total, len(kv))


def _record(
    history: ChatHistory, model: Model, cache: KVCache, point: SessionPoint, verify: list[list[float]] | None
) -> SavePlan:
    """A record of what changed since ``point``: new tokens, their KV state alone, new text and messages."""
    state = cache.state
    backend = delta_states(model.backend)
    assert backend is not None
    first, end = len(point.tokens), len(state.tokens)
    keys = message_keys(history)
    keep = _common_prefix(point.messages, keys)
    kv = backend.export_delta(first) if end > first else memoryview(b"")
    patch: dict[str, Any] = {
        "keep": keep,
        "messages": [m.to_json() for m in history.messages[keep:]],
        "conversation_id": history.conversation_id,
    }
    if history.forked_from is not None:
        patch["forked_from"] = history.forked_from.to_json()
    engine = {"text": state.text[len(point.text) :], "checkpoints": state.checkpoints}
    header: dict[str, Any] = {
        "lmchat": __version__,
        "saved_at": time.time(),
        "record": point.records + 1,
        "prev": point.chain,
        "from": first,
        "to": end,
        "text_from": len(point.text),
        "verify": verify,
    }
    history_bytes = json.dumps(patch, ensure_ascii=False).encode("utf-8")
    chunks = session_records.build_record(
        header,
        [
            ("history", history_bytes),
            ("engine", json.dumps(engine, ensure_ascii=False).encode("utf-8")),
            ("tokens", np.asarray(state.tokens[first:], dtype="<i4").tobytes()),
            ("kv", kv),
        ],
    )
    total = sum(len(c) for c in chunks)
    after = SessionPoint(
        point.path,
        list(state.tokens),
        state.text,
        keys,
        history.conversation_id,
        session_format.lead_digest(chunks[0]),
        point.records + 1,
        point.base_bytes,
        point.record_bytes + total,
        cache.watch(),
        point.identity,
    )
    details = {"new_tokens": end - first, "history_bytes": len(history_bytes)}
    return SavePlan(chunks, after, True, total, len(kv), details)


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def identity_of(info: os.stat_result) -> FileIdentity:
    """A file's :data:`FileIdentity` from its ``fstat``."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
