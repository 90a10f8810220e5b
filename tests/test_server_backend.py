"""Conversations whose model runs on a real llama-server, through the engine as it is (Conversation, sessions)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmchat_jupyter import Conversation, load_model
from lmchat_jupyter.backends.server.llama_backend import LlamaServerBackend
from lmchat_jupyter.backends.server.llama_client import LlamaServerClient
from lmchat_jupyter.backends.server.openai_backend import OpenAIBackend
from lmchat_jupyter.backends.server.stream import END, TokenStream
from lmchat_jupyter.core.errors import ServerAuthError, ServerContextTooSmallError, ServerUnreachableError
from lmchat_jupyter.core.results import GenerationOptions
from lmchat_jupyter.engine.models import ServerModel

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
def one_slot(tmp_path: Path) -> Iterator[LlamaServer]:
    yield from running_llama_server(tmp_path / "slots", parallel=1, ctx_per_slot=2048)


def _server_model(url: str, **kwargs: Any) -> ServerModel:
    """A model on the server as a new kernel would connect to it (nothing shared with earlier ones)."""
    model = load_model(url, reuse=False, **kwargs)
    assert isinstance(model, ServerModel)
    return model


def _chat(model: ServerModel, word: str) -> Conversation:
    conv = Conversation(model, system="You are a helpful assistant.", options=SHORT)
    conv.submit(OPENING.format(word=word))
    return conv


def _timings(model: ServerModel) -> dict[str, int]:
    """What the server evaluated for the last answer: ``prompt_n`` read anew, ``cache_n`` from its cache."""
    backend = model.backend
    assert isinstance(backend, LlamaServerBackend)
    return dict(backend.last_completion["timings"])


def _own_file(conv: Conversation) -> str:
    """The slot file the conversation's newest verified save went into (one of its two names)."""
    backend = conv.model.backend
    assert isinstance(backend, LlamaServerBackend)
    name = backend.slot_keeper.slot_file(conv.history.conversation_id)[0]
    assert name is not None
    return name


def _erase_all(url: str) -> None:
    client = LlamaServerClient(url)
    for slot in client.slots():
        client.erase_slot(slot.id)


