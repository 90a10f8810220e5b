"""Every ``%chat`` subcommand and every ``%%chat`` option given bad values, through one real kernel.

The table below names, for each declared argument, the bad values it is given (and why a value that would be
accepted is left out). Each must end in one line (an IPython ``UsageError``, no traceback) with the kernel alive,
the conversation as it was and every file of the sidecar folder unchanged byte for byte. A new subcommand or
option fails ``test_the_table_covers_every_argument`` until it has a row.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmchat_jupyter.ui.commands.cell import CELL
from lmchat_jupyter.ui.commands.registry import COMMANDS, LINE

from .kernel_driver import KernelDriver, notebook_file

# The kinds of bad value; FIFO and FOLDER are made in the test's folder.
NEG, ZERO, HUGE, EMPTY, WORD = "-5", "0", "1" + "0" * 30, "", "abc"
DEV, FIFO, FOLDER, SYSTEM = "/dev/zero", "<fifo>", "<folder>", "/etc/passwd"
SLASH, DOTS, UP, NUL, NEWLINE = "a/b", "..", "../x", "a\x00b", "a\nb"
NFC, NFD, LONG = "\u00e9", "e\u0301", "x" * 200
NUMBER_BAD = (NEG, HUGE, EMPTY, WORD, NUL)
WHOLE_BAD = (*NUMBER_BAD, "1.5")
PATHS = (EMPTY, DEV, FIFO, FOLDER, SYSTEM, NUL, NEWLINE)
NAMES = (EMPTY, SLASH, DOTS, UP, NUL, NEWLINE, LONG, NEG, DEV, FOLDER, "a.", "nul")
SPECS = (EMPTY, DEV, FIFO, FOLDER, SYSTEM, SLASH, DOTS, NUL, NEWLINE, LONG, NEG, ZERO, NFD, "hf:", "http://")
# Accepted on purpose: a value that is valid for the argument would act (switch, write, generate), so it is
# not a misuse. Each skip says why.
VALID_NAME = "a valid conversation name (NFC form), so it is accepted"
SKIPS: dict[tuple[str, str], dict[str, str]] = {
    ("%%chat", "temperature"): {ZERO: "greedy sampling"},
    ("%%chat", "seed"): {ZERO: "a valid seed"},
    ("%%chat", "name"): {NFD: VALID_NAME, NFC: VALID_NAME, ZERO: VALID_NAME},
    ("use", "conversation"): {NFD: VALID_NAME, NFC: VALID_NAME, ZERO: VALID_NAME},
    ("fork", "new"): {NFD: VALID_NAME, ZERO: VALID_NAME},
    ("widget", "name"): {NFD: VALID_NAME, ZERO: VALID_NAME},
    ("forget", "conversation"): {NFD: "valid: it has nothing to forget", ZERO: "valid: it has nothing to forget"},
    ("rewind", "turns"): {ZERO: "drops nothing"},
    ("fork", "at"): {ZERO: "a fork with no turns"},
    ("config", "gpu_layers"): {ZERO: "CPU only"},
    ("config", "max_sidecar_mb"): {ZERO: "no cap"},
    ("config", "api_key"): {EMPTY: "clears the key", WORD: "any text may be a key"},
}
EXTRA = ("extra", "--nosuch", NUL)
FLAG = ("=1",)  # a flag given a value: --regen=1 (and for a subcommand's flag, words after it)
TABLE: dict[tuple[str, str], tuple[str, ...]] = {
    ("%%chat", "name"): (*NAMES, NFD, NFC, ZERO),
    ("%%chat", "model"): SPECS,
    ("%%chat", "system"): (EMPTY, NUL, LONG, NFD),  # the conversation has no system prompt: a new one is refused
    ("%%chat", "temperature"): (*NUMBER_BAD, ZERO, "nan", "inf", "11"),
    ("%%chat", "max_tokens"): (*WHOLE_BAD, ZERO),
    ("%%chat", "seed"): (*WHOLE_BAD, ZERO, str(2**32)),
    ("%%chat", "regen"): FLAG,
    ("%%chat", "raw"): FLAG,
    ("%%chat", "context"): (EMPTY, NEG, ZERO, WORD, "cells:0", "cells:-1", "cells:" + HUGE, NUL, LONG),
    ("%%chat", "<cell>"): ("", " \n\t"),  # the message itself: empty
    ("info", ""): EXTRA,
    ("history", ""): EXTRA,
    ("list", ""): EXTRA,
    ("clear", "forget_copies"): (*FLAG, " extra", " --nosuch"),
    ("strip", ""): EXTRA,
    ("use", "conversation"): (*NAMES, NFD, NFC, ZERO),
    ("fork", "new"): (*NAMES, NFD, ZERO, "default"),
    ("fork", "at"): (*WHOLE_BAD, ZERO, "2"),
    ("forget", "conversation"): (*NAMES, NFD, ZERO),
    ("rewind", "turns"): (*WHOLE_BAD, ZERO, "2"),
    ("save", "path"): (*PATHS, DOTS),
    ("load", "path"): (*PATHS, SLASH, DOTS, NFD, LONG, NEG, "<notebook>", "<history-as-session>"),
    ("export", "path"): (*PATHS, SLASH, DOTS, LONG, "<folder>.md"),
    ("model", "spec"): SPECS,
    ("config", "autosave"): (EMPTY, WORD, ZERO, NUL),
    ("config", "notebook"): (*PATHS, SLASH, DOTS, LONG),
    ("config", "n_ctx"): (*WHOLE_BAD, ZERO, "63"),
    ("config", "gpu_layers"): (*WHOLE_BAD, ZERO, "-2"),
    ("config", "max_sidecar_mb"): (*NUMBER_BAD, ZERO, "nan", "inf"),
    ("config", "embed"): (EMPTY, WORD, NUL),
    ("config", "api_key"): (EMPTY, WORD, NUL, NEWLINE, "<no value, no stdin>"),
    ("widget", "name"): (*NAMES, NFD, ZERO),
}


def declared() -> set[tuple[str, str]]:
    """Every argument that ``%%chat`` and the ``%chat`` subcommands declare, as (command, dest)."""
    found = {("%%chat", a.dest) for a in CELL._actions if not isinstance(a, argparse._HelpAction)}
    found.add(("%%chat", "<cell>"))
    subparsers = next(a for a in LINE._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {c.name for c in COMMANDS}
    for name, parser in subparsers.choices.items():
        dests = [a.dest for a in parser._actions if not isinstance(a, argparse._HelpAction)]
        found.update((name, dest) for dest in dests or [""])
    return found


def test_the_table_covers_every_argument() -> None:
    assert set(TABLE) == declared()
    for key, skips in SKIPS.items():
        assert set(skips) <= set(TABLE[key]), key


@dataclass
class Case:
    key: tuple[str, str]
    value: str
    code: str

    def __str__(self) -> str:
        return f"{self.key} = {self.value!r}"


def cases(folder: Path) -> Iterator[Case]:
    """The cells to run: one per bad value, with what the command needs besides (a NAME for fork --at)."""
    stand_in = {
        FIFO: str(folder / "pipe"),
        FOLDER: str(folder / "folder"),
        "<folder>.md": str(folder / "folder.md"),
        "<notebook>": str(folder / "misuse.ipynb"),
        "<history-as-session>": str(folder / "history.lmsession"),
    }
    for key, values in TABLE.items():
        command, dest = key
        for value in values:
            if value in SKIPS.get(key, {}):
                continue
            word = stand_in.get(value, value)
            if command == "%%chat":
                option = next((a for a in CELL._actions if a.dest == dest), None)
                if dest == "<cell>":
                    code = f"%%chat --max-tokens 4\n{word}"
                elif option is not None and option.nargs == 0:
                    code = f"%%chat {option.option_strings[0]}{word} --max-tokens 4\nhello"
                else:
                    assert option is not None
                    code = f"%%chat --max-tokens 4 {option.option_strings[0]} {shlex.quote(word)}\nhello"
            elif value == "<no value, no stdin>":
                code = "%chat config --api-key"
            elif dest == "":
                code = f"%chat {command} {shlex.quote(word)}"
            else:
                parser = next(a for a in LINE._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
                action = next(a for a in parser._actions if a.dest == dest)
                before = "fork2 " if key == ("fork", "at") else ""
                flag = f"{action.option_strings[0]} " if action.option_strings else ""
                code = f"%chat {command} {before}{flag}{shlex.quote(word)}"
                if action.nargs == 0:
                    code = f"%chat {command} {action.option_strings[0]}{word}"
            if "\n" in code and command != "%%chat":
                # A newline typed in a %chat line ends the line: the magic gets it only when called from code.
                code = f"get_ipython().run_line_magic('chat', {code[len('%chat ') :]!r})"
            yield Case(key, value, code)


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# What a misuse must leave as it was: the active conversation, the names, the messages, the sidecar's place.
STATE = """
def _misuse_state():
    from lmchat_jupyter.notebook import kernel
    store = kernel.chats().store
    store.flush()
    history = [[m.role, m.content] for m in store.get().history]
    return [store.active, sorted(store.names()), history, store.sidecar.folder.as_posix()]
