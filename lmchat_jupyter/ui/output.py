"""Cell output for chat answers: streamed into one display, finished as rendered Markdown with a stats line."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from IPython.display import display

from ..core.history import Message
from ..core.results import TurnResult
from .safe_markdown import markdown_bundle, markdown_html

__all__ = ["AnswerDisplay", "Stopped", "stats_line", "show_stored", "show_transcript", "transcript_markdown"]

#: Redraw the streaming answer at most this often (each redraw sends the whole text to the frontend).
REFRESH_SECONDS = 0.08


class AnswerDisplay:
    """One updatable output showing an answer as it streams."""

    def __init__(self) -> None:
        self._text = ""
        self._last = 0.0
        self._handle: Any = display(markdown_bundle(""), raw=True, display_id=True)

    def add(self, piece: str) -> None:
        self._text += piece
        now = time.monotonic()
        if now - self._last >= REFRESH_SECONDS:
            self._last = now
            self._show(markdown_bundle(self._text + " ▌"))

    def finish(self, text: str, footer: str) -> None:
        # Model text is untrusted and JupyterLab trusts the output of a cell just run: see safe_markdown.
        self._show(markdown_bundle(text, footer))

    def drop(self) -> None:
        """The turn failed and left no answer (the server went away, an error): no cursor stays to suggest it
        still streams. What had streamed stays readable, marked as not kept; the error follows below it."""
        if self._text.strip():
            self._show(markdown_bundle(self._text, "dropped · the turn failed, so this partial answer was not kept"))
        else:
            self._show({"text/plain": ""})

    def _show(self, bundle: dict[str, str]) -> None:
        if self._handle is not None:
            self._handle.update(bundle, raw=True)
        else:  # a plain terminal: nothing to update in place
            pass


class Stopped(Exception):
    """An answer stopped by Jupyter's interrupt: the cell ends in one line (not a traceback), and Run All stops there.

    ``tokens``: those of the partial answer the conversation kept (None: stopped before the answer began, so the
    turn left no trace).
    """

    def __init__(self, tokens: int | None) -> None:
        self.tokens = tokens
        kept = "nothing kept" if tokens is None else f"{tokens} token{'s' * (tokens != 1)} kept"
        super().__init__(f"stopped · {kept}")

    def _render_traceback_(self) -> list[str]:  # what IPython shows instead of a traceback
        return [str(self)]


def stats_line(result: TurnResult, n_ctx: int | None, token_count: int) -> str:
    """``42 tokens · 35.1 tok/s · first token 0.12 s · 1,234 / 8,192 context`` (no context where ``n_ctx`` is None:
    a server that does not say its own)."""
    parts = [
        f"{result.generated_tokens} tokens",
        f"{result.tokens_per_second:.1f} tok/s",
        f"first token {result.time_to_first_token:.2f} s",
    ]
    if n_ctx is not None:
        parts.append(f"{token_count:,} / {n_ctx:,} context")
    if result.finish_reason not in ("stop",):
        parts.append(
            {"length": "cut at max tokens", "stopped": "stopped", "interrupted": "interrupted"}[result.finish_reason]
        )
    return " · ".join(parts)


def show_stored(text: str, note: str) -> None:
    """An answer that is already in the conversation, shown again without generating."""
    display(markdown_bundle(text, note), raw=True)


_WHO = {"system": "System", "user": "You", "assistant": "Assistant"}


def transcript_markdown(messages: Iterable[Message]) -> str:
    """The conversation as a Markdown document, each message as written under its speaker."""
    parts = [f"**{_WHO[m.role]}:**\n\n{m.content}" for m in messages]
    return "\n\n---\n\n".join(parts) if parts else "*(no messages yet)*"


def show_transcript(messages: Iterable[Message]) -> None:
    """The conversation in the notebook, each message rendered as safely as an answer."""
    shown = list(messages)
    parts = [f"<p><strong>{_WHO[m.role]}:</strong></p>\n{markdown_html(m.content)}" for m in shown]
    body = "<hr>\n".join(parts) if parts else "<p><em>(no messages yet)</em></p>"
    display({"text/html": body, "text/plain": transcript_markdown(shown)}, raw=True)
