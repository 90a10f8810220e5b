"""The chat widget's status line: model, size, speed of the last answer, whether it is saved."""

from __future__ import annotations

from ..engine.conversation import Conversation
from ..storage.store import ChatStore

__all__ = ["status_line", "FINISH_NOTES"]

FINISH_NOTES = {"stopped": "stopped", "length": "cut at max tokens"}


def status_line(conv: Conversation, store: ChatStore, name: str, generating: bool) -> str:
    """What the widget says under the chat of ``conv`` (called ``name`` in ``store``)."""
    info = conv.info
    size = f"{info.token_count:,} / {info.n_ctx:,} tokens" if conv.model.context_known else "history-only"
    parts = [conv.model.display_name, size]
    if generating:
        parts.append("generating…")
    elif conv.last_result is not None:
        last = conv.last_result
        parts.append(f"{last.tokens_per_second:.1f} tok/s last answer")
        parts += [FINISH_NOTES[last.finish_reason]] if last.finish_reason in FINISH_NOTES else []
    if store.last_save_error:
        parts.append(f"not saved: {store.last_save_error}")
    elif not store.autosave:
        parts.append("not saved (autosave off)")
    elif not store.sidecar.writable:
        parts.append(store.where_saved(name))
    elif not generating:  # the answer under way is not saved yet: "saved" would say it is
        parts.append("saved" if info.user_message_count else "nothing to save yet")
    return " · ".join(parts)
