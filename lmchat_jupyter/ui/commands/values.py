"""What a ``%chat`` or ``%%chat`` argument may be: checked while the line is parsed, before anything runs.

Each is an argparse ``type``: a value outside its range is refused with one line that says what to write
instead (argparse puts ``argument --NAME:`` in front), so a bad value never reaches the engine or the store.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
import unicodedata
from collections.abc import Callable

from ...core.errors import LmchatError
from ...core.safe_files import describe_mode
from ...storage.sidecar import check_name

__all__ = ["whole", "number", "name", "system", "spec", "path", "key", "MAX_TOKENS", "MAX_SEED"]

MAX_TOKENS = 10_000_000
MAX_SEED = 2**32 - 1


def _refuse(why: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(why)


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _refuse(f"{value!r} is not a whole number") from None


def whole(low: int, high: int, what: str, rule: str | None = None) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high``; ``what`` names it, ``rule`` (if given) says what it may be."""

    def parse(value: str) -> int:
        n = _int(value)
        if not low <= n <= high:
            raise _refuse(f"{n:,} is out of range: {rule or f'{what} is a whole number from {low:,} to {high:,}'}")
        return n

    return parse


def number(low: float, high: float, what: str, rule: str | None = None) -> Callable[[str], float]:
    """A finite number from ``low`` to ``high``; ``what`` names it, ``rule`` (if given) says what it may be."""

    def parse(value: str) -> float:
        try:
            x = float(value)
        except ValueError:
            raise _refuse(f"{value!r} is not a number") from None
        if not math.isfinite(x) or not low <= x <= high:
            raise _refuse(f"{value} is out of range: {rule or f'{what} is a number from {low:g} to {high:g}'}")
        return x

    return parse


def name(value: str) -> str:
    """A conversation name, by the rule the sidecar folder names its files by (NFC form)."""
    try:
        return check_name(value)
    except LmchatError as exc:
        raise _refuse(str(exc)) from None


def _printable(value: str, what: str) -> str:
    if not value.strip():
        raise _refuse(f"{what} is empty")
    bad = next((c for c in value if unicodedata.category(c) == "Cc" and c not in "\n\t"), None)
    if bad is not None:
        raise _refuse(f"{what} holds the control character {bad!r}; remove it")
    return value


def system(value: str) -> str:
    """A system prompt: not blank, no control characters (a newline or tab may be in it)."""
    if not value.strip():
        raise _refuse("TEXT is empty: leave --system out for a conversation without a system prompt")
    return _printable(value, "TEXT")


def spec(value: str) -> str:
    """A model spec: one line, not blank."""
    _printable(value, "the model SPEC (a .gguf file, hf:OWNER/REPO/FILE.gguf or http://HOST:PORT)")
    if "\n" in value or "\t" in value:
        raise _refuse("a model SPEC is one line: a .gguf file, hf:OWNER/REPO/FILE.gguf or http://HOST:PORT")
    clean = value.strip()
    if not clean.lower().startswith(("hf:", "http://", "https://")):
        # Reading a FIFO would wait for a writer forever, a device never ends: only a plain file is a model.
        try:
            mode = os.stat(os.path.expanduser(clean)).st_mode
        except OSError:
            mode = None  # nothing there (the model loader says so, with its hints)
        if mode is not None and not stat.S_ISREG(mode):
            raise _refuse(f"{clean} is {describe_mode(mode)}, not a model file: give the path of a .gguf file")
    return clean


def path(value: str) -> str:
    """A path the user typed: not blank, one line, no control characters."""
    _printable(value, "the path")
    if "\n" in value or "\t" in value:
        raise _refuse(f"{value!r} holds a newline or tab: a path here is one line")
    return value


def key(value: str) -> str:
    """An API key: one word of printable characters (empty: no key)."""
    if any(unicodedata.category(c)[0] in "CZ" for c in value.strip()):
        raise _refuse("an API key is one word: no spaces, tabs, newlines or control characters")
    return value
