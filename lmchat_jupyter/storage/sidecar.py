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

from ..core.errors import LmchatError, StorageError, UnsafeFileError
from ..core.safe_files import check_folder, open_lock_file

__all__ = ["Sidecar", "sidecar_for", "check_name", "NAME_RULE", "MAX_NAME_BYTES"]

NAME_RULE = (
    "1-64 letters, digits, spaces, '_', '-' or '.', starting with a letter or digit, not ending with "
    "'.' or ' ', no '..', not a device name such as CON or NUL"
)
_NAME = re.compile(r"[^\W_][\w .-]{0,63}")
# Names Windows keeps for devices, with any extension: "con.lmsession" cannot be created there, and
# notebooks travel to Windows machines with their sidecar folders.
_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9\u00b9\u00b2\u00b3]|lpt[0-9\u00b9\u00b2\u00b3]) *(\..*)?", re.I)
# File names are limited to 255 bytes; the longest lmchat makes from a name is its temp file.
MAX_NAME_BYTES = 192
SESSION_SUFFIX = ".lmsession"
HISTORY_SUFFIX = ".history.json"


def check_name(name: object) -> str:
    """``name`` (in Unicode's NFC form) if it is a safe conversation name; :class:`LmchatError` otherwise.

    One rule for every name, wherever it comes from (a magic's argument, notebook metadata, a file
    in the sidecar): the whole name must match (``fullmatch``: no newline slips past ``$``).
    """
    if not isinstance(name, str):
        raise LmchatError(f"a conversation name must be text, not {type(name).__name__}")
    clean = unicodedata.normalize("NFC", name)
    if (
        not _NAME.fullmatch(clean)
        or ".." in clean
        or clean.endswith((".", " "))
        or _RESERVED.fullmatch(clean)
        or len(clean.encode("utf-8")) > MAX_NAME_BYTES
    ):
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
        """Conversation names with files in the folder; :meth:`ignored` says which files are left out."""
        return sorted(self._scan()[0])

    def ignored(self) -> dict[str, str]:
        """File name → why it is left out, for files that look like conversations but break the name rule."""
        return self._scan()[1]

    def _scan(self) -> tuple[set[str], dict[str, str]]:
        """The conversation names of the session and history files in the folder, and the files left out.

        A file counts only under the exact name lmchat would write for it: ``café`` spelled in NFD
        on disk is not the NFC ``café`` that every lookup opens, so it is left out, not merged.
        """
        names: set[str] = set()
        ignored: dict[str, str] = {}
        if not self.folder_ok():
            return names, ignored
        try:
            entries = sorted(entry.name for entry in os.scandir(self.folder))
        except OSError:
            return names, ignored
        for entry in entries:
            suffix = next((x for x in (SESSION_SUFFIX, HISTORY_SUFFIX) if entry.endswith(x)), None)
            if suffix is None or entry.startswith("."):
                continue
            raw = entry[: -len(suffix)]
            try:
                name = check_name(raw)
            except LmchatError as exc:
                ignored[entry] = str(exc)
                continue
            if name != raw:
                ignored[entry] = "its name is not in the Unicode form (NFC) lmchat writes; rename it"
            else:
                names.add(name)
        return names, ignored

    def check_folder(self) -> bool:
        """Whether the folder exists; :class:`UnsafeFileError` when something else (a link, a file) is there."""
        return check_folder(self.folder)

    def folder_ok(self) -> bool:
        """Whether the folder exists and is a real folder (not a link, not a file)."""
        try:
            return self.check_folder()
        except UnsafeFileError:
            return False

    def acquire(self) -> bool:
        """Take the folder's lock; False (with ``locked_by_other`` set) when another process holds it.

        :class:`UnsafeFileError` when the folder or its lock file is not what lmchat made (a link,
        a file, a FIFO): nothing is written through them.
        """
        if self._lock_fd is not None:
            return True
        try:
            if not self.check_folder():
                self.folder.mkdir(parents=True, exist_ok=True)
                self.check_folder()  # another process may have put something else there meanwhile
        except OSError as exc:
            raise StorageError(f"cannot use the sidecar folder {self.folder}: {exc.strerror or exc}") from exc
        fd = open_lock_file(self.folder / ".lock")
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
        from ..core.atomic import TEMP_SUFFIX

        if self.folder_ok():
            for entry in self.folder.glob(f".*{TEMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    entry.unlink()
