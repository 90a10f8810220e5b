"""``%%chat`` and ``%chat``: the notebook's way in."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import Markdown, display

from . import kernel
from .conversation import Conversation
from .errors import LmchatError
from .history import ChatHistory
from .output import AnswerDisplay, show_stored, stats_line
from .replay import cell_turns, decide
from .safe_markdown import safe_markdown

__all__ = ["ChatMagics", "load", "unload"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, no traceback, as IPython magics do
        raise UsageError(f"{self.prog}: {message}. See %chat? for help.")


def _cell_parser() -> _Parser:
    p = _Parser(prog="%%chat", add_help=False)
    p.add_argument("--name", "-n", default=None)
    p.add_argument("--model", "-m", default=None)
    p.add_argument("--system", "-s", default=None)
    p.add_argument("--temperature", "-t", type=float, default=None)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--regen", action="store_true")
    return p


def _line_parser() -> _Parser:
    p = _Parser(prog="%chat", add_help=False)
    sub = p.add_subparsers(dest="command")
    sub.add_parser("info", add_help=False)
    sub.add_parser("history", add_help=False)
    sub.add_parser("list", add_help=False)
    sub.add_parser("clear", add_help=False)
    for name, arg, required in (("save", "path", False), ("load", "path", True), ("export", "path", True)):
        sp = sub.add_parser(name, add_help=False)
        sp.add_argument(arg, nargs=None if required else "?")
    sub.add_parser("rewind", add_help=False).add_argument("turns", type=int)
    sub.add_parser("use", add_help=False).add_argument("conversation")
    sub.add_parser("model", add_help=False).add_argument("spec")
    config = sub.add_parser("config", add_help=False)
    config.add_argument("--autosave", choices=["on", "off"])
    config.add_argument("--notebook")
    config.add_argument("--n-ctx", type=int)
    sub.add_parser("widget", add_help=False).add_argument("--name", "-n", default=None)
    return p


@magics_class
class ChatMagics(Magics):
    """The ``%%chat`` cell magic and the ``%chat`` line magic."""

    @line_cell_magic
    def chat(self, line: str, cell: str | None = None) -> Any:
        """Chat with a local model; the conversation lives in the kernel and survives restarts.

        Cell magic -- the cell is your message; the answer streams below it::

            %%chat [--name NAME] [--model SPEC] [--system TEXT] [--temperature T]
                   [--max-tokens N] [--seed S] [--regen]

        Re-running a cell whose message is already in the conversation shows its stored answer
        again without generating; an edited message rewinds the conversation to that cell and
        answers anew; --regen answers anew even when the message is unchanged.

        Line magic::

            %chat info            the conversation, its model, tokens used, where it is saved
            %chat history         the whole conversation
            %chat list            the conversations of this notebook (%chat use NAME switches)
            %chat use NAME        make NAME the conversation that %%chat uses by default
            %chat clear           forget every message (the system prompt stays)
            %chat rewind N        drop the last N turns
            %chat save [PATH]     save the full session (default: the notebook's sidecar folder)
            %chat load PATH       load a session (.lmsession) or a history (.json)
            %chat export PATH     write the conversation as Markdown (.md) or JSON (.json)
            %chat model SPEC      continue on another model (the history carries over)
            %chat config [--autosave on|off] [--notebook PATH] [--n-ctx N]
            %chat widget [--name NAME]   the chat widget on the same conversation

        A model SPEC is a path to a .gguf file or hf:OWNER/REPO/FILE.gguf; without one the
        embedded default (SmolLM2-135M-Instruct) is used.
        """
        try:
            if cell is None:
                return self._line(line)
            self._cell(line, cell)
        except LmchatError as exc:
            raise UsageError(str(exc)) from None
        return None

    # --- %%chat ---------------------------------------------------------------------------------

    def _cell(self, line: str, cell: str) -> None:
        args = _cell_parser().parse_args(_split(line))
        prompt = cell.strip()
        if not prompt:
            raise UsageError("%%chat: the cell is empty; write your message below the %%chat line")
        state = kernel.chats(self.shell)
        store = state.store
        name = args.name or store.active
        conv = store.get(name, system=args.system)
        _wait_until_free(conv)
        if args.model is not None and args.model != (conv.model.spec or None):
            conv.switch_model(store.model_for(args.model), progress=store.progress("Re-reading"))
        order = state.replay_cursor.get(name, 0)
        decision = decide(conv.history, prompt, state.cell_id, order, regen=args.regen)
        if decision.action == "replay":
            assert decision.index is not None
            state.replay_cursor[name] = cell_turns(conv.history).index(decision.index) + 1
            show_stored(
                conv.history[decision.index + 1].content, "restored from the saved conversation · not generated again"
            )
            return
        if decision.action == "rewind":
            assert decision.index is not None
            conv.rewind(decision.index)
        options = {
            key: value
            for key, value in (("temperature", args.temperature), ("max_tokens", args.max_tokens), ("seed", args.seed))
            if value is not None
        }
        out = AnswerDisplay()
        turn = conv.stream(prompt, cell_id=state.cell_id, **options)
        try:
            for piece in turn:
                out.add(piece)
        finally:
            result = turn.result
            if result is not None:
                out.finish(result.text, stats_line(result, conv.model.n_ctx, conv.info.token_count))
                state.replay_cursor[name] = len(cell_turns(conv.history))

    # --- %chat ----------------------------------------------------------------------------------

    def _line(self, line: str) -> Any:
        args = _line_parser().parse_args(_split(line) or ["info"])
        state = kernel.chats(self.shell)
        store = state.store
        command = args.command
        if command == "list":
            names = store.names() or [store.active]
            rows = [f"{'*' if n == store.active else ' '} {n}" for n in names]
            print("\n".join(rows))
            return None
        if command == "use":
            store.get(args.conversation)
            store.active = args.conversation
            print(f"lmchat: %%chat now uses {args.conversation!r}")
            return None
        if command == "config":
            return self._config(args, state)
        if command == "widget":
            from .widget import ChatWidget

            return ChatWidget(name=args.name or store.active)
        conv = store.get()
        if command == "info":
            print(_describe(conv, store.active, state))
        elif command == "history":
            display(Markdown(_transcript(conv)))
        elif command == "clear":
            conv.clear()
            state.replay_cursor[store.active] = 0
            print("lmchat: conversation cleared")
        elif command == "rewind":
            if args.turns < 0:
                raise UsageError("%chat rewind N: N is the number of turns to drop, 0 or more")
            users = [i for i, m in enumerate(conv.history) if m.role == "user"]
            keep = users[-args.turns] if 0 < args.turns <= len(users) else (users[0] if users else len(conv.history))
            conv.rewind(keep if args.turns else len(conv.history))
            print(f"lmchat: {conv.info.user_message_count} turns left")
        elif command == "save":
            path = Path(args.path) if args.path else store.sidecar.session_path(store.active)
            path.parent.mkdir(parents=True, exist_ok=True)
            conv.save(path)
            print(f"lmchat: saved to {path}")
        elif command == "load":
            self._load(Path(args.path), store)
        elif command == "export":
            self._export(conv, Path(args.path))
        elif command == "model":
            conv.switch_model(store.model_for(args.spec), progress=store.progress("Re-reading"))
            print(f"lmchat: now on {conv.model.describe()}")
        return None

    def _config(self, args: argparse.Namespace, state: kernel.KernelChats) -> None:
        store = state.store
        if args.autosave is not None:
            store.autosave = args.autosave == "on"
        if args.notebook is not None:
            state.explicit_notebook = Path(args.notebook).expanduser().resolve()
            state.relocate()
        if args.n_ctx is not None:
            from dataclasses import replace

            store.settings = replace(store.settings, n_ctx=args.n_ctx)
        print(
            f"autosave: {'on' if store.autosave else 'off'}\n"
            f"sidecar: {store.sidecar.folder}{'' if store.sidecar.writable else ' (read-only here)'}\n"
            f"n_ctx: {store.settings.n_ctx or 'default (8192, capped by the model)'}"
        )

    def _load(self, path: Path, store: Any) -> None:
        model = store.model_for(None)
        if path.suffix == ".json":
            conv = Conversation.from_history(model, ChatHistory.load(path), progress=store.progress("Re-reading"))
        else:
            conv = Conversation.restore(model, path, progress=store.progress("Restoring"))
        store.adopt(store.active, conv)
        kernel.chats().replay_cursor[store.active] = len(cell_turns(conv.history))
        print(f"lmchat: loaded {conv.info.message_count} messages from {path}")

    def _export(self, conv: Conversation, path: Path) -> None:
        if path.suffix == ".json":
            conv.history.save(path)
        elif path.suffix in (".md", ".markdown"):
            from .atomic import atomic_write

            atomic_write(path, [_transcript(conv).encode("utf-8")])
        else:
            raise UsageError("%chat export PATH: PATH must end in .md (Markdown) or .json (history)")
        print(f"lmchat: exported {conv.info.message_count} messages to {path}")


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"%chat: cannot parse the arguments ({exc})") from None


def _wait_until_free(conv: Conversation) -> None:
    """Let the chat widget's answer (or a save) finish before a cell decides what to do; say so if it takes a while."""
    start, said = time.monotonic(), False
    while conv.busy:
        if not said and time.monotonic() - start > 0.3:
            print("lmchat: waiting for the widget's answer…")
            said = True
        time.sleep(0.05)


def _describe(conv: Conversation, name: str, state: kernel.KernelChats) -> str:
    info = conv.info
    store = state.store
    saved = "saving is off" if not store.autosave else ("saved" if store.sidecar.writable else "not saved (locked)")
    if store.last_save_error:
        saved = f"last save failed: {store.last_save_error}"
    lines = [
        f"conversation: {name} ({info.conversation_id})",
        f"model: {conv.model.describe()}",
        f"messages: {info.message_count} ({info.user_message_count} turns), tokens: {info.token_count:,} / {info.n_ctx:,}",
        f"sidecar: {store.sidecar.folder} — {saved}",
    ]
    if conv.restored_from:
        lines.append(f"restored: {conv.restored_from}")
    return "\n".join(lines)


def _transcript(conv: Conversation) -> str:
    parts = []
    for m in conv.history:
        who = {"system": "System", "user": "You", "assistant": "Assistant"}[m.role]
        parts.append(f"**{who}:**\n\n{safe_markdown(m.content)}")
    return "\n\n---\n\n".join(parts) if parts else "*(no messages yet)*"


def _on_pre_run_cell(info: Any) -> None:
    kernel.chats().cell_id = getattr(info, "cell_id", None)


def load(ipython: Any) -> None:
    """Register the magics (idempotent), restore the sidecar's conversations and say what came back."""
    state = kernel.chats(ipython)
    if getattr(state, "_magics_loaded", False):
        return
    ipython.register_magics(ChatMagics)
    ipython.events.register("pre_run_cell", _on_pre_run_cell)
    state._magics_loaded = True  # type: ignore[attr-defined]
    for line in state.store.restore_all():
        print(f"lmchat: restored {line}")
    from . import frontend

    # After the sidecar: the notebook's embedded history fills in only what the sidecar lacks.
    frontend.register(ipython)


def unload(ipython: Any) -> None:
    state = kernel.chats(ipython)
    if not getattr(state, "_magics_loaded", False):
        return
    from . import frontend

    frontend.unregister(ipython)
    ipython.events.unregister("pre_run_cell", _on_pre_run_cell)
    magics = ipython.magics_manager.magics
    magics["line"].pop("chat", None)
    magics["cell"].pop("chat", None)
    kernel.forget()
