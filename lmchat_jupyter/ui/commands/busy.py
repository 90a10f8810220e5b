"""Waiting for a conversation that another frontend (the chat widget, a save) is using."""

from __future__ import annotations

import time

from ...engine.conversation import Conversation

__all__ = ["wait_until_free"]


def wait_until_free(conv: Conversation) -> None:
    """Let the chat widget's answer (or a save) finish before a cell decides what to do; say so if it takes a while."""
    start, said = time.monotonic(), False
    while conv.busy:
        if not said and time.monotonic() - start > 0.3:
            print("lmchat: waiting for the widget's answer…")
            said = True
        time.sleep(0.05)
