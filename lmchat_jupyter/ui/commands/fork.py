"""``%chat fork``: a copy of the active conversation, KV cache too, that ``%%chat`` goes on with."""

from __future__ import annotations

import argparse

from IPython.core.magic_arguments import argument

from ...backends.interface import Persistence
from ...notebook import forks
from ...notebook.kernel import KernelChats
from ...notebook.replay import cell_turns
from . import values
from .base import command
from .busy import wait_until_free

__all__ = ["fork"]


@command(
    "fork",
    argument("new", type=values.name, metavar="NEW"),
    argument("--at", type=int, metavar="TURN"),
    help="copy the conversation (KV cache too) as NEW, up to TURN; %%chat then uses NEW",
)
def fork(state: KernelChats, args: argparse.Namespace) -> None:
    """Copy the active conversation as ``NEW`` (cut back to ``TURN``) and make the copy the active one."""
    store = state.store
    source = store.active
    wait_until_free(store.get(source))
    twin = forks.fork(store, source, args.new, args.at)
    store.active = args.new
    state.replay_cursor[args.new] = len(cell_turns(twin.history))
    if twin.model.backend.capabilities.persistence is Persistence.HISTORY_ONLY:
        copied = "its history copied (history-only: the server reads it with the next answer)"
    else:
        copied = f"its {twin.info.token_count:,} cached tokens copied (nothing evaluated again)"
    print(f"lmchat: {args.new!r} {forks.origin_note(twin.history)}, {copied}; %%chat now uses {args.new!r}")
