"""Which tokens a conversation holds in its model's backend, and how they are kept right.

The cache remembers the exact text its tokens stand for (``state.text``) and checkpoints ``(text
length, token count)`` at every message boundary. To hold a new render of the conversation
(:meth:`KVCache.sync`) it evaluates only the difference when the render starts with that text, so
the previous answer's generated tokens stay as they were; when it does not (a rewind, or a template
that rewrites earlier turns) it cuts back to the longest checkpoint whose text still matches, and
evaluates the rest. Several conversations share one model: the one that uses it :meth:`activates
<KVCache.activate>` its cache, and the previous owner's KV bytes are parked in memory meanwhile.
Every method expects the caller to hold the model's lock.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from ..backends.interface import delta_states
from ..core import interrupts
from ._cache_state import EngineState, KeptPrefix, KeptPrefixes
from .models import Model

__all__ = ["EngineState", "KVCache", "KeptPrefix", "Progress", "logits_agree", "stop_progress"]

Progress = Callable[[int, int], None]


def stop_progress(progress: Progress | None) -> None:
    """Tell ``progress`` its evaluation failed, where it can hear it (a ``stop()`` method): a bar must not stay live."""
    stop = getattr(progress, "stop", None)
    if callable(stop):
        stop()


class KVCache:
    """One conversation's tokens in ``model``'s backend: evaluation, cutting back, parking and checks."""

    def __init__(
        self, model: Model, on_failed_check: Callable[[], None] | None = None, label: str | None = None
    ) -> None:
        self.model = model
        #: The conversation's id: the backend's ``label`` while these tokens are the ones it holds.
        self.label = label
        #: Called when a restored state fails its check at first use (its tokens are then evaluated again).
        self.on_failed_check = on_failed_check
        self.backend = model.backend
        self.state = EngineState()
        #: The last evaluated position's logits are current (sampling and saves need them).
        self.logits_fresh = False
        #: The best logits saved with a restored KV state that still has to be checked (at its first use).
        self.pending_check: list[tuple[int, float]] | None = None
        self._parked: bytes | None = None
        #: Whether evaluating is work worth a progress bar (on a server backend it only records tokens).
        self.shows_progress = model.backend.capabilities.evaluates_here
        self._kept = KeptPrefixes()

    @property
    def tokens(self) -> list[int]:
        return self.state.tokens

    @property
    def active(self) -> bool:
        """Whether these tokens are the ones in the backend now."""
        return self.model.owner is self

    def copy(self, on_failed_check: Callable[[], None] | None = None, label: str | None = None) -> KVCache:
        """A second cache with the same tokens (for the conversation ``label``): the KV bytes are copied
        out now (or the parked ones shared) and loaded into the backend when the copy is first activated."""
        twin = KVCache(self.model, on_failed_check, label)
        twin.state = copy.deepcopy(self.state)
        twin.pending_check = self.pending_check
        if self.active and self.state.tokens:
            buffer = bytearray(self.backend.state_size())
            twin._parked = bytes(buffer[: self.backend.export_state(buffer)])
        else:
            twin._parked = self._parked
        return twin

    def watch(self) -> KeptPrefix:
        """A :class:`KeptPrefix` of the tokens held now, lowered whenever the cache is cut below it."""
        return self._kept.take(len(self.state.tokens))

    # --- ownership of the backend ---------------------------------------------------------------

    def activate(self) -> None:
        """Make these tokens the ones in the backend, parking the previous owner's."""
        owner = self.model.owner
        if owner is self:
            return
        if owner is not None:
            owner.park()
        self.model.owner = self
        self.backend.label = self.label
        self.backend.clear()
        parked, self._parked = self._parked, None
        if parked is not None and self.state.tokens and self.backend.import_state(parked, self.state.tokens):
            return  # the same KV bytes back in place: every prefix is kept
        self._kept.cut(0)
        self.state = EngineState()
        self.pending_check = None

    def park(self) -> None:
        """Keep the KV bytes in memory while another conversation uses the model."""
        buffer = bytearray(self.backend.state_size())
        self.backend.export_state(buffer)
        self._parked = bytes(buffer)
        self.logits_fresh = False
        self.model.owner = None

    def release(self) -> None:
        """Forget these tokens (the conversation moves to another model)."""
        if self.active:
            self.model.owner = None
        self._parked = None
        self._kept.cut(0)

    # --- evaluating -----------------------------------------------------------------------------

    def sync(
        self,
        target: str,
        reserve: int = 0,
        evaluate: bool = True,
        progress: Progress | None = None,
        make_room: Callable[[], str | None] | None = None,
    ) -> int:
        """Make the cache hold ``target``'s tokens; returns how many tokens were evaluated.

        When they do not fit (with ``reserve`` positions to spare), ``make_room`` may shorten the
        conversation and return its new render; otherwise :class:`ContextOverflowError` is raised.
        """
        state = self.state
        if self.pending_check is not None:
            self._check_restored(progress)
            state = self.state
        if not target.startswith(state.text):
            text_len, n_tok = max(
                (c for c in state.checkpoints if target.startswith(state.text[: c[0]])), key=lambda c: c[1]
            )
            if not self.backend.cut(n_tok):
                self.backend.clear()
                text_len, n_tok = 0, 0
            self._kept.cut(n_tok)
            state.cut(text_len, n_tok)
            self.logits_fresh = False
        if not evaluate:
            return 0
        new_text = target[len(state.text) :]
        new_tokens = self.backend.tokenize(new_text)
        if not new_tokens and not self.logits_fresh and state.tokens:
            # Sampling needs the last position's logits: decode the last token again.
            self._kept.cut(len(state.tokens) - 1)
            if self.backend.cut(len(state.tokens) - 1):
                new_tokens = [state.tokens.pop()]
                new_text = ""  # the cached text already covers the last token
            else:
                self.backend.clear()
                self._kept.cut(0)
                new_tokens, new_text = list(state.tokens), state.text
                state.cut(0, 0)
        needed = len(state.tokens) + len(new_tokens) + reserve
        if needed > self.model.n_ctx:
            shorter = make_room() if make_room is not None else None
            if shorter is not None:
                return self.sync(shorter, reserve, evaluate, progress, make_room)
            raise self.model.context_overflow(needed)
        self.evaluate(new_tokens, progress)
        state.text += new_text
        state.mark()
        return len(new_tokens)

    def evaluate(self, tokens: Sequence[int], progress: Progress | None = None) -> None:
        """Evaluate ``tokens`` in batches; the caller records their text once all are in."""
        step = max(1, self.backend.n_batch)
        before = len(self.state.tokens)
        if not self.shows_progress:
            progress = None
        if progress is not None and tokens:
            progress(0, len(tokens))  # a bar shows from the first token, not after the first batch
        try:
            for i in range(0, len(tokens), step):
                interrupts.checkpoint()
                chunk = tokens[i : i + step]
                self.backend.evaluate(chunk)
                self.state.tokens.extend(chunk)
                if progress is not None:
                    progress(min(i + step, len(tokens)), len(tokens))
        except BaseException:
            stop_progress(progress)
            # The caller records the text of these tokens only once all of them are in: drop them all.
            del self.state.tokens[before:]
            self.repair()
            raise
        if tokens:
            self.logits_fresh = True

    def append(self, token: int) -> None:
        """Evaluate one generated token (its text is the caller's to record)."""
        self.backend.evaluate([token])
        self.state.tokens.append(token)

    def evaluate_ahead(self, text: str) -> bool:
        """Evaluate ``text``, which continues the cached text, if it is one batch that leaves room to answer.

        The last token goes alone: the logits a save stores are then those a restore's check
        reproduces, decoding that token first in a batch (batch layouts move Gemma's logits).
        """
        state = self.state
        if not text.startswith(state.text) or len(text) == len(state.text):
            return False
        tokens = self.backend.tokenize(text[len(state.text) :])
        if not tokens or len(tokens) > self.backend.n_batch or len(state.tokens) + len(tokens) + 1 >= self.model.n_ctx:
            return False
        try:
            if len(tokens) > 1:
                self.backend.evaluate(tokens[:-1])
            self.backend.evaluate(tokens[-1:])
        except RuntimeError:
            self.repair()  # back to the answer's end
            return False
        state.tokens.extend(tokens)
        state.text = text
        state.mark()
        self.logits_fresh = True
        return True

    def repair(self) -> None:
        """After an interruption, cut the backend back to the tokens the cache knows it holds."""
        self._kept.cut(len(self.state.tokens))
        if not self.backend.cut(len(self.state.tokens)):
            self._kept.cut(0)
            self.backend.clear()
            self.state = EngineState()
            self.pending_check = None
        self.logits_fresh = False

    def reevaluate(self, state: EngineState, progress: Progress | None) -> None:
        """Evaluate saved tokens from scratch; the same tokens, no KV bytes."""
        self._kept.cut(0)
        self.backend.clear()
        self.pending_check = None
        tokens = state.tokens
        self.state = EngineState([], state.text, state.checkpoints)
        self._evaluate_or_empty(tokens, progress)

    def _evaluate_or_empty(self, tokens: Sequence[int], progress: Progress | None = None) -> None:
        """Evaluate the rest of a state's tokens, whose text it holds already; hold nothing where that fails."""
        try:
            self.evaluate(tokens, progress)
        except BaseException:
            # Not all of the text is in the cache: start from nothing, the next turn evaluates it all.
            self.backend.clear()
            self.state = EngineState()
            raise

    def redecode_last(self) -> bool:
        """Decode the last cached token again, alone, for fresh logits; False if the cache could not
        be cut back to before it (then it may be cut already: repair or evaluate again)."""
        tokens = self.state.tokens
        self._kept.cut(len(tokens) - 1)
        if not self.backend.cut(len(tokens) - 1):
            return False
        self.backend.evaluate([tokens[-1]])
        self.logits_fresh = True
        return True

    # --- saved states ---------------------------------------------------------------------------

    def load(
        self, state: EngineState, kv: bytes | memoryview, deltas: Sequence[tuple[int, int, memoryview]] = ()
    ) -> int:
        """Take a saved state and its KV bytes (the cache active and just emptied); returns how many of
        its tokens came with their KV bytes (0: refused, nothing taken).

        ``deltas``: the KV states of later positions, in order, each as ``(first, end, bytes)`` for the
        positions ``first .. end - 1`` (``kv`` holds those before the first). Where the backend refuses one, the tokens
        from there on are evaluated again.
        """
        self._kept.cut(0)
        base = deltas[0][0] if deltas else len(state.tokens)
        if not base or not len(kv) or not self.backend.import_state(kv, state.tokens[:base]):
            return 0
        held = base
        for first, end, data in deltas:
            if first != held or (end > first and not self._import_delta(data, state.tokens[:end])):
                break
            held = end
        self.logits_fresh = False
        if held == len(state.tokens):
            self.state = state
            return held
        self.state = EngineState(state.tokens[:held], state.text, state.checkpoints)
        self._evaluate_or_empty(state.tokens[held:])
        return held

    def empty(self) -> None:
        """Hold nothing, the backend's sequence emptied (a loaded state whose bytes then failed their check)."""
        self.backend.clear()
        self._kept.cut(0)
        self.state = EngineState()
        self.pending_check = None
        self.logits_fresh = False

    def _import_delta(self, data: memoryview, tokens: list[int]) -> bool:
        backend = delta_states(self.backend)
        return backend is not None and len(data) > 0 and backend.import_delta(data, tokens)

    def check_at_first_use(self, saved_top: list[tuple[int, float]]) -> None:
        """Compare the loaded state's logits with ``saved_top`` before it is next used.

        Done then rather than at the restore, so that a restore is only I/O and a conversation that is
        never continued costs no decode (45 ms for Gemma 3 270M here).
        """
        self.pending_check = saved_top

    def top_logits_for_save(self, k: int) -> list[list[float]] | None:
        """The last position's best logits, re-decoding the last token if they are stale."""
        if not self.state.tokens:
            return None
        if self.pending_check is not None:
            # A restored state not checked yet is saved as it was loaded: with the logits it came with.
            return [[t, v] for t, v in self.pending_check]
        if not self.logits_fresh and not self.redecode_last():
            self.repair()  # the backend may be cut already: make it agree with the cache again
            return None
        return [[t, v] for t, v in self.backend.top_logits(k)]

    def _check_restored(self, progress: Progress | None) -> None:
        """Re-decode the last token alone, as it was decoded when the saved logits were taken, and
        compare; evaluate the tokens again if they differ.

        Alone, not as the first token of the next message's batch: other batch layouts move Gemma's
        logits by up to 0.3, past the tolerance.
        """
        check, self.pending_check = self.pending_check, None
        if check is None or not self.state.tokens:
            return
        if not (self.redecode_last() and logits_agree(self.backend.top_logits(len(check)), check)):
            if self.on_failed_check is not None:
                self.on_failed_check()
            self.reevaluate(self.state, progress)


def logits_agree(now: Sequence[tuple[int, float]], saved: Sequence[tuple[int, float]]) -> bool:
    """Same best token, and every best logit within 0.05 + 1% of the saved value where both have it."""
    if not now or not saved or now[0][0] != saved[0][0]:
        return False
    saved_map = dict(saved)
    return all(abs(v - saved_map[t]) <= 0.05 + 0.01 * abs(v) for t, v in now if t in saved_map)
