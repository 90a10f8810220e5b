"""What a sidecar folder holds for one conversation, read as untrusted input, and whether this user wrote it.

Only a signed file (see :mod:`lmchat_jupyter.core.signing`) may choose the model a restore loads or
bring a KV state; an unsigned one gives its visible history, and the user is told which model it
names and the exact line that continues on it.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import signing
from ..core.errors import LmchatError
from ..core.history import LIMITS, ChatHistory
from ..core.safe_files import open_regular, read_bounded
from ..engine.session.container import read_header
from ..engine.session.history_patches import history_in
from .sidecar import Sidecar

__all__ = ["SavedChat", "read_saved", "session_history", "disk_history", "untrusted_model_note"]

_SHOWN_CHARS = 200
_MAX_SPEC = 1000  # as for specs in notebook metadata


@dataclass
class SavedChat:
    """One conversation's files in a sidecar folder."""

    history: ChatHistory | None = None
    history_spec: str | None = None
    history_signed: bool = False
    has_session: bool = False
    header: dict[str, Any] | None = None
    session_signed: bool = False
    problems: tuple[str, ...] = ()

    @property
    def exists(self) -> bool:
        """Whether a readable history or a session file (readable or not) is there."""
        return self.history is not None or self.has_session

    def trusted_spec(self) -> str | None:
        """The model spec that signed files name (the history file's first); None: the kernel's own choice."""
        if self.history_signed and self.history_spec is not None:
            return self.history_spec
        if self.session_signed and self.header is not None:
            spec = self.header.get("model_spec")
            return spec if isinstance(spec, str) else None
        return None

    def untrusted_spec(self) -> str | None:
        """The model spec that unsigned files name (not followed; one that cannot be a spec is not shown)."""
        spec: object = None
        if self.history_spec is not None and not self.history_signed:
            spec = self.history_spec
        elif self.header is not None and not self.session_signed:
            spec = self.header.get("model_spec")
        if not isinstance(spec, str) or not spec or len(spec) > _MAX_SPEC or not spec.isprintable():
            return None
        return spec

    def untrusted_model_name(self) -> str | None:
        """The model name an unsigned session's header gives (shown, never used)."""
        compat = self.header.get("compat") if self.header is not None and not self.session_signed else None
        name = compat.get("model_name") if isinstance(compat, dict) else None
        return name if isinstance(name, str) else None


def read_saved(sidecar: Sidecar, name: str) -> SavedChat:
    """What ``sidecar`` holds for ``name``; unreadable files are noted in ``problems``, never raised."""
    saved = SavedChat()
    if not sidecar.folder_ok():
        return saved  # said when the folder was opened: nothing is read through a link
    problems = []
    history_path = sidecar.history_path(name)
    if os.path.lexists(history_path):
        try:
            data = read_bounded(history_path, LIMITS["max_bytes"])  # read once: parsed twice below
            saved.history = ChatHistory.from_bytes(data)
            raw = json.loads(data)
        except (LmchatError, OSError, ValueError, RecursionError) as exc:
            problems.append(f"ignoring {history_path.name}: {exc}")
        else:
            saved.history_signed = signing.history_is_signed(raw)
            model = raw.get("model") if isinstance(raw, dict) else None
            spec = model.get("spec") if isinstance(model, dict) else None
            saved.history_spec = spec if isinstance(spec, str) else None
    session_path = sidecar.session_path(name)
    if os.path.lexists(session_path):
        saved.has_session = True
        with contextlib.suppress(LmchatError, OSError):
            saved.header = read_header(session_path)
            saved.session_signed = signing.header_is_signed(saved.header)
    saved.problems = tuple(problems)
    return saved


def session_history(path: Path) -> ChatHistory | None:
    """The visible history inside a session file (header and history section checked); None if unusable."""
    try:
        fd = open_regular(path)
    except (LmchatError, OSError):
        return None
    try:
        size = os.fstat(fd).st_size
        mapped = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if mapped is None:
        return None
    try:
        with memoryview(mapped) as view:
            return history_in(view)
    finally:
        mapped.close()


def disk_history(sidecar: Sidecar, name: str) -> ChatHistory | None:
    """The history ``sidecar`` holds for ``name`` (history file, else the session's), read without evaluating it."""
    saved = read_saved(sidecar, name)
    if saved.history is not None:
        return saved.history
    return session_history(sidecar.session_path(name)) if saved.has_session else None


def _shown(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"


def untrusted_model_note(
    name: str, saved: SavedChat, model_spec: str | None, model_name: str, active: str
) -> str | None:
    """What to tell the user when unsigned files name a model other than the one this kernel uses."""
    spec = saved.untrusted_spec()
    if spec is None or spec == (model_spec or None):
        return None
    named = saved.untrusted_model_name()
    saved_as = f"{_shown(named)} ({_shown(spec)!r})" if named else repr(_shown(spec))
    line = f"%chat model {shlex.quote(spec)}"
    if name != active:
        line = f"%chat use {shlex.quote(name)}` then `{line}"
    return (
        f"lmchat: {name!r} was saved with the model {saved_as} in files that this user's kernels did not sign "
        f"(a copied or cloned notebook?), so that model is not loaded: {name!r} goes on with {model_name}. "
        f"To continue on the saved model, run `{line}`"
    )
