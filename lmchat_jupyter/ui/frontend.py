"""The comm between the kernel and the JupyterLab extension, and the metadata fallback without it.

The messages are defined in ``lmchat_jupyter/protocol/messages.schema.json``. The extension opens the
kernel's target with a ``hello`` (the notebook's path and ``metadata.lmchat``) when a kernel starts or
restarts, and sends ``path`` after a rename; the kernel answers with ``metadata`` (the history to store
under ``metadata.lmchat``) and ``strip`` (remove it). When the extension loads after the notebook opened,
the kernel opens the extension's target with ``request_hello``. The chat panel's messages (``panel`` and
``panel_*``) travel on the same comms: see :mod:`.panel_comm`.
Without the extension the kernel reads ``metadata.lmchat`` from the .ipynb on disk.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..core.errors import LmchatError
from ..core.events import ConversationEvent
from ..notebook import kernel
from ..protocol import FORMAT, FRONTEND_TARGET, KERNEL_TARGET
from ..storage.metadata import (
    build_metadata,
    embed_setting,
    parse_metadata,
    read_notebook_metadata,
    strip_notebook_file,
)
from .panel_comm import PanelChannel

__all__ = ["register", "unregister", "FrontendBridge"]

log = logging.getLogger("lmchat")
MAX_PATH_CHARS = 4096


class FrontendBridge:
    """Open comms to notebook frontends, and the listeners that keep their metadata current."""

    def __init__(self) -> None:
        self.comms: list[Any] = []
        self.server_root: Path | None = None
        #: What the notebook carries of its chats (``%chat config --embed``); the notebook's metadata says which.
        self.embed = "full"
        #: Whether the JupyterLab extension said hello: then it, not the file on disk, holds the metadata.
        self.extension_seen = False
        self._listening: set[int] = set()
        self.panel = PanelChannel(self.send)

    # --- incoming -------------------------------------------------------------------------------

    def on_open(self, comm: Any, msg: dict[str, Any]) -> None:
        self._attach(comm)
        self.on_message(msg)

    def _attach(self, comm: Any) -> None:
        self.comms.append(comm)
        comm.on_msg(self.on_message)
        comm.on_close(lambda _msg: self.comms.remove(comm) if comm in self.comms else None)

    def on_message(self, msg: dict[str, Any]) -> None:
        data = (msg.get("content") or {}).get("data") or {}
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        if kind == "panel":
            self.panel.handle(data)
            return
        try:
            if kind in ("hello", "path"):
                self._set_path(data.get("notebook_path"))
            if kind == "hello":
                self.extension_seen = True
                self._take_metadata(data.get("metadata"))
                self.push()
                self.panel.send_state(None, follow=False)  # tells the panel that lmchat is loaded here
        except LmchatError as exc:
            print(f"lmchat: the notebook's embedded chat was not used: {exc}")

    def _set_path(self, value: object) -> None:
        if not isinstance(value, str) or not value or len(value) > MAX_PATH_CHARS or "\x00" in value:
            return
        state = kernel.chats()
        state.frontend_notebook = self._absolute(value)
        state.relocate()

    def _absolute(self, relative: str) -> Path:
        """The frontend's path is relative to the server's root; the kernel started in the notebook's folder."""
        rel = Path(relative)
        if self.server_root is None:
            started = os.environ.get("JPY_SESSION_NAME", "")
            if started.endswith(relative):
                self.server_root = Path(started[: len(started) - len(relative)] or "/")
            else:
                depth = len(rel.parts) - 1
                cwd = Path.cwd()
                self.server_root = cwd.parents[depth - 1] if depth > 0 and depth <= len(cwd.parents) else cwd
        return (self.server_root / rel).resolve()

    def _take_metadata(self, value: object) -> None:
        self.embed = embed_setting(value) or self.embed
        chats = parse_metadata(value)
        if chats:
            for line in kernel.chats().store.offer_embedded(chats):
                print(f"lmchat: {line}")
        self._listen()

    # --- outgoing -------------------------------------------------------------------------------

    def _listen(self) -> None:
        store = kernel.chats().store
        for conv in store.conversations.values():
            if id(conv) not in self._listening:
                self._listening.add(id(conv))
                conv.subscribe(self._on_event)

    def _on_event(self, event: ConversationEvent) -> None:
        if event.kind in ("turn_finished", "rewound", "cleared", "restored", "model_changed"):
            self.push()

    def push(self) -> None:
        """Send the current history of every conversation to the frontends' metadata."""
        if not self.comms:
            return
        self._listen()
        try:
            store = kernel.chats().store
            value = build_metadata(store.conversations, store.embedded, self.embed)
        except LmchatError as exc:
            print(f"lmchat: {exc}")
            return
        if value is None:
            # Nothing to embed yet (or a restore was refused): never erase what the notebook carries.
            return
        self.send({"type": "metadata", "format": FORMAT, "value": value})

    def send(self, data: dict[str, Any]) -> None:
        """Send ``data`` to every frontend; a closed comm is dropped, never raised (turns send too)."""
        for comm in list(self.comms):
            try:
                comm.send(data)
            except Exception:
                log.debug("lmchat: dropping a dead comm", exc_info=True)
                if comm in self.comms:
                    self.comms.remove(comm)

    def set_embed(self, embed: str) -> None:
        """Choose what the notebook carries, and write the choice (with what it allows) into its metadata."""
        self.embed = embed
        self.push()

    def strip(self) -> str:
        """Remove lmchat's metadata from the notebook: through the extension, else from the .ipynb on disk."""
        if self.extension_seen and self.comms:
            for comm in list(self.comms):
                try:
                    comm.send({"type": "strip"})
                except Exception:  # a closed comm must not break the command
                    self.comms.remove(comm)
            return "removed lmchat's metadata from the notebook; save the notebook to write it"
        notebook = kernel.chats().notebook_path()
        if notebook is None or notebook.suffix != ".ipynb" or not notebook.is_file():
            return "no notebook is known to this kernel; nothing was changed"
        try:
            removed = strip_notebook_file(notebook)
        except (OSError, ValueError) as exc:
            raise LmchatError(f"could not strip {notebook.name}: {exc}") from None
        return f"removed lmchat's metadata from {notebook}" if removed else f"{notebook.name} holds no lmchat metadata"

    def ask_frontend(self) -> None:
        """Open a comm to the frontend (if it has the extension) so that it says hello."""
        try:
            from comm import create_comm

            comm = create_comm(target_name=FRONTEND_TARGET, data={"type": "request_hello"})
        except Exception:
            log.debug("lmchat: no frontend comm", exc_info=True)
            return
        self._attach(comm)


