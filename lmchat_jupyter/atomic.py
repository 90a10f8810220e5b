"""Crash-safe file writes: temp file in the same folder, fsync, rename, fsync the folder.

The temp file is created anew (``O_EXCL``, never through a link) and renamed over the target, so
whatever stood at the target (a link included) is replaced, never written through.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

from .errors import StorageError
from .safe_files import create_new

__all__ = ["atomic_write", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".lmchat-tmp"


def atomic_write(path: Path, chunks: Iterable[bytes | bytearray | memoryview]) -> int:
    """Write ``chunks`` to ``path`` so that readers see the old file or the whole new one, never a mix.

    Returns the number of bytes written. On any failure the temp file is removed, the previous file
    is left as it was, and :class:`StorageError` says what went wrong.
    """
    path = Path(path)
    # A unique temp file per write: two saves of one file at once (the background autosave and an
    # explicit save) must never write into the same temp file and rename a torn mix into place.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    written = 0
    try:
        fd = create_new(tmp)
        try:
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                while view:
                    n = os.write(fd, view)
                    written += n
                    view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"could not write {path}: {exc.strerror or exc}. The previous file is unchanged.") from exc
    _fsync_dir(path.parent)
    return written


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
