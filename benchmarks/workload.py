"""The chats the benchmarks run on, and small timing helpers shared by every measure."""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from lmchat_jupyter import ChatHistory, Conversation, Message, Model
from lmchat_jupyter.engine.rendering import ChatRenderer

__all__ = [
    "NEXT_PROMPT",
    "make_history",
    "history_tokens",
    "release",
    "first_token",
    "median_time",
    "evict",
]

SYSTEM = "You are a helpful assistant who answers questions about software projects in detail."
NEXT_PROMPT = "Summarise what we discussed so far in one short sentence."

# Plain words for deterministic, prose-like messages (about 1.3 tokens per word on both models).
_VOCABULARY = (
    "the a an and or but so because when while after before since until if then than that this these those "
    "project service database table index query cache server client request response error message log "
    "user team deploy build test release version branch commit review change feature bug fix patch "
    "memory disk network latency throughput load queue worker thread process job schedule retry timeout "
    "config setting option default value field record row column key partition shard replica backup "
    "read write update delete insert select join filter sort group count limit offset page batch stream "
    "fast slow large small new old first last next previous every each some many few more less most least "
    "works fails runs stops starts waits returns sends receives stores loads saves moves keeps drops checks "
    "we you they it our your their its is are was were be been has have had do does did can could should "
    "would will may might must need want use make take give find know think see look try keep let help "
    "today yesterday tomorrow morning evening week month year hour minute second time day night"
)
_WORDS = _VOCABULARY.split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(8, 18))]
    return " ".join(words).capitalize() + "."


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def history_tokens(renderer: ChatRenderer, history: ChatHistory) -> int:
    """Tokens the history occupies in the KV cache once prefilled."""
    return len(renderer.tokenize(renderer.render(history.as_chat_messages(), generation_prompt=False)))


def make_history(model: Model, n_tokens: int, seed: int = 1) -> ChatHistory:
    """A deterministic chat of user questions and long answers that renders to about ``n_tokens`` tokens.

    Turns are added until the next one would not fit, then the last answer is cut word by word
    so that the total lands within a few tokens of ``n_tokens``.
    """
    rng = random.Random(seed)
    renderer = ChatRenderer(model.backend)
    history = ChatHistory([Message("system", SYSTEM)])
    while True:
        user = Message("user", _paragraph(rng, rng.randint(1, 3)).rstrip(".") + "?")
        answer = Message("assistant", _paragraph(rng, rng.randint(6, 12)))
        history.messages += [user, answer]
        if history_tokens(renderer, history) >= n_tokens:
            break
    while True:
        answer = history.messages[-1]
        words = answer.content.split(" ")
        answer.content = words[0]
        if history_tokens(renderer, history) <= n_tokens or len(history) <= 3:
            break
        # Even a one-word answer overshoots: drop this turn and cut the previous answer instead.
        answer.content = " ".join(words)
        del history.messages[-2:]
    lo, hi = 1, len(words)
    while lo < hi:  # the longest cut of the last answer that stays within n_tokens
        mid = (lo + hi + 1) // 2
        answer.content = " ".join(words[:mid])
        if history_tokens(renderer, history) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    answer.content = " ".join(words[:lo])
    return history


def release(model: Model) -> None:
    """Leave the model as a freshly started kernel has it: no conversation owns its KV cache.

    Without this, the next conversation would first copy the previous owner's KV state aside
    (parking it), which a restart never does.
    """
    with model.lock:
        model.owner = None
        model.backend.clear()


def first_token(conv: Conversation, prompt: str = NEXT_PROMPT) -> float:
    """Send ``prompt`` and return the perf_counter time at which the answer's first token arrived."""
    turn = conv.stream(prompt, temperature=0.0, max_tokens=1)
    arrived: float | None = None
    for _ in turn:
        arrived = arrived or time.perf_counter()
    return arrived or time.perf_counter()


def median_time(run: Callable[[], float], reps: int) -> tuple[float, list[float]]:
    """Median (and all samples) of ``run()``, which returns the seconds of one repetition."""
    samples = [run() for _ in range(max(1, reps))]
    return statistics.median(samples), samples


def evict(path: Path) -> None:
    """Drop ``path`` from the page cache, so its next read comes from the disk.

    Per file (``posix_fadvise(DONTNEED)`` after an fsync) rather than ``drop_caches``: it makes
    exactly this file cold and leaves the model file and other users' cache alone.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
