"""Saving and restoring a Conversation's full session: history + KV state + model fingerprint."""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import mmap
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import interrupts, kvstate, session_format, signing
from .errors import HistoryFormatError, SessionCorruptError, SessionMismatchError, SessionNotFoundError
from .history import ChatHistory
from .safe_files import open_regular

if TYPE_CHECKING:
    from .conversation import Conversation, Progress
    from .models import Model

__all__ = ["session_chunks", "read_session", "compare_fingerprints", "saved_top_logits", "VERIFY_MODES"]

VERIFY_MODES = ("auto", "always", "never")
_TOP_K = 8


def session_chunks(conv: Conversation) -> list[memoryview]:
    """The bytes of ``conv``'s session, in order (``conv``'s tokens must be in the KV cache).

    The KV state is copied once, straight from llama.cpp into the buffer that gets written.
    """
    from . import __version__

    llm = conv.model.llm
    state = conv._state
    verify = _fresh_top_logits(conv)
    # np.empty, not bytearray(size): a bytearray is zero-filled first, touching every page before
    # llama.cpp writes it (about 0.2 s for the 190 MB of an 8k context).
    size = kvstate.state_size(llm)
    kv = np.empty(size, dtype=np.uint8).data
    written = kvstate.read_state_into(llm, kv)
    if written != size:
        kv = kv[:written]
    engine = {"text": state.text, "checkpoints": state.checkpoints}
    header: dict[str, Any] = {
        "lmchat": __version__,
        "saved_at": time.time(),
        "conversation_id": conv.history.conversation_id,
        "model_spec": conv.model.spec,
        "n_tokens": len(state.tokens),
        "compat": conv.model.fingerprint(),
        "verify": verify,
    }
    return session_format.build(
        header,
        [
            ("history", conv.history.to_bytes()),
            ("engine", json.dumps(engine, ensure_ascii=False).encode("utf-8")),
            ("tokens", np.asarray(state.tokens, dtype="<i4").tobytes()),
            ("kv", kv),
        ],
        seal=signing.sign_header,
    )


def _fresh_top_logits(conv: Conversation) -> list[list[float]] | None:
    """The last position's best logits, re-decoding the last token if they are stale."""
    llm = conv.model.llm
    tokens = conv._state.tokens
    if not tokens:
        return None
    if conv._pending_check is not None:
        # A restored state not checked yet is saved as it was loaded: with the logits it came with.
        return [[t, v] for t, v in conv._pending_check]
    if not conv._logits_fresh and not conv._redecode_last():
        conv._repair()  # the cache may be cut already: make it agree with the conversation again
        return None
    return [[t, v] for t, v in kvstate.last_logits_top(llm, _TOP_K)]


def compare_fingerprints(saved: object, current: dict[str, Any]) -> dict[str, tuple[object, object]]:
    """Fields whose saved value differs from the current model's."""
    if not isinstance(saved, dict):
        return {"fingerprint": ("missing", "present")}
    keys = set(saved) | set(current)
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}


def read_session(
    cls: type[Conversation],
    model: Model,
    source: str | os.PathLike[str] | bytes | bytearray,
    *,
    verify: str = "auto",
    use_kv: bool = True,
    progress: Progress | None = None,
    **kwargs: Any,
) -> Conversation:
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify={verify!r}; choose one of {VERIFY_MODES}")
    if isinstance(source, (bytes, bytearray)):
        return _restore_from_buffer(
            cls, model, memoryview(source), "session bytes", source, verify, use_kv, progress, kwargs
        )
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
        return _restore_from_buffer(cls, model, memoryview(mapped), str(path), mapped, verify, use_kv, progress, kwargs)
    finally:
        with contextlib.suppress(BufferError):
            mapped.close()  # a view still alive elsewhere keeps the map until it is freed


def _restore_from_buffer(
    cls: type[Conversation],
    model: Model,
    view: memoryview,
    source: str,
    owner: bytes | bytearray | mmap.mmap,
    verify: str,
    use_kv: bool,
    progress: Progress | None,
    kwargs: dict[str, Any],
) -> Conversation:
    start = time.perf_counter()
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
    kv_view = parsed.sections["kv"]
    conv = cls(model, history=history, **kwargs)
    with conv._turn_lock, model.lock, interrupts.held():
        conv._activate()
        loaded = False
        if use_kv and state.tokens and len(kv_view):
            address = _address(owner, parsed.offsets["kv"])
            loaded = kvstate.load_state(model.llm, address, len(kv_view), state.tokens)
        kv_view.release()
        note = "full session"
        if loaded:
            conv._state = state
            conv._logits_fresh = False
            if _needs_verify(verify, model):
                check = saved_top_logits(parsed.header.get("verify"))
                if check is None:
                    note = "session tokens (the session has no logits to verify its KV state against, so they were evaluated again)"
                    loaded = False
                else:
                    # Checked at its first use (Conversation._check_restored), not here.
                    conv._pending_check = check
        elif use_kv:
            note = "session tokens (llama.cpp refused the saved KV state, so they were evaluated again)"
        else:
            note = "session tokens (evaluated again, KV state not used)"
        if not loaded:
            conv._reevaluate(state, progress)
    conv.history.token_count = len(conv._state.tokens)
    conv.restored_from = f"{note} from {source} in {time.perf_counter() - start:.3f} s"
    conv._emit("restored", text=conv.restored_from)
    return conv


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


def _checked_engine_state(engine: object, tokens: list[int], model: Model, source: str) -> Any:
    from .conversation import EngineState

    def corrupt(why: str) -> SessionCorruptError:
        return SessionCorruptError(f"{source}: {why}; the session was not loaded")

    if not isinstance(engine, dict) or not isinstance(engine.get("text"), str):
        raise corrupt("its engine section is malformed")
    if len(tokens) > model.n_ctx:
        raise corrupt(f"it holds {len(tokens):,} tokens, more than n_ctx={model.n_ctx:,}")
    n_vocab = model.llm.n_vocab()
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


def _address(owner: bytes | bytearray | mmap.mmap, offset: int) -> int:
    if isinstance(owner, bytes):
        base = ctypes.cast(ctypes.c_char_p(owner), ctypes.c_void_p).value or 0
        return base + offset
    anchor = ctypes.c_char.from_buffer(owner, offset)
    address = ctypes.addressof(anchor)
    del anchor
    return address


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
