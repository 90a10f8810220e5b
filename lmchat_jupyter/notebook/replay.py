"""Idempotent re-runs: decide whether a ``%%chat`` cell's turn is already in the conversation.

A turn is found by the cell it came from (JupyterLab sends cell ids) or, where no cell ids are sent
(nbclient, nbval), by the order of ``%%chat`` runs since the kernel started.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.history import ChatHistory

__all__ = ["Decision", "decide", "cell_turns", "WIDGET_CELL_ID"]

#: The cell id that chat widget turns carry: they belong to no cell and are never replayed or rewound by one.
WIDGET_CELL_ID = "lmchat-widget"


def cell_turns(history: ChatHistory) -> list[int]:
    """Indices of the user messages that came from cells (not from the chat widget)."""
    return [i for i, m in enumerate(history.messages) if m.role == "user" and m.cell_id != WIDGET_CELL_ID]


@dataclass(frozen=True)
class Decision:
    """``action`` is "replay" (show the stored answer), "rewind" (answer anew from ``index``) or "new"."""

    action: str
    index: int | None = None  # the user message's index in the history
    #: Matched by the order of runs (no cell ids), not by the cell: a rewind here was not asked for.
    by_order: bool = False


def decide(history: ChatHistory, prompt: str, cell_id: str | None, order: int, regen: bool = False) -> Decision:
    """What a ``%%chat`` cell should do; ``order`` is how many ``%%chat`` runs came before it."""
    users = cell_turns(history)
    index: int | None = None
    by_order = False
    if cell_id is not None and any(history[i].cell_id for i in users):
        index = next((i for i in users if history[i].cell_id == cell_id), None)
    elif order < len(users):
        index, by_order = users[order], True
    if index is None:
        return Decision("new")
    answered = index + 1 < len(history) and history[index + 1].role == "assistant"
    if history[index].content == prompt and answered and not regen:
        return Decision("replay", index)
    return Decision("rewind", index, by_order)