def test_a_server_spec_gives_a_model_on_the_server(server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(server.url)
    assert isinstance(model, ServerModel) and load_model(server.url + "/") is model
    monkeypatch.setenv("LMCHAT_MODEL", server.url)
    assert load_model() is model
    assert model.display_name == "SmolLM2-135M-Instruct.Q4_1" and model.n_ctx == 2048
    assert f"llama-server at {server.url}" in model.describe()
    assert model.fingerprint()["url"] == server.url and model.fingerprint()["model_path"].endswith(".gguf")


def test_each_turn_sends_the_conversation_and_the_server_reads_only_what_is_new(server: LlamaServer) -> None:
    model = _server_model(server.url)
    conv = _chat(model, "PAPAYA")
    assert conv.history[-1].role == "assistant" and conv.history[-1].content.strip()
    held = len(conv.cache.tokens)
    result = conv.submit("And about the mountains?")
    timings = _timings(model)
    # The server read the new message (and the ending of the answer before it, evaluated ahead here) only.
    assert timings["prompt_n"] < 40 and timings["cache_n"] > 40 and timings["cache_n"] + 10 > held, timings
    assert (result.prompt_tokens, result.cached_tokens) == (timings["prompt_n"], timings["cache_n"])
    # What the engine holds is what the server generated: the text of the tokens is the conversation's.
    text = LlamaServerClient(server.url).detokenize(conv.cache.tokens)
    assert text == conv.cache.state.text


def test_an_answer_that_ends_by_itself_ends_at_the_end_of_generation(server: LlamaServer) -> None:
    conv = Conversation(_server_model(server.url), options=GenerationOptions(temperature=0.0, max_tokens=300))
    result = conv.submit("Say hello.")
    assert result.finish_reason == "stop" and result.text.strip()
    assert "<|im_end|>" not in conv.history[-1].content


def test_a_saved_session_resumes_through_its_slot_file(server: LlamaServer) -> None:
    conv = _chat(_server_model(server.url), "PAPAYA")
    conv.submit("And about the mountains?")
    session = conv.save()
    assert session is not None and len(session) < 64_000  # the KV cache stays on the server
    name = _own_file(conv)
    assert (
        slot_file_tokens(server.slot_dir / name) == conv.cache.tokens[: len(slot_file_tokens(server.slot_dir / name))]
    )
    _erase_all(server.url)  # other conversations took every slot meanwhile

    model = _server_model(server.url)  # a new kernel
    resumed = Conversation.restore(model, session)
    assert (resumed.restored_from or "").startswith("full session")
    resumed.submit("And about the forest?")
    assert _timings(model)["prompt_n"] < 40, _timings(model)

    # Without its slot file the server reads the conversation again; the model says why.
    (server.slot_dir / name).unlink()
    _erase_all(server.url)
    model = _server_model(server.url)
    again = Conversation.restore(model, session)
    assert again.submit("And about the forest?").text
    assert _timings(model)["prompt_n"] > 60
    assert "could not be restored" in (model.notice or "")


def test_conversations_taking_turns_on_one_slot_never_see_each_other(one_slot: LlamaServer) -> None:
    model = _server_model(one_slot.url)
    first, second = _chat(model, "PAPAYA"), _chat(model, "MANGO")
    client = LlamaServerClient(one_slot.url)
    for conv, own, other in ((first, "PAPAYA", "MANGO"), (second, "MANGO", "PAPAYA"), (first, "PAPAYA", "MANGO")):
        conv.save()  # as the store does after each turn: the slot goes to the conversation's file
        conv.submit("Say the code word again.")
        # The one slot held the other conversation: this one's own slot file was restored into it.
        assert _timings(model)["prompt_n"] < 40, _timings(model)
        saved = client.detokenize(slot_file_tokens(one_slot.slot_dir / _own_file(conv)))
        assert own in saved and other not in saved


def test_a_slot_taken_right_after_an_answer_never_becomes_this_conversation_s_file(one_slot: LlamaServer) -> None:
    """Two kernels on one slot: the other kernel's turn waits for the slot and takes it the moment this answer
    ends. This conversation's save comes later (the store saves in the background): the slot holds the other
    conversation by then, and this conversation's slot file must keep its own earlier state, not the other's."""
    client = LlamaServerClient(one_slot.url)
    first = _chat(_server_model(one_slot.url), "PAPAYA")
    first.save()  # each conversation's slot file holds it
    second = _chat(_server_model(one_slot.url), "MANGO")
    second.save()
    answer = iter(first.stream("Tell me a long story about the sea.", max_tokens=80, temperature=0.8))
    next(answer)
    failures: list[BaseException] = []

    def other_kernel() -> None:
        try:
            second.submit("Say the code word again.", max_tokens=40)
        except BaseException as exc:
            failures.append(exc)

    other = threading.Thread(target=other_kernel)
    other.start()
    time.sleep(1.0)  # the other turn waits for the one slot
    for _ in answer:
        pass
    other.join(timeout=300)
    assert not other.is_alive() and not failures, failures
    sessions = {conv.history.conversation_id: conv.save() for conv in (first, second)}
    for conv, own, intruder in ((first, "PAPAYA", "MANGO"), (second, "MANGO", "PAPAYA")):
        name = _own_file(conv)
        saved = client.detokenize(slot_file_tokens(one_slot.slot_dir / name))
        assert own in saved and intruder not in saved, (own, saved)
        # Each goes on in a new kernel from its own session and slot file.
        resumed = Conversation.restore(_server_model(one_slot.url), sessions[conv.history.conversation_id])
        assert resumed.submit("Go on.").text


def test_a_fork_starts_from_its_origin_s_slot_file(one_slot: LlamaServer) -> None:
    model = _server_model(one_slot.url)
    origin = _chat(model, "PAPAYA")
    origin.save()  # the origin's slot file: the fork's state names it
    fork = origin.fork()
    _chat(model, "MANGO")  # another conversation takes the one slot
    fork.submit("Say the code word again.")
    assert _timings(model)["prompt_n"] < 40, _timings(model)
    fork.save()  # from now on the fork saves to a file of its own
    client = LlamaServerClient(one_slot.url)
    own = slot_file_tokens(one_slot.slot_dir / _own_file(fork))
    assert "PAPAYA" in client.detokenize(own) and len(own) > len(origin.cache.tokens)


def test_a_server_lost_mid_answer_leaves_the_history_and_the_next_turn_goes_on(one_slot: LlamaServer) -> None:
    conv = _chat(_server_model(one_slot.url), "PAPAYA")
    before = [m.to_json() for m in conv.history]
    answer = iter(conv.stream("Write a very long story about the sea.", max_tokens=1500, temperature=0.8))
    next(answer)
    assert one_slot.process is not None
    os.killpg(one_slot.process.pid, signal.SIGKILL)
    with pytest.raises(ServerUnreachableError):
        for _ in answer:
            pass
    assert [m.to_json() for m in conv.history] == before
    with pytest.raises(ServerUnreachableError, match="cannot reach"):
        conv.submit("Are you there?")
    assert [m.to_json() for m in conv.history] == before
    one_slot.start()
    assert conv.submit("Are you there?").text
    assert len(conv.history) == len(before) + 2


def test_a_stopped_answer_keeps_its_text_and_the_next_turn_goes_on(one_slot: LlamaServer) -> None:
    model = _server_model(one_slot.url)
    conv = _chat(model, "PAPAYA")
    turn = conv.stream("Write a very long story about the sea.", max_tokens=1500, temperature=0.8)
    for i, _ in enumerate(turn):
        if i == 3:
            conv.stop()
    assert turn.result is not None and turn.result.finish_reason == "stopped"
    conv.submit("Say the code word again.")
    assert _timings(model)["prompt_n"] < 40, _timings(model)


def test_ctrl_c_while_the_server_reads_the_prompt_ends_the_wait(server: LlamaServer) -> None:
    model = _server_model(server.url)
    conv = _chat(model, "PAPAYA")
    before = [m.to_json() for m in conv.history]
    # About 1,400 tokens for the server to read first (a second or more here): the signal comes before any token.
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            conv.submit("The sea is wide and deep. " * 200 + "Tell me a long story.", max_tokens=200)
    finally:
        timer.cancel()
    assert [m.to_json() for m in conv.history] == before  # no partial answer: the wait itself was interrupted
    assert conv.submit("Say the code word again.").text
    assert _timings(model)["prompt_n"] < 40, _timings(model)


def test_a_wrong_key_and_a_context_too_small_say_what_to_do(tmp_path: Path) -> None:
    llama_server_binary()
    guarded = LlamaServer(tmp_path / "slots", parallel=1, ctx_per_slot=512, api_key=TEST_API_KEY).start()
    try:
        with pytest.raises(ServerAuthError, match="LMCHAT_API_KEY"):
            _server_model(guarded.url, api_key="wrong")
        model = _server_model(guarded.url, api_key=TEST_API_KEY)
        conv = _chat(model, "PAPAYA")
        session = conv.save()
        assert session is not None and TEST_API_KEY.encode() not in session
        before = len(conv.history)
        with pytest.raises(ServerContextTooSmallError, match="larger -c"):
            conv.submit("tell me more " * 200)
        assert len(conv.history) == before
        model.set_api_key("wrong")
        with pytest.raises(ServerAuthError):
            conv.submit("Go on.")
        assert len(conv.history) == before
    finally:
        guarded.stop()


def test_the_stream_hands_out_each_token_with_its_text() -> None:
    events = [
        {"tokens": [], "content": ""},  # the stream's opening
        {"tokens": [5], "content": "a", "tokens_predicted": 1},
        # A token that left a character unfinished was not sent: the next one brings its text.
        {"tokens": [9], "content": "é", "tokens_predicted": 3},
        {"tokens": [7], "content": "", "tokens_predicted": 4},  # a token without text that is not the end
        {"tokens": [8], "content": "b", "tokens_predicted": 5},
        {"tokens": [2], "content": "", "tokens_predicted": 6},  # the end of generation
        {"stop": True, "stop_type": "eos", "tokens_cached": 30},
    ]
    stream = TokenStream(iter(events), "test", lambda text: [41, 42] if text == "é" else [])
    handed = [stream.next() for _ in range(6)]
    assert handed == [(5, b"a"), (41, b""), (42, "é".encode()), (7, b""), (8, b"b"), (END, b"")]
    assert stream.done and stream.final is not None and stream.final["tokens_cached"] == 30


def test_an_openai_compatible_server_gives_a_history_only_model(tmp_path: Path, smollm_path: Path) -> None:
    running = OpenAIServer(smollm_path, tmp_path)
    try:
        model = _server_model(running.url)
        assert isinstance(model.server, OpenAIBackend)
        assert f"OpenAI-compatible server at {running.url}" in model.describe()
        assert Conversation(model, options=SHORT).submit("Hi").text
    finally:
        running.stop()


def test_the_server_benchmark_runs(one_slot: LlamaServer) -> None:
    from benchmarks import server_bench as bench

    resume = bench.bench_resume(one_slot, 300)
    assert resume["restored_prompt_tokens"] < 40 < resume["reread_prompt_tokens"]
    stream = bench.bench_stream(one_slot, 8, 1)
    client = bench.bench_client(one_slot, 8, 1)
    assert "| Resume after a restart" in bench.markdown(resume, stream, client, (0.0, 0.0))
