"""ChatHistory: the messages of one conversation, with a versioned, validated JSON form.

The JSON form is also what travels in notebook metadata, so ``from_json`` treats its input as
untrusted: types, sizes and counts are checked and anything off raises :class:`HistoryFormatError`.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import HistoryFormatError
from .safe_files import read_bounded

__all__ = ["ChatHistory", "ForkOrigin", "Message", "HISTORY_FORMAT", "LIMITS"]

HISTORY_FORMAT = 1
ROLES = ("system", "user", "assistant")

#: Caps applied to every history read from outside (files, bytes, notebook metadata).
LIMITS = {
    "max_bytes": 32 * 1024 * 1024,
    "max_messages": 20_000,
    "max_content_chars": 2_000_000,
    "max_id_chars": 200,
}


def new_id() -> str:
    """A short random id for conversations and messages."""
    return uuid.uuid4().hex[:16]


@dataclass
class Message:
    """One chat message. ``cell_id`` is the notebook cell a turn came from, when known."""

    role: str
    content: str
    id: str = field(default_factory=new_id)
    cell_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "role": self.role, "content": self.content}
        if self.cell_id is not None:
            data["cell_id"] = self.cell_id
        if self.meta:
            data["meta"] = self.meta
        return data

    @classmethod
    def from_json(cls, data: object, index: int) -> Message:
        where = f"message {index}"
        if not isinstance(data, dict):
            raise HistoryFormatError(f"{where} is a {type(data).__name__}, expected an object")
        role, content = data.get("role"), data.get("content")
        if role not in ROLES:
            raise HistoryFormatError(f"{where} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise HistoryFormatError(f"{where} has no text content")
        if len(content) > LIMITS["max_content_chars"]:
            raise HistoryFormatError(
                f"{where} holds {len(content):,} characters, over the limit of {LIMITS['max_content_chars']:,}"
            )
        _check_unicode(content, where, "content")
        msg_id = _optional_id(data.get("id"), where, "id") or new_id()
        cell_id = _optional_id(data.get("cell_id"), where, "cell_id")
        meta = data.get("meta", {})
        if not isinstance(meta, dict) or not all(_is_plain(v) for v in meta.values()):
            raise HistoryFormatError(f"{where} has a 'meta' that is not an object of plain values")
        for key, value in meta.items():
            _check_unicode(key, where, "meta")
            if isinstance(value, str):
                _check_unicode(value, where, "meta")
        return cls(role=role, content=content, id=msg_id, cell_id=cell_id, meta=dict(meta))


def _is_plain(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)  # NaN and infinity are not JSON: the frontend could not take them
    return value is None or isinstance(value, (bool, int)) or (isinstance(value, str) and len(value) < 1000)


def _check_unicode(text: str, where: str, name: str) -> None:
    """JSON can carry lone surrogates (``"\\ud800"``), which no UTF-8 file, tokenizer or frontend accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HistoryFormatError(f"{where}: '{name}' is not valid Unicode text (it holds a lone surrogate)") from None


def _optional_id(value: object, where: str, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > LIMITS["max_id_chars"]:
        raise HistoryFormatError(f"{where}: '{name}' must be a non-empty string of at most {LIMITS['max_id_chars']}")
    if any(ord(c) < 32 for c in value):
        raise HistoryFormatError(f"{where}: '{name}' contains control characters")
    _check_unicode(value, where, name)
    return value


@dataclass(frozen=True)
class ForkOrigin:
    """Where a forked conversation came from: the conversation's name and id, and the user turns it kept."""

    name: str
    conversation_id: str
    turns: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "conversation_id": self.conversation_id, "turns": self.turns}

    @classmethod
    def from_json(cls, data: object) -> ForkOrigin | None:
        if data is None:
            return None
        where = "chat history: 'forked_from'"
        if not isinstance(data, dict):
            raise HistoryFormatError(f"{where} must be an object")
        name = _optional_id(data.get("name"), where, "name")
        conv_id = _optional_id(data.get("conversation_id"), where, "conversation_id")
        turns = data.get("turns")
        if name is None or conv_id is None or type(turns) is not int or turns < 0:
            raise HistoryFormatError(f"{where} needs a name, a conversation_id and a number of turns")
        return cls(name, conv_id, turns)


