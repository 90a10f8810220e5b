"""Checksums of a session's sections: one xxh3_64, or one per 4 MiB block computed on a few threads.

xxhash releases the GIL, so the blocks of a large section (a KV state of hundreds of megabytes) are
checked on several cores; :class:`SectionCheck` runs a section's check while its bytes are already
being used (a restore overlaps it with llama.cpp's read).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import xxhash

from ...core.errors import SessionCorruptError

__all__ = ["BLOCK", "SectionCheck", "block_digests", "xxh3", "digest_shape", "section_digest"]

BLOCK = 4 * 1024 * 1024
_MIN_BLOCK, _MAX_BLOCK = 64 * 1024, 1 << 30
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def xxh3(data: bytes | bytearray | memoryview) -> str:
    """The xxh3_64 of ``data``, in hex."""
    return xxhash.xxh3_64_hexdigest(data)


def _pool() -> ThreadPoolExecutor:
    """Threads for checksums: xxhash releases the GIL, and one core alone cannot read memory as fast."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
            _POOL = ThreadPoolExecutor(max(1, workers), thread_name_prefix="lmchat-xxh3")
        return _POOL


def block_digests(data: memoryview, block: int) -> list[str]:
    views = [data[i : i + block] for i in range(0, len(data), block)]
    try:
        try:
            return list(_pool().map(xxh3, views))
        except RuntimeError:
            # No new work for thread pools once the interpreter shuts down, which is exactly when a
            # kernel saves every conversation: one thread then does it all.
            return [xxh3(view) for view in views]
    finally:
        for view in views:
            view.release()


class SectionCheck:
    """A section's checksum computed on the checksum threads while its bytes are used.

    :meth:`passed` waits for it. Until then the section's bytes are unchecked: whoever reads them
    must be able to take back what it did with them when the check fails.
    """

    def __init__(self, view: memoryview, digest: str | list[str], block: int | None, failure: SessionCorruptError):
        self.failure = failure
        self._expected = [digest] if isinstance(digest, str) else digest
        step = block if block is not None else max(len(view), 1)
        self._views = [view[i : i + step] for i in range(0, len(view), step)] if block is not None else [view[:]]
        self._result: bool | None = None
        try:
            self._futures: list[Future[str]] | None = [_pool().submit(xxh3, v) for v in self._views]
        except RuntimeError:  # the interpreter is shutting down: checked at :meth:`passed`, on this thread
            self._futures = None

    def passed(self) -> bool:
        """Whether the section's bytes match its checksum (waits for the threads); the views are then released."""
        if self._result is None:
            try:
                if self._futures is None:
                    actual = [xxh3(v) for v in self._views]
                else:
                    actual = [f.result() for f in self._futures]
            finally:
                for view in self._views:
                    view.release()
            self._result = actual == self._expected
        return self._result


def section_digest(data: bytes | bytearray | memoryview) -> tuple[str | list[str], int | None]:
    """The digest a section is written with: one xxh3, or one per block for large sections."""
    if len(data) < 2 * BLOCK:
        return xxh3(data), None
    with memoryview(data) as view:
        return block_digests(view.cast("B"), BLOCK), BLOCK


def digest_shape(digest: object, block: object, length: int) -> bool:
    """One digest string and no block size, or a block size and one digest string per block."""
    if isinstance(digest, str):
        return block is None
    if type(block) is not int or not _MIN_BLOCK <= block <= _MAX_BLOCK or not isinstance(length, int) or length < 0:
        return False
    return isinstance(digest, list) and len(digest) == -(-length // block) and all(isinstance(d, str) for d in digest)
