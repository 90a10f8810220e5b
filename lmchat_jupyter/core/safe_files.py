"""Opening lmchat's own files without trusting what is in their place.

A sidecar folder travels with its notebook through git, zip files and shared drives, so anything
can stand where lmchat expects its files: a symbolic link to a file of the user's, a FIFO that
blocks every reader, a device without end, a folder, a sparse file of many gigabytes. Every file
lmchat reads or writes there is therefore opened without following a link (``O_NOFOLLOW``), must
be a regular file (checked with ``fstat`` on the open descriptor, so what is checked is what is
read), and is read with a size bound. Anything else is an :class:`~lmchat_jupyter.core.errors.UnsafeFileError`
(or the error type the caller asks for) whose message names the file and what is wrong with it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import LmchatError, UnsafeFileError

__all__ = [
    "open_regular",
    "read_bounded",
    "create_new",
    "open_appendable",
    "open_lock_file",
    "check_folder",
    "describe_mode",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC


def describe_mode(mode: int) -> str:
    """What a file of ``mode`` is, in words (for messages)."""
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a file"),
    )
    return next((what for test, what in kinds if test(mode)), "an unknown kind of file")


def _refusal(path: Path, exc: OSError) -> str:
    """Why ``open`` failed, in words; ELOOP under O_NOFOLLOW means the name is a symbolic link."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISLNK(mode):
        return "cannot be read: it is a symbolic link, and lmchat does not follow links to its files"
    return f"cannot be read: it is {describe_mode(mode)}" if not stat.S_ISREG(mode) else f"cannot be read: {exc}"


def open_regular(
    path: Path, *, max_bytes: int | None = None, error: type[LmchatError] = UnsafeFileError, flags: int = 0
) -> int:
    """A read-only descriptor of ``path``, which must be a regular file, not a link, at most ``max_bytes``.

    Never blocks (a FIFO is refused, not waited on). Raises :class:`FileNotFoundError` when nothing
    is there, and ``error`` naming the file and what is wrong with it otherwise.
    """
    try:
        fd = os.open(path, _READ_FLAGS | flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise error(f"{path} {_refusal(path, exc)}. Remove it or put lmchat's own file there") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(
                f"{path} is not a regular file: it is {describe_mode(info.st_mode)}. "
                "lmchat reads only plain files there; remove it"
            )
        if max_bytes is not None and info.st_size > max_bytes:
            raise error(
                f"{path} is {info.st_size:,} bytes, more than the {max_bytes:,} lmchat reads from such a file; "
                "it was not read. Remove it or move it away"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: Path, max_bytes: int, *, error: type[LmchatError] = UnsafeFileError) -> bytes:
    """The bytes of the regular file ``path``, refused (``error``) when it holds more than ``max_bytes``.

    The bound holds even for a file that grows while it is read. :class:`FileNotFoundError` when
    nothing is there.
    """
    fd = open_regular(path, max_bytes=max_bytes, error=error)
    try:
        chunks = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise error(f"{path} cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if total > max_bytes:
        raise error(f"{path} grew past the {max_bytes:,} bytes lmchat reads from such a file while it was read")
    return b"".join(chunks)


def create_new(path: Path) -> int:
    """A write-only descriptor of a new file at ``path``; fails if anything, a link included, is there."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)


def open_appendable(path: Path) -> int | None:
    """A descriptor that appends to ``path`` if it is a regular file with one name, not a link; else None.

    The caller checks on the descriptor that it is the file it wrote before (``fstat``).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        return None
    return fd


def open_lock_file(path: Path) -> int:
    """A read-write descriptor of the lock file ``path``, created when missing.

    The lock file is the one file lmchat writes in place (it holds the owner's pid), so it must be a
    regular file with no other name: a link there would let a cloned folder overwrite any file the
    user can write.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC, 0o644)
    except OSError as exc:
        raise UnsafeFileError(f"{path} {_refusal(path, exc).replace('be read', 'be used as a lock')}") from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = f"it is {describe_mode(info.st_mode)}"
    elif info.st_nlink != 1:
        problem = f"it has {info.st_nlink} names (hard links), so writing it would change another file"
    if problem is not None:
        os.close(fd)
        raise UnsafeFileError(f"{path} is not usable as lmchat's lock file: {problem}. Remove it")
    return fd


def check_folder(folder: Path) -> bool:
    """Whether ``folder`` exists; :class:`UnsafeFileError` when it is there but not a real folder.

    A link is refused even when it points to a folder: the files written through it would land
    wherever the link points.
    """
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise UnsafeFileError(f"{folder} cannot be used: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(mode):
        raise UnsafeFileError(
            f"{folder} is {describe_mode(mode)}, not a folder: lmchat keeps chats only in a real folder "
            "beside the notebook. Remove or rename it to save chats there"
        )
    return True
