"""A conversation's session as bytes: history + engine state + KV state + model fingerprint, and back.

Reading a session takes its base and then every whole record after it (:mod:`.records`), in order:
the KV states of the base and of each record's positions, the tokens and text they add
(:mod:`._state_checks`), and the history each record changes (:mod:`.history_patches`).

The base's KV bytes, nearly all of a file, are checksummed on other threads while llama.cpp reads
them (:func:`load_into` waits for the check before anything trusts the state; a failed check empties
the cache and raises): a restore then takes about as long as llama.cpp's read alone.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...backends.interface import on_server
from ...core import signing
from ...core.errors import HistoryFormatError, SessionCorruptError, SessionMismatchError, SessionNotFoundError
from ...core.history import ChatHistory
from ...core.safe_files import open_regular
from ..kvcache import EngineState, KeptPrefix, KVCache, Progress
from ..models import Model
from . import container as session_format
from . import records as session_records
from . import writer as session_save
from ._state_checks import checked_engine_state, with_record
from .history_patches import base_history, patched_through

__all__ = [
    "open_session",
    "SavedSession",
    "load_into",
    "compare_fingerprints",
    "saved_top_logits",
    "VERIFY_MODES",
]

VERIFY_MODES = ("auto", "always", "never")


def compare_fingerprints(saved: object, current: dict[str, Any]) -> dict[str, tuple[object, object]]:
    """Fields whose saved value differs from the current model's."""
    if not isinstance(saved, dict):
        return {"fingerprint": ("missing", "present")}
    keys = set(saved) | set(current)
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}


@dataclass
class SavedSession:
    """A parsed session that fits the model: its history, engine state, KV bytes and saved logits.

    ``deltas``: the KV states its records add, as ``(first, end, bytes)`` positions; ``ignored``:
    why reading stopped before the end of the file (a torn or damaged record), else None.
    """

    source: str
    history: ChatHistory
    state: EngineState
    kv: memoryview
    verify: object
    started: float
    deltas: list[tuple[int, int, memoryview]] = field(default_factory=list)
    ignored: str | None = None
    #: The KV bytes' checksum, still running on other threads while they are loaded (None: checked).
    kv_check: session_format.SectionCheck | None = None
    #: Where a save may append (a file whose base this user signed, read to its end); else None.
    point: session_save.SessionPoint | None = None
    records: list[session_records.ParsedRecord] = field(default_factory=list)

    def release(self) -> None:
        if self.kv_check is not None:
            self.kv_check.passed()  # its threads let go of the bytes before the map closes
        self.kv.release()
        for record in self.records:
            record.release()


@contextlib.contextmanager
def open_session(
    model: Model, source: str | os.PathLike[str] | bytes | bytearray, overlap: bool = True
) -> Iterator[SavedSession]:
    """Read and check a session for ``model``; its KV bytes stay readable inside the ``with`` block.

    Raises :class:`SessionMismatchError` (carrying the history) for another model or settings,
    :class:`SessionCorruptError` for damaged data and :class:`SessionNotFoundError` for a missing file.
    With ``overlap`` the base's KV checksum is still running when the block starts
    (``SavedSession.kv_check``, which :func:`load_into` waits for); without it every byte is checked first.
    """
    start = time.perf_counter()
    if isinstance(source, (bytes, bytearray)):
        saved = _parse(model, memoryview(source), "session bytes", start, overlap)
        try:
            yield saved
        finally:
            saved.release()
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
        info = os.fstat(fd)
        size = info.st_size
        if size == 0:
            raise SessionCorruptError(f"{path} is empty: not a usable lmchat session (an interrupted copy?)")
        try:
            mapped = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
        except (OSError, ValueError) as exc:
            raise SessionCorruptError(f"{path} cannot be mapped: {exc}") from None
    finally:
        os.close(fd)
    try:
        saved = _parse(model, memoryview(mapped), str(path), start, overlap)
        if saved.point is not None:
            saved.point.path = path
            saved.point.identity = session_save.identity_of(info)
        try:
            yield saved
        finally:
            saved.release()
    finally:
        with contextlib.suppress(BufferError):
            mapped.close()  # a view still alive elsewhere keeps the map until it is freed


def load_into(cache: KVCache, saved: SavedSession, verify: str, use_kv: bool, progress: Progress | None) -> str:
    """Put a saved session's state into ``cache`` (active, model lock held); returns how it was restored.

    The KV bytes are used where the backend accepts them (checked at first use where ``verify`` asks);
    otherwise the saved tokens are evaluated again: slower, same result. Raises
    :class:`SessionCorruptError` (carrying the history), the cache emptied, when the KV bytes that
    llama.cpp read while their checksum ran fail it.
    """
    taken = cache.load(saved.state, saved.kv, saved.deltas) if use_kv else 0
    kv_check = saved.kv_check
    if kv_check is not None and not kv_check.passed():
        cache.empty()
        raise _with_history(kv_check.failure, saved.history)
    loaded = taken > 0
    server = on_server(cache.backend)
    note = "full session"
    parts = f"base + {len(saved.deltas)} record{'s' if len(saved.deltas) > 1 else ''}" if saved.deltas else "base"
    if saved.ignored is not None:
        note += (
            f" up to a damaged end ({parts}, {len(saved.state.tokens):,} tokens restored; the rest of the file "
            f"was ignored: {_damage(saved.ignored)})"
        )
    elif saved.deltas:
        note += f" ({parts})"
    if loaded and taken < len(saved.state.tokens):
        note += f" (llama.cpp refused a record's KV state: {len(saved.state.tokens) - taken} tokens evaluated again)"
    if loaded and taken == len(saved.state.tokens) and saved.point is not None:
        saved.point.kept = cache.watch()  # a save may append to this file
    else:
        saved.point = None
    if loaded:
        if _needs_verify(verify, cache.model):
            check = saved_top_logits(saved.verify)
            if check is None:
                note = "session tokens (the session has no logits to verify its KV state against, so they were evaluated again)"
                loaded = False
            else:
                cache.check_at_first_use(check)
    elif use_kv and server is not None:
        note = f"{server.persistence()}: the history, which the server reads again with the next answer; restored"
    elif use_kv:
        note = "session tokens (llama.cpp refused the saved KV state, so they were evaluated again)"
    else:
        note = "session tokens (evaluated again, KV state not used)"
    if not loaded:
        cache.reevaluate(saved.state, progress)
    return f"{note} from {saved.source} in {time.perf_counter() - saved.started:.3f} s"


