"""Conversation: a multi-turn chat on a loaded model, with prefix reuse, rewind, streaming and sessions.

How the KV cache is kept right: the conversation remembers the exact text its cached tokens stand
for (``_text``) and checkpoints ``(text length, token count)`` at every message boundary. A new turn
renders the history with the model's template; when the render starts with ``_text`` only the
difference is tokenized and evaluated, so the previous answer's generated tokens stay as they were.
When it does not (a rewind, or a template that rewrites earlier turns) the cache is cut back to the
longest checkpoint whose text still matches, and only the rest is evaluated.
"""

from __future__ import annotations

import codecs
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import interrupts, kvstate
from .errors import ContextOverflowError, ConversationBusyError, LmchatError, NothingToSaveError
from .events import ConversationEvent, EventHub
from .history import ChatHistory, Message
from .models import Model
from .rendering import ChatRenderer
from .results import ConversationInfo, GenerationOptions, TurnResult

log = logging.getLogger("lmchat")

__all__ = ["Conversation", "StreamingTurn", "CONTEXT_POLICIES"]

CONTEXT_POLICIES = ("error", "drop_oldest")
Progress = Callable[[int, int], None]


@dataclass
class EngineState:
    """What the KV cache holds, in the conversation's terms; saved beside the raw KV bytes."""

    tokens: list[int] = field(default_factory=list)
    text: str = ""
    checkpoints: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)])

    def cut(self, text_len: int, n_tokens: int) -> None:
        self.text = self.text[:text_len]
        del self.tokens[n_tokens:]
        self.checkpoints = [c for c in self.checkpoints if c[1] <= n_tokens and c[0] <= text_len]
        if self.checkpoints[-1] != (text_len, n_tokens):
            self.checkpoints.append((text_len, n_tokens))

    def mark(self) -> None:
        point = (len(self.text), len(self.tokens))
        if self.checkpoints[-1] != point:
            self.checkpoints.append(point)


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
        autosave: str | os.PathLike[str] | None = None,
        autosave_every: int = 1,
    ) -> None:
        if context_policy not in CONTEXT_POLICIES:
            raise ValueError(f"context_policy={context_policy!r}; choose one of {CONTEXT_POLICIES}")
        if autosave_every < 1:
            raise ValueError("autosave_every must be at least 1 (turns between saves)")
        self.model = model
        self.history = history if history is not None else ChatHistory()
        if system is not None:
            if self.history.system is not None:
                self.history.messages[0].content = system
            else:
                self.history.messages.insert(0, Message("system", system))
        self.options = options or GenerationOptions()
        self.context_policy = context_policy
        self.autosave_path = Path(autosave) if autosave is not None else None
        self.autosave_every = autosave_every
        self.events = EventHub()
        self.last_result: TurnResult | None = None
        self.last_save_error: LmchatError | None = None
        self.restored_from: str | None = None
        self._renderer = ChatRenderer(model)
        self._state = EngineState()
        self._parked_kv: bytes | None = None
        self._logits_fresh = False
        #: The best logits saved with a restored KV state that still has to be checked (at its first use).
        self._pending_check: list[tuple[int, float]] | None = None
        self._turn_lock = threading.Lock()
        self._stop = threading.Event()
        self._turns_since_save = 0
        self._autosave_lock = threading.Lock()  # one autosave file write at a time
        self._autosave_taken = 0  # sessions captured for autosave so far
        self._autosave_written = 0  # the newest of them on disk
        self._autosave_writers: list[threading.Thread] = []

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
    def info(self) -> ConversationInfo:
        return ConversationInfo(
            conversation_id=self.history.conversation_id,
            message_count=self.history.message_count,
            user_message_count=self.history.user_message_count,
            token_count=len(self._state.tokens),
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
        return StreamingTurn(self, prompt, cell_id, opts, wait)

    def stop(self) -> None:
        """Ask a running generation to end after its current token; the partial answer is kept."""
        self._stop.set()

    def _run_turn(
        self, prompt: str | None, cell_id: str | None, opts: GenerationOptions, turn: StreamingTurn
    ) -> Iterator[str]:
        """The body of a turn; runs under the turn lock, the model lock and :func:`interrupts.held`.

        Ctrl-C takes effect between evaluated batches and between tokens only (and while a piece of
        the answer is handed out), so an interrupted turn leaves the history and the cache agreeing.
        """
        start = time.perf_counter()
        self._stop.clear()
        llm = self.model.llm
        user: Message | None = None
        try:
            if prompt is not None:
                user = Message("user", prompt, cell_id=cell_id, meta={"time": round(time.time(), 3)})
                self.history.messages.append(user)
                self._emit("turn_started", user)
            evaluated = self._sync(self._render(generation_prompt=True), reserve=1)
            if opts.seed is not None:
                llm.set_seed(opts.seed)
            sampler = llm._init_sampler(
                temp=opts.temperature,
                top_k=opts.top_k,
                top_p=opts.top_p,
                min_p=opts.min_p,
                repeat_penalty=opts.repeat_penalty,
            )
        except BaseException:
            if user is not None and self.history.messages and self.history.messages[-1] is user:
                self.history.messages.pop()
                self._emit("rewound", text="the turn was cancelled before its answer began")
            raise
        cached = len(self._state.tokens) - evaluated
        self._state.mark()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces: list[str] = []
        generated = 0
        first_token_at: float | None = None
        finish = "length"
        try:
            while generated < opts.max_tokens:
                interrupts.checkpoint()
                if len(self._state.tokens) >= self.model.n_ctx:
                    break
                if self._stop.is_set():
                    finish = "stopped"
                    break
                token = sampler.sample(llm._ctx, -1)
                if kvstate.is_eog(llm, token):
                    finish = "stop"
                    break
                llm.eval([token])
                self._state.tokens.append(token)
                generated += 1
                piece = decoder.decode(llm.detokenize([token]))
                self._state.text += piece
                pieces.append(piece)
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                if piece:
                    self._emit("token", text=piece)
                    with interrupts.released():
                        yield piece
            self._logits_fresh = True
        except BaseException:
            finish = "interrupted"
            self._repair()
            raise
        finally:
            tail = decoder.decode(b"", final=True)
            self._state.text += tail
            pieces.append(tail)
            self._state.mark()
            text = "".join(pieces)
            if prompt is not None and generated == 0 and finish == "interrupted":
                # Nothing was generated: the turn leaves no trace at all.
                self.history.messages.pop()
                self._rewind_cache()
                self._emit("rewound", text="the turn was interrupted before its answer began")
            else:
                end = time.perf_counter()
                first = first_token_at or end
                rate = (generated - 1) / (end - first) if generated > 1 and end > first else 0.0
                # When and how fast, kept with the answer so that every view can show it after a restart.
                meta: dict[str, Any] = {
                    "time": round(time.time(), 3),
                    "tokens": generated,
                    "tokens_per_second": round(rate, 1),
                    "seconds": round(end - start, 2),
                }
                if finish != "stop":
                    meta["finish_reason"] = finish
                answer = Message("assistant", text, cell_id=cell_id, meta=meta)
                self.history.messages.append(answer)
                self.history.token_count = len(self._state.tokens)
                turn.result = self.last_result = TurnResult(
                    text=text,
                    message=answer,
                    generated_tokens=generated,
                    prompt_tokens=evaluated,
                    cached_tokens=cached,
                    time_to_first_token=first - start,
                    tokens_per_second=rate,
                    total_seconds=end - start,
                    finish_reason=finish,
                )
                if finish in ("stop", "length", "stopped"):
                    self._evaluate_next_opening()
                self._emit("message_added", answer)
                self._emit("turn_finished", answer)
                self._turns_since_save += 1
                if self.autosave_path is not None and self._turns_since_save >= self.autosave_every:
                    self._autosave(locked=True)

    def regenerate(self, **options: Any) -> StreamingTurn:
        """Drop the last answer and answer the last user message again."""
        last_user = max((i for i, m in enumerate(self.history) if m.role == "user"), default=None)
        if last_user is None:
            raise LmchatError("there is no user message to answer again")
        self.rewind(last_user + 1)
        opts = replace(self.options, **options)
        return StreamingTurn(self, None, self.history[last_user].cell_id, opts, True)

    # --- history edits --------------------------------------------------------------------------

    def rewind(self, n_messages: int) -> None:
        """Keep only the first ``n_messages`` messages; the KV prefix of what remains is kept."""
        if not 0 <= n_messages <= len(self.history):
            raise ValueError(f"rewind to {n_messages} messages: the conversation has {len(self.history)}")
        with self._turn_lock, self.model.lock, interrupts.held():
            keep = max(n_messages, 1 if self.history.system is not None else 0)
            del self.history.messages[keep:]
            self._rewind_cache()
        self._emit("rewound", text=f"kept {keep} messages")

    def clear(self) -> None:
        """Forget every message but the system prompt."""
        self.rewind(0)
        self._emit("cleared")

    def _rewind_cache(self) -> None:
        self._activate()
        self._sync(self._render(generation_prompt=False), evaluate=False)
        self.history.token_count = len(self._state.tokens)

    # --- the KV cache ---------------------------------------------------------------------------

    def _render(self, generation_prompt: bool) -> str:
        return self._renderer.render(self.history.as_chat_messages(), generation_prompt)

    def _activate(self) -> None:
        """Make this conversation's tokens the ones in the model's KV cache (caller holds model.lock)."""
        owner = self.model.owner
        if owner is self:
            return
        llm = self.model.llm
        if owner is not None:
            owner._park()
        self.model.owner = self
        kvstate.clear(llm)
        parked, self._parked_kv = self._parked_kv, None
        if parked is not None and self._state.tokens:
            address = _address_of(parked)
            if kvstate.load_state(llm, address, len(parked), self._state.tokens):
                return
        self._state = EngineState()
        self._pending_check = None

    def _park(self) -> None:
        """Keep this conversation's KV bytes in memory while another conversation uses the model."""
        llm = self.model.llm
        size = kvstate.state_size(llm)
        buf = bytearray(size)
        kvstate.read_state_into(llm, buf)
        self._parked_kv = bytes(buf)
        self._logits_fresh = False
        self.model.owner = None

    def _repair(self) -> None:
        """After an interruption, cut the cache back to the tokens the conversation knows it holds."""
        llm = self.model.llm
        n = len(self._state.tokens)
        if not kvstate.truncate(llm, n):
            kvstate.clear(llm)
            self._state = EngineState()
            self._pending_check = None
        self._logits_fresh = False

    def _sync(self, target: str, reserve: int = 0, evaluate: bool = True, progress: Progress | None = None) -> int:
        """Make the cache hold ``target``'s tokens; returns how many tokens were evaluated."""
        state = self._state
        llm = self.model.llm
        if self._pending_check is not None:
            self._check_restored(progress)
            state = self._state
        if not target.startswith(state.text):
            text_len, n_tok = max(
                (c for c in state.checkpoints if target.startswith(state.text[: c[0]])), key=lambda c: c[1]
            )
            if not kvstate.truncate(llm, n_tok):
                kvstate.clear(llm)
                text_len, n_tok = 0, 0
            state.cut(text_len, n_tok)
            self._logits_fresh = False
        if not evaluate:
            return 0
        new_text = target[len(state.text) :]
        new_tokens = self._renderer.tokenize(new_text)
        if not new_tokens and not self._logits_fresh and state.tokens:
            # Sampling needs the last position's logits: decode the last token again.
            if kvstate.truncate(llm, len(state.tokens) - 1):
                new_tokens = [state.tokens.pop()]
                new_text = ""  # the cached text already covers the last token
            else:
                kvstate.clear(llm)
                new_tokens, new_text = list(state.tokens), state.text
                state.cut(0, 0)
        needed = len(state.tokens) + len(new_tokens) + reserve
        if needed > self.model.n_ctx:
            if self.context_policy == "drop_oldest" and self._drop_oldest_turn():
                return self._sync(self._render(generation_prompt=True), reserve, evaluate, progress)
            raise ContextOverflowError(
                f"the conversation needs {needed:,} tokens but {self.model.name} was loaded with n_ctx="
                f"{self.model.n_ctx:,}. Rewind or clear it, load the model with a larger n_ctx, or use "
                "context_policy='drop_oldest'"
            )
        self._eval(new_tokens, progress)
        state.text += new_text
        state.mark()
        self.history.token_count = len(state.tokens)
        return len(new_tokens)

    def _evaluate_next_opening(self) -> None:
        """Evaluate the template text that opens the next user message (end of turn, user header) now.

        The next turn then evaluates only the message itself: its first token comes sooner, after a
        restore too, since saves include these tokens. A rewind or regeneration cuts them off again
        at the answer's checkpoint. Ctrl-C during this stays held back until the turn's end.
        """
        state = self._state
        try:
            opening = self._renderer.next_user_opening(self.history.as_chat_messages())
        except LmchatError:
            return
        if not opening.startswith(state.text) or len(opening) == len(state.text):
            return
        tokens = self._renderer.tokenize(opening[len(state.text) :])
        llm = self.model.llm
        if not tokens or len(tokens) > llm.n_batch or len(state.tokens) + len(tokens) + 1 >= self.model.n_ctx:
            return
        try:
            # The last token alone: the logits a save stores are then those a restore's check
            # reproduces, decoding that token first in a batch (batch layouts move Gemma's logits).
            if len(tokens) > 1:
                llm.eval(tokens[:-1])
            llm.eval(tokens[-1:])
        except RuntimeError:
            self._repair()  # back to the answer's end
            return
        state.tokens.extend(tokens)
        state.text = opening
        state.mark()
        self._logits_fresh = True
        self.history.token_count = len(state.tokens)

    def _check_restored(self, progress: Progress | None) -> None:
        """Check a restored state at its first use: re-decode its last token alone, as it was decoded
        when the logits saved with it were taken, and compare; evaluate its tokens again if they differ.

        Done here rather than in the restore, so that a restore is only I/O and a conversation that is
        never continued costs no decode (45 ms for Gemma 3 270M here). Alone, not as the first token of
        the next message's batch: other batch layouts move Gemma's logits by up to 0.3, past the tolerance.
        """
        check, self._pending_check = self._pending_check, None
        if check is None or not self._state.tokens:
            return
        if not (
            self._redecode_last() and kvstate.logits_agree(kvstate.last_logits_top(self.model.llm, len(check)), check)
        ):
            self._restored_state_failed(progress)

    def _redecode_last(self) -> bool:
        """Decode the last cached token again, alone, for fresh logits; False if the cache could not
        be cut back to before it (then it may be cut already: repair or evaluate again)."""
        llm = self.model.llm
        tokens = self._state.tokens
        if not kvstate.truncate(llm, len(tokens) - 1):
            return False
        llm.eval([tokens[-1]])
        self._logits_fresh = True
        return True

    def _restored_state_failed(self, progress: Progress | None) -> None:
        """The restored KV state did not reproduce its saved logits: evaluate its tokens again."""
        log.warning("the restored KV state of %r did not verify; its tokens are evaluated again", self)
        self.restored_from = (
            f"session tokens (the restored KV state did not verify at its first use, so they were evaluated again); "
            f"was: {self.restored_from}"
        )
        self._reevaluate(self._state, progress)

    def _eval(self, tokens: list[int], progress: Progress | None = None) -> None:
        llm = self.model.llm
        step = max(1, llm.n_batch)
        before = len(self._state.tokens)
        if progress is not None and tokens:
            progress(0, len(tokens))  # a bar shows from the first token, not after the first batch
        try:
            for i in range(0, len(tokens), step):
                interrupts.checkpoint()
                chunk = tokens[i : i + step]
                llm.eval(chunk)
                self._state.tokens.extend(chunk)
                if progress is not None:
                    progress(min(i + step, len(tokens)), len(tokens))
        except BaseException:
            # The caller records the text of these tokens only once all of them are in: drop them all.
            del self._state.tokens[before:]
            self._repair()
            raise
        if tokens:
            self._logits_fresh = True

    def _drop_oldest_turn(self) -> bool:
        msgs = self.history.messages
        first = 1 if self.history.system is not None else 0
        # Keep at least the newest user message.
        if len(msgs) - first <= 1:
            return False
        drop = first + 1
        while drop < len(msgs) - 1 and msgs[drop].role != "user":
            drop += 1
        del msgs[first:drop]
        self._emit("rewound", text="the oldest turn was dropped to fit the context")
        return True

    def _reevaluate(self, state: EngineState, progress: Progress | None) -> None:
        """Evaluate saved tokens from scratch (caller holds the locks); the same tokens, no KV bytes."""
        kvstate.clear(self.model.llm)
        self._pending_check = None
        tokens = state.tokens
        self._state = EngineState([], state.text, state.checkpoints)
        try:
            self._eval(tokens, progress)
        except BaseException:
            # Not all of the text is in the cache: start from nothing, the next turn evaluates it all.
            kvstate.clear(self.model.llm)
            self._state = EngineState()
            raise

    def prefill(self, progress: Progress | None = None) -> int:
        """Evaluate the whole history now (otherwise the next turn does it); returns tokens evaluated.

        After a last answer, the opening of the next user message is evaluated too, as after a turn.
        """
        with self._turn_lock, self.model.lock, interrupts.held():
            self._activate()
            evaluated = 0
            whole = _WholeProgress(progress, self._tokens_to_prefill()) if progress is not None else None
            for end in range(1, len(self.history) + 1):
                target = self._renderer.render(self.history.as_chat_messages()[:end], False)
                if self._state.text.startswith(target):
                    continue  # already in the cache: cutting back to it would only evaluate it again
                evaluated += self._sync(target, progress=whole)
            if whole is not None:
                whole.finish()
            if self.history.messages and self.history.messages[-1].role == "assistant":
                before = len(self._state.tokens)
                self._evaluate_next_opening()  # as after a live answer
                evaluated += len(self._state.tokens) - before
            return evaluated

    def _tokens_to_prefill(self) -> int:
        """About how many tokens prefill evaluates: the history's, less what the cache holds of it."""
        whole = self._renderer.render(self.history.as_chat_messages(), False)
        cached = self._state.text if whole.startswith(self._state.text) else ""
        return len(self._renderer.tokenize(whole[len(cached) :]))

    # --- persistence ----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str] | None = None) -> bytes | None:
        """Save the full session (history, KV state, model fingerprint, settings).

        With a path the file is written atomically and ``None`` is returned; without one the session
        is returned as bytes.
        """
        from .atomic import atomic_write

        if self.history.user_message_count == 0:
            raise NothingToSaveError("the conversation has no turns yet; send a message before saving")
        with self._turn_lock, self.model.lock, interrupts.held():
            chunks = self._session_chunks()
        # The file is written outside the locks: the next turn need not wait for the disk.
        if path is None:
            return b"".join(chunks)
        atomic_write(Path(path), chunks)
        return None

    def switch_model(self, model: Model, progress: Progress | None = None) -> None:
        """Continue on another model: the history carries over and is evaluated again; the old KV is dropped."""
        with self._turn_lock, self.model.lock, interrupts.held():
            if self.model.owner is self:
                self.model.owner = None
            self.model = model
            self._renderer = ChatRenderer(model)
            self._state = EngineState()
            self._parked_kv = None
            self._logits_fresh = False
            self._pending_check = None
        self.prefill(progress)
        self._emit("model_changed", text=model.describe())

    def close(self) -> None:
        """Finish the autosaves under way, then save to the autosave path if there is unsaved work."""
        for writer in list(self._autosave_writers):
            writer.join()
        if self.autosave_path is not None and self._turns_since_save and self.history.user_message_count:
            self._autosave()

    def _session_chunks(self) -> list[memoryview]:
        """The session's bytes (caller holds the turn lock and the model lock)."""
        from .session import session_chunks

        self._activate()
        return session_chunks(self)

    def _autosave(self, locked: bool = False) -> None:
        """Save to the autosave path; ``locked``: called from inside a turn, which holds the locks.

        Inside a turn only the session's bytes are taken (the KV state copied out of llama.cpp); the
        file is written and fsynced on a thread of its own, so the turn does not wait for the disk.
        A newer session always wins over an older one still being written.
        """
        assert self.autosave_path is not None
        try:
            chunks = self._session_chunks() if locked else self._locked_chunks()
        except LmchatError as exc:
            self._autosave_failed(exc)
            return
        self._autosave_taken += 1
        self._turns_since_save = 0
        if not locked:
            self._write_autosave(chunks, self._autosave_taken)
            return
        writer = threading.Thread(
            target=self._write_autosave, args=(chunks, self._autosave_taken), name="lmchat-autosave-write"
        )
        self._autosave_writers = [w for w in self._autosave_writers if w.is_alive()] + [writer]
        writer.start()

    def _locked_chunks(self) -> list[memoryview]:
        if self.history.user_message_count == 0:
            raise NothingToSaveError("the conversation has no turns yet; send a message before saving")
        with self._turn_lock, self.model.lock, interrupts.held():
            return self._session_chunks()

    def _write_autosave(self, chunks: list[memoryview], taken: int) -> None:
        from .atomic import atomic_write

        assert self.autosave_path is not None
        with self._autosave_lock:
            if taken <= self._autosave_written:
                return  # a newer session is on disk already
            try:
                atomic_write(self.autosave_path, chunks)
            except LmchatError as exc:
                self._turns_since_save = max(1, self._turns_since_save)
                self._autosave_failed(exc)
                return
            self._autosave_written = taken
        self.last_save_error = None
        self._emit("saved", text=str(self.autosave_path))

    def _autosave_failed(self, exc: LmchatError) -> None:
        self.last_save_error = exc
        self._emit("save_failed", text=str(exc))

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
        from .session import read_session

        return read_session(cls, model, source, verify=verify, use_kv=use_kv, progress=progress, **kwargs)

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


class StreamingTurn:
    """An answer being generated: iterate it for text pieces; ``result`` is set once it is done."""

    def __init__(
        self, conv: Conversation, prompt: str | None, cell_id: str | None, opts: GenerationOptions, wait: bool
    ):
        self._conv = conv
        self._prompt = prompt
        self._cell_id = cell_id
        self._opts = opts
        self._wait = wait
        self._started = False
        self.result: TurnResult | None = None

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("a turn can be iterated only once")
        self._started = True
        conv = self._conv
        # The locks are taken with Ctrl-C held back: a KeyboardInterrupt between taking a lock and
        # the try that releases it would leave the conversation busy for good.
        with interrupts.held():
            if self._wait:
                interrupts.acquire(conv._turn_lock)
            elif not conv._turn_lock.acquire(blocking=False):
                raise ConversationBusyError(
                    "this conversation is generating an answer; wait for it or stop it (conv.stop())"
                )
            try:
                interrupts.acquire(conv.model.lock)
                try:
                    conv._activate()
                    yield from conv._run_turn(self._prompt, self._cell_id, self._opts, self)
                finally:
                    conv.model.lock.release()
            finally:
                conv._turn_lock.release()

    def text(self) -> str:
        """Run the turn to the end and return the answer's text."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result.text


def _address_of(blob: bytes) -> int:
    import ctypes

    return ctypes.cast(ctypes.c_char_p(blob), ctypes.c_void_p).value or 0


class _WholeProgress:
    """One bar for a whole prefill: each message's evaluation reports its own ``(done, total)``.

    Reported from the first token on, against an estimate of the whole; the estimate (tokenized in
    one piece) may differ from the sum by a few tokens, so the bar is completed by ``finish``.
    """

    def __init__(self, progress: Progress, estimate: int) -> None:
        self.progress = progress
        self.estimate = max(estimate, 1)
        self.before = 0  # tokens of the evaluations already finished
        progress(0, self.estimate)

    def __call__(self, done: int, total: int) -> None:
        so_far = self.before + done
        if done >= total:
            self.before += total
        self.progress(min(so_far, self.estimate - 1), self.estimate)

    def finish(self) -> None:
        self.progress(self.before, self.before)
