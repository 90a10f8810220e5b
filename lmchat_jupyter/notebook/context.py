"""What the notebook ran, for ``%%chat``: ``Err`` (each failed cell's traceback) and the ``--context`` blocks.

``Err`` sits in the user's namespace beside IPython's ``In`` and ``Out``: ``Err[7]`` is the traceback
of cell 7, as the notebook showed it, without its colour codes. ``--context`` adds earlier cells to
a message in a block whose first and last lines say where it starts and ends.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .interpolation import MAX_VALUE_CHARS, format_value, shorten

__all__ = [
    "ErrorLog",
    "ContextBlock",
    "ContextSpec",
    "parse_context",
    "context_block",
    "record_error",
    "strip_ansi",
    "MAX_CONTEXT_CELLS",
]

#: The most cells ``--context cells:N`` takes.
MAX_CONTEXT_CELLS = 20
#: Tracebacks kept in ``Err`` (the newest), and the characters kept of each.
MAX_ERRORS = 100
MAX_TRACEBACK_CHARS = 20_000
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour and cursor codes (IPython colours its tracebacks)."""
    return _ANSI.sub("", text)


class ErrorLog(dict[int, str]):
    """``Err``: the traceback text of each cell that raised, by execution count (the newest ``MAX_ERRORS``)."""

    def add(self, count: int, text: str) -> None:
        self[count] = text
        while len(self) > MAX_ERRORS:
            del self[min(self)]


def record_error(shell: Any, count: int | None, exc: BaseException | None) -> None:
    """Keep the traceback of the cell numbered ``count`` in the namespace's ``Err`` (post_run_cell)."""
    log = shell.user_ns.get("Err")
    if exc is None or count is None or not isinstance(log, ErrorLog):
        return
    try:
        text = "\n".join(shell.InteractiveTB.structured_traceback(type(exc), exc, exc.__traceback__))
    except Exception:  # noqa: BLE001 - IPython's formatter failing must not lose the error
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    text = strip_ansi(text)
    log.add(count, text if len(text) <= MAX_TRACEBACK_CHARS else shorten(text, MAX_TRACEBACK_CHARS))


@dataclass(frozen=True)
class ContextSpec:
    """``--context``: "cell" (the code cell run before), "cells" (the last ``count``) or "error"."""

    kind: str
    count: int = 1

    def __str__(self) -> str:
        return f"cells:{self.count}" if self.kind == "cells" else self.kind


def parse_context(value: str) -> ContextSpec:
    """``cell``, ``cells:N`` or ``error``; ValueError with the fix otherwise."""
    if value in ("cell", "error"):
        return ContextSpec(value)
    kind, _, number = value.partition(":")
    if kind == "cells" and number.isdigit() and 1 <= int(number) <= MAX_CONTEXT_CELLS:
        return ContextSpec("cells", int(number))
    raise ValueError(
        f"--context {value}: write cell (the code cell run before this one), cells:N (the last N code cells, "
        f"N from 1 to {MAX_CONTEXT_CELLS}) or error (the last error)"
    )


@dataclass(frozen=True)
class ContextBlock:
    """The delimited text added before a message, and a short description of what it holds."""

    text: str
    label: str


def context_block(spec: ContextSpec, shell: Any, limit: int = MAX_VALUE_CHARS) -> ContextBlock:
    """The block for ``spec`` from the cells run before the current one; ValueError when there are none."""
    ns = shell.user_ns
    sources = _sources(shell)
    outputs: Mapping[int, Any] = ns.get("Out") if isinstance(ns.get("Out"), Mapping) else {}
    errors: Mapping[int, str] = ns.get("Err") if isinstance(ns.get("Err"), ErrorLog) else {}
    before = [n for n in range(shell.execution_count - 1, 0, -1) if n < len(sources) and _is_code(sources[n])]
    if spec.kind == "error":
        failed = [
            n
            for n in sorted(errors, reverse=True)
            if n < shell.execution_count and (n >= len(sources) or _is_code(sources[n]))
        ]
        if not failed:
            raise ValueError("--context error: no cell has raised an error in this kernel yet")
        counts, label = failed[:1], f"the last error (In [{failed[0]}])"
    else:
        if not before:
            raise ValueError(f"--context {spec}: no code cell has run before this one in this kernel")
        counts = sorted(before[: spec.count])
        numbers = ", ".join(f"In [{n}]" for n in counts)
        label = (
            f"the code cell run before this one ({numbers})"
            if spec.kind == "cell"
            else f"the last {len(counts)} code cells ({numbers})"
        )
    parts = [f"--- notebook context: {label} ---"]
    for n in counts:
        source = sources[n] if n < len(sources) else ""
        parts.append(f"In [{n}]:\n{_fenced(shorten(source, limit) if len(source) > limit else source, 'python')}")
        if n in outputs:
            text, _cut = format_value(outputs[n], limit)
            parts.append(f"Out [{n}]:\n{_fenced(text)}")
        if n in errors:
            text = errors[n]
            parts.append(f"Error in [{n}]:\n{_fenced(shorten(text, limit) if len(text) > limit else text)}")
    parts.append("--- end of notebook context ---")
    return ContextBlock("\n".join(parts), label)


def _sources(shell: Any) -> list[str]:
    """What each cell held as typed (``%%chat`` and not the code IPython turns it into)."""
    history = getattr(shell, "history_manager", None)
    raw = getattr(history, "input_hist_raw", None)
    if isinstance(raw, list) and raw:
        return [str(s) for s in raw]
    parsed = shell.user_ns.get("In")
    return [str(s) for s in parsed] if isinstance(parsed, list) else []


def _is_code(source: str) -> bool:
    """A cell worth showing: not empty and not a chat message itself."""
    text = source.strip()
    return bool(text) and not text.startswith(("%%chat", "%chat"))


def _fenced(text: str, language: str = "") -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"
