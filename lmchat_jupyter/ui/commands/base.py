"""A ``%chat`` subcommand: its declaration (grammar and ``%chat?`` help row) beside the function that runs it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from IPython.core.magic_arguments import argument

from ...notebook.kernel import KernelChats
from ..magic_args import subcommand

__all__ = ["Command", "Handler", "command"]

#: Runs a subcommand on this kernel's chats with its parsed arguments; what it returns, the magic returns.
Handler = Callable[[KernelChats, argparse.Namespace], Any]


@dataclass(frozen=True)
class Command:
    """One ``%chat NAME``: how it is declared and what runs it."""

    declaration: subcommand
    run: Handler

    @property
    def name(self) -> str:
        """The word after ``%chat``."""
        return self.declaration.name


def command(name: str, *arguments: argument, help: str) -> Callable[[Handler], Command]:
    """Declare ``%chat NAME [ARGUMENTS]`` on the function that runs it; ``help`` is its row of the ``%chat?`` help."""

    def declare(run: Handler) -> Command:
        return Command(subcommand(name, *arguments, help=help), run)

    return declare
