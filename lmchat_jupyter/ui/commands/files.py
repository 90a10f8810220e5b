"""``%chat save``, ``load``, ``export`` and ``forget``: a conversation's files."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ...core.atomic import atomic_write
from ...core.errors import HistoryFormatError, SessionCorruptError, UnsafeFileError
from ...core.history import ChatHistory
from ...core.safe_files import describe_mode
from ...engine.conversation import Conversation
from ...engine.session.container import MAGIC
from ...notebook.kernel import KernelChats
from ...notebook.replay import cell_turns
from ...storage import space as sidecar_space
from ..output import transcript_markdown
from . import values
from .base import command

__all__ = ["save", "load", "export", "forget"]


@command(
    "save",
    argument("path", nargs="?", type=values.path, metavar="PATH"),
    help="save the full session (default: the sidecar)",
)
def save(state: KernelChats, args: argparse.Namespace) -> None:
    """Write the active conversation's session to ``PATH`` (default: its file in the sidecar folder)."""
    store = state.store
    conv = store.get()
    path = _save_target(Path(args.path).expanduser()) if args.path else store.sidecar.session_path(store.active)
    path.parent.mkdir(parents=True, exist_ok=True)
    conv.save(path)
    print(f"lmchat: saved to {path.resolve()}")


@command(
    "load", argument("path", type=values.path, metavar="PATH"), help="load a session (.lmsession) or a history (.json)"
)
def load(state: KernelChats, args: argparse.Namespace) -> None:
    """Replace the active conversation with a saved session or history."""
    store = state.store
    # The conversation it replaces comes in first, so that the store keeps it aside where the loaded one does
    # not continue it.
    store.get()
    path = _user_file(Path(args.path).expanduser())
    model = store.model_for(None)
    # The engine's advice is for lmchat's own files (delete it, restore from its history); this file is the user's.
    try:
        if path.suffix == ".json":
            conv = Conversation.from_history(model, ChatHistory.load(path), progress=store.progress("Re-reading"))
        else:
            conv = Conversation.restore(model, path, progress=store.progress("Restoring"))
    except HistoryFormatError as exc:
        raise UsageError(f"{path} is not an lmchat history file ({_reason(exc, path)}); nothing was loaded") from None
    except (SessionCorruptError, UnsafeFileError) as exc:
        raise UsageError(f"{path} is not an lmchat session file ({_reason(exc, path)}); nothing was loaded") from None
    store.adopt(store.active, conv)
    state.replay_cursor[store.active] = len(cell_turns(conv.history))
    print(f"lmchat: loaded {conv.info.message_count} messages from {path}")


@command(
    "export",
    argument("path", type=values.path, metavar="PATH"),
    help="write the conversation as Markdown (.md) or JSON",
)
def export(state: KernelChats, args: argparse.Namespace) -> None:
    """Write the active conversation's messages to ``PATH``, as Markdown or as a history file."""
    conv = state.store.get()
    path = Path(args.path).expanduser()
    _refuse_odd(path, "%chat export", "nothing was written")
    if path.suffix == ".json":
        conv.history.save(path)
    elif path.suffix in (".md", ".markdown"):
        atomic_write(path, [transcript_markdown(conv.history).encode("utf-8")])
    else:
        raise UsageError("%chat export PATH: PATH must end in .md (Markdown) or .json (history)")
    # A bare name lands in the kernel's working folder, which is not always the notebook's: say where.
    print(f"lmchat: exported {conv.info.message_count} messages to {path.resolve()}")


@command(
    "forget",
    argument("conversation", type=values.name, metavar="NAME"),
    help="remove NAME's KV cache file (not its history)",
)
def forget(state: KernelChats, args: argparse.Namespace) -> None:
    """Remove ``NAME``'s KV cache file from the sidecar folder; its history stays."""
    freed = sidecar_space.drop_kv_cache(state.store, args.conversation)
    print(
        f"lmchat: removed the KV cache of {args.conversation!r} ({sidecar_space.format_size(freed)}); its "
        "history stays, and a later kernel evaluates it again"
        if freed
        else f"lmchat: {args.conversation!r} has no KV cache file; its history stays"
    )


def _refuse_odd(path: Path, command: str, outcome: str) -> os.stat_result | None:
    """What is at ``path`` (links followed: the user named it), None for nothing; a folder, device, FIFO or socket
    is refused before anything opens it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{command}: {path} cannot be used ({exc.strerror or exc}); {outcome}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{command}: {path} is {describe_mode(info.st_mode)}, not a file; {outcome}")
    return info


def _user_file(path: Path) -> Path:
    """The file the user asked ``%chat load`` to read, checked before it is opened (and its links resolved)."""
    if _refuse_odd(path, "%chat load", "nothing was loaded") is None:
        raise UsageError(f"%chat load: there is no file at {path}; nothing was loaded")
    return path.resolve()


def _save_target(path: Path) -> Path:
    """Where ``%chat save PATH`` may write: a new file, or a session file lmchat wrote, never another file."""
    if _refuse_odd(path, "%chat save", "nothing was saved") is not None:
        try:
            with path.open("rb") as file:
                start = file.read(len(MAGIC))
        except OSError as exc:
            raise UsageError(f"%chat save: {path} cannot be read ({exc.strerror or exc}); nothing was saved") from None
        if start != MAGIC:
            raise UsageError(
                f"%chat save: {path} is not an lmchat session file, and lmchat does not write over other files; "
                "nothing was saved. Give a new path (such as notes.lmsession)"
            )
    return path


def _reason(exc: Exception, path: Path) -> str:
    """Why the engine refused the file, without its advice (meant for lmchat's own files)."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return reason
    text = str(exc)
    for lead in (f"{path} is not a usable lmchat session: ", f"{path} is not a regular file: ", f"{path} "):
        if text.startswith(lead):
            text = text[len(lead) :]
            break
    return text.split(". ")[0].rstrip(".")
