"""An unchanged Conversation on a real OpenAI-compatible server (llama-cpp-python's): history-only persistence.

Every answer is compared with what the server answers, greedily, to the messages the conversation should
have sent: the same text means the server saw exactly that history.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmchat_jupyter import Conversation, Model, ModelSettings
from lmchat_jupyter.backends.server.openai_backend import OpenAIBackend
from lmchat_jupyter.backends.server.openai_client import OpenAICompatibleClient
from lmchat_jupyter.backends.server.probe import ServerTier, probe_server
from lmchat_jupyter.backends.server.text_units import decode_units, encode_units, read_chat, render_chat
from lmchat_jupyter.core.errors import ServerAuthError, ServerError, ServerUnreachableError, SessionMismatchError
from lmchat_jupyter.core.results import GenerationOptions

from .servers import TEST_API_KEY, OpenAIServer, free_port

GREEDY = GenerationOptions(temperature=0.0, seed=1, max_tokens=16)
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[OpenAIServer]:
    running = OpenAIServer(smollm_path, tmp_path_factory.mktemp("openai"), api_key=TEST_API_KEY)
    yield running
    running.stop()


def server_model(url: str, api_key: str | None = TEST_API_KEY) -> Model:
    tier = probe_server(url, api_key)
    backend = OpenAIBackend(tier, api_key)
    return Model(url, Path(url), ModelSettings(), backend, backend.name)


def direct_answer(url: str, messages: list[dict[str, str]]) -> str:
    """What the server answers to ``messages`` with the conversation's settings, asked without lmchat's engine."""
    client = OpenAICompatibleClient(url, TEST_API_KEY)
    model = client.models()[0]
    options = {"temperature": GREEDY.temperature, "top_p": GREEDY.top_p, "seed": GREEDY.seed}
    return client.stream_chat(messages, model=model, max_tokens=GREEDY.max_tokens, **options).text()


def sent(conv: Conversation) -> list[dict[str, str]]:
    """The messages before the last answer: what its request carried."""
    return conv.history.as_chat_messages()[:-1]


def test_units_and_records_round_trip_and_stay_prefix_consistent() -> None:
    for text in ("", "a", "ab", "abc", "héllo wörld ✓", "\x1e\x1f\x1c0 tricky", "🙂" * 7):
        data = text.encode("utf-8")
        assert decode_units(encode_units(data)) == data
    messages = [{"role": "system", "content": "be \x1e terse"}, {"role": "user", "content": "hi\x1f\x1c1"}]
    answer = {"role": "assistant", "content": "Hello there"}
    opened = render_chat(messages, generation_prompt=True)
    assert render_chat([*messages, answer], generation_prompt=False) == opened + answer["content"]
    assert read_chat(opened) == messages
    assert read_chat(opened + answer["content"]) == [*messages, answer]


def test_a_conversation_answers_and_remembers_its_history(server: OpenAIServer) -> None:
    model = server_model(server.url)
    conv = Conversation(model, system=SYSTEM, options=GREEDY)
    first = conv.submit("Remember this code word: PAPAYA. Tell me about the sea in one sentence.")
    assert first.text.strip() and first.text == direct_answer(server.url, sent(conv))
    second = conv.submit("What was the code word?")
    assert len(sent(conv)) == 4 and sent(conv)[1]["content"].endswith("in one sentence.")
    assert second.text == direct_answer(server.url, sent(conv))
    assert [m.role for m in conv.history] == ["system", "user", "assistant", "user", "assistant"]
    assert second.finish_reason in ("stop", "length") and second.generated_tokens > 0


def test_rewind_and_fork_send_each_conversation_its_own_history(server: OpenAIServer) -> None:
    model = server_model(server.url)
    conv = Conversation(model, system=SYSTEM, options=GREEDY)
    conv.submit("Remember this code word: PAPAYA.")
    conv.submit("Tell me about mountains.")
    assert conv.drop_turns(1) == 1
    again = conv.submit("Tell me about forests.")
    assert [m["content"] for m in sent(conv) if m["role"] == "user"][-1] == "Tell me about forests."
    assert len(conv.history) == 5 and again.text == direct_answer(server.url, sent(conv))

    twin = conv.fork()
    twin_answer = twin.submit("Now about rivers.")
    own_answer = conv.submit("Now about deserts.")
    assert twin_answer.text == direct_answer(server.url, sent(twin))
    assert own_answer.text == direct_answer(server.url, sent(conv))
    assert "deserts" not in str(sent(twin)) and "rivers" not in str(sent(conv))

    regenerated = conv.regenerate().text()
    assert regenerated == own_answer.text and len(conv.history) == 7


RESTORE = """
import sys
import threading
from pathlib import Path
from lmchat_jupyter import Conversation, Model, ModelSettings
from lmchat_jupyter.backends.server.openai_backend import OpenAIBackend
from lmchat_jupyter.core.results import GenerationOptions
from lmchat_jupyter.backends.server.probe import probe_server

