"""The history a session holds: its base's, patched by each whole record's change in turn.

A record's history section is a patch: how many messages of the history before it to keep, and the
messages that follow them (:mod:`~lmchat_jupyter.engine.session.records`). The history can be read
without the model (:func:`history_in`): for a file whose KV state will not be used, or is damaged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from ...core.errors import HistoryFormatError, SessionCorruptError
from ...core.history import ChatHistory
from . import container as session_format
from . import records as session_records

__all__ = ["base_history", "patched_history", "patched_through", "history_in"]


def base_history(view: memoryview) -> ChatHistory | None:
    """The base's history, from what survives of a session's bytes; None where it is missing or damaged."""
    section = session_format.salvage(view, "history")
    if section is None:
        return None
    try:
        return ChatHistory.from_bytes(section)
    except HistoryFormatError:
        return None
    finally:
        section.release()


def patched_history(history: ChatHistory, change: memoryview) -> ChatHistory:
    """``history`` with a record's change (its history section): its first ``keep`` messages, then the record's."""
    try:
        patch = json.loads(bytes(change).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SessionCorruptError("its history change does not parse") from None
    if not isinstance(patch, dict) or type(patch.get("keep")) is not int or not isinstance(patch.get("messages"), list):
        raise SessionCorruptError("its history change is malformed")
    keep = patch["keep"]
    if not 0 <= keep <= len(history):
        raise SessionCorruptError(f"its history change keeps {keep} of {len(history)} messages")
    data = history.to_json()
    data["messages"] = data["messages"][:keep] + patch["messages"]
    data["conversation_id"] = patch.get("conversation_id")
    data.pop("forked_from", None)
    if "forked_from" in patch:
        data["forked_from"] = patch["forked_from"]
    try:
        return ChatHistory.from_json(data)
    except HistoryFormatError as exc:
        raise SessionCorruptError(f"its history change makes no history ({exc})") from None


def patched_through(history: ChatHistory, changes: Iterable[memoryview]) -> ChatHistory:
    """``history`` patched by each of ``changes`` in order, up to the first one that does not apply."""
    for change in changes:
        try:
            history = patched_history(history, change)
        except SessionCorruptError:
            break
    return history


def history_in(view: memoryview) -> ChatHistory | None:
    """The visible history a session holds (its base's, changed by its whole records); None if unusable.

    Read without the model: for a file whose KV state will not be used, or is damaged.
    """
    history = base_history(view)
    if history is None:
        return None
    where = session_format.extent(view)
    if where is None:
        return history
    end, chain, _header = where
    changes = session_records.record_histories(view, end, chain)
    try:
        return patched_through(history, changes)
    finally:
        for change in changes:
            change.release()
