"""``%chat info``, ``history``, ``list`` and ``widget``: looking at the notebook's conversations."""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.magic_arguments import argument

from ...notebook.kernel import KernelChats
from ..output import show_transcript
from ..report import describe, list_conversations
from . import values
from .base import command

__all__ = ["info", "history", "conversations", "widget"]


@command("info", help="the conversation, its model, tokens used, where it is saved")
def info(state: KernelChats, args: argparse.Namespace) -> None:
    """Print what ``%chat info`` tells about the active conversation."""
    store = state.store
    print(describe(store.get(), store.active, state))


@command("history", help="the whole conversation")
def history(state: KernelChats, args: argparse.Namespace) -> None:
    """Show the active conversation, message by message."""
    show_transcript(state.store.get().history)


@command("list", help="the conversations of this notebook (%chat use NAME switches)")
def conversations(state: KernelChats, args: argparse.Namespace) -> None:
    """Print the notebook's conversations, the active one starred."""
    print(list_conversations(state))


@command(
    "widget", argument("--name", "-n", type=values.name, default=None), help="the chat widget on the same conversation"
)
def widget(state: KernelChats, args: argparse.Namespace) -> Any:
    """The chat widget on ``--name`` (default: the active conversation), for the cell to show."""
    from ..widget import ChatWidget

    return ChatWidget(name=args.name or state.store.active)
