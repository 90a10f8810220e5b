"""``%%chat``: the cell is the message, the answer streams below it (or comes back stored, when nothing changed)."""

from __future__ import annotations

import argparse
from collections.abc import Generator
from typing import Any, cast

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument
from IPython.display import Markdown, display

from ...engine.conversation import Conversation
from ...notebook.cell_message import CellMessage, keep_if_names_gone, prepare, tag_user_message, token_cost
from ...notebook.context import parse_context
from ...notebook.kernel import KernelChats
from ...notebook.replay import Decision, cell_turns, decide
from ...storage.unasked_rewind import keep_before_rewind
from ..magic_args import declare, parse_words, split_words
from ..output import AnswerDisplay, Stopped, show_stored, stats_line
from . import values
from .busy import wait_until_free

__all__ = ["CELL", "run_cell"]

TEMPERATURE = values.number(0, 10, "T")
MAX_TOKENS = values.whole(1, values.MAX_TOKENS, "N")
SEED = values.whole(0, values.MAX_SEED, "S")

#: The grammar of %%chat, and the source of its part of the %chat? help.
CELL = declare(
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
    argument("--name", "-n", type=values.name, help="the conversation (default: the active one, see %%chat use)"),
    argument(
        "--model", "-m", type=values.spec, metavar="SPEC", help="continue on this model (the history carries over)"
    ),
    argument("--system", "-s", type=values.system, metavar="TEXT", help="the system prompt of a new conversation"),
    argument("--temperature", "-t", type=TEMPERATURE, metavar="T", help="sampling temperature (0 is greedy)"),
    argument("--max-tokens", type=MAX_TOKENS, metavar="N", help="stop the answer after N tokens"),
    argument("--seed", type=SEED, metavar="S", help="sampling seed, for answers that repeat"),
    argument("--regen", action="store_true", help="answer anew even when the message is unchanged"),
    argument("--raw", action="store_true", help="send the cell as typed: no {name} values put in"),
    argument("--context", metavar="WHAT", help="add cell (the cell run before), cells:N or error (the last one)"),
)


def run_cell(state: KernelChats, shell: Any, line: str, cell: str) -> None:
    """Send ``cell`` (its values from ``shell`` put in) to the conversation that ``line`` names, and show the answer;
    show the stored answer instead where the conversation already holds this message for this cell."""
    args = parse_words(CELL, "%%chat", split_words(line))
    if not cell.strip():
        raise UsageError("%%chat: the cell is empty; write your message below the %%chat line")
    try:
        context = parse_context(args.context) if args.context is not None else None
        message = prepare(cell.strip(), shell, raw=args.raw, context=context)
    except ValueError as exc:
        raise UsageError(f"%%chat: {exc}") from None
    store = state.store
    name = args.name or store.active
    # A new conversation starts on --model at once: a kernel that talks to a server need not hold a model.
    conv = store.get(name, system=args.system, model=args.model)
    wait_until_free(conv)
    if args.model is not None and args.model != (conv.model.spec or None):
        conv.switch_model(store.model_for(args.model), progress=store.progress("Re-reading"))
    order = state.replay_cursor.get(name, 0)
    decision = decide(conv.history, message.text, state.cell_id, order, regen=args.regen)
    if decision.action == "rewind" and not args.regen:
        decision = keep_if_names_gone(decision, conv, message)
    if decision.action == "rewind" and decision.by_order and not args.regen:
        decision = _kept_before_rewind(state, name, conv, decision)
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
    _answer(state, name, conv, message, args)


def _kept_before_rewind(state: KernelChats, name: str, conv: Conversation, decision: Decision) -> Decision:
    """Matched by order (no cell ids), a changed message would drop the turns from it on: keep them first."""
    assert decision.index is not None
    turn = cell_turns(conv.history).index(decision.index) + 1
    kept = keep_before_rewind(state.store, name, conv)
    if kept is None:
        print(
            f"lmchat: this cell's message differs from turn {turn} of {name!r}, which it was matched to by order "
            "(this client sends no cell ids); no copy could be kept, so nothing is dropped: it is added as a new turn"
        )
        return Decision("new")
    print(
        f"lmchat: this cell's message differs from turn {turn} of {name!r}, which it was matched to by order "
        f"(this client sends no cell ids), so {name!r} goes back to that turn; all {conv.history.message_count} "
        f"of its messages are kept as {kept!r} in {state.store.sidecar.folder}: `%chat use {kept}` opens them"
    )
    return decision


def _answer(state: KernelChats, name: str, conv: Conversation, message: CellMessage, args: argparse.Namespace) -> None:
    """Stream the answer to ``message`` into the cell's output, its stats line under it once it is done."""
    options = {
        key: value
        for key, value in (("temperature", args.temperature), ("max_tokens", args.max_tokens), ("seed", args.seed))
        if value is not None
    }
    state.turn_options[name] = options  # the panel's next turns answer as this cell did
    for note in message.notes():
        print(f"lmchat: {note}")
    if message.added:
        display(Markdown(message.added_markdown(token_cost(conv, message))))
    out = AnswerDisplay()
    turn = conv.stream(message.text, cell_id=state.cell_id, **options)
    untag = tag_user_message(conv, message.meta())
    pieces = cast(Generator[str, None, None], iter(turn))  # a generator: closing it ends the turn
    try:
        for piece in pieces:
            out.add(piece)
    except KeyboardInterrupt:
        # Jupyter's stop: the engine keeps the partial answer once its generator is closed; say so in one line.
        pieces.close()
        raise Stopped(turn.result.generated_tokens if turn.result is not None else None) from None
    finally:
        untag()
        result = turn.result
        if result is not None:
            out.finish(
                result.text,
                stats_line(result, conv.model.n_ctx if conv.model.context_known else None, conv.info.token_count),
            )
            state.replay_cursor[name] = len(cell_turns(conv.history))
        else:
            out.drop()  # the turn failed and was dropped: no streaming cursor may stay on screen