_BRIDGE: FrontendBridge | None = None


def bridge() -> FrontendBridge:
    global _BRIDGE
    if _BRIDGE is None:
        _BRIDGE = FrontendBridge()
    return _BRIDGE


def register(ipython: Any) -> None:
    """Accept the extension's comms, ask it for a hello, and read the .ipynb's metadata meanwhile."""
    b = bridge()
    kernel_obj = getattr(ipython, "kernel", None)
    if kernel_obj is not None:
        from comm import get_comm_manager

        get_comm_manager().register_target(KERNEL_TARGET, b.on_open)
        b.ask_frontend()
    notebook = kernel.chats().notebook_path()
    if notebook is not None and notebook.suffix == ".ipynb":
        try:
            b._take_metadata(read_notebook_metadata(notebook))
        except LmchatError as exc:
            print(f"lmchat: the notebook's embedded chat was not used: {exc}")
    b._listen()
    kernel.chats().store.adopt_listeners.append(lambda _name, _conv: b.push())


def unregister(ipython: Any) -> None:
    global _BRIDGE
    if getattr(ipython, "kernel", None) is not None:
        from comm import get_comm_manager

        get_comm_manager().unregister_target(KERNEL_TARGET, bridge().on_open)
    bridge().panel.close()
    for comm in list(bridge().comms):
        try:
            comm.close()
        except Exception:
            log.debug("lmchat: closing a comm failed", exc_info=True)
    _BRIDGE = None