def _damage(why: str) -> str:
    """Why the end of a file is not a whole record, without the advice meant for a whole file that is not loaded."""
    kept = why.replace("record is not a usable lmchat session: ", "").split(". The file was not loaded", 1)[0]
    return kept + ")" * (kept.count("(") - kept.count(")"))  # the brackets the advice closed


def _parse(model: Model, view: memoryview, source: str, started: float, overlap: bool) -> SavedSession:
    try:
        parsed = session_format.parse(view, source, overlap="kv" if overlap else None)
    except SessionCorruptError as exc:
        raise _with_salvaged_history(exc, view) from None
    try:
        result = _parsed_session(model, view, parsed, source, started)
    except BaseException as exc:
        check = parsed.pending
        if check is not None and not check.passed() and isinstance(exc, SessionMismatchError):
            # Damage is reported before other settings, as when every byte was checked first.
            raise _with_salvaged_history(check.failure, view) from None
        raise
    result.kv_check = parsed.pending
    return result


def _parsed_session(
    model: Model, view: memoryview, parsed: session_format.ParsedSession, source: str, started: float
) -> SavedSession:
    try:
        history = ChatHistory.from_bytes(parsed.sections["history"])
    except HistoryFormatError as exc:
        raise SessionCorruptError(f"{source}: its history does not parse ({exc}); the session was not loaded") from None
    try:
        tokens = np.frombuffer(parsed.sections["tokens"], dtype="<i4").tolist()
        engine = json.loads(bytes(parsed.sections["engine"]).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _with_history(SessionCorruptError(f"{source}: its contents do not parse ({exc})"), history) from None
    signed = signing.header_is_signed(parsed.header)
    scan = session_records.read_records(view, parsed.end, parsed.chain, signed)
    current = model.fingerprint()
    saved = parsed.header.get("compat")
    differences = compare_fingerprints(saved, current)
    if differences:
        what = "; ".join(f"{k}: saved {_short(a)}, now {_short(b)}" for k, a, b in _rows(differences))
        saved_name = saved.get("model_name", "?") if isinstance(saved, dict) else "?"
        history = patched_through(history, (record.sections["history"] for record in scan.records))
        _release(scan.records)
        raise SessionMismatchError(
            f"{source} was saved with {saved_name} under other settings than this kernel's {model.name} ({what}). "
            "Its KV state cannot be used here; restore its history instead: "
            "Conversation.from_history(model, error.history)",
            differences,
            history,
        )
    try:
        state = checked_engine_state(engine, tokens, model, source)
    except SessionCorruptError as exc:
        _release(scan.records)
        raise _with_history(exc, history) from None
    result = SavedSession(source, history, state, parsed.sections["kv"], parsed.header.get("verify"), started)
    result.ignored = scan.problem
    for i, record in enumerate(scan.records):
        try:
            result.history, result.state, delta = with_record(result.history, result.state, record, model, source)
        except SessionCorruptError as exc:
            result.ignored = f"record {i + 1}: {exc}"
            _release(scan.records[i:])
            break
        result.records.append(record)
        result.deltas.append(delta)
        result.verify = record.header.get("verify")
    if signed and result.ignored is None and parsed.version >= 2:
        last = result.records[-1].chain if result.records else parsed.chain
        result.point = session_save.SessionPoint(
            Path(),
            list(result.state.tokens),
            result.state.text,
            session_save.message_keys(result.history),
            result.history.conversation_id,
            last,
            len(result.records),
            parsed.end,
            sum(r.length for r in result.records),
            KeptPrefix(0),
        )
    return result


def _release(records: list[session_records.ParsedRecord]) -> None:
    for record in records:
        record.release()


def _with_history(exc: SessionCorruptError, history: ChatHistory) -> SessionCorruptError:
    """``exc`` carrying the history that survived, with a message that says how to use it."""
    return SessionCorruptError(
        f"{exc}. Its history ({history.message_count} messages) is intact: "
        "Conversation.from_history(model, error.history) continues the conversation",
        history,
    )


def _with_salvaged_history(exc: SessionCorruptError, view: memoryview) -> SessionCorruptError:
    """``exc`` carrying the base's history where what survives of ``view`` holds one."""
    history = base_history(view)
    return exc if history is None else _with_history(exc, history)


def _rows(differences: dict[str, tuple[object, object]]) -> list[tuple[str, object, object]]:
    return [(k, a, b) for k, (a, b) in differences.items()]


def _short(value: object) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) > 16 else text


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
