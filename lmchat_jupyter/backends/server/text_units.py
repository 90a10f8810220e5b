"""Tokens of lmchat's own, for a backend whose server gives no token-level access.

A unit is one to three bytes of UTF-8 text, its id computed from the bytes alone (no vocabulary), so any
list of units turns back into its text in any process: a saved session's tokens need nothing else.
Messages are rendered as records (record separator, role, unit separator, content), which the server
never sees: :func:`read_chat` turns the text back into messages for its chat endpoint. The rendering is
prefix-consistent: the text for an answer followed by the answer is where the text with that answer
begins, so the engine's cache reuses every earlier turn as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["N_UNITS", "encode_units", "decode_units", "render_chat", "read_chat"]

_TWO = 256  # the first id of a two-byte unit
_THREE = _TWO + (1 << 16)  # the first id of a three-byte unit
#: Unit ids run from 0 to ``N_UNITS - 1``.
N_UNITS = _THREE + (1 << 24)

_RECORD, _FIELD, _ESCAPE = "\x1e", "\x1f", "\x1c"
_ESCAPES = {_ESCAPE: _ESCAPE + "0", _RECORD: _ESCAPE + "1", _FIELD: _ESCAPE + "2"}
_UNESCAPES = {v[1]: k for k, v in _ESCAPES.items()}
_SPECIAL = re.compile("[\x1c\x1e\x1f]")
_ESCAPED = re.compile("\x1c(.)", re.DOTALL)


def encode_units(data: bytes) -> list[int]:
    """The units of ``data``: three bytes each, the last one or two bytes alone."""
    units = []
    end = len(data) - len(data) % 3
    for i in range(0, end, 3):
        units.append(_THREE + int.from_bytes(data[i : i + 3], "big"))
    rest = data[end:]
    if len(rest) == 2:
        units.append(_TWO + int.from_bytes(rest, "big"))
    elif rest:
        units.append(rest[0])
    return units


def decode_units(units: Iterable[int]) -> bytes:
    """The bytes ``units`` stand for (ids outside ``0 .. N_UNITS - 1`` stand for nothing)."""
    out = bytearray()
    for unit in units:
        if 0 <= unit < _TWO:
            out.append(unit)
        elif _TWO <= unit < _THREE:
            out += (unit - _TWO).to_bytes(2, "big")
        elif _THREE <= unit < N_UNITS:
            out += (unit - _THREE).to_bytes(3, "big")
    return bytes(out)


def _escape(text: str) -> str:
    return _SPECIAL.sub(lambda m: _ESCAPES[m.group()], text)


def _unescape(text: str) -> str:
    return _ESCAPED.sub(lambda m: _UNESCAPES.get(m.group(1), m.group(1)), text)


def render_chat(messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    """The messages as records; with ``generation_prompt``, an empty assistant record opened for the answer."""
    text = "".join(f"{_RECORD}{_escape(m['role'])}{_FIELD}{_escape(m['content'])}" for m in messages)
    return text + (f"{_RECORD}assistant{_FIELD}" if generation_prompt else "")


def read_chat(text: str) -> list[dict[str, str]]:
    """The messages of a :func:`render_chat` text; an empty assistant record at the end (the opening of the
    answer asked for) is left out."""
    messages = []
    for record in text.split(_RECORD)[1:]:
        role, _, content = record.partition(_FIELD)
        messages.append({"role": _unescape(role), "content": _unescape(content)})
    if messages and messages[-1] == {"role": "assistant", "content": ""}:
        messages.pop()
    return messages
