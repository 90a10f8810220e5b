"""A conversation's full session as bytes: history + engine state + KV state + model fingerprint, and back."""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import session_format, signing
from ._version import __version__
from .backend import on_server
from .errors import HistoryFormatError, SessionCorruptError, SessionMismatchError, SessionNotFoundError
from .history import ChatHistory
from .kvcache import EngineState, KVCache, Progress
from .models import Model
from .safe_files import open_regular

__all__ = [
    "session_chunks",
    "open_session",
    "SavedSession",
    "load_into",
    "compare_fingerprints",
    "saved_top_logits",
    "VERIFY_MODES",
]

VERIFY_MODES = ("auto", "always", "never")
_TOP_K = 8


def session_chunks(history: ChatHistory, model: Model, cache: KVCache) -> list[memoryview]:
    """The bytes of a session, in order (``cache`` must be active).

    The KV state is copied once, straight from the backend into the buffer that gets written.
    """
    state = cache.state
    verify = cache.top_logits_for_save(_TOP_K)
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
    return session_format.build(
        header,
        [
            ("history", history.to_bytes()),
            ("engine", json.dumps(engine, ensure_ascii=False).encode("utf-8")),
            ("tokens", np.asarray(state.tokens, dtype="<i4").tobytes()),
            ("kv", kv),
        ],
        seal=signing.sign_header,
    )


def compare_fingerprints(saved: object, current: dict[str, Any]) -> dict[str, tuple[object, object]]:
    """Fields whose saved value differs from the current model's."""
    if not isinstance(saved, dict):
        return {"fingerprint": ("missing", "present")}
    keys = set(saved) | set(current)
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}


@dataclass
class SavedSession:
    """A parsed session that fits the model: its history, engine state, KV bytes and saved logits."""

    source: str
    history: ChatHistory
    state: EngineState
    kv: memoryview
    verify: object
    started: float


@contextlib.contextmanager
def open_session(model: Model, source: str | os.PathLike[str] | bytes | bytearray) -> Iterator[SavedSession]:
    """Read and check a session for ``model``; its KV bytes stay readable inside the ``with`` block.

    Raises :class:`SessionMismatchError` (carrying the history) for another model or settings,
    :class:`SessionCorruptError` for damaged data and :class:`SessionNotFoundError` for a missing file.
    """
    start = time.perf_counter()
    if isinstance(source, (bytes, bytearray)):
        saved = _parse(model, memoryview(source), "session bytes", start)
        try:
            yield saved
        finally:
            saved.kv.release()
        return
    path = Path(source)
    try:
        # No size bound here: the file is mapped, not read, and only the bytes its checked header
        # points at are touched (each once, for its checksum).
        fd = open_regular(path, error=SessionCorruptError)
    except FileNotFoundError:
        raise SessionNotFoundError(
            f"no session file at {path}. Check the path, or start a new conversation (Conversation(model))"
        ) from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise SessionCorruptError(f"{path} is empty: not a usable lmchat session (an interrupted copy?)")
        try:
            mapped = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:
            raise SessionCorruptError(f"{path} cannot be mapped: {exc}") from None
    finally:
        os.close(fd)
    try:
        saved = _parse(model, memoryview(mapped), str(path), start)
        try:
            yield saved
        finally:
            saved.kv.release()
    finally:
        with contextlib.suppress(BufferError):
            mapped.close()  # a view still alive elsewhere keeps the map until it is freed


def load_into(cache: KVCache, saved: SavedSession, verify: str, use_kv: bool, progress: Progress | None) -> str:
    """Put a saved session's state into ``cache`` (active, model lock held); returns how it was restored.

    The KV bytes are used where the backend accepts them (checked at first use where ``verify`` asks);
    otherwise the saved tokens are evaluated again: slower, same result.
    """
    loaded = use_kv and cache.load(saved.state, saved.kv)
    server = on_server(cache.backend)
    note = "full session"
    if loaded:
        if _needs_verify(verify, cache.model):
            check = saved_top_logits(saved.verify)
            if check is None:
                note = "session tokens (the session has no logits to verify its KV state against, so they were evaluated again)"
                loaded = False
            else:
                cache.check_at_first_use(check)
    elif use_kv and server is not None:
        note = f"history ({server.persistence()}: the server reads it again with the next answer)"
    elif use_kv:
        note = "session tokens (llama.cpp refused the saved KV state, so they were evaluated again)"
    else:
        note = "session tokens (evaluated again, KV state not used)"
    if not loaded:
        cache.reevaluate(saved.state, progress)
    return f"{note} from {saved.source} in {time.perf_counter() - saved.started:.3f} s"


def _parse(model: Model, view: memoryview, source: str, started: float) -> SavedSession:
    try:
        parsed = session_format.parse(view, source)
    except SessionCorruptError as exc:
        raise _with_salvaged_history(exc, view) from None
    try:
        history = ChatHistory.from_bytes(parsed.sections["history"])
    except HistoryFormatError as exc:
        raise SessionCorruptError(f"{source}: its history does not parse ({exc}); the session was not loaded") from None
    try:
        tokens = np.frombuffer(parsed.sections["tokens"], dtype="<i4").tolist()
        engine = json.loads(bytes(parsed.sections["engine"]).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _with_history(SessionCorruptError(f"{source}: its contents do not parse ({exc})"), history) from None
    current = model.fingerprint()
    saved = parsed.header.get("compat")
    differences = compare_fingerprints(saved, current)
    if differences:
        what = "; ".join(f"{k}: saved {_short(a)}, now {_short(b)}" for k, a, b in _rows(differences))
        saved_name = saved.get("model_name", "?") if isinstance(saved, dict) else "?"
        raise SessionMismatchError(
            f"{source} was saved with {saved_name} under other settings than this kernel's {model.name} ({what}). "
            "Its KV state cannot be used here; restore its history instead: "
            "Conversation.from_history(model, error.history)",
            differences,
            history,
        )
    try:
        state = _checked_engine_state(engine, tokens, model, source)
    except SessionCorruptError as exc:
        raise _with_history(exc, history) from None
    return SavedSession(source, history, state, parsed.sections["kv"], parsed.header.get("verify"), started)


def _with_history(exc: SessionCorruptError, history: ChatHistory) -> SessionCorruptError:
    """``exc`` carrying the history that survived, with a message that says how to use it."""
    return SessionCorruptError(
        f"{exc}. Its history ({history.message_count} messages) is intact: "
        "Conversation.from_history(model, error.history) continues the conversation",
        history,
    )


def _with_salvaged_history(exc: SessionCorruptError, view: memoryview) -> SessionCorruptError:
    section = session_format.salvage(view, "history")
    if section is None:
        return exc
    try:
        history = ChatHistory.from_bytes(section)
    except HistoryFormatError:
        return exc
    finally:
        section.release()
    return _with_history(exc, history)


def _rows(differences: dict[str, tuple[object, object]]) -> list[tuple[str, object, object]]:
    return [(k, a, b) for k, (a, b) in differences.items()]


def _short(value: object) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) > 16 else text


def _checked_engine_state(engine: object, tokens: list[int], model: Model, source: str) -> EngineState:
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


def _needs_verify(mode: str, model: Model) -> bool:
    return mode == "always" or (mode == "auto" and model.n_swa > 0)


def saved_top_logits(saved: object) -> list[tuple[int, float]] | None:
    """The (token, logit) pairs stored at save time, or None where the header has none that make sense."""
    if not isinstance(saved, list) or not saved:
        return None
    try:
        pairs = [(int(t), float(v)) for t, v in saved]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for _, v in pairs):
        return None
    return pairs
