"""``%%chat`` and ``%chat``: the notebook's way in."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument
from IPython.display import Markdown, display

from . import forks, kernel, kernel_status, sidecar_space
from .cell_message import keep_if_names_gone, prepare, tag_user_message, token_cost
from .chat_report import api_key_note, cap_note, describe, gpu_layers_note, list_conversations
from .conversation import Conversation
from .errors import LmchatError
from .history import ChatHistory
from .magic_args import declare, parse_words, split_words, subcommand
from .metadata import EMBED_SETTINGS
from .notebook_context import ErrorLog, parse_context, record_error
from .openai_backend import OpenAIBackend
from .output import AnswerDisplay, show_stored, show_transcript, stats_line, transcript_markdown
from .replay import cell_turns, decide

if TYPE_CHECKING:
    pass

__all__ = ["ChatMagics", "load", "unload"]


# The whole grammar of %%chat and %chat, and the source of the %chat? help: adding an option or a subcommand is one
# line here (and its handling in ChatMagics).
_CELL = declare(
    "%chat",  # the help's usage line puts the second % in front
    """Cell magic -- the cell is your message; the answer streams below it.

    {name} or {expression} puts a value from the kernel into the message: {df.shape}, {In[3]},
    {Out[3]}, {Err[3]} (cell 3's traceback); {{ and }} are literal braces, and braces that hold
    no expression over the notebook's names stay as typed. What the model received is what the
    conversation keeps. Re-running a cell whose message (values included) is already in the
    conversation shows its stored answer again without generating; an edited message or a changed
    value rewinds the conversation to that cell and answers anew; --regen answers anew even when
    the message is unchanged. A model SPEC is a path
    to a .gguf file, hf:OWNER/REPO/FILE.gguf, or an inference server's address (http://HOST:PORT;
    its key from $LMCHAT_API_KEY or %chat config --api-key); without one the embedded default
    (SmolLM2-135M-Instruct) is used.
    """,
    argument("--name", "-n", help="the conversation (default: the active one, see %%chat use)"),
    argument("--model", "-m", metavar="SPEC", help="continue on this model (the history carries over)"),
    argument("--system", "-s", metavar="TEXT", help="the system prompt of a new conversation"),
    argument("--temperature", "-t", type=float, metavar="T", help="sampling temperature (0 is greedy)"),
    argument("--max-tokens", type=int, metavar="N", help="stop the answer after N tokens"),
    argument("--seed", type=int, metavar="S", help="sampling seed, for answers that repeat"),
    argument("--regen", action="store_true", help="answer anew even when the message is unchanged"),
    argument("--raw", action="store_true", help="send the cell as typed: no {name} values put in"),
    argument("--context", metavar="WHAT", help="add cell (the cell run before), cells:N or error (the last one)"),
)
_LINE = declare(
    "chat",
    "Line magic (without a command: info).",
    subcommand("info", help="the conversation, its model, tokens used, where it is saved"),
    subcommand("history", help="the whole conversation"),
    subcommand("list", help="the conversations of this notebook (%chat use NAME switches)"),
    subcommand("use", argument("conversation", metavar="NAME"), help="make NAME the conversation that %%chat uses"),
    subcommand(
        "fork",
        argument("new", metavar="NEW"),
        argument("--at", type=int, metavar="TURN"),
        help="copy the conversation (KV cache too) as NEW, up to TURN; %%chat then uses NEW",
    ),
    subcommand("clear", help="forget every message (the system prompt stays)"),
    subcommand(
        "forget", argument("conversation", metavar="NAME"), help="remove NAME's KV cache file (not its history)"
    ),
    subcommand("rewind", argument("turns", type=int, metavar="N"), help="drop the last N turns"),
    subcommand(
        "save", argument("path", nargs="?", metavar="PATH"), help="save the full session (default: the sidecar)"
    ),
    subcommand("load", argument("path", metavar="PATH"), help="load a session (.lmsession) or a history (.json)"),
    subcommand("export", argument("path", metavar="PATH"), help="write the conversation as Markdown (.md) or JSON"),
    subcommand("model", argument("spec", metavar="SPEC"), help="continue on another model (the history carries over)"),
    subcommand(
        "config",
        argument("--autosave", choices=["on", "off"]),
        argument("--notebook", metavar="PATH"),
        argument("--n-ctx", type=int, metavar="N"),
        argument(
            "--gpu-layers", type=int, metavar="N", help="layers on the GPU: -1 all (default with a GPU build), 0 none"
        ),
        argument("--max-sidecar-mb", type=float, metavar="MB", help="remove old KV caches past this size (0: no cap)"),
        argument("--embed", choices=EMBED_SETTINGS, help="what the .ipynb carries of its chats (kept in it)"),
        argument("--api-key", metavar="KEY", help="the inference server's API key (kept in this kernel's memory only)"),
        help="show or change the settings",
    ),
    subcommand("strip", help="remove lmchat's metadata from the notebook (before sharing it)"),
    subcommand("widget", argument("--name", "-n", default=None), help="the chat widget on the same conversation"),
)


@magics_class
class ChatMagics(Magics):
    """The ``%%chat`` cell magic and the ``%chat`` line magic."""

    @line_cell_magic
    def chat(self, line: str, cell: str | None = None) -> Any:
        """Chat with a local model; the conversation lives in the kernel and survives restarts."""
        try:
            if cell is None:
                return self._line(line)
            self._cell(line, cell)
        except LmchatError as exc:
            raise UsageError(str(exc)) from None
        return None

    # --- %%chat ---------------------------------------------------------------------------------

    def _cell(self, line: str, cell: str) -> None:
        args = parse_words(_CELL, "%%chat", split_words(line))
        if not cell.strip():
            raise UsageError("%%chat: the cell is empty; write your message below the %%chat line")
        try:
            context = parse_context(args.context) if args.context is not None else None
            message = prepare(cell.strip(), self.shell, raw=args.raw, context=context)
        except ValueError as exc:
            raise UsageError(f"%%chat: {exc}") from None
        state = kernel.chats(self.shell)
        store = state.store
        name = args.name or store.active
        # A new conversation starts on --model at once: a kernel that talks to a server need not hold a model.
        conv = store.get(name, system=args.system, model=args.model)
        _wait_until_free(conv)
        if args.model is not None and args.model != (conv.model.spec or None):
            conv.switch_model(store.model_for(args.model), progress=store.progress("Re-reading"))
        order = state.replay_cursor.get(name, 0)
        decision = decide(conv.history, message.text, state.cell_id, order, regen=args.regen)
        if decision.action == "rewind" and not args.regen:
            decision = keep_if_names_gone(decision, conv, message)
        if decision.action == "replay":
            assert decision.index is not None
            state.replay_cursor[name] = cell_turns(conv.history).index(decision.index) + 1
            show_stored(
                conv.history[decision.index + 1].content, "restored from the saved conversation · not generated again"
            )
            return
        if decision.action == "rewind":
            assert decision.index is not None
            conv.rewind_to(decision.index)
        options = {
            key: value
            for key, value in (("temperature", args.temperature), ("max_tokens", args.max_tokens), ("seed", args.seed))
            if value is not None
        }
        for note in message.notes():
            print(f"lmchat: {note}")
        if message.added:
            display(Markdown(message.added_markdown(token_cost(conv, message))))
        out = AnswerDisplay()
        turn = conv.stream(message.text, cell_id=state.cell_id, **options)
        untag = tag_user_message(conv, message.meta())
        try:
            for piece in turn:
                out.add(piece)
        finally:
            untag()
            result = turn.result
            if result is not None:
                out.finish(
                    result.text,
                    stats_line(result, conv.model.n_ctx if conv.model.context_known else None, conv.info.token_count),
                )
                state.replay_cursor[name] = len(cell_turns(conv.history))

    # --- %chat ----------------------------------------------------------------------------------

    def _line(self, line: str) -> Any:
        args = parse_words(_LINE, "%chat", split_words(line) or ["info"])
        state = kernel.chats(self.shell)
        store = state.store
        command = args.command
        if command == "list":
            print(list_conversations(state))
            return None
        if command == "fork":
            source = store.active
            _wait_until_free(store.get(source))
            twin = forks.fork(store, source, args.new, args.at)
            store.active = args.new
            state.replay_cursor[args.new] = len(cell_turns(twin.history))
            if isinstance(twin.model.backend, OpenAIBackend):
                copied = "its history copied (history-only: the server reads it with the next answer)"
            else:
                copied = f"its {twin.info.token_count:,} cached tokens copied (nothing evaluated again)"
            print(f"lmchat: {args.new!r} {forks.origin_note(twin.history)}, {copied}; %%chat now uses {args.new!r}")
            return None
        if command == "forget":
            freed = sidecar_space.drop_kv_cache(store, args.conversation)
            print(
                f"lmchat: removed the KV cache of {args.conversation!r} ({sidecar_space.format_size(freed)}); its "
                "history stays, and a later kernel evaluates it again"
                if freed
                else f"lmchat: {args.conversation!r} has no KV cache file; its history stays"
            )
            return None
        if command == "use":
            store.get(args.conversation)
            store.active = args.conversation
            print(f"lmchat: %%chat now uses {args.conversation!r}")
            return None
        if command == "config":
            return self._config(args, state)
        if command == "strip":
            from . import frontend

            print(f"lmchat: {frontend.bridge().strip()}")
            return None
        if command == "widget":
            from .widget import ChatWidget

            return ChatWidget(name=args.name or store.active)
        conv = store.get()
        if command == "info":
            print(describe(conv, store.active, state))
        elif command == "history":
            show_transcript(conv.history)
        elif command == "clear":
            conv.clear()
            state.replay_cursor[store.active] = 0
            print("lmchat: conversation cleared")
        elif command == "rewind":
            if args.turns < 0:
                raise UsageError("%chat rewind N: N is the number of turns to drop, 0 or more")
            print(f"lmchat: {conv.drop_turns(args.turns)} turns left")
        elif command == "save":
            path = Path(args.path) if args.path else store.sidecar.session_path(store.active)
            path.parent.mkdir(parents=True, exist_ok=True)
            conv.save(path)
            print(f"lmchat: saved to {path.resolve()}")
        elif command == "load":
            self._load(Path(args.path), store)
        elif command == "export":
            self._export(conv, Path(args.path).expanduser())
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
        if args.gpu_layers is not None:
            from dataclasses import replace

            if args.gpu_layers < -1:
                raise UsageError("%chat config --gpu-layers N: N is -1 (every layer), 0 (none) or a layer count")
            store.settings = replace(store.settings, n_gpu_layers=args.gpu_layers)
        if args.max_sidecar_mb is not None:
            if args.max_sidecar_mb < 0:
                raise UsageError("%chat config --max-sidecar-mb MB: MB is a size in megabytes, or 0 for no cap")
            store.max_sidecar_bytes = int(args.max_sidecar_mb * 1e6) or None
            sidecar_space.enforce_cap(store)
        if args.api_key is not None:
            store.set_api_key(args.api_key.strip() or None)
        from . import frontend

        if args.embed is not None:
            frontend.bridge().set_embed(args.embed)
        print(
            f"autosave: {'on' if store.autosave else 'off'}\n"
            f"sidecar: {store.sidecar.folder}{'' if store.sidecar.writable else ' (read-only here)'}\n"
            f"n_ctx: {store.settings.n_ctx or 'default (8192, capped by the model)'}\n"
            f"gpu layers: {gpu_layers_note(store.settings.n_gpu_layers)}\n"
            f"max sidecar size: {cap_note(store)}\n"
            f"api key: {api_key_note(store.api_key)}\n"
            f"embed: {frontend.bridge().embed} (kept in the notebook's metadata)"
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

            atomic_write(path, [transcript_markdown(conv.history).encode("utf-8")])
        else:
            raise UsageError("%chat export PATH: PATH must end in .md (Markdown) or .json (history)")
        # A bare name lands in the kernel's working folder, which is not always the notebook's: say where.
        print(f"lmchat: exported {conv.info.message_count} messages to {path.resolve()}")


# %chat? shows the help that the two declarations generate.
ChatMagics.chat.__doc__ = f"{ChatMagics.chat.__doc__}\n\n{_CELL.format_help()}\n{_LINE.format_help()}"


def _wait_until_free(conv: Conversation) -> None:
    """Let the chat widget's answer (or a save) finish before a cell decides what to do; say so if it takes a while."""
    start, said = time.monotonic(), False
    while conv.busy:
        if not said and time.monotonic() - start > 0.3:
            print("lmchat: waiting for the widget's answer…")
            said = True
        time.sleep(0.05)


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
