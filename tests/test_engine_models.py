"""The engine across architectures: cross-model sessions and a sliding-window model (Gemma 3, window 512)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmchat_jupyter import Conversation, Model, SessionMismatchError, load_model

GREEDY = {"temperature": 0.0, "max_tokens": 16}
FACTS = (
    "Here are some notes about the city of Lyon. It lies where the Rhone and the Saone meet. "
    "It is known for its food, its silk history, its old town and its festival of lights. "
)


def test_cross_model_restore_names_both_models_and_history_still_answers(model: Model, gemma: Model) -> None:
    conv = Conversation(model, system="You are a helpful assistant.")
    conv.submit("My name is Ada.", **GREEDY)
    blob = conv.save()
    assert blob is not None
    with pytest.raises(SessionMismatchError) as info:
        Conversation.restore(gemma, blob)
    message = str(info.value)
    # This kernel's model by the name `Loaded …` printed; the saved one as its fingerprint recorded it.
    assert model.backend.describe()["model_name"] in message and gemma.name in message
    assert "model_sha256" in info.value.differences
    moved = Conversation.from_history(gemma, info.value.history)
    assert moved.info.message_count == 3
    assert moved.submit("What is my name?", **GREEDY).generated_tokens > 0


@pytest.mark.parametrize(
    ("tokens", "swa_full"),
    [
        (1500, True),
        (3000, False),
        pytest.param(1500, False, marks=pytest.mark.slow),
        pytest.param(3000, True, marks=pytest.mark.slow),
    ],
)
def test_sliding_window_restore_is_verified(gemma_file: Path, tokens: int, swa_full: bool) -> None:
    live_model = load_model(gemma_file, n_ctx=4096, swa_full=swa_full)
    conv = Conversation(live_model)
    i = 0
    while conv.info.token_count < tokens:
        conv.submit(f"Note {i}: {FACTS * 3}Summarise note {i}.", **GREEDY)
        i += 1
    assert conv.info.token_count > 2 * live_model.n_swa
    blob = conv.save()
    assert blob is not None

    fresh = load_model(gemma_file, n_ctx=4096, swa_full=swa_full, reuse=False)
    restored = Conversation.restore(fresh, blob)
    assert restored.restored_from is not None
    assert "full session" in restored.restored_from or "did not verify" in restored.restored_from
    print(f"gemma swa_full={swa_full} at {conv.info.token_count} tokens: {restored.restored_from}")
    reevaluated = Conversation.restore(fresh, blob, use_kv=False)
    question = "Which two rivers meet in Lyon?"
    a = restored.submit(question, **GREEDY)
    b = reevaluated.submit(question, **GREEDY)
    assert a.text == b.text
    assert a.prompt_tokens == b.prompt_tokens  # both evaluated only the new message
