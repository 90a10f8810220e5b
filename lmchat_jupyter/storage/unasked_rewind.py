"""Keeping a conversation whole before a rewind that matching chose, not the user.

Where no cell ids are sent (nbclient, scripts, consoles), a ``%%chat`` run is matched to a stored
turn by order; a different message there rewinds to that turn. What the rewind drops is kept first,
as ``NAME.replaced-<time>``, the way the store keeps any conversation it replaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..engine.conversation import Conversation
from .reconcile import move_aside
from .sidecar import HISTORY_SUFFIX, SESSION_SUFFIX, Sidecar, check_name

__all__ = ["keep_before_rewind"]


class KeepingStore(Protocol):
    """What keeping needs of the store (a :class:`~.store.ChatStore`)."""

    sidecar: Sidecar

    def flush(self, timeout: float = 60.0) -> None: ...

    def write_history_file(self, path: Path, conv: Conversation) -> bool: ...


def keep_before_rewind(store: KeepingStore, name: str, conv: Conversation) -> str | None:
    """Keep ``conv`` as it is now under a new name ``NAME.replaced-<time>``; returns that name.

    Its history file is written first, so the files kept hold every message in memory; its session
    file moves with it (restored from its KV state and caught up from the history when opened).
    None where nothing could be kept (a folder this kernel cannot write): the caller must not rewind.
    """
    sidecar = store.sidecar
    if not sidecar.writable:
        return None
    store.flush()  # no save still running may write the old files after they moved
    if not store.write_history_file(sidecar.history_path(name), conv):
        return None
    return move_aside(sidecar.folder, check_name(name), [SESSION_SUFFIX, HISTORY_SUFFIX])
