"""``%chat``: its subcommands in the order the ``%chat?`` help lists them, and the table from a name to its handler.

A new subcommand is a function declared with ``@command`` in the module of its family, and one entry here.
"""

from __future__ import annotations

from typing import Any

from ...notebook.kernel import KernelChats
from ..magic_args import declare, parse_words, split_words
from . import edits, files, fork, settings, switch, views
from .base import Command

__all__ = ["COMMANDS", "LINE", "run_line"]

#: Every ``%chat`` subcommand, in the order of the help.
COMMANDS: tuple[Command, ...] = (
    views.info,
    views.history,
    views.conversations,
    switch.use,
    fork.fork,
    edits.clear,
    files.forget,
    edits.rewind,
    files.save,
    files.load,
    files.export,
    switch.model,
    settings.config,
    settings.strip,
    views.widget,
)

_HANDLERS = {command.name: command.run for command in COMMANDS}

#: The grammar of ``%chat``, and the source of its part of the ``%chat?`` help.
LINE = declare("chat", "Line magic (without a command: info).", *(command.declaration for command in COMMANDS))


def run_line(state: KernelChats, line: str) -> Any:
    """Run the subcommand that ``line`` names (none: ``info``); what it returns, the magic shows."""
    args = parse_words(LINE, "%chat", split_words(line) or ["info"])
    return _HANDLERS[args.command](state, args)
