"""The history embedded in notebook metadata (``metadata.lmchat``): build it, and check it as untrusted input.

Shape (format 1)::

    {"format": 1, "embed"?: "full" | "metadata-only" | "off",
     "conversations"?: {NAME: {"id": ..., "model": {"spec", "name", "sha256"},
                               "messages": [{"id", "role", "content", "cell_id"?, "meta"?}, ...]}}}

``embed`` is the notebook's own choice of what it carries (absent: ``full``). With ``metadata-only``
each message keeps its id, role, cell id and ``length`` (characters) but no text, so the notebook
shows where its chats were without sharing them; with ``off`` only the choice itself is kept.

Limits: the whole value at most ``MAX_METADATA_BYTES``, at most ``MAX_CONVERSATIONS`` conversations,
and each history within :data:`lmchat_jupyter.core.history.LIMITS`. Names must pass
:func:`~lmchat_jupyter.storage.sidecar.check_name`, so none can point outside the sidecar folder.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import HistoryFormatError, LmchatError
from ..core.history import HISTORY_FORMAT, ChatHistory, Message
from .sidecar import check_name

if TYPE_CHECKING:
    from ..engine.conversation import Conversation

__all__ = [
    "EmbeddedChat",
    "EmbeddedChats",
    "METADATA_KEY",
    "METADATA_FORMAT",
    "EMBED_SETTINGS",
    "build_metadata",
    "mark_emptied",
    "embed_setting",
    "parse_metadata",
    "read_notebook_metadata",
    "strip_notebook_file",
]

METADATA_KEY = "lmchat"
METADATA_FORMAT = 1
MAX_METADATA_BYTES = 8 * 1024 * 1024
MAX_CONVERSATIONS = 32
MAX_NOTEBOOK_BYTES = 256 * 1024 * 1024
#: What a notebook carries of its chats: everything, the outline without text, or nothing.
EMBED_SETTINGS = ("full", "metadata-only", "off")


@dataclass(frozen=True)
class EmbeddedChat:
    """One conversation as found in a notebook's metadata."""

    name: str
    history: ChatHistory
    model_spec: str | None


class EmbeddedChats(list[EmbeddedChat]):
    """The conversations found in one ``metadata.lmchat``, and one sentence for each entry left out."""

    def __init__(self) -> None:
        super().__init__()
        #: Why each refused entry was left out (its name shown safely); the others are used.
        self.skipped: list[str] = []


#: Conversations that a clear or rewind left without messages: embedded as such, so the notebook drops them.
_EMPTIED: weakref.WeakSet[Conversation] = weakref.WeakSet()


def mark_emptied(conv: Conversation) -> None:
    """Note that the user emptied ``conv``: the notebook's metadata is to hold it with no messages."""
    _EMPTIED.add(conv)


def build_metadata(
    conversations: dict[str, Conversation], waiting: dict[str, EmbeddedChat] | None = None, embed: str = "full"
) -> dict[str, Any] | None:
    """The value to store under ``metadata.lmchat`` for the ``embed`` setting; None when there is nothing to embed.

    ``waiting`` are the notebook's histories not evaluated yet: they stay in the notebook as they are.
    """
    if embed not in EMBED_SETTINGS:
        raise ValueError(f"embed={embed!r}; choose one of {', '.join(EMBED_SETTINGS)}")
    value: dict[str, Any] = {"format": METADATA_FORMAT}
    if embed != "full":
        value["embed"] = embed  # absent means full, as every notebook written before the setting existed
    if embed == "off":
        return value
    out: dict[str, Any] = {}
    for name, chat in (waiting or {}).items():
        if name not in conversations:
            out[name] = {
                "id": chat.history.conversation_id,
                "model": {"spec": chat.model_spec},
                "messages": [m.to_json() if embed == "full" else _outline(m) for m in chat.history],
            }
            if chat.history.forked_from is not None:
                out[name]["forked_from"] = chat.history.forked_from.to_json()
    for name, conv in conversations.items():
        if not conv.history.message_count and conv not in _EMPTIED:
            continue  # new and empty: nothing to embed, and nothing the notebook carries is replaced
        out[name] = {
            "id": conv.history.conversation_id,
            "model": {"spec": conv.model.spec, "name": conv.model.name, "sha256": conv.model.sha256},
            "messages": [m.to_json() if embed == "full" else _outline(m) for m in conv.history],
        }
        if conv.history.forked_from is not None:
            out[name]["forked_from"] = conv.history.forked_from.to_json()
    if not out:
        return value if embed != "full" else None
    value["conversations"] = out
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_METADATA_BYTES:
        raise LmchatError(
            f"the chat history is over {MAX_METADATA_BYTES // 2**20} MB, too big to embed in the notebook; "
            "it is still saved in the sidecar folder"
        )
    return value


def _outline(message: Message) -> dict[str, Any]:
    """A message without its text: what ``metadata-only`` keeps."""
    data: dict[str, Any] = {"id": message.id, "role": message.role, "length": len(message.content)}
    if message.cell_id is not None:
        data["cell_id"] = message.cell_id
    return data


