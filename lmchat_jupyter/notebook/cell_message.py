"""A ``%%chat`` cell's text as the model receives it: values interpolated, notebook context added.

What the model received is what the conversation stores, so a restore, a re-run and the notebook's
metadata all see the same message. The message's ``meta`` records which notebook names it used, so
that a re-run in a kernel that no longer has them can say so instead of asking something else.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.events import ConversationEvent
from ..core.history import Message
from .context import ContextBlock, ContextSpec, context_block
from .interpolation import Expansion, expand
from .replay import Decision

if TYPE_CHECKING:
    from ..engine.conversation import Conversation

__all__ = [
    "CellMessage",
    "prepare",
    "keep_if_names_gone",
    "tag_user_message",
    "token_cost",
    "USES_KEY",
    "CONTEXT_KEY",
]

#: Message meta keys: the notebook names a message's values came from, and its ``--context``.
USES_KEY = "uses"
CONTEXT_KEY = "context"
_MAX_META_CHARS = 900


@dataclass(frozen=True)
class CellMessage:
    """What was typed, what the model receives, and what came in between."""

    typed: str
    text: str
    expansion: Expansion | None = None
    context: ContextBlock | None = None
    context_spec: ContextSpec | None = None

    @property
    def added(self) -> bool:
        """Whether the model receives anything but the typed text."""
        return self.text != self.typed

    def meta(self) -> dict[str, Any]:
        """What to keep with the user message (plain, short values)."""
        meta: dict[str, Any] = {}
        if self.expansion is not None and self.expansion.names:
            meta[USES_KEY] = ",".join(self.expansion.names)[:_MAX_META_CHARS]
        if self.context_spec is not None:
            meta[CONTEXT_KEY] = str(self.context_spec)
        return meta

    def notes(self) -> list[str]:
        """One line for each brace sent as written, saying why."""
        if self.expansion is None:
            return []
        return [f"{left.source} was sent as written ({left.reason})" for left in self.expansion.left]

    def gone_since(self, stored: Message) -> list[str]:
        """The braces that filled in ``stored`` but cannot be filled in now (the kernel restarted since)."""
        used = set(str(stored.meta.get(USES_KEY) or "").split(",")) - {""}
        left = self.expansion.left if self.expansion is not None else []
        return [item.source for item in left if used.intersection(item.names)]

    def summary(self, tokens: int | None) -> str:
        """``2 values and the last error (In [4]) · 312 tokens``: what was added to the message."""
        parts = []
        inserts = self.expansion.inserts if self.expansion is not None else []
        if inserts:
            cut = sum(1 for i in inserts if i.cut)
            parts.append(f"{len(inserts)} value{'s' * (len(inserts) != 1)}" + (f" ({cut} cut)" if cut else ""))
        if self.context is not None:
            parts.append(self.context.label)
        cost = f" · {tokens:,} tokens" if tokens is not None else ""
        return " and ".join(parts) + cost

    def added_markdown(self, tokens: int | None) -> str:
        """A collapsed block showing the whole message as the model received it."""
        return (
            f"<details><summary>lmchat added {html.escape(self.summary(tokens))}</summary>"
            f"<pre>{html.escape(self.text)}</pre></details>"
        )


def prepare(typed: str, shell: Any, *, raw: bool = False, context: ContextSpec | None = None) -> CellMessage:
    """The message for ``typed`` in ``shell``; ValueError when ``context`` finds nothing to add."""
    expansion = None if raw else expand(typed, shell.user_ns)
    block = context_block(context, shell) if context is not None else None
    body = expansion.text if expansion is not None else typed
    text = f"{block.text}\n\n{body}" if block is not None else body
    return CellMessage(typed, text, expansion, block, context)


def keep_if_names_gone(decision: Decision, conv: Conversation, message: CellMessage) -> Decision:
    """A stored turn whose values came from names this kernel lost (a restart) is shown, not asked anew."""
    assert decision.index is not None
    answered = decision.index + 1 < len(conv.history) and conv.history[decision.index + 1].role == "assistant"
    gone = message.gone_since(conv.history[decision.index])
    if not (answered and gone):
        return decision
    print(
        f"lmchat: {', '.join(gone)} cannot be filled in: this kernel does not have the values the answer below "
        "was given (it restarted since). Showing the stored answer; run the cells that make them, then this "
        "cell again, to ask anew."
    )
    return Decision("replay", decision.index)


def tag_user_message(conv: Conversation, meta: dict[str, Any]) -> Callable[[], None]:
    """Keep ``meta`` with the turn's user message (the names its values came from, its --context)."""

    def tag(event: ConversationEvent) -> None:
        if event.kind == "turn_started" and event.message is not None:
            event.message.meta.update(meta)

    return conv.subscribe(tag) if meta else lambda: None


def token_cost(conv: Conversation, message: CellMessage) -> int:
    """Tokens the added values and context cost the message (a count, so one tokenizer call each)."""
    tokenize = conv.model.backend.tokenize
    return max(0, len(tokenize(message.text)) - len(tokenize(message.typed)))
