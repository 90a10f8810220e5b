"""lmchat: persistent local LLM chats for Jupyter.

``%load_ext lmchat`` adds the ``%%chat`` magic; the engine below it is usable on its own::

    from lmchat_jupyter import load_model, Conversation
    conv = Conversation(load_model(), system="You are terse.")
    conv.submit("Hello").text
    conv.save("chat.lmsession")
"""

from __future__ import annotations

from typing import Any

from . import _llama_env  # noqa: F401  (first: sets what llama.cpp reads when llama_cpp loads)
from ._version import __version__
from .autosave import AutoSave
from .conversation import Conversation, StreamingTurn
from .errors import (
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
from .events import ConversationEvent
from .history import ChatHistory, Message
from .models import Model, ModelSettings, load_model
from .results import ConversationInfo, GenerationOptions, TurnResult

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
        from .widget import ChatWidget

        return ChatWidget
    if name == "current":
        from .kernel import current

        return current
    raise AttributeError(f"module 'lmchat_jupyter' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext lmchat_jupyter``: register the ``%%chat`` and ``%chat`` magics."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext lmchat_jupyter``: save every conversation and remove the magics."""
    from .magics import unload

    unload(ipython)
