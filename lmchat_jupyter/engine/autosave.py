"""Saving in the background as conversations change: one worker thread, the newest state each time.

The notebook's store saves all of its conversations through :class:`BackgroundSaver`;
:class:`AutoSave` does the same for one conversation used without a notebook.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from ..core.events import ConversationEvent
from .conversation import Conversation

__all__ = ["BackgroundSaver", "AutoSave"]


class BackgroundSaver:
    """Runs ``save(key)`` on a thread of its own for every key asked for with :meth:`schedule`.

    A key asked for again before its save starts is saved once: a save takes the state it finds when
    it runs, the newest. A save that raises is reported to ``on_error`` (``"Type: message"``) and the
    worker goes on; the thread ends when nothing is left to save.
    """

    def __init__(self, save: Callable[[str], object], on_error: Callable[[str], None]) -> None:
        self._save = save
        self._on_error = on_error
        self._pending: set[str] = set()
        self._saving = threading.Condition()
        self._worker: threading.Thread | None = None

    def schedule(self, key: str) -> None:
        """Save ``key`` soon."""
        with self._saving:
            self._pending.add(key)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._save_loop, name="lmchat-autosave", daemon=True)
                self._worker.start()
            self._saving.notify_all()

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every scheduled save is done."""
        with self._saving:
            self._saving.wait_for(lambda: not self._pending and self._worker is None, timeout=timeout)

    def _save_loop(self) -> None:
        try:
            while True:
                with self._saving:
                    if not self._pending:
                        self._worker = None
                        self._saving.notify_all()
                        return
                    key = self._pending.pop()
                try:
                    self._save(key)
                except Exception as exc:  # noqa: BLE001 - reported; the next save may succeed
                    self._on_error(f"{type(exc).__name__}: {exc}")
        except BaseException:
            # A dead worker must not leave flush() (and so the kernel's shutdown) waiting for it.
            with self._saving:
                self._worker = None
                self._saving.notify_all()
            raise


class AutoSave:
    """Save ``conv``'s full session to ``path`` in the background after every ``every`` finished turns.

    The turn does not wait: the session is taken (under the conversation's locks) and written by a
    worker thread. ``saved`` and ``save_failed`` events tell how it went; :meth:`close` waits for the
    writes and saves the turns not saved yet::

        saver = AutoSave(conv, "chat.lmsession")
        conv.submit("Hello")
        saver.close()
    """

    def __init__(self, conv: Conversation, path: str | os.PathLike[str], every: int = 1) -> None:
        if every < 1:
            raise ValueError("every must be at least 1 (turns between saves)")
        self.conv = conv
        self.path = Path(path)
        self.every = every
        #: Why the last save failed; None after a save that worked.
        self.last_error: str | None = None
        self._unsaved = 0  # finished turns since the last save was scheduled
        self._saver = BackgroundSaver(lambda _key: self._save(), self._failed)
        self._unsubscribe = conv.subscribe(self._on_event)

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for the saves under way."""
        self._saver.flush(timeout)

    def close(self) -> None:
        """Wait for the saves under way, save what is left, and stop saving."""
        self._unsubscribe()
        self._saver.flush()
        if self._unsaved and self.conv.history.user_message_count:
            self._unsaved = 0
            self._saver.schedule("session")
            self._saver.flush()

    def _on_event(self, event: ConversationEvent) -> None:
        if event.kind == "turn_finished":
            self._unsaved += 1
            if self._unsaved >= self.every:
                self._unsaved = 0
                self._saver.schedule("session")

    def _save(self) -> None:
        self.conv.save(self.path)
        self.last_error = None
        self.conv.events.emit(ConversationEvent("saved", self.conv, None, str(self.path)))

    def _failed(self, message: str) -> None:
        self._unsaved = max(1, self._unsaved)  # close() tries again
        self.last_error = message
        self.conv.events.emit(ConversationEvent("save_failed", self.conv, None, message))
