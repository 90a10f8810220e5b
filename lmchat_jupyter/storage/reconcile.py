"""Two versions of one conversation: which one extends the other, and where the one that must move goes.

The rule that keeps every conversation: where one history extends the other (same messages, by
id, then more), the longer one is the conversation; where they differ, both are kept, the other
under a new name; a file that is replaced anyway is first moved aside as ``NAME.replaced-<time>``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from enum import Enum
from pathlib import Path

from ..core.history import ChatHistory

__all__ = ["Relation", "relation", "free_name", "REPLACED_MARK", "move_aside", "is_backup_name", "length_note"]

MAX_NAME = 64
REPLACED_MARK = ".replaced-"


class Relation(Enum):
    """How history ``a`` relates to history ``b``."""

    SAME = "same"
    A_EXTENDS = "a extends b"
    B_EXTENDS = "b extends a"
    DIVERGED = "diverged"


def relation(a: ChatHistory, b: ChatHistory) -> Relation:
    """Compare two histories by their message ids."""
    ids_a, ids_b = [m.id for m in a], [m.id for m in b]
    if ids_a == ids_b:
        return Relation.SAME
    if ids_a[: len(ids_b)] == ids_b:
        return Relation.A_EXTENDS
    if ids_b[: len(ids_a)] == ids_a:
        return Relation.B_EXTENDS
    return Relation.DIVERGED


def length_note(history: ChatHistory) -> str:
    """How long a history is, before any tokenizer has seen it: "6 messages, 480 characters".

    Characters, counted exactly: a token estimate made without the model's tokenizer and chat template
    was off by more than half (the template's markers around each message count too).
    """
    chars = sum(len(m.content) for m in history)
    count = history.message_count
    return f"{count} message{'s' * (count != 1)}, {chars:,} character{'s' * (chars != 1)}"


def free_name(base: str, taken: Iterable[str], tag: str) -> str:
    """``base-tag`` (or ``base-tag-2``, ...), a valid conversation name not in ``taken``."""
    used = set(taken)
    for n in range(1, 10_000):
        suffix = f"-{tag}" if n == 1 else f"-{tag}-{n}"
        name = base[: MAX_NAME - len(suffix)].rstrip(" .") + suffix
        if name not in used:
            return name
    raise RuntimeError("no free conversation name")  # pragma: no cover - 10,000 names taken


def is_backup_name(name: str) -> bool:
    """Whether ``name`` is a file moved aside by :func:`move_aside` (listed, but not restored at start)."""
    return REPLACED_MARK in name


def move_aside(folder: Path, name: str, suffixes: Iterable[str]) -> str | None:
    """Rename ``name``'s files in ``folder`` (one per suffix, where present) to ``NAME.replaced-<time><suffix>``.

    Returns the new conversation name, or None when none of the files exists. A rename never
    follows a link and never copies, so this is as safe and as fast on any file.
    """
    suffix_list = [s for s in suffixes if os.path.lexists(folder / f"{name}{s}")]
    if not suffix_list:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        mark = f"{REPLACED_MARK}{stamp}" + ("" if n == 1 else f"-{n}")
        new = name[: MAX_NAME - len(mark)].rstrip(" .") + mark
        if not any(os.path.lexists(folder / f"{new}{s}") for s in suffix_list):
            break
    for suffix in suffix_list:
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder / f"{name}{suffix}", folder / f"{new}{suffix}")
    return new
