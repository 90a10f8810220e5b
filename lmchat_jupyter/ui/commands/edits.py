"""``%chat clear`` and ``%chat rewind``: taking messages back out of the active conversation."""

from __future__ import annotations

import argparse

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ...notebook.kernel import KernelChats
from ...storage import clearing
from . import values
from .base import command

TURNS = values.whole(0, 10**9, "N (the number of turns to drop)")

__all__ = ["clear", "rewind"]


@command(
    "clear",
    argument(
        "--forget-copies",
        action="store_true",
        help="also remove the copies lmchat kept of this conversation in the sidecar (NAME.replaced-*)",
    ),
    help="forget every message (the system prompt stays), in memory and in the sidecar's files",
)
def clear(state: KernelChats, args: argparse.Namespace) -> None:
    """Empty the active conversation; a cell run again then answers anew."""
    store = state.store
    message = clearing.clear(store, store.active, forget=args.forget_copies)
    state.replay_cursor[store.active] = 0
    print(message)


@command("rewind", argument("turns", type=TURNS, metavar="N"), help="drop the last N turns")
def rewind(state: KernelChats, args: argparse.Namespace) -> None:
    """Drop the active conversation's last ``N`` turns."""
    conv = state.store.get()
    turns = conv.history.user_message_count
    if args.turns > turns:
        # More than there are is a typo more often than a wish to drop everything: %chat clear says that.
        has = f"{state.store.active!r} has {turns} turn{'s' * (turns != 1)}"
        raise UsageError(
            f"%chat rewind {args.turns}: {has}, so N is at most {turns} (%chat clear drops them all)"
            if turns
            else f"%chat rewind {args.turns}: {has}, nothing to drop"
        )
    left = conv.drop_turns(args.turns)
    disk = clearing.on_disk(state.store, state.store.active, "dropped") if args.turns else ""
    print(f"lmchat: {left} turn{'s' * (left != 1)} left{disk}")