"""


def test_every_misuse_is_one_usage_line_and_changes_nothing(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder.md").mkdir()
    notebook = notebook_file(tmp_path, "misuse.ipynb")
    k = KernelDriver(notebook, tmp_path, {"LMCHAT_API_KEY": ""})
    try:
        assert k.run("%load_ext lmchat").error is None
        assert k.run("%%chat --max-tokens 4 --temperature 0\nHi", cell_id="c1").error is None
        sidecar = tmp_path / "misuse.lmchat"
        (tmp_path / "history.lmsession").write_bytes((sidecar / "default.history.json").read_bytes())
        assert k.run(STATE).error is None
        state = k.value("_misuse_state()")
        files = digests(sidecar)
        assert any(name.endswith(".lmsession") for name in files), files
        failures = []
        for case in cases(tmp_path):
            run = k.run(case.code, cell_id="misuse", timeout=60)
            lines = run.text.strip().splitlines()
            if run.error is not None or len(lines) != 1 or not lines[0].startswith("UsageError: "):
                failures.append(f"{case}: not one UsageError line: {run.error or run.text!r}")
            elif "Traceback" in run.text:
                failures.append(f"{case}: a traceback: {run.text!r}")
            if not k.km.is_alive():
                pytest.fail(f"{case}: the kernel died")
            now = k.value("_misuse_state()")
            if now != state:
                failures.append(f"{case}: the conversation changed: {now!r}")
                state = now
            if digests(sidecar) != files:
                failures.append(f"{case}: the sidecar changed")
                files = digests(sidecar)
        assert not failures, "\n".join(failures)
        assert state[2][0] == ["user", "Hi"]
    finally:
        k.shutdown()
