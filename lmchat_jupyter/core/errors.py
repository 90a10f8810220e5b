"""The errors lmchat raises: one type per thing a user can act on, each message saying what to do."""

from __future__ import annotations

__all__ = [
    "LmchatError",
    "ModelNotFoundError",
    "ModelLoadError",
    "NothingToSaveError",
    "SessionNotFoundError",
    "SessionCorruptError",
    "SessionMismatchError",
    "ContextOverflowError",
    "ConversationBusyError",
    "HistoryFormatError",
    "StorageError",
    "UnsafeFileError",
    "ServerError",
    "ServerUnreachableError",
    "ServerAuthError",
    "ServerModelError",
    "ServerContextTooSmallError",
    "SlotStorageError",
]


class LmchatError(Exception):
    """Base class of every error lmchat raises on purpose."""


class ModelNotFoundError(LmchatError):
    """The model spec names nothing that exists (missing file, unknown repo, default package absent)."""


class ModelLoadError(LmchatError):
    """The file exists but llama.cpp cannot load it (not a GGUF, unsupported architecture, too little memory)."""


class NothingToSaveError(LmchatError):
    """A session was saved before the conversation had a single completed turn."""


class SessionNotFoundError(LmchatError):
    """The session file to restore does not exist."""


class SessionCorruptError(LmchatError):
    """The session file or blob is truncated, damaged or not an lmchat session at all.

    ``history`` holds the conversation's history when it survived the damage (its section is
    intact), so callers can fall back to :meth:`Conversation.from_history`; None otherwise.
    """

    def __init__(self, message: str, history: object = None) -> None:
        super().__init__(message)
        self.history = history


class SessionMismatchError(LmchatError):
    """The session was saved with another model or other settings; its KV state cannot be used here.

    ``differences`` maps each differing field to ``(saved, current)``. ``history`` holds the
    conversation's history, so callers can fall back to :meth:`Conversation.from_history`.
    """

    def __init__(self, message: str, differences: dict[str, tuple[object, object]], history: object) -> None:
        super().__init__(message)
        self.differences = differences
        self.history = history


class ContextOverflowError(LmchatError):
    """The conversation no longer fits in the model's context window."""


class ConversationBusyError(LmchatError):
    """Another generation is running on this conversation."""


class HistoryFormatError(LmchatError):
    """A chat history (file, bytes or notebook metadata) does not follow lmchat's history schema."""


class StorageError(LmchatError):
    """A session could not be written (disk full, read-only folder, locked by another kernel)."""


class UnsafeFileError(StorageError):
    """A file lmchat keeps (in a notebook's sidecar folder) is not a plain file it can use.

    A symbolic link, FIFO, device, folder or file larger than lmchat reads stands where lmchat's own
    file should be; it is neither read through nor written to. The message names the file. A
    :class:`StorageError`: whatever cannot save where such a file stands handles it already.
    """


class ServerError(LmchatError):
    """An inference server answered a request with an error. ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerUnreachableError(ServerError):
    """The inference server cannot be reached, or stopped answering in the middle of a reply."""


class ServerAuthError(ServerError):
    """The inference server wants an API key: none was sent, or it refused the one sent (HTTP 401 or 403)."""


class ServerModelError(ServerError):
    """The server does not serve the model a conversation uses (any more): the message names those it serves."""


class ServerContextTooSmallError(ServerError, ContextOverflowError):
    """The conversation does not fit in the context the server gives one request (its slot size)."""


class SlotStorageError(ServerError):
    """llama-server refused to save or restore a slot file (no --slot-save-path, file missing or unusable)."""
