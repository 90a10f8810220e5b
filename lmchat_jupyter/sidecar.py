"""A notebook's sidecar folder: where its conversations are kept, and the lock that guards them.

``analysis.ipynb`` → ``analysis.lmchat/`` beside it, holding per conversation ``NAME.lmsession``
(full session) and ``NAME.history.json`` (readable history). Conversation names are checked so
that no name, wherever it comes from, can point outside the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import unicodedata
from pathlib import Path

from .errors import LmchatError, StorageError

__all__ = ["Sidecar", "sidecar_for", "check_name", "NAME_RULE"]

NAME_RULE = "1-64 letters, digits, spaces, '_', '-' or '.', not starting with '.' or ' '"
_NAME = re.compile(r"^[^\W_][\w .-]{0,63}$", re.UNICODE)
SESSION_SUFFIX = ".lmsession"
HISTORY_SUFFIX = ".history.json"


def check_name(name: object) -> str:
    """``name`` if it is a safe conversation name; :class:`LmchatError` saying the rule otherwise."""
    if not isinstance(name, str):
        raise LmchatError(f"a conversation name must be text, not {type(name).__name__}")
    clean = unicodedata.normalize("NFC", name)
    if not _NAME.match(clean) or ".." in clean or clean.endswith((".", " ")):
        shown = clean if len(clean) <= 40 else clean[:40] + "…"
        raise LmchatError(f"{shown!r} is not a valid conversation name: use {NAME_RULE}")
    return clean


def sidecar_for(notebook: Path | None, cwd: Path | None = None) -> Path:
    """The sidecar folder of ``notebook``; ``<cwd>/.lmchat`` when the notebook is unknown."""
    if notebook is None:
        return (cwd or Path.cwd()) / ".lmchat"
    stem = notebook.name[: -len(".ipynb")] if notebook.name.endswith(".ipynb") else notebook.name
    return notebook.parent / f"{stem}.lmchat"


class Sidecar:
    """One sidecar folder, locked for this process while it is in use."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock_fd: int | None = None
        self.locked_by_other: str | None = None

    def __repr__(self) -> str:
        return f"Sidecar({str(self.folder)!r})"

    def session_path(self, name: str) -> Path:
        return self.folder / f"{check_name(name)}{SESSION_SUFFIX}"

    def history_path(self, name: str) -> Path:
        return self.folder / f"{check_name(name)}{HISTORY_SUFFIX}"

    def names(self) -> list[str]:
        """Conversation names with files in the folder (invalid names are ignored)."""
        if not self.folder.is_dir():
            return []
        found = set()
        for entry in self.folder.iterdir():
            for suffix in (SESSION_SUFFIX, HISTORY_SUFFIX):
                if entry.name.endswith(suffix) and not entry.name.startswith("."):
                    with contextlib.suppress(LmchatError):
                        found.add(check_name(entry.name[: -len(suffix)]))
        return sorted(found)

    def acquire(self) -> bool:
        """Take the folder's lock; False (with ``locked_by_other`` set) when another process holds it."""
        if self._lock_fd is not None:
            return True
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot use the sidecar folder {self.folder}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            self.locked_by_other = holder
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._lock_fd = fd
        self.locked_by_other = None
        return True

    @property
    def writable(self) -> bool:
        return self._lock_fd is not None

    def release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def remove_stale_temp_files(self) -> None:
        """Temp files left by a process that died mid-save (only ever ours: we hold the lock)."""
        from .atomic import TEMP_SUFFIX

        if self.folder.is_dir():
            for entry in self.folder.glob(f".*{TEMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    entry.unlink()
