"""The kernel's side of lmchat: which notebook this is, its ChatStore, and saving on the way out.

Notebook identity, first match wins: ``%chat config --notebook PATH``; the path the JupyterLab
extension reports; ``__vsc_ipynb_file__`` (VS Code); ``JPY_SESSION_NAME`` (set by jupyter_server at
kernel start, stale after a rename); otherwise the working directory, said once.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from ..engine.conversation import Conversation
from ..engine.kvcache import Progress
from ..storage.sidecar import Sidecar, sidecar_for
from ..storage.store import ChatStore

__all__ = ["KernelChats", "current", "chats", "show_progress_with"]

#: How a long evaluation is shown (a bar in the notebook): set by the ui layer, none without it.
_PROGRESS: Callable[[str], Progress | None] | None = None


def show_progress_with(factory: Callable[[str], Progress | None]) -> None:
    """Show long evaluations (re-reading a history, restoring) with ``factory(label)``."""
    global _PROGRESS
    _PROGRESS = factory


class KernelChats:
    """Everything lmchat keeps in one kernel."""

    def __init__(self, shell: Any = None) -> None:
        self.shell = shell
        self.explicit_notebook: Path | None = None
        self.frontend_notebook: Path | None = None
        self.cell_id: str | None = None
        self.replay_cursor: dict[str, int] = {}
        #: Per conversation: the sampling options (temperature, max_tokens, seed) its last ``%%chat`` cell
        #: gave, or the panel set since; the panel's turns use them.
        self.turn_options: dict[str, dict[str, Any]] = {}
        self._store: ChatStore | None = None
        #: The magics are registered in this kernel's shell.
        self.magics_loaded = False
        self._hooks_installed = False
        self._previous_sigterm: Any = None

    # --- identity -------------------------------------------------------------------------------

    def notebook_path(self) -> Path | None:
        for candidate in (self.explicit_notebook, self.frontend_notebook, self._vscode_path(), _env_path()):
            if candidate is not None:
                return candidate
        return None

    def _vscode_path(self) -> Path | None:
        if self.shell is None:
            return None
        value = self.shell.user_ns.get("__vsc_ipynb_file__")
        return Path(value) if isinstance(value, str) and value else None

    @property
    def store(self) -> ChatStore:
        if self._store is None:
            notebook = self.notebook_path()
            if notebook is None:
                print(f"lmchat: no notebook path known; keeping chats in {sidecar_for(None)}")
            self._store = ChatStore(Sidecar(sidecar_for(notebook)), progress=_PROGRESS)
            self._install_hooks()
        return self._store

    def relocate(self) -> None:
        """The notebook's path may have changed: follow it with the sidecar folder."""
        if self._store is not None:
            self._store.move_to(Sidecar(sidecar_for(self.notebook_path())))

    def conversation(self, name: str | None = None) -> Conversation:
        return self.store.get(name)

    # --- lifecycle ------------------------------------------------------------------------------

    def _install_hooks(self) -> None:
        if self._hooks_installed:
            return
        self._hooks_installed = True
        atexit.register(self.close)
        with contextlib.suppress(ValueError):  # not in the main thread: no signal handlers
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.close()
        previous = self._previous_sigterm
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def close(self) -> None:
        """Save every conversation and release the sidecar (shutdown, restart, SIGTERM, unload)."""
        if self._store is not None:
            try:
                self._store.close()
            except Exception as exc:  # never block a shutdown
                print(f"lmchat: saving on shutdown failed: {exc}", file=sys.stderr)

    def unload(self) -> None:
        self.close()
        self._store = None
        if self._hooks_installed:
            atexit.unregister(self.close)
            if self._previous_sigterm is not None:
                with contextlib.suppress(ValueError):
                    signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._hooks_installed = False


def _env_path() -> Path | None:
    value = os.environ.get("JPY_SESSION_NAME")
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute():
        path = Path.cwd() / path
    return path


_CHATS: KernelChats | None = None


def chats(shell: Any = None) -> KernelChats:
    """This kernel's lmchat state (created on first use)."""
    global _CHATS
    if _CHATS is None:
        _CHATS = KernelChats(shell)
    elif shell is not None and _CHATS.shell is None:
        _CHATS.shell = shell
    return _CHATS


def forget() -> None:
    global _CHATS
    if _CHATS is not None:
        _CHATS.unload()
    _CHATS = None


def current(name: str | None = None) -> Conversation:
    """The kernel's conversation called ``name``; by default the active one (``%chat use`` chooses it): the one
    ``%%chat`` and the chat widget use."""
    return chats().conversation(name)
