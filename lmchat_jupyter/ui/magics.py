"""``%%chat`` and ``%chat``: the notebook's way in, registered with IPython; what they do is in ``commands/``."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from ..core.errors import LmchatError
from ..notebook import kernel
from ..notebook import status as kernel_status
from ..notebook.context import ErrorLog, record_error
from .commands.cell import CELL, run_cell
from .commands.registry import LINE, run_line

__all__ = ["ChatMagics", "load", "unload"]


@magics_class
class ChatMagics(Magics):
    """The ``%%chat`` cell magic and the ``%chat`` line magic."""

    @line_cell_magic
    def chat(self, line: str, cell: str | None = None) -> Any:
        """Chat with a local model; the conversation lives in the kernel and survives restarts."""
        try:
            if cell is None:
                return run_line(kernel.chats(self.shell), line)
            run_cell(kernel.chats(self.shell), self.shell, line, cell)
        except LmchatError as exc:
            raise UsageError(str(exc)) from None
        return None


# %chat? shows the help that the two declarations generate.
ChatMagics.chat.__doc__ = f"{ChatMagics.chat.__doc__}\n\n{CELL.format_help()}\n{LINE.format_help()}"


def _on_pre_run_cell(info: Any) -> None:
    kernel.chats().cell_id = getattr(info, "cell_id", None)


def _on_post_run_cell(result: Any) -> None:
    record_error(kernel.chats().shell, result.execution_count, result.error_in_exec or result.error_before_exec)


def load(ipython: Any) -> None:
    """Register the magics (idempotent), restore the sidecar's conversations and say what came back."""
    state = kernel.chats(ipython)
    if state.magics_loaded:
        return
    # First: the comms that restoring and the frontend open make JupyterLab send requests that end in
    # "idle" while this cell still runs.
    kernel_status.start()
    ipython.register_magics(ChatMagics)
    ipython.events.register("pre_run_cell", _on_pre_run_cell)
    ipython.events.register("post_run_cell", _on_post_run_cell)
    ipython.user_ns.setdefault("Err", ErrorLog())
    state.magics_loaded = True
    for line in state.store.restore_all():
        print(f"lmchat: restored {line}")
    from . import frontend

    # After the sidecar: the notebook's embedded history fills in only what the sidecar lacks.
    frontend.register(ipython)


def unload(ipython: Any) -> None:
    """Remove the magics and the frontend's channel, and forget this kernel's chats (saved on the way out)."""
    state = kernel.chats(ipython)
    if not state.magics_loaded:
        return
    from . import frontend

    frontend.unregister(ipython)
    kernel_status.stop()
    ipython.events.unregister("pre_run_cell", _on_pre_run_cell)
    ipython.events.unregister("post_run_cell", _on_post_run_cell)
    magics = ipython.magics_manager.magics
    magics["line"].pop("chat", None)
    magics["cell"].pop("chat", None)
    kernel.forget()
