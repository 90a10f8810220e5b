"""Ctrl-C (SIGINT) acted on only where stopping is safe, so the engine's records are never cut in half.

A KeyboardInterrupt can surface at any bytecode, for instance between putting a token into the
KV cache and writing it down, or halfway through the bookkeeping that ends a turn. While
:func:`held` is active in the main thread, SIGINT only sets a flag; :func:`checkpoint` raises
KeyboardInterrupt (through the handler that was installed before) at the safe points, between
evaluated batches and between generated tokens; leaving the outermost :func:`held` delivers a
signal that came after the last safe point. :func:`released` opens the gate while a streaming
turn hands a piece of text to its reader, so that code outside the engine sees Ctrl-C as usual.
Other threads never receive KeyboardInterrupt, so there all of this does nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["held", "released", "checkpoint", "acquire"]

Handler = Callable[[int, FrameType | None], Any] | int | None

_depth = 0
_pending = False
_previous: Handler = None


def _hold(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = True


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGINT back until a :func:`checkpoint` or the end of the block (re-entrant)."""
    global _depth, _previous
    if not _in_main_thread():
        yield
        return
    if _depth == 0:
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:  # a handler installed outside Python, which could not be put back
            yield
            return
        try:
            signal.signal(signal.SIGINT, _hold)
        except (ValueError, OSError):  # signals unavailable here (an embedded interpreter)
            yield
            return
        _previous = previous
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        # A generator holding the gate may be closed by the garbage collector in another thread.
        if _depth == 0 and _in_main_thread():
            signal.signal(signal.SIGINT, _previous)
            _deliver()


@contextlib.contextmanager
def released() -> Iterator[None]:
    """Let SIGINT through as usual for the duration of the block (inside :func:`held`)."""
    if not _in_main_thread() or _depth == 0 or signal.getsignal(signal.SIGINT) is not _hold:
        yield
        return
    checkpoint()
    signal.signal(signal.SIGINT, _previous)
    try:
        yield
    finally:
        if _in_main_thread():
            signal.signal(signal.SIGINT, _hold)


def checkpoint() -> None:
    """A safe point: act on a SIGINT that arrived while held (normally: raise KeyboardInterrupt)."""
    if _pending and _in_main_thread():
        _deliver()


def acquire(lock: threading.Lock | threading.RLock) -> None:
    """Take ``lock`` inside :func:`held`: waiting for it still answers Ctrl-C, and once it is taken no
    KeyboardInterrupt can come between taking it and the ``try`` that releases it."""
    while not lock.acquire(timeout=0.1):
        checkpoint()


def _deliver() -> None:
    global _pending
    if not _pending:
        return
    _pending = False
    handler = _previous
    if callable(handler):
        handler(signal.SIGINT, None)
    elif handler != signal.SIG_IGN:
        raise KeyboardInterrupt
