"""The HTTP clients against a real llama-server (built from the pinned llama.cpp) and a real OpenAI-compatible server."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmchat_jupyter.backends.server.http import API_KEY_ENV_VAR
from lmchat_jupyter.backends.server.llama_client import LlamaServerClient
from lmchat_jupyter.backends.server.openai_client import OpenAICompatibleClient
from lmchat_jupyter.backends.specs import resolve_model_path
from lmchat_jupyter.core.errors import (
    ContextOverflowError,
    ModelNotFoundError,
    ServerAuthError,
    ServerContextTooSmallError,
    ServerUnreachableError,
    SlotStorageError,
)

from .servers import TEST_API_KEY, LlamaServer, OpenAIServer, free_port, llama_server_binary

GREEDY = {"temperature": 0.0, "seed": 1}
MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    llama_server_binary()
    running = LlamaServer(tmp_path_factory.mktemp("slots"), parallel=2, ctx_per_slot=2048, api_key=TEST_API_KEY)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def client(server: LlamaServer) -> LlamaServerClient:
    return LlamaServerClient(server.url, api_key=TEST_API_KEY)


def _prompt(client: LlamaServerClient, messages: list[dict[str, str]] = MESSAGES) -> list[int]:
    return client.tokenize(client.apply_template(messages))


def test_props_describe_the_loaded_model_and_its_slots(client: LlamaServerClient, smollm_path: Path) -> None:
    props = client.props()
    assert Path(props.model_path).resolve() == smollm_path.resolve()
    assert (props.total_slots, props.n_ctx_per_slot) == (2, 2048)
    assert props.build_info
    assert [(s.id, s.n_ctx) for s in client.slots()] == [(0, 2048), (1, 2048)]


def test_tokens_round_trip_and_match_the_chat_template(client: LlamaServerClient) -> None:
    prompt = client.apply_template(MESSAGES)
    assert "<|im_start|>user\nName three colours" in prompt and prompt.endswith("<|im_start|>assistant\n")
    tokens = client.tokenize(prompt)
    assert client.detokenize(tokens) == prompt
    # Special tokens are parsed: <|im_start|> is one token, not its characters.
    assert len(client.tokenize("<|im_start|>")) == 1


def test_a_follow_up_evaluates_only_the_new_tokens(client: LlamaServerClient) -> None:
    prompt = _prompt(client)
    client.erase_slot(0)
    first = client.stream_completion(prompt, id_slot=0, n_predict=12, **GREEDY)
    text = first.text()
    assert text and len(first.tokens) == first.final["tokens_predicted"] <= 12
    assert client.detokenize(first.tokens) == text
    assert first.final["timings"]["prompt_n"] == len(prompt)
    follow_up = client.tokenize("<|im_end|>\n<|im_start|>user\nAnd two more?<|im_end|>\n<|im_start|>assistant\n")
    second = client.stream_completion(prompt + first.tokens + follow_up, id_slot=0, n_predict=4, **GREEDY)
    second.text()
    # The slot kept the prompt and the answer: only the follow-up (and at most the answer's last token) is read.
    assert second.final["timings"]["prompt_n"] <= len(follow_up) + 1
    assert second.final["tokens_cached"] >= len(prompt) + len(first.tokens) + len(follow_up)


def test_a_saved_slot_restores_into_an_erased_one(client: LlamaServerClient) -> None:
    prompt = _prompt(client)
    client.stream_completion(prompt, id_slot=1, n_predict=0).text()
    saved = client.save_slot(1, "conv-a.bin")
    assert saved.n_tokens == len(prompt) and saved.n_bytes > 0
    assert client.erase_slot(1) == len(prompt)
    restored = client.restore_slot(1, "conv-a.bin")
    assert restored.n_tokens == len(prompt)
    again = client.stream_completion(prompt, id_slot=1, n_predict=2, **GREEDY)
    again.text()
    assert again.final["timings"]["prompt_n"] <= 1


def test_slot_files_that_cannot_be_used_are_slot_storage_errors(client: LlamaServerClient) -> None:
    with pytest.raises(SlotStorageError, match="refused to restore"):
        client.restore_slot(0, "never-saved.bin")
    with pytest.raises(SlotStorageError, match="not a plain slot file name"):
        client.save_slot(0, "../outside.bin")


def test_a_wrong_or_missing_key_is_an_auth_error(server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ServerAuthError, match=API_KEY_ENV_VAR) as wrong:
        LlamaServerClient(server.url, api_key="not-the-key").props()
    assert wrong.value.status == 401 and "not-the-key" not in str(wrong.value)
    monkeypatch.delenv(API_KEY_ENV_VAR, raising=False)
    with pytest.raises(ServerAuthError):
        LlamaServerClient(server.url).props()
    monkeypatch.setenv(API_KEY_ENV_VAR, TEST_API_KEY)
    assert LlamaServerClient(server.url).props().total_slots == 2


def test_a_server_address_as_a_model_spec_says_where_servers_are_used() -> None:
    with pytest.raises(ModelNotFoundError, match="server address.*load_model"):
        resolve_model_path("http://127.0.0.1:8080")


def test_a_server_that_is_not_there_is_unreachable() -> None:
    with pytest.raises(ServerUnreachableError, match="cannot reach the server .*connection refused"):
        LlamaServerClient(f"http://127.0.0.1:{free_port()}").props()


def test_a_prompt_larger_than_the_slot_is_a_context_error(client: LlamaServerClient) -> None:
    too_long = client.tokenize("word " * 2100)
    with pytest.raises(ServerContextTooSmallError, match="2048 tokens per conversation") as caught:
        client.stream_completion(too_long, id_slot=0, n_predict=1).text()
    assert isinstance(caught.value, ContextOverflowError)


def test_slot_files_survive_a_server_restart(tmp_path: Path) -> None:
    llama_server_binary()
    server = LlamaServer(tmp_path / "slots", parallel=1, ctx_per_slot=2048).start()
    try:
        client = LlamaServerClient(server.url, api_key="")
        prompt = _prompt(client)
        client.stream_completion(prompt, id_slot=0, n_predict=0).text()
        client.save_slot(0, "kept.bin")
        server.restart()
        assert client.restore_slot(0, "kept.bin").n_tokens == len(prompt)
        again = client.stream_completion(prompt, id_slot=0, n_predict=1, **GREEDY)
        again.text()
        assert again.final["timings"]["prompt_n"] <= 1
    finally:
        server.stop()


def test_a_server_killed_mid_answer_is_unreachable_not_a_short_answer(tmp_path: Path) -> None:
    llama_server_binary()
    server = LlamaServer(tmp_path / "slots", parallel=1, ctx_per_slot=2048).start()
    try:
        client = LlamaServerClient(server.url, api_key="")
        stream = client.stream_completion(_prompt(client), id_slot=0, n_predict=1500, ignore_eos=True, **GREEDY)
        pieces = iter(stream)
        next(pieces)
        assert server.process is not None
        os.killpg(server.process.pid, signal.SIGKILL)
        with pytest.raises(ServerUnreachableError, match="stopped answering|ended before the answer"):
            for _ in pieces:
                pass
        assert not stream.final
    finally:
        server.stop()


def test_llama_server_speaks_openai_chat_too(client: LlamaServerClient, server: LlamaServer) -> None:
    chat = OpenAICompatibleClient(server.url + "/v1", api_key=TEST_API_KEY)
    assert chat.models()
    stream = chat.stream_chat(MESSAGES, max_tokens=8, **GREEDY)
    assert stream.text()
    assert stream.finish_reason in ("length", "stop")


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory: pytest.TempPathFactory, smollm_path: Path) -> Iterator[OpenAIServer]:
    running = OpenAIServer(smollm_path, tmp_path_factory.mktemp("openai"), api_key=TEST_API_KEY)
    yield running
    running.stop()


def test_llama_cpp_python_server_streams_a_chat(openai_server: OpenAIServer) -> None:
    chat = OpenAICompatibleClient(openai_server.url, api_key=TEST_API_KEY)
    models = chat.models()
    assert models
    stream = chat.stream_chat(MESSAGES, model=models[0], max_tokens=8, **GREEDY)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert stream.finish_reason in ("length", "stop")


def test_llama_cpp_python_server_refuses_a_wrong_key(openai_server: OpenAIServer) -> None:
    with pytest.raises(ServerAuthError, match="refused the API key"):
        OpenAICompatibleClient(openai_server.url, api_key="not-the-key").models()
