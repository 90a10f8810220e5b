"""``%chat use`` and ``%chat model``: which conversation ``%%chat`` talks to, and on which model."""

from __future__ import annotations

import argparse

from IPython.core.magic_arguments import argument

from ...notebook.kernel import KernelChats
from . import values
from .base import command

__all__ = ["use", "model"]


@command(
    "use",
    argument("conversation", type=values.name, metavar="NAME"),
    help="make NAME the conversation that %%chat uses",
)
def use(state: KernelChats, args: argparse.Namespace) -> None:
    """Make ``NAME`` the active conversation (restored, or started, first)."""
    store = state.store
    store.get(args.conversation)
    store.active = args.conversation
    print(f"lmchat: %%chat now uses {args.conversation!r}")


@command(
    "model",
    argument("spec", type=values.spec, metavar="SPEC"),
    help="continue on another model (the history carries over)",
)
def model(state: KernelChats, args: argparse.Namespace) -> None:
    """Move the active conversation to the model ``SPEC``: it reads the history again."""
    store = state.store
    conv = store.get()
    conv.switch_model(store.model_for(args.spec), progress=store.progress("Re-reading"))
    print(f"lmchat: now on {conv.model.describe()}")
