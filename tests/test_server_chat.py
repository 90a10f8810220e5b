"""Conversations on a real llama-server (full sessions through slot files) and a real OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmchat_jupyter.errors import ServerAuthError, ServerUnreachableError
from lmchat_jupyter.llama_server_client import LlamaServerClient
from lmchat_jupyter.results import GenerationOptions
from lmchat_jupyter.server_chat import ServerChat

from .servers import (
    TEST_API_KEY,
    LlamaServer,
    OpenAIServer,
    llama_server_binary,
    running_llama_server,
    slot_file_tokens,
)

SHORT = GenerationOptions(temperature=0.0, seed=1, max_tokens=12)
OPENING = "Remember this code word: {word}. Now tell me about the sea in one sentence."


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    yield from running_llama_server(tmp_path_factory.mktemp("slots"), parallel=2, ctx_per_slot=2048)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[LlamaServer]:
    yield from running_llama_server(tmp_path / "slots", parallel=1, ctx_per_slot=2048)


def _chat(url: str, word: str) -> ServerChat:
    chat = ServerChat(url, system="You are a helpful assistant.", options=SHORT)
    chat.submit(OPENING.format(word=word))
    return chat


def _erase_all(url: str) -> None:
    client = LlamaServerClient(url)
    for slot in client.slots():
        client.erase_slot(slot.id)


def test_the_tier_is_found_by_asking_the_server(server: LlamaServer) -> None:
    chat = ServerChat(server.url)
    assert chat.tier.kind == "llama-server" and chat.tier.full_sessions
    assert "full sessions" in chat.tier.describe() and "2 slots of 2048 tokens" in chat.tier.describe()
    assert chat.tier.fingerprint["model_path"].endswith(".gguf")


def test_a_resumed_conversation_restores_its_slot_instead_of_rereading(server: LlamaServer) -> None:
    chat = _chat(server.url, "PAPAYA")
    chat.submit("And about the mountains?")
    record = chat.record()
    assert record["slot_file"] and record["slot_file"] in os.listdir(server.slot_dir)
    history_tokens = chat.history.token_count
    _erase_all(server.url)  # other conversations took every slot meanwhile

    resumed = ServerChat.resume(record)
    assert "restored before the next answer" in (resumed.notice or "")
    assert resumed.history.token_count == history_tokens == record["n_tokens"]
    result = resumed.submit("And about the forest?")
    # Only the new message is read: the rest came back from the slot file.
    assert result.prompt_tokens < 40 and result.cached_tokens >= history_tokens - 1
    assert [m.role for m in resumed.history][-2:] == ["user", "assistant"] and len(resumed.history) == 7

    # The same record without its slot file: the history is read again, and the notice says so.
    (server.slot_dir / record["slot_file"]).unlink()
    _erase_all(server.url)
    again = ServerChat.resume(record)
    reread = again.submit("And about the forest?")
    assert "could not be restored" in (again.notice or "")
    assert reread.prompt_tokens >= history_tokens - 1


def test_conversations_taking_turns_on_one_slot_never_see_each_other(fresh_server: LlamaServer) -> None:
    client = LlamaServerClient(fresh_server.url)
    first, second = _chat(fresh_server.url, "PAPAYA"), _chat(fresh_server.url, "MANGO")
    for chat, own, other in ((first, "PAPAYA", "MANGO"), (second, "MANGO", "PAPAYA"), (first, "PAPAYA", "MANGO")):
        held = chat.history.token_count
        result = chat.submit("Say the code word again.")
        # The one slot held the other conversation: this one's own slot file was restored into it.
        assert result.cached_tokens >= held - 1 and result.prompt_tokens < 40
        saved = client.detokenize(slot_file_tokens(fresh_server.slot_dir / chat.slot_file))
        assert own in saved and other not in saved


def test_a_slot_taken_right_after_an_answer_never_becomes_this_conversation_s_file(fresh_server: LlamaServer) -> None:
    client = LlamaServerClient(fresh_server.url)
    first, second = _chat(fresh_server.url, "PAPAYA"), _chat(fresh_server.url, "MANGO")
    answer = first.stream("Tell me a long story about the sea.", max_tokens=80, temperature=0.8)
    next(answer)
    # The other conversation's turn waits for the one slot and takes it the moment this answer ends.
    other = threading.Thread(target=lambda: second.submit("Say the code word again.", max_tokens=40))
    other.start()
    time.sleep(1.0)
    for _ in answer:
        pass
    other.join(timeout=300)
    for chat, own, intruder in ((first, "PAPAYA", "MANGO"), (second, "MANGO", "PAPAYA")):
        slot_file = chat.record()["slot_file"]
        if slot_file is not None:  # a file the conversation would restore holds itself only
            saved = client.detokenize(slot_file_tokens(fresh_server.slot_dir / slot_file))
            assert own in saved and intruder not in saved
        assert ServerChat.resume(chat.record()).submit("Go on.").text


def test_a_server_restart_keeps_saved_slots(fresh_server: LlamaServer) -> None:
    chat = _chat(fresh_server.url, "PAPAYA")
    record, history_tokens = chat.record(), chat.history.token_count
    fresh_server.restart()
    resumed = ServerChat.resume(record)
    result = resumed.submit("Go on.")
    assert result.prompt_tokens < 40 and result.cached_tokens >= history_tokens - 1


def test_a_server_lost_mid_answer_leaves_the_history_and_the_next_turn_goes_on(fresh_server: LlamaServer) -> None:
    chat = _chat(fresh_server.url, "PAPAYA")
    before = [m.to_json() for m in chat.history]
    answer = chat.stream("Write a very long story about the sea.", max_tokens=1500, temperature=0.8)
    next(answer)
    assert fresh_server.process is not None
    os.killpg(fresh_server.process.pid, signal.SIGKILL)
    with pytest.raises(ServerUnreachableError):
        for _ in answer:
            pass
    assert [m.to_json() for m in chat.history] == before
    with pytest.raises(ServerUnreachableError, match="cannot reach"):
        chat.submit("Are you there?")
    assert [m.to_json() for m in chat.history] == before
    fresh_server.start()
    assert chat.submit("Are you there?").text
    assert len(chat.history) == len(before) + 2


def test_another_model_on_the_server_means_the_history_is_sent_again(server: LlamaServer) -> None:
    chat = _chat(server.url, "PAPAYA")
    record = chat.record()
    record["fingerprint"] = {**record["fingerprint"], "model_path": "/models/other.gguf"}
    resumed = ServerChat.resume(record)
    assert "now runs" in (resumed.notice or "") and "/models/other.gguf" in (resumed.notice or "")
    assert not resumed.slot_saved
    _erase_all(server.url)
    assert resumed.submit("Go on.").prompt_tokens >= chat.history.token_count - 1


def test_a_wrong_key_is_refused_before_any_turn(tmp_path: Path) -> None:
    llama_server_binary()
    guarded = LlamaServer(tmp_path / "slots", parallel=1, ctx_per_slot=1024, api_key=TEST_API_KEY).start()
    try:
        with pytest.raises(ServerAuthError, match="LMCHAT_API_KEY"):
            ServerChat(guarded.url, api_key="wrong")
        chat = ServerChat(guarded.url, api_key=TEST_API_KEY, options=SHORT)
        assert chat.submit("Hi").text
        assert TEST_API_KEY not in json.dumps(chat.record())
    finally:
        guarded.stop()


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[OpenAIServer]:
    running = OpenAIServer(smollm_path, tmp_path_factory.mktemp("openai"))
    yield running
    running.stop()


def test_an_openai_server_keeps_the_history_only(openai_server: OpenAIServer) -> None:
    chat = _chat(openai_server.url, "PAPAYA")
    assert chat.tier.kind == "openai" and "history only" in chat.tier.describe()
    record = chat.record()
    assert record["slot_file"] is None and record["tier"] == "openai"
    resumed = ServerChat.resume(record)
    assert "history only" in (resumed.notice or "")
    assert resumed.submit("Go on.").text
    assert [m.role for m in resumed.history] == ["system", "user", "assistant", "user", "assistant"]
