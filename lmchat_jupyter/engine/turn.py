"""One turn: the user's message in, the answer sampled token by token, the history and the cache agreeing.

Ctrl-C takes effect between evaluated batches and between tokens only (and while a piece of the
answer is handed out), so an interrupted turn leaves the history and the cache agreeing: it keeps
the partial answer (``finish_reason: interrupted``) with exactly its tokens in the cache, or leaves no
trace when no token was generated. An answer from a server that fails (a ServerError: the server went
away, refused the key) leaves no trace either: the history is as before the turn, and the next one retries.
"""

from __future__ import annotations

import codecs
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..backends.interface import ServerReport, on_server
from ..core import interrupts
from ..core.errors import ServerError
from ..core.history import Message
from ..core.results import GenerationOptions, TurnResult
from .context import ChatContext

__all__ = ["StreamingTurn", "TurnHooks", "run_turn"]


class StreamingTurn:
    """An answer being generated: iterate it for text pieces; ``result`` is set once it is done."""

    def __init__(self, run: Callable[[StreamingTurn], Iterator[str]]) -> None:
        self._run = run
        self._started = False
        self.result: TurnResult | None = None

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("a turn can be iterated only once")
        self._started = True
        yield from self._run(self)

    def text(self) -> str:
        """Run the turn to the end and return the answer's text."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result.text


@dataclass(frozen=True)
class TurnHooks:
    """What a turn tells its conversation, and asks it."""

    emit: Callable[..., None]  #: emit(kind, message=None, text="") a ConversationEvent
    record: Callable[[TurnResult], None]  #: the finished (or interrupted) answer's result
    stopped: Callable[[], bool]  #: whether a stop was asked for
    drop_oldest: bool  #: the context policy: drop the oldest turns rather than overflow


def run_turn(
    context: ChatContext, prompt: str | None, cell_id: str | None, opts: GenerationOptions, hooks: TurnHooks
) -> Iterator[str]:
    """Add ``prompt`` to the history and answer it (None: answer the last message again), yielding the
    answer's text as it comes.

    The caller holds the conversation's turn lock, the model lock and :func:`interrupts.held`, and
    has activated the context's cache.
    """
    start = time.perf_counter()
    history = context.history
    backend = context.model.backend
    cache = context.cache
    user: Message | None = None
    try:
        if prompt is not None:
            user = Message("user", prompt, cell_id=cell_id, meta={"time": round(time.time(), 3)})
            history.messages.append(user)
            hooks.emit("turn_started", user)
        evaluated = context.sync(context.render(generation_prompt=True), reserve=1, drop_oldest=hooks.drop_oldest)
        sample = backend.sampler(opts)
    except BaseException:
        if user is not None and history.messages and history.messages[-1] is user:
            history.messages.pop()
            hooks.emit("rewound", text="the turn was cancelled before its answer began")
        raise
    cached = len(cache.tokens) - evaluated
    cache.state.mark()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[str] = []
    generated = 0
    first_token_at: float | None = None
    finish = "length"
    server = on_server(backend)
    # An answer generated elsewhere stops there (a server counts max_tokens in its own tokens).
    limit = opts.max_tokens if backend.capabilities.evaluates_here else sys.maxsize
    try:
        while generated < limit:
            interrupts.checkpoint()
            if len(cache.tokens) >= context.model.n_ctx:
                break
            if hooks.stopped():
                finish = "stopped"
                break
            token = sample()
            if backend.is_end(token):
                finish = "stop"
                break
            cache.append(token)
            generated += 1
            piece = decoder.decode(backend.detokenize([token]))
            cache.state.text += piece
            pieces.append(piece)
            if first_token_at is None:
                first_token_at = time.perf_counter()
            if piece:
                hooks.emit("token", text=piece)
                with interrupts.released():
                    yield piece
        cache.logits_fresh = True
    except BaseException as exc:
        finish = "failed" if isinstance(exc, ServerError) else "interrupted"
        cache.repair()
        raise
    finally:
        tail = decoder.decode(b"", final=True)
        cache.state.text += tail
        pieces.append(tail)
        cache.state.mark()
        text = "".join(pieces)
        if finish == "failed" or (prompt is not None and generated == 0 and finish == "interrupted"):
            # Nothing was generated, or the server failed: the turn leaves no trace at all.
            if user is not None:
                history.messages.pop()
            context.cut_back()
            why = (
                "the server failed before the answer was complete"
                if finish == "failed"
                else "the turn was interrupted before its answer began"
            )
            hooks.emit("rewound", text=why)
        else:
            end = time.perf_counter()
            first = first_token_at or end
            report = server.last_report() if server is not None and finish == "stop" else None
            generated, evaluated, cached, finish = _as_reported(report, generated, evaluated, cached, finish)
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
            history.messages.append(answer)
            history.token_count = len(cache.tokens)
            hooks.record(
                TurnResult(
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
            )
            if finish in ("stop", "length", "stopped"):
                context.evaluate_next_opening()
            hooks.emit("message_added", answer)
            hooks.emit("turn_finished", answer)


def _as_reported(
    report: ServerReport | None, generated: int, evaluated: int, cached: int, finish: str
) -> tuple[int, int, int, str]:
    """The answer's counts as the server gave them, where it did: its tokens rather than lmchat's units."""
    if report is None:
        return generated, evaluated, cached, finish
    if report.completion_tokens is not None:
        generated = report.completion_tokens
    if report.prompt_tokens is not None:
        cached = report.cached_tokens or 0
        evaluated = report.prompt_tokens - cached
    if report.finish_reason == "length":
        finish = "length"
    return generated, evaluated, cached, finish