url, key, path = sys.argv[1:]
backend = OpenAIBackend(probe_server(url, key), key)
model = Model(url, Path(url), ModelSettings(), backend, backend.name)
shown = []
conv = Conversation.restore(model, path, progress=lambda done, total: shown.append(total))
print(conv.restored_from)
print("progress calls:", len(shown))
print("messages:", len(conv.history))
print("answer:", bool(conv.submit("And the code word?", temperature=0.0, max_tokens=8).text.strip()))
print("messages:", len(conv.history))
"""


def test_a_saved_conversation_restores_its_history_in_a_new_process(server: OpenAIServer, tmp_path: Path) -> None:
    model = server_model(server.url)
    conv = Conversation(model, system=SYSTEM, options=GREEDY)
    conv.submit("Remember this code word: PAPAYA. " + "The sea is wide and deep. " * 60)
    assert len(conv.cache.tokens) > 512  # long enough that a re-read of it would show a progress bar
    path = tmp_path / "chat.lmsession"
    conv.save(path)
    done = subprocess.run(
        [sys.executable, "-c", RESTORE, server.url, TEST_API_KEY, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"history-only (server: OpenAI-compatible at {server.url}, model SmolLM2"), lines[0]
    assert lines[1:] == ["progress calls: 0", "messages: 3", "answer: True", "messages: 5"]


def test_a_server_lost_mid_answer_leaves_the_history_and_the_next_cell_retries(
    smollm_path: Path, tmp_path: Path
) -> None:
    port = free_port()
    running = OpenAIServer(smollm_path, tmp_path, port=port)
    model = server_model(running.url, None)
    conv = Conversation(model, system=SYSTEM, options=GREEDY)
    try:
        conv.submit("Remember this code word: PAPAYA.")
        before = [m.to_json() for m in conv.history]
        answer = iter(conv.stream("Write a very long story about the sea.", max_tokens=400))
        next(answer)
        os.killpg(running.process.pid, signal.SIGKILL)
        running.process.wait()
        with pytest.raises(ServerUnreachableError, match="next cell tries again"):
            for _ in answer:
                pass
        assert [m.to_json() for m in conv.history] == before

        with pytest.raises(ServerUnreachableError, match="cannot reach the server"):
            conv.submit("Are you there?")
        assert [m.to_json() for m in conv.history] == before

        running = OpenAIServer(smollm_path, tmp_path, port=port)
        retried = conv.submit("Are you there?")
        assert retried.text == direct_answer_without_key(running.url, sent(conv))
        assert len(conv.history) == len(before) + 2
    finally:
        running.stop()


def direct_answer_without_key(url: str, messages: list[dict[str, str]]) -> str:
    client = OpenAICompatibleClient(url)
    options = {"temperature": GREEDY.temperature, "top_p": GREEDY.top_p, "seed": GREEDY.seed}
    return client.stream_chat(messages, model=client.models()[0], max_tokens=GREEDY.max_tokens, **options).text()


def test_a_wrong_key_is_a_typed_error_and_the_history_stays(server: OpenAIServer) -> None:
    model = server_model(server.url)
    conv = Conversation(model, system=SYSTEM, options=GREEDY)
    conv.submit("Remember this code word: PAPAYA.")
    before = [m.to_json() for m in conv.history]
    tier: ServerTier = model.backend.tier  # type: ignore[attr-defined]
    wrong = Model(server.url, Path(server.url), ModelSettings(), OpenAIBackend(tier, "not-the-key"), "wrong key")
    conv.switch_model(wrong)
    with pytest.raises(ServerAuthError, match="LMCHAT_API_KEY"):
        conv.submit("Still there?")
    assert [m.to_json() for m in conv.history] == before
    conv.switch_model(model)
    assert conv.submit("Still there?").text == direct_answer(server.url, sent(conv))


def test_the_server_s_figures_are_the_answer_s(server: OpenAIServer) -> None:
    conv = Conversation(server_model(server.url), system=SYSTEM, options=GREEDY)
    result = conv.submit("Count from one to twenty.", max_tokens=6)
    assert result.finish_reason == "length" and result.generated_tokens == 6
    assert result.message.meta["tokens"] == 6 and result.message.meta["finish_reason"] == "length"


def test_a_conversation_larger_than_the_server_s_context_is_refused_and_kept(server: OpenAIServer) -> None:
    conv = Conversation(server_model(server.url), system=SYSTEM, options=GREEDY)
    conv.submit("Remember this code word: PAPAYA.")
    before = [m.to_json() for m in conv.history]
    # llama-cpp-python's server answers an empty stream (its log says why): the error says what it likely means.
    with pytest.raises(ServerError, match="does not fit in its context"):
        conv.submit("The sea is wide and deep. " * 400)  # about 2,800 tokens; the server gives 2,048
    assert [m.to_json() for m in conv.history] == before
    assert conv.submit("What was the code word?").text == direct_answer(server.url, sent(conv))


def test_ctrl_c_while_the_server_reads_the_prompt_ends_the_wait(server: OpenAIServer) -> None:
    conv = Conversation(server_model(server.url), system=SYSTEM, options=GREEDY)
    conv.submit("Remember this code word: PAPAYA.")
    before = [m.to_json() for m in conv.history]
    # About 600 tokens for the server to read first (seconds on 2 cores), the signal after 0.1 s: it comes
    # while the kernel waits for the first token.
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            conv.submit("The sea is wide and deep. " * 85 + "Tell me a long story.", max_tokens=200)
    finally:
        timer.cancel()
    assert [m.to_json() for m in conv.history] == before  # no partial answer: the wait itself was interrupted
    assert conv.submit("What was the code word?").text == direct_answer(server.url, sent(conv))


def test_a_session_from_another_model_comes_back_as_its_history(server: OpenAIServer, tmp_path: Path) -> None:
    model = server_model(server.url)
    conv = Conversation(model, system=SYSTEM, options=GREEDY)
    conv.submit("Remember this code word: PAPAYA.")
    path = tmp_path / "chat.lmsession"
    conv.save(path)
    tier: ServerTier = model.backend.tier  # type: ignore[attr-defined]
    other_tier = ServerTier("openai", tier.url, {**tier.fingerprint, "model": "other-model"}, 0, 0)
    other = OpenAIBackend(other_tier, TEST_API_KEY)
    on_other = Model(server.url, Path(server.url), ModelSettings(), other, other.name)
    with pytest.raises(SessionMismatchError, match="other-model") as refused:
        Conversation.restore(on_other, path)
    assert set(refused.value.differences) == {"model", "model_name"}
    assert "saved with SmolLM2-135M-Instruct.Q4_1.gguf" in str(refused.value)
    again = Conversation.from_history(on_other, refused.value.history, options=GREEDY)
    assert [m.to_json() for m in again.history] == [m.to_json() for m in conv.history]