class ChatHistory:
    """The ordered messages of a conversation plus its id (and, for a fork, where it came from).

    ``token_count`` is the number of tokens the conversation occupies in the model's context
    (kept up to date by :class:`~lmchat_jupyter.Conversation`; 0 for a history read from disk).
    """

    def __init__(self, messages: list[Message] | None = None, conversation_id: str | None = None) -> None:
        self.messages: list[Message] = list(messages or [])
        self.conversation_id = conversation_id or new_id()
        self.token_count = 0
        self.forked_from: ForkOrigin | None = None

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    def __getitem__(self, index: int) -> Message:
        return self.messages[index]

    def __repr__(self) -> str:
        return f"ChatHistory(id={self.conversation_id!r}, messages={self.message_count})"

    @property
    def message_count(self) -> int:
        return len(self.messages)

    @property
    def user_message_count(self) -> int:
        return sum(1 for m in self.messages if m.role == "user")

    @property
    def system(self) -> str | None:
        """The system prompt, if the history starts with one."""
        return self.messages[0].content if self.messages and self.messages[0].role == "system" else None

    def as_chat_messages(self) -> list[dict[str, str]]:
        """Messages in the ``[{"role", "content"}]`` form chat templates take."""
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def copy(self) -> ChatHistory:
        clone = ChatHistory.from_json(self.to_json())
        clone.token_count = self.token_count
        return clone

    # --- serialisation -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": HISTORY_FORMAT,
            "conversation_id": self.conversation_id,
            "messages": [m.to_json() for m in self.messages],
        }
        if self.forked_from is not None:  # optional: readers that predate forks ignore it
            data["forked_from"] = self.forked_from.to_json()
        return data

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), ensure_ascii=False, indent=1).encode("utf-8")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the history as JSON, atomically (temp file, fsync, rename)."""
        from .atomic import atomic_write

        atomic_write(Path(path), [self.to_bytes()])

    @classmethod
    def from_json(cls, data: object) -> ChatHistory:
        """Build a history from its JSON form, validating everything (the input may be hostile)."""
        if not isinstance(data, dict):
            raise HistoryFormatError(f"a chat history must be a JSON object, not {type(data).__name__}")
        version = data.get("format")
        if version != HISTORY_FORMAT:
            raise HistoryFormatError(
                f"chat history format {version!r} is not supported (this lmchat reads format {HISTORY_FORMAT}); "
                "upgrade lmchat-jupyter to read it"
            )
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise HistoryFormatError("chat history has no 'messages' list")
        if len(messages) > LIMITS["max_messages"]:
            raise HistoryFormatError(
                f"chat history has {len(messages):,} messages, over the limit of {LIMITS['max_messages']:,}"
            )
        conv_id = _optional_id(data.get("conversation_id"), "chat history", "conversation_id")
        parsed = [Message.from_json(m, i) for i, m in enumerate(messages)]
        if any(m.role == "system" for m in parsed[1:]):
            raise HistoryFormatError("a system message may only come first")
        history = cls(parsed, conversation_id=conv_id)
        history.forked_from = ForkOrigin.from_json(data.get("forked_from"))
        return history

    @classmethod
    def from_bytes(cls, blob: bytes | bytearray | memoryview) -> ChatHistory:
        if len(blob) > LIMITS["max_bytes"]:
            raise HistoryFormatError(f"chat history is {len(blob):,} bytes, over the limit of {LIMITS['max_bytes']:,}")
        try:
            data = json.loads(bytes(blob).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HistoryFormatError(f"chat history is not valid UTF-8 JSON: {exc}") from None
        except RecursionError:
            raise HistoryFormatError("chat history nests too deeply to be a chat history") from None
        return cls.from_json(data)

    @classmethod
    def load(cls, source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> ChatHistory:
        """Read a history saved with :meth:`save` (a path) or :meth:`to_bytes` (bytes)."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            return cls.from_bytes(source)
        path = Path(source)
        try:
            return cls.from_bytes(read_bounded(path, LIMITS["max_bytes"], error=HistoryFormatError))
        except FileNotFoundError:
            raise HistoryFormatError(f"no chat history at {path}") from None