def embed_setting(value: object) -> str | None:
    """The ``embed`` choice a notebook's ``metadata.lmchat`` holds (``full`` when it has none), else None."""
    if not isinstance(value, dict):
        return None
    embed = value.get("embed", "full")
    return embed if isinstance(embed, str) and embed in EMBED_SETTINGS else None


def parse_metadata(value: object) -> EmbeddedChats:
    """Check untrusted ``metadata.lmchat`` and return its conversations; HistoryFormatError says what is wrong.

    A conversation that breaks the rules (its name, its messages, its model spec) is left out and
    said in ``skipped``; the others are returned. HistoryFormatError where the value as a whole is
    refused, or where no conversation in it can be used. A notebook that embeds ``metadata-only``
    or ``off`` holds no conversation to restore: none is returned.
    """
    if value is None:
        return EmbeddedChats()
    if not isinstance(value, dict):
        raise HistoryFormatError(f"notebook metadata 'lmchat' must be an object, not {type(value).__name__}")
    try:
        size = len(json.dumps(value, ensure_ascii=False).encode())
    except UnicodeEncodeError:
        raise HistoryFormatError(
            "notebook metadata 'lmchat' is not valid Unicode text (it holds a lone surrogate)"
        ) from None
    except (ValueError, TypeError, RecursionError):
        raise HistoryFormatError("notebook metadata 'lmchat' is not plain JSON") from None
    if size > MAX_METADATA_BYTES:
        raise HistoryFormatError(f"notebook metadata 'lmchat' is {size:,} bytes, over the {MAX_METADATA_BYTES:,} limit")
    fmt = value.get("format")
    if type(fmt) is not int or fmt != METADATA_FORMAT:  # not True, not 1.0
        raise HistoryFormatError(f"notebook metadata 'lmchat' has format {fmt!r}; this lmchat reads {METADATA_FORMAT}")
    embed = value.get("embed", "full")
    if embed not in EMBED_SETTINGS:
        raise HistoryFormatError(f"notebook metadata 'lmchat' has embed {embed!r}; expected one of {EMBED_SETTINGS}")
    if embed != "full":
        return EmbeddedChats()
    conversations = value.get("conversations")
    if not isinstance(conversations, dict):
        raise HistoryFormatError("notebook metadata 'lmchat' has no 'conversations' object")
    if len(conversations) > MAX_CONVERSATIONS:
        raise HistoryFormatError(f"notebook metadata 'lmchat' has over {MAX_CONVERSATIONS} conversations")
    found = EmbeddedChats()
    for raw_name, entry in conversations.items():
        try:
            found.append(_entry(raw_name, entry, found))
        except HistoryFormatError as exc:  # one bad entry never takes the good ones with it
            found.skipped.append(str(exc))
    if found.skipped and not found:
        more = len(found.skipped) - 1
        raise HistoryFormatError(found.skipped[0] + (f" (and {more} more refused)" if more else ""))
    return found


def _entry(raw_name: object, entry: object, found: list[EmbeddedChat]) -> EmbeddedChat:
    """One conversation of ``metadata.lmchat``, checked; HistoryFormatError names it and says what is wrong."""
    try:
        name = check_name(raw_name)
    except LmchatError as exc:
        raise HistoryFormatError(f"notebook metadata: {exc}") from None
    if any(chat.name == name for chat in found):  # two spellings of one name (NFC and NFD)
        raise HistoryFormatError(f"notebook metadata names the conversation {name!r} twice")
    if not isinstance(entry, dict):
        raise HistoryFormatError(f"notebook metadata: conversation {name!r} is not an object")
    try:
        history = ChatHistory.from_json(
            {
                "format": HISTORY_FORMAT,
                "conversation_id": entry.get("id"),
                "messages": entry.get("messages"),
                "forked_from": entry.get("forked_from"),
            }
        )
    except HistoryFormatError as exc:
        raise HistoryFormatError(f"notebook metadata: conversation {name!r}: {exc}") from None
    model = entry.get("model")
    spec = model.get("spec") if isinstance(model, dict) else None
    if spec is not None and (not isinstance(spec, str) or len(spec) > 1000):
        raise HistoryFormatError(f"notebook metadata: conversation {name!r} has a malformed model spec")
    return EmbeddedChat(name, history, spec)


def read_notebook_metadata(path: Path) -> object:
    """``metadata.lmchat`` of the .ipynb at ``path`` (None if absent or unreadable)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_NOTEBOOK_BYTES:
            return None
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deeply to decode
        return None
    metadata = notebook.get("metadata") if isinstance(notebook, dict) else None
    return metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None


def strip_notebook_file(path: Path) -> bool:
    """Remove ``metadata.lmchat`` from the .ipynb at ``path``, written atomically; whether there was one."""
    from ..core.atomic import atomic_write

    notebook = json.loads(path.read_text(encoding="utf-8"))
    metadata = notebook.get("metadata") if isinstance(notebook, dict) else None
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        return False
    del metadata[METADATA_KEY]
    # nbformat's own layout (one-space indent, text as is, a final newline): the diff shows only the removal.
    atomic_write(path, [(json.dumps(notebook, ensure_ascii=False, indent=1, sort_keys=True) + "\n").encode("utf-8")])
    return True
