"""Crash-safe file writes: temp file in the same folder, fsync, rename, fsync the folder.

The temp file is created anew (``O_EXCL``, never through a link) and renamed over the target, so
whatever stood at the target (a link included) is replaced, never written through.

:func:`append_whole` adds bytes at the end of a file this process wrote, only while it is still that
file: readers of such a file take what was whole before a torn end (session records).
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

from .errors import StorageError
from .safe_files import create_new, open_appendable

__all__ = ["atomic_write", "atomic_write_stat", "append_whole", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".lmchat-tmp"


def atomic_write(path: Path, chunks: Iterable[bytes | bytearray | memoryview]) -> int:
    """Write ``chunks`` to ``path`` so that readers see the old file or the whole new one, never a mix.

    Returns the number of bytes written. On any failure the temp file is removed, the previous file
    is left as it was, and :class:`StorageError` says what went wrong.
    """
    return atomic_write_stat(path, chunks).st_size


def atomic_write_stat(path: Path, chunks: Iterable[bytes | bytearray | memoryview]) -> os.stat_result:
    """:func:`atomic_write`, returning the new file's ``fstat`` (taken before the rename: this file's)."""
    path = Path(path)
    # A unique temp file per write: two saves of one file at once (the background autosave and an
    # explicit save) must never write into the same temp file and rename a torn mix into place.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    written = 0
    try:
        fd = create_new(tmp)
        try:
            written = _write_all(fd, chunks)
            os.fsync(fd)
            info = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"could not write {path}: {exc.strerror or exc}. The previous file is unchanged.") from exc
    _fsync_dir(path.parent)
    assert info.st_size == written
    return info


def append_whole(
    path: Path, chunks: Iterable[bytes | bytearray | memoryview], expected: tuple[int, int, int, int]
) -> os.stat_result | None:
    """Append ``chunks`` to ``path`` and fsync, if ``path`` is still the file ``expected`` names
    (``(st_dev, st_ino, st_size, st_mtime_ns)``, a regular file with one name); None, writing
    nothing, where it is not.

    On a failed write :class:`StorageError`, and the file is cut back to its length before the append
    (byte for byte the file it was); where even that fails, what was appended is a torn end that
    readers ignore. The bytes before the append are never written.
    """
    fd = open_appendable(path)
    if fd is None:
        return None
    ours = False
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) != expected or info.st_nlink != 1:
            return None
        ours = True
        written = _write_all(fd, chunks)
        if written:
            os.fsync(fd)
        return os.fstat(fd)
    except BaseException as exc:  # a failed write, or Ctrl-C in the middle of it: cut it off again
        if ours:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, expected[2])
        if isinstance(exc, OSError):
            raise StorageError(
                f"could not write {path}: {exc.strerror or exc}. The previous file is unchanged."
            ) from exc
        raise
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, chunks: Iterable[bytes | bytearray | memoryview]) -> int:
    """Write every chunk in order at ``fd``'s position (``os.write`` may take less than asked); the bytes written."""
    written = 0
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while view:
            n = os.write(fd, view)
            written += n
            view = view[n:]
    return written
