"""Conversation: a multi-turn chat on a loaded model, with prefix reuse, rewind, streaming and sessions.

The turn loop, rewind_to / drop_turns, fork and the persistence entry points are here; the history as the model sees
it is :mod:`context`'s job, the tokens the model's backend holds :mod:`kvcache`'s, and the session bytes
:mod:`session`'s. Saving in the background as a conversation changes is :mod:`autosave`'s.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core import interrupts
from ..core.errors import ConversationBusyError, LmchatError, NothingToSaveError
from ..core.events import ConversationEvent, EventHub
from ..core.history import ChatHistory, Message, new_id
from ..core.results import ConversationInfo, GenerationOptions, TurnResult
from .context import ChatContext
from .kvcache import KVCache, Progress
from .models import Model
from .session import reader as session
from .session import writer as session_save
from .turn import StreamingTurn, TurnHooks, run_turn

log = logging.getLogger("lmchat")

__all__ = ["Conversation", "StreamingTurn", "CONTEXT_POLICIES", "Progress"]

CONTEXT_POLICIES = ("error", "drop_oldest")


class Conversation:
    """A chat with a local model whose whole state can be saved and restored.

    >>> conv = Conversation(load_model(), system="You are terse.")
    >>> conv.submit("Hi!").text
    """

    def __init__(
        self,
        model: Model,
        system: str | None = None,
        *,
        history: ChatHistory | None = None,
        options: GenerationOptions | None = None,
        context_policy: str = "error",
    ) -> None:
        if context_policy not in CONTEXT_POLICIES:
            raise ValueError(f"context_policy={context_policy!r}; choose one of {CONTEXT_POLICIES}")
        self.model = model
        self.history = history if history is not None else ChatHistory()
        if system is not None:
            if self.history.system is not None:
                self.history.messages[0].content = system
            else:
                self.history.messages.insert(0, Message("system", system))
        self.options = options or GenerationOptions()
        self.context_policy = context_policy
        self.events = EventHub()
        self.last_result: TurnResult | None = None
        self.restored_from: str | None = None
        #: The history as the model sees it, and the cache of its tokens.
        self.context = self._context_on(model)
        self._turn_lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._stop = threading.Event()
        #: The file this conversation last saved to or was restored from, where a save may append.
        self._saved_at: session_save.SessionPoint | None = None
        #: What the last save to a file wrote (its size and kind; for measurements).
        self.last_save: session_save.SavePlan | None = None

    def __repr__(self) -> str:
        return f"Conversation(id={self.history.conversation_id!r}, messages={len(self.history)}, model={self.model.name!r})"

    # --- observing ------------------------------------------------------------------------------

    def subscribe(self, listener: Callable[[ConversationEvent], None]) -> Callable[[], None]:
        """Call ``listener`` with every :class:`ConversationEvent`; returns a function that unsubscribes."""
        return self.events.subscribe(listener)

    def on_token(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback`` with each piece of answer text as it is generated."""
        return self.subscribe(lambda e: callback(e.text) if e.kind == "token" else None)

    def _emit(self, kind: str, message: Message | None = None, text: str = "") -> None:
        self.events.emit(ConversationEvent(kind, self, message, text))

    # --- facts ----------------------------------------------------------------------------------

    @property
    def cache(self) -> KVCache:
        """The tokens this conversation holds in the model's backend."""
        return self.context.cache

    @property
    def info(self) -> ConversationInfo:
        return ConversationInfo(
            conversation_id=self.history.conversation_id,
            message_count=self.history.message_count,
            user_message_count=self.history.user_message_count,
            token_count=len(self.cache.tokens),
            n_ctx=self.model.n_ctx,
            model_name=self.model.name,
        )

    @property
    def busy(self) -> bool:
        return self._turn_lock.locked()

    # --- turns ----------------------------------------------------------------------------------

    def submit(self, prompt: str, **options: Any) -> TurnResult:
        """Send ``prompt`` and wait for the whole answer."""
        turn = self.stream(prompt, **options)
        for _ in turn:
            pass
        assert turn.result is not None
        return turn.result

    def stream(self, prompt: str, *, cell_id: str | None = None, wait: bool = True, **options: Any) -> StreamingTurn:
        """Send ``prompt``; iterate the returned object for the answer's text as it is generated.

        ``options`` override :class:`GenerationOptions` fields for this turn. With ``wait=False`` a
        conversation that is already generating raises :class:`ConversationBusyError` at once.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the message is empty; write something to send")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "the message is not valid Unicode text: it holds a lone surrogate (such as '\\ud800'); remove it"
            ) from None
        opts = replace(self.options, **options)
        return StreamingTurn(lambda turn: self._turn(turn, prompt, cell_id, opts, wait))

    def stop(self) -> None:
        """Ask a running generation to end after its current token; the partial answer is kept."""
        self._stop.set()

    def _turn(
        self, turn: StreamingTurn, prompt: str | None, cell_id: str | None, opts: GenerationOptions, wait: bool
    ) -> Iterator[str]:
        """A turn under the turn lock, the model lock and :func:`interrupts.held`."""
        # The locks are taken with Ctrl-C held back: a KeyboardInterrupt between taking a lock and
        # the try that releases it would leave the conversation busy for good.
        with interrupts.held():
            if wait:
                interrupts.acquire(self._turn_lock)
            elif not self._turn_lock.acquire(blocking=False):
                raise ConversationBusyError(
                    "this conversation is generating an answer; wait for it or stop it (conv.stop())"
                )
            try:
                interrupts.acquire(self.model.lock)
                try:
                    self.cache.activate()
                    self._stop.clear()
                    yield from run_turn(self.context, prompt, cell_id, opts, self._answer_hooks(turn))
                finally:
                    self.model.lock.release()
            finally:
                self._turn_lock.release()

    def _answer_hooks(self, turn: StreamingTurn) -> TurnHooks:
        def record(result: TurnResult) -> None:
            turn.result = self.last_result = result

        drop_oldest = self.context_policy == "drop_oldest"
        return TurnHooks(self._emit, record, self._stop.is_set, drop_oldest)

    def regenerate(self, **options: Any) -> StreamingTurn:
        """Drop the last answer and answer the last user message again."""
        last_user = max((i for i, m in enumerate(self.history) if m.role == "user"), default=None)
        if last_user is None:
            raise LmchatError("there is no user message to answer again")
        self.rewind_to(last_user + 1)
        opts = replace(self.options, **options)
        cell_id = self.history[last_user].cell_id
        return StreamingTurn(lambda turn: self._turn(turn, None, cell_id, opts, True))

    # --- history edits --------------------------------------------------------------------------

    def rewind_to(self, n_messages: int) -> None:
        """Keep the first ``n_messages`` messages and drop the rest; the KV prefix of what remains is kept.

        ``rewind_to(i)`` goes back to just before message ``i``. The system prompt always stays.
        """
        if not 0 <= n_messages <= len(self.history):
            raise ValueError(f"rewind to {n_messages} messages: the conversation has {len(self.history)}")
        with self._turn_lock, self.model.lock, interrupts.held():
            keep = max(n_messages, 1 if self.history.system is not None else 0)
            if keep < len(self.history):  # the next save writes the file whole: no record after the text taken out
                self._saved_at = None
            del self.history.messages[keep:]
            self.context.cut_back()
        self._emit("rewound", text=f"kept {keep} messages")

    def fork(self, **kwargs: Any) -> Conversation:
        """A new conversation that starts where this one is: a copy of its history (under a new id) and
        of its KV state, so its next turn evaluates only the new message. The two go on independently.

        ``kwargs`` go to the constructor (the options and the context policy carry over by default).
        """
        kwargs.setdefault("options", self.options)
        kwargs.setdefault("context_policy", self.context_policy)
        with self._turn_lock, self.model.lock, interrupts.held():
            history = self.history.copy()
            history.conversation_id = new_id()
            twin = type(self)(self.model, history=history, **kwargs)
            twin.context.cache = self.cache.copy(twin._restored_state_failed, history.conversation_id)
        return twin

    def drop_turns(self, n_turns: int) -> int:
        """Drop the last ``n_turns`` turns (a user message and its answer each), as ``%chat rewind N`` does.

        Dropping more turns than there are leaves the system prompt alone. Returns the turns left.
        """
        if n_turns < 0:
            raise ValueError(f"drop {n_turns} turns: the number of turns to drop is 0 or more")
        users = [i for i, m in enumerate(self.history) if m.role == "user"]
        if n_turns and users:
            self.rewind_to(users[-min(n_turns, len(users))])
        return self.history.user_message_count

    def clear(self) -> None:
        """Forget every message but the system prompt."""
        self.rewind_to(0)
        self._emit("cleared")

    # --- the context ----------------------------------------------------------------------------

    def _context_on(self, model: Model) -> ChatContext:
        def dropped() -> None:
            self._emit("rewound", text="the oldest turn was dropped to fit the context")

        return ChatContext(model, self.history, dropped, self._restored_state_failed)

    def _restored_state_failed(self) -> None:
        """The restored KV state did not reproduce its saved logits (its tokens are evaluated again)."""
        log.warning("the restored KV state of %r did not verify; its tokens are evaluated again", self)
        self.restored_from = (
            f"session tokens (the restored KV state did not verify at its first use, so they were evaluated again); "
            f"was: {self.restored_from}"
        )

    def prefill(self, progress: Progress | None = None) -> int:
        """Evaluate the whole history now (otherwise the next turn does it); returns tokens evaluated.

        After a last answer, the opening of the next user message is evaluated too, as after a turn.
        """
        with self._turn_lock, self.model.lock, interrupts.held():
            return self.context.prefill(progress)

    # --- persistence ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str] | None = None) -> bytes | None:
        """Save the session (history, KV state, model fingerprint, settings).

        With a path the file is written and ``None`` is returned; without one the whole session is
        returned as bytes. A file this conversation saved or was restored from gets a record of what
        changed since (the new turns' tokens and KV state), appended and fsynced; otherwise, and after
        a rewind into what the file holds, the file is written whole, atomically.
        """
        if self.history.user_message_count == 0:
            raise NothingToSaveError("the conversation has no turns yet; send a message before saving")
        target = None if path is None else Path(path)
        # One save at a time: a record follows what the previous save wrote.
        with self._save_lock:
            plan = self._plan_save(target, self._saved_at)
            # The file is written outside the turn's locks: the next turn need not wait for the disk.
            if target is None:
                return b"".join(plan.chunks)
            self._saved_at = None  # until the write is known to be whole
            plan = session_save.write_plan(target, plan, lambda: self._plan_save(target, None))
            self._saved_at = plan.point
            self.last_save = plan
        return None

    def _plan_save(self, target: Path | None, point: session_save.SessionPoint | None) -> session_save.SavePlan:
        with self._turn_lock, self.model.lock, interrupts.held():
            started = time.perf_counter()
            self.cache.activate()
            plan = session_save.plan_save(self.history, self.model, self.cache, point, target)
            plan.locked_seconds = time.perf_counter() - started
        return plan

    def switch_model(self, model: Model, progress: Progress | None = None) -> None:
        """Continue on another model: the history carries over and is evaluated again; the old KV is dropped."""
        with self._turn_lock, self.model.lock, interrupts.held():
            self.cache.release()
            self.model = model
            self.context = self._context_on(model)
        self.prefill(progress)
        self._emit("model_changed", text=model.describe())

    @classmethod
    def restore(
        cls,
        model: Model,
        source: str | os.PathLike[str] | bytes | bytearray,
        *,
        verify: str = "auto",
        use_kv: bool = True,
        progress: Progress | None = None,
        **kwargs: Any,
    ) -> Conversation:
        """Restore a full session saved with :meth:`save`, without re-reading the history.

        Raises :class:`SessionMismatchError` (carrying the history) when the session belongs to another
        model or settings, and :class:`SessionCorruptError` for damaged data. ``verify`` re-decodes the
        last token and compares its logits: "auto" does so for sliding-window models. When llama.cpp
        refuses the KV bytes, the verification fails, or ``use_kv=False``, the saved tokens are
        evaluated again instead (slower, same result). ``kwargs`` go to the constructor.
        """
        if verify not in session.VERIFY_MODES:
            raise ValueError(f"verify={verify!r}; choose one of {session.VERIFY_MODES}")
        with session.open_session(model, source) as saved:
            conv = cls(model, history=saved.history, **kwargs)
            with conv._turn_lock, model.lock, interrupts.held():
                conv.cache.activate()
                conv.restored_from = session.load_into(conv.cache, saved, verify, use_kv, progress)
                conv._saved_at = saved.point
        conv.history.token_count = len(conv.cache.tokens)
        conv._emit("restored", text=conv.restored_from)
        return conv

    @classmethod
    def from_history(
        cls,
        model: Model,
        history: ChatHistory,
        *,
        prefill: bool = True,
        progress: Progress | None = None,
        **kwargs: Any,
    ) -> Conversation:
        """A conversation on ``model`` from a history alone (any model); re-evaluates the history."""
        conv = cls(model, history=history.copy(), **kwargs)
        if prefill and len(conv.history):
            conv.prefill(progress)
        conv._emit("restored", text="history")
        return conv
