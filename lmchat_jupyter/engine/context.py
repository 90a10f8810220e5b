"""The conversation as the model sees it: its history rendered with the model's chat template, held in the cache.

Between the history (messages) and the :class:`~lmchat_jupyter.engine.kvcache.KVCache` (tokens): which text
the model must hold before an answer, after a rewind, or ahead of the next message, and what to drop
when it no longer fits. Every method expects the caller to hold the model's lock.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.errors import LmchatError
from ..core.history import ChatHistory
from .kvcache import KVCache, Progress, stop_progress
from .models import Model
from .rendering import ChatRenderer

__all__ = ["ChatContext"]


class ChatContext:
    """``history`` on ``model``: the renderer of its template and the cache of its tokens.

    ``on_dropped`` is called when the oldest turn is dropped to make room; ``on_failed_check`` when a
    restored KV state fails its check at first use.
    """

    def __init__(
        self,
        model: Model,
        history: ChatHistory,
        on_dropped: Callable[[], None],
        on_failed_check: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.history = history
        self.renderer = ChatRenderer(model.backend)
        self.cache = KVCache(model, on_failed_check, history.conversation_id)
        self.on_dropped = on_dropped

    def render(self, generation_prompt: bool, upto: int | None = None) -> str:
        """The first ``upto`` messages (all by default) as the template writes them."""
        messages = self.history.as_chat_messages()
        return self.renderer.render(messages if upto is None else messages[:upto], generation_prompt)

    def sync(self, target: str, reserve: int = 0, progress: Progress | None = None, drop_oldest: bool = False) -> int:
        """Make the cache hold ``target``; returns the tokens evaluated. With ``drop_oldest``, the oldest
        turns go (and ``target`` becomes the render for an answer) until it fits."""
        make_room = self._make_room if drop_oldest else None
        evaluated = self.cache.sync(target, reserve, progress=progress, make_room=make_room)
        self.history.token_count = len(self.cache.tokens)
        return evaluated

    def cut_back(self) -> None:
        """After the history lost messages: keep the cached prefix that still matches it."""
        self.cache.activate()
        self.cache.sync(self.render(generation_prompt=False), evaluate=False)
        self.history.token_count = len(self.cache.tokens)

    def evaluate_next_opening(self) -> int:
        """Evaluate the template text that opens the next user message (end of turn, user header) now;
        returns the tokens evaluated.

        The next turn then evaluates only the message itself: its first token comes sooner, after a
        restore too, since saves include these tokens. A rewind or regeneration cuts them off again
        at the answer's checkpoint. Ctrl-C during this stays held back until the turn's end.
        """
        try:
            opening = self.renderer.next_user_opening(self.history.as_chat_messages())
        except LmchatError:
            return 0
        before = len(self.cache.tokens)
        if not self.cache.evaluate_ahead(opening):
            return 0
        self.history.token_count = len(self.cache.tokens)
        return len(self.cache.tokens) - before

    def prefill(self, progress: Progress | None = None) -> int:
        """Evaluate the whole history, message by message, then the next message's opening."""
        self.cache.activate()
        evaluated = 0
        if not self.cache.shows_progress:
            progress = None
        whole = _WholeProgress(progress, self._tokens_to_prefill()) if progress is not None else None
        try:
            for end in range(1, len(self.history) + 1):
                target = self.render(False, upto=end)
                if self.cache.state.text.startswith(target):
                    continue  # already in the cache: cutting back to it would only evaluate it again
                evaluated += self.sync(target, progress=whole)
        except BaseException:
            stop_progress(progress)  # too long, a backend error, Ctrl-C: the bar ends as a line
            raise
        if whole is not None:
            whole.finish()
        if self.history.messages and self.history.messages[-1].role == "assistant":
            evaluated += self.evaluate_next_opening()  # as after a live answer
        return evaluated

    def _tokens_to_prefill(self) -> int:
        """About how many tokens prefill evaluates: the history's, less what the cache holds of it."""
        whole = self.render(False)
        cached = self.cache.state.text if whole.startswith(self.cache.state.text) else ""
        return len(self.renderer.tokenize(whole[len(cached) :]))

    def _make_room(self) -> str | None:
        """Drop the oldest turn and return the new render for an answer; None when nothing can go."""
        msgs = self.history.messages
        first = 1 if self.history.system is not None else 0
        # Keep at least the newest user message.
        if len(msgs) - first <= 1:
            return None
        drop = first + 1
        while drop < len(msgs) - 1 and msgs[drop].role != "user":
            drop += 1
        del msgs[first:drop]
        self.on_dropped()
        return self.render(generation_prompt=True)


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

    def stop(self) -> None:
        stop_progress(self.progress)
