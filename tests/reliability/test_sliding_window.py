"""Sliding-window models (Gemma 3, window 512): restores and rewinds stay exact, or evaluate again.

llama.cpp keeps only the window of a sliding-window cache in a saved state, even with
``swa_full``, and a live cache without ``swa_full`` drops older cells as it goes. Cutting such a
cache back past the start of its window used to "succeed" and leave the window layers without
their context: the next answer was computed on a different state than a fresh evaluation's. These
tests compare the logits after each operation with those of a conversation evaluated from scratch.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lmchat_jupyter import ChatHistory, Conversation, Model, load_model
from lmchat_jupyter.backends.local.llama import positions

GREEDY = {"temperature": 0.0, "max_tokens": 8}
FACTS = (
    "Here are some notes about the city of Lyon. It lies where the Rhone and the Saone meet. "
    "It is known for its food, its silk history, its old town and its festival of lights. "
)
QUESTION = "Which two rivers meet in Lyon?"


def gemma_model(gemma_file: Path, swa_full: bool, reuse: bool = True) -> Model:
    return load_model(gemma_file, n_ctx=4096, n_threads=1, swa_full=swa_full, reuse=reuse)


def top(model: Model) -> dict[int, float]:
    return dict(model.backend.top_logits(8))


def close(a: dict[int, float], b: dict[int, float]) -> bool:
    """Same best token and logits within the tolerance the restore verification uses."""
    best_a, best_b = max(a, key=a.__getitem__), max(b, key=b.__getitem__)
    return best_a == best_b and all(abs(v - b[t]) <= 0.05 + 0.01 * abs(v) for t, v in a.items() if t in b)


def covers(conv: Conversation) -> bool:
    """The cache holds the conversation's tokens and the window before the next position."""
    n = len(conv.cache.tokens)
    low, high = positions(conv.model.llm)
    return high == n - 1 and (n == 0 or 0 <= low <= max(0, n - conv.model.n_swa + 1))


def long_chat(model: Model, long_turns: int = 1) -> Conversation:
    """A short first turn, then long ones that push it out of the 512-token window."""
    conv = Conversation(model)
    conv.submit("My name is Ada.", **GREEDY)
    for i in range(long_turns):
        conv.submit(f"Note {i}: {FACTS * 16}Summarise these notes.", **GREEDY)
    assert conv.info.token_count > model.n_swa + 100
    return conv


def reference_after(model: Model, history: ChatHistory) -> dict[int, float]:
    # Evaluated in one batch, as the rewound conversation is: Gemma's logits move by ~0.3 when the
    # same tokens are evaluated in other batches (message by message), enough to hide nothing here
    # but to fail a tight comparison.
    fresh = Conversation.from_history(model, history, prefill=False)
    fresh.submit(QUESTION, max_tokens=1, temperature=0.0)
    return top(model)


def rewind_and_compare(conv: Conversation, reference_model: Model) -> None:
    conv.rewind_to(2)  # back to the first turn, before the window's start
    assert covers(conv), (len(conv.cache.tokens), positions(conv.model.llm))
    kept = conv.history.copy()
    conv.submit(QUESTION, max_tokens=1, temperature=0.0)
    rewound = top(conv.model)
    assert covers(conv)
    expected = reference_after(reference_model, kept)
    assert close(rewound, expected), (rewound, expected)


def test_rewinding_a_restored_conversation_past_the_window(gemma_file: Path) -> None:
    model = gemma_model(gemma_file, swa_full=True)
    blob = long_chat(model).save()
    assert blob is not None
    restored = Conversation.restore(model, blob)
    low, _ = positions(model.llm)
    assert low > 0  # the saved state held the window only, although the cache is "full"
    rewind_and_compare(restored, gemma_model(gemma_file, swa_full=True, reuse=False))


def test_rewinding_a_live_windowed_cache_past_the_window(gemma_file: Path) -> None:
    model = gemma_model(gemma_file, swa_full=False)
    # Without swa_full the window cache holds n_swa + n_batch cells: it drops old ones past 1024 tokens.
    conv = long_chat(model, long_turns=2)
    assert positions(model.llm)[0] > 0
    rewind_and_compare(conv, gemma_model(gemma_file, swa_full=True, reuse=False))


@pytest.mark.slow
@pytest.mark.parametrize("swa_full", [False, True])
@pytest.mark.parametrize("tokens", [1500, 3000])
def test_restore_without_verification_answers_as_the_live_conversation(
    gemma_file: Path, tokens: int, swa_full: bool
) -> None:
    """Whether verification is needed at all: a restore with ``verify="never"`` against the live state
    and against a fresh evaluation of the saved tokens.

    The restored window cache is laid out differently from the live one (llama.cpp saves only the
    window), so logits may differ in the last digits, as they do between batch layouts; the best token and
    the answer must not.
    """
    live_model = gemma_model(gemma_file, swa_full)
    conv = Conversation(live_model)
    i = 0
    while conv.info.token_count < tokens:
        conv.submit(f"Note {i}: {FACTS * 3}Summarise note {i}.", **GREEDY)
        i += 1
    blob = conv.save()
    assert blob is not None
    fresh_model = gemma_model(gemma_file, swa_full, reuse=False)
    verified = Conversation.restore(fresh_model, blob, verify="always")
    assert verified.restored_from is not None and "full session" in verified.restored_from
    answers, logits = {}, {}
    for name, source in (
        ("restored", Conversation.restore(fresh_model, blob, verify="never")),
        ("evaluated again", Conversation.restore(fresh_model, blob, use_kv=False)),
        ("live", conv),
    ):
        answers[name] = source.submit(QUESTION, **GREEDY).text
        logits[name] = top(source.model)
    first = {name: max(values, key=values.__getitem__) for name, values in logits.items()}
    live = logits["live"]
    gap = {n: max(abs(v - live[t]) for t, v in logits[n].items() if t in live) for n in ("restored", "evaluated again")}
    print(
        f"\nswa_full={swa_full} at {conv.info.token_count} tokens: {answers['live']!r} from all three; logits "
        f"differ from the live ones by {gap['restored']:.3f} (restored), {gap['evaluated again']:.3f} (evaluated again)"
    )
    assert len(set(answers.values())) == 1, answers
    # The restored cache holds the live one's bytes: the same best next token, logits within noise.
    assert first["restored"] == first["live"] and gap["restored"] <= 0.3, (first, gap)
    # A fresh evaluation computes the same tokens in other batches (the live turns evaluated message by
    # message, the opening of the next message apart): Gemma's logits move by up to about 1 then, which
    # can swap near-equal next tokens but not the answer.
