"""The conversation engine on the real embedded model: turns, prefix reuse, sessions, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmchat_jupyter import (
    AutoSave,
    ChatHistory,
    ContextOverflowError,
    Conversation,
    Model,
    ModelNotFoundError,
    NothingToSaveError,
    SessionCorruptError,
    SessionMismatchError,
    SessionNotFoundError,
    load_model,
)
from lmchat_jupyter.engine.session.container import parse

GREEDY = {"temperature": 0.0, "max_tokens": 24}
PROMPTS = ["My name is Ada and I like red apples.", "What fruit do I like?", "And what is my name?"]


def chat(model: Model, prompts: list[str] = PROMPTS) -> Conversation:
    conv = Conversation(model, system="You are a helpful assistant. Answer briefly.")
    for p in prompts:
        conv.submit(p, **GREEDY)
    return conv


@pytest.fixture(scope="module")
def fresh_model(smollm_path: Path) -> Model:
    """A second, separately loaded copy of the default model: a restore must not rely on warm state."""
    return load_model(smollm_path, n_ctx=4096, reuse=False)


def test_turns_reuse_the_cached_prefix(model: Model) -> None:
    conv = Conversation(model, system="You are a helpful assistant.")
    first = conv.submit(PROMPTS[0], **GREEDY)
    second = conv.submit(PROMPTS[1], **GREEDY)
    assert first.text and second.text
    assert first.cached_tokens == 0
    # Only the new message (plus the template's turn markers) is evaluated; the first answer stays cached.
    assert second.cached_tokens >= first.prompt_tokens + first.generated_tokens
    assert second.prompt_tokens < 30
    assert conv.info.message_count == 5
    assert conv.info.user_message_count == 2
    # After each answer, the opening of the next user message (end of turn, user header) is evaluated ahead.
    ahead = conv.info.token_count - (second.cached_tokens + second.prompt_tokens + second.generated_tokens)
    assert 0 < ahead < 10
    third = conv.submit(PROMPTS[2], **GREEDY)
    assert third.cached_tokens == conv.info.token_count - third.prompt_tokens - third.generated_tokens - ahead


def test_stream_yields_the_answer_and_records_it(model: Model) -> None:
    conv = Conversation(model)
    seen: list[str] = []
    conv.on_token(seen.append)
    turn = conv.stream("Say hello.", **GREEDY)
    pieces = list(turn)
    assert turn.result is not None
    assert "".join(pieces) == turn.result.text == "".join(seen)
    assert conv.history[-1].role == "assistant" and conv.history[-1].content == turn.result.text


def test_full_session_restores_without_reprefill(model: Model, fresh_model: Model, tmp_path: Path) -> None:
    live = chat(model)
    path = tmp_path / "chat.lmsession"
    live.save(path)
    blob = live.save()
    assert isinstance(blob, bytes) and path.stat().st_size == len(blob)

    from_file = Conversation.restore(fresh_model, path)
    assert [m.content for m in from_file.history] == [m.content for m in live.history]
    restored = from_file.submit("Repeat my name.", **GREEDY)
    expected = live.submit("Repeat my name.", **GREEDY)
    assert restored.text == expected.text
    # The restored turn evaluated only the new message's tokens, as the live one did.
    assert restored.prompt_tokens == expected.prompt_tokens
    assert restored.cached_tokens == expected.cached_tokens

    from_bytes = Conversation.restore(fresh_model, blob)
    from_history = Conversation.from_history(fresh_model, live.history.copy())
    from_history.rewind_to(len(from_bytes.history))
    a = from_bytes.submit("Repeat my name.", **GREEDY)
    b = from_history.submit("Repeat my name.", **GREEDY)
    assert a.text == expected.text == b.text
    assert b.cached_tokens > 0 and a.prompt_tokens == expected.prompt_tokens


def test_history_only_round_trip(model: Model, tmp_path: Path) -> None:
    conv = chat(model, PROMPTS[:1])
    conv.history.save(tmp_path / "h.json")
    loaded = ChatHistory.load(tmp_path / "h.json")
    again = ChatHistory.load(conv.history.to_bytes())
    assert loaded.conversation_id == again.conversation_id == conv.history.conversation_id
    assert loaded.message_count == 3 and loaded.user_message_count == 1
    resumed = Conversation.from_history(model, loaded)
    assert resumed.info.token_count > 0
    assert resumed.submit("Thanks!", **GREEDY).text


def test_rewind_keeps_the_prefix_and_answers_the_same(model: Model) -> None:
    conv = chat(model)
    answer_two = conv.history[4].content
    conv.rewind_to(3)  # system, user 1, assistant 1
    assert conv.info.message_count == 3
    again = conv.submit(PROMPTS[1], **GREEDY)
    assert again.text == answer_two
    assert again.cached_tokens > 0 and again.prompt_tokens < 30
    conv.clear()
    assert conv.info.message_count == 1 and conv.history.system is not None


def test_drop_turns_counts_turns_and_rewind_to_counts_messages(model: Model) -> None:
    """One meaning per name: drop_turns(n) is `%chat rewind N`; rewind_to(n) keeps the first n messages."""
    assert not hasattr(Conversation, "rewind")
    conv = chat(model)  # system + 3 turns
    kept = [m.id for m in conv.history]
    assert conv.drop_turns(0) == 3 and [m.id for m in conv.history] == kept
    assert conv.drop_turns(1) == 2 and [m.id for m in conv.history] == kept[:5]
    conv.rewind_to(3)  # system, user 1, assistant 1
    assert [m.id for m in conv.history] == kept[:3]
    assert conv.drop_turns(5) == 0 and [m.id for m in conv.history] == kept[:1]
    with pytest.raises(ValueError, match="0 or more"):
        conv.drop_turns(-1)


def test_stop_keeps_a_consistent_partial_answer(model: Model) -> None:
    conv = Conversation(model)
    turn = conv.stream("Count from one to twenty in words.", temperature=0.0, max_tokens=40)
    for i, _ in enumerate(turn):
        if i == 4:
            conv.stop()
    assert turn.result is not None and turn.result.finish_reason == "stopped"
    cut = turn.result.generated_tokens
    same = Conversation(model)
    same.submit("Count from one to twenty in words.", temperature=0.0, max_tokens=cut)
    assert same.history[-1].content == conv.history[-1].content
    assert conv.submit("Go on.", **GREEDY).text == same.submit("Go on.", **GREEDY).text


def test_two_conversations_share_one_model(model: Model) -> None:
    a = Conversation(model, system="You are A.")
    b = Conversation(model, system="You are B.")
    a.submit(PROMPTS[0], **GREEDY)
    b.submit("Tell me a color.", **GREEDY)
    second = a.submit(PROMPTS[1], **GREEDY)
    # A's KV was parked and brought back: only the new message was evaluated.
    assert second.cached_tokens > 0 and second.prompt_tokens < 30
    reference = Conversation(model, system="You are A.")
    reference.submit(PROMPTS[0], **GREEDY)
    assert second.text == reference.submit(PROMPTS[1], **GREEDY).text


def test_a_fork_goes_on_from_the_same_kv_state(model: Model) -> None:
    conv = chat(model, PROMPTS[:1])
    other = Conversation(model, system="You are a bystander.")  # takes the model: the fork starts parked
    twin = conv.fork()
    other.submit("Say yes.", **GREEDY)
    assert twin.history.conversation_id != conv.history.conversation_id
    assert [m.content for m in twin.history] == [m.content for m in conv.history]
    held = conv.info.token_count
    forked = twin.submit(PROMPTS[1], **GREEDY)
    assert forked.cached_tokens == held  # nothing of the shared past was evaluated again
    original = conv.submit(PROMPTS[1], **GREEDY)
    assert (original.text, original.cached_tokens) == (forked.text, forked.cached_tokens)
    assert len(conv.history) == len(twin.history) == 5


def test_errors_say_what_to_do(model: Model, tmp_path: Path) -> None:
    with pytest.raises(NothingToSaveError, match="send a message"):
        Conversation(model).save(tmp_path / "x.lmsession")
    with pytest.raises(SessionNotFoundError, match="no session file"):
        Conversation.restore(model, tmp_path / "missing.lmsession")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope.gguf")
    (tmp_path / "dir.lmsession").mkdir()
    with pytest.raises(SessionCorruptError, match="it is a folder"):
        Conversation.restore(model, tmp_path / "dir.lmsession")
    (tmp_path / "empty.lmsession").write_bytes(b"")
    with pytest.raises(SessionCorruptError, match="empty"):
        Conversation.restore(model, tmp_path / "empty.lmsession")


def test_context_overflow_is_an_error_or_drops_old_turns(smollm_path: Path) -> None:
    small = load_model(smollm_path, n_ctx=256)
    conv = Conversation(small, system="You are terse.")
    long_prompt = "Please remember these words: " + "apple banana cherry " * 20
    conv.submit(long_prompt, temperature=0.0, max_tokens=8)
    before = [m.content for m in conv.history]
    with pytest.raises(ContextOverflowError, match="n_ctx=256"):
        for _ in range(4):
            conv.submit(long_prompt, temperature=0.0, max_tokens=8)
            before = [m.content for m in conv.history]
    assert [m.content for m in conv.history] == before  # the failed turn left nothing behind
    dropping = Conversation(small, system="You are terse.", context_policy="drop_oldest")
    for _ in range(4):
        dropping.submit(long_prompt, temperature=0.0, max_tokens=8)
    assert dropping.history.system == "You are terse."
    assert dropping.info.token_count <= 256


def test_truncation_and_bit_flips_are_caught_before_llama_cpp(model: Model, tmp_path: Path) -> None:
    conv = chat(model, PROMPTS[:1])
    blob = conv.save()
    assert blob is not None
    parsed = parse(memoryview(blob), "blob")
    cases: dict[str, bytes] = {"truncated": blob[: len(blob) // 2], "header cut": blob[:20]}
    for name, offset in parsed.offsets.items():
        flipped = bytearray(blob)
        flipped[offset + len(parsed.sections[name]) // 2] ^= 0x10
        cases[f"bit flip in {name}"] = bytes(flipped)
    header_flip = bytearray(blob)
    header_flip[30] ^= 0x01
    cases["bit flip in header"] = bytes(header_flip)
    for name, bad in cases.items():
        with pytest.raises(SessionCorruptError):
            Conversation.restore(model, bad)
        path = tmp_path / f"{name}.lmsession"
        path.write_bytes(bad)
        with pytest.raises(SessionCorruptError):
            Conversation.restore(model, path)
    # Nothing reached the model: the live conversation goes on with its cache intact.
    assert conv.submit(PROMPTS[1], **GREEDY).cached_tokens > 0


def test_other_settings_are_a_mismatch(model: Model, smollm_path: Path) -> None:
    conv = chat(model, PROMPTS[:1])
    blob = conv.save()
    assert blob is not None
    other = load_model(smollm_path, n_ctx=2048)
    with pytest.raises(SessionMismatchError, match="n_ctx") as info:
        Conversation.restore(other, blob)
    assert info.value.differences["n_ctx"] == (4096, 2048)
    assert isinstance(info.value.history, ChatHistory)


def test_a_message_that_is_not_unicode_text_is_refused_and_leaves_no_trace(model: Model) -> None:
    conv = Conversation(model)
    with pytest.raises(ValueError, match="lone surrogate"):
        conv.submit("Hello \ud800 there")
    assert conv.info.message_count == 0


def test_autosave_writes_every_n_turns_and_close_writes_the_rest(model: Model, tmp_path: Path) -> None:
    path = tmp_path / "auto.lmsession"
    saved: list[str] = []
    conv = Conversation(model, system="You are terse.")
    conv.subscribe(lambda event: saved.append(event.text) if event.kind == "saved" else None)
    saver = AutoSave(conv, path, every=2)
    conv.submit(PROMPTS[0], **GREEDY)
    saver.flush()
    assert saved == [] and not path.exists()  # one turn of two
    saver.close()  # one unsaved turn: written now
    assert saved == [str(path)]
    first = Conversation.restore(model, path)
    assert [m.content for m in first.history] == [m.content for m in conv.history]

    saver = AutoSave(conv, path, every=2)
    conv.submit(PROMPTS[1], **GREEDY)
    conv.submit(PROMPTS[2], **GREEDY)  # the second turn since the last save: written in the background
    saver.close()  # waits for that write; nothing else is left to save
    assert saved == [str(path), str(path)]
    restored = Conversation.restore(model, path)
    assert [m.content for m in restored.history] == [m.content for m in conv.history]
    assert restored.info.token_count == conv.info.token_count
