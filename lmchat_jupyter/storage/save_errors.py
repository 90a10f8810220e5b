"""How a failed save is told: one sentence the user can act on, the chat going on in memory."""

from __future__ import annotations

__all__ = ["save_failed_line"]


def save_failed_line(message: str) -> str:
    """``lmchat: could not save: <why>. The chat goes on in memory …`` (one full stop, whatever ``message`` ends with)."""
    why = message.strip().rstrip(".")
    return (
        f"lmchat: could not save: {why}. The chat goes on in memory; "
        "the next change tries to save it again, and `%chat info` shows the last error."
    )
