"""lmchat: persistent local LLM chats for Jupyter.

``%load_ext lmchat`` adds the ``%%chat`` magic; the engine below it is usable on its own::

    from lmchat_jupyter import load_model, Conversation
    conv = Conversation(load_model(), system="You are terse.")
    conv.submit("Hello").text
    conv.save("chat.lmsession")
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

# Before anything else of lmchat: sets what llama.cpp reads when it loads, so that a llama_cpp imported
# later (by the first local model, or by the user) sees it. llama_cpp itself is not imported here.
from .backends import local as _local  # noqa: F401
from .core.errors import (
    ContextOverflowError,
    ConversationBusyError,
    HistoryFormatError,
    LmchatError,
    ModelLoadError,
    ModelNotFoundError,
    NothingToSaveError,
    SessionCorruptError,
    SessionMismatchError,
    SessionNotFoundError,
    StorageError,
    UnsafeFileError,
)
from .core.events import ConversationEvent
from .core.history import ChatHistory, Message
from .core.results import ConversationInfo, GenerationOptions, TurnResult
from .engine.autosave import AutoSave
from .engine.conversation import Conversation, StreamingTurn
from .engine.models import Model, ModelSettings, load_model

__all__ = [
    "__version__",
    "load_model",
    "current",
    "Model",
    "ModelSettings",
    "Conversation",
    "StreamingTurn",
    "AutoSave",
    "ChatHistory",
    "Message",
    "ConversationEvent",
    "ChatWidget",
    "ConversationInfo",
    "GenerationOptions",
    "TurnResult",
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
    "load_ipython_extension",
    "unload_ipython_extension",
]


def __getattr__(name: str) -> Any:
    # The notebook parts are imported on demand: the engine alone needs no IPython, ipywidgets or fcntl.
    if name == "ChatWidget":
        from .ui.widget import ChatWidget

        return ChatWidget
    if name == "current":
        from . import ui  # noqa: F401  (long evaluations show as a bar)
        from .notebook.kernel import current

        return current
    raise AttributeError(f"module 'lmchat_jupyter' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext lmchat_jupyter``: register the ``%%chat`` and ``%chat`` magics."""
    from .ui.magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext lmchat_jupyter``: save every conversation and remove the magics."""
    from .ui.magics import unload

    unload(ipython)
