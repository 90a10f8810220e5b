"""Declaring ``%chat``'s options and subcommands once, with IPython's ``magic_arguments``; the declarations
also produce the ``%chat?`` help. Parse errors are one-line ``UsageError`` messages, as IPython magics give."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import ArgDecorator, MagicArgumentParser, argument, magic_arguments

__all__ = ["subcommand", "declare", "parse_words", "split_words"]


class _SubcommandParser(MagicArgumentParser):
    def error(self, message: str) -> Any:  # one line, no traceback, naming the subcommand
        raise _ArgumentError(f"%{self.prog}: {message}. See %chat? for help.")


class _ArgumentError(UsageError):
    """A usage error that already names the (sub)command it belongs to."""


class subcommand(ArgDecorator):
    """Declare ``%chat NAME [ARGUMENTS]`` in one line: its arguments are ``argument(...)`` objects.

    The subcommand's usage line and ``help`` become a row of the ``%chat?`` help.
    """

    def __init__(self, name: str, *arguments: argument, help: str) -> None:
        self.name, self.arguments, self.help = name, arguments, help

    def add_to_parser(self, parser: MagicArgumentParser, group: Any) -> None:
        commands = getattr(parser, "lmchat_commands", None)
        if commands is None:
            commands = parser.add_subparsers(
                dest="command", metavar="COMMAND", parser_class=_SubcommandParser, help="one of the commands below"
            )
            parser.lmchat_commands = commands  # type: ignore[attr-defined]
        sub = commands.add_parser(self.name, prog=f"chat {self.name}", formatter_class=argparse.HelpFormatter)
        for arg in self.arguments:
            arg.add_to_parser(sub, None)
        usage = "%" + " ".join(sub.format_usage().split()[1:])
        row = f"{usage:<26} {self.help}" if len(usage) <= 26 else f"{usage}\n{'':<26} {self.help}"
        parser.epilog = f"{parser.epilog or ''}{row}\n"


def declare(name: str, doc: str, *declarations: ArgDecorator) -> MagicArgumentParser:
    """The parser that IPython's ``magic_arguments`` builds from ``declarations``, in the order given."""

    def magic() -> None:
        """Holds the declarations while IPython builds the parser."""

    magic.__doc__ = doc
    for declaration in reversed(declarations):  # as stacked decorators would apply them
        declaration(magic)
    parser: MagicArgumentParser = magic_arguments(name=name)(magic).parser
    return parser


def parse_words(parser: MagicArgumentParser, prog: str, words: list[str]) -> argparse.Namespace:
    try:
        return parser.parse_args(words)
    except _ArgumentError as exc:  # IPython shows a one-line message only for UsageError itself, not a subclass
        raise UsageError(str(exc)) from None
    except UsageError as exc:  # one line, no traceback, as IPython magics do
        raise UsageError(f"{prog}: {exc}. See %chat? for help.") from None


def split_words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%chat: cannot parse the arguments ({exc})") from None
