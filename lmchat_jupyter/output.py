"""Cell output for chat answers: streamed into one display, finished as Markdown with a stats line."""

from __future__ import annotations

import time
from typing import Any

from IPython.display import Markdown, display

from .results import TurnResult
from .safe_markdown import safe_markdown

__all__ = ["AnswerDisplay", "stats_line"]

#: Redraw the streaming answer at most this often (each redraw sends the whole text to the frontend).
REFRESH_SECONDS = 0.08


class AnswerDisplay:
    """One updatable output showing an answer as it streams."""

    def __init__(self) -> None:
        self._text = ""
        self._last = 0.0
        self._handle: Any = display(Markdown("…"), display_id=True)

    def add(self, piece: str) -> None:
        self._text += piece
        now = time.monotonic()
        if now - self._last >= REFRESH_SECONDS:
            self._last = now
            self._show(safe_markdown(self._text) + " ▌")

    def finish(self, text: str, footer: str) -> None:
        # Model text is untrusted: JupyterLab trusts the output of a cell just run, so escape it here.
        body = safe_markdown(text)
        self._show(f"{body}\n\n<sub>{footer}</sub>" if footer else body)

    def _show(self, markdown: str) -> None:
        if self._handle is not None:
            self._handle.update(Markdown(markdown))
        else:  # a plain terminal: nothing to update in place
            pass


def stats_line(result: TurnResult, n_ctx: int, token_count: int) -> str:
    """``42 tokens · 35.1 tok/s · first token 0.12 s · 1,234 / 8,192 context``."""
    parts = [
        f"{result.generated_tokens} tokens",
        f"{result.tokens_per_second:.1f} tok/s",
        f"first token {result.time_to_first_token:.2f} s",
        f"{token_count:,} / {n_ctx:,} context",
    ]
    if result.finish_reason not in ("stop",):
        parts.append(
            {"length": "cut at max tokens", "stopped": "stopped", "interrupted": "interrupted"}[result.finish_reason]
        )
    return " · ".join(parts)


def show_stored(text: str, note: str) -> None:
    """An answer that is already in the conversation, shown again without generating."""
    display(Markdown(f"{safe_markdown(text)}\n\n<sub>{note}</sub>"))
