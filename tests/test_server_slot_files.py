"""A conversation's two slot files on a real llama-server: a save whose check fails never costs the good one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from lmchat_jupyter import Conversation, load_model
from lmchat_jupyter.backends.server.llama_backend import LlamaServerBackend
from lmchat_jupyter.backends.server.llama_client import LlamaServerClient
from lmchat_jupyter.backends.server.slots import slot_file_name, slot_file_names
from lmchat_jupyter.core.results import GenerationOptions
from lmchat_jupyter.engine.models import ServerModel

from .servers import LlamaServer, running_llama_server, slot_file_tokens

SHORT = GenerationOptions(temperature=0.0, seed=1, max_tokens=12)


@pytest.fixture
def one_slot(tmp_path: Path) -> Iterator[LlamaServer]:
    yield from running_llama_server(tmp_path / "slots", parallel=1, ctx_per_slot=2048)


def _backend(model: ServerModel) -> LlamaServerBackend:
    backend = model.backend
    assert isinstance(backend, LlamaServerBackend)
    return backend


def _new_model(url: str) -> ServerModel:
    model = load_model(url, reuse=False)
    assert isinstance(model, ServerModel)
    return model


class _SaveCountedShort:
    """At the HTTP boundary: llama-server's answer to a slot save says one token fewer than it wrote, as when
    a request of another conversation landed in the slot between the check of ``/slots`` and the save."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.saves: list[str] = []
        original = httpx2.HTTPTransport.handle_request

        def handle_request(transport: httpx2.HTTPTransport, request: httpx2.Request) -> httpx2.Response:
            response = original(transport, request)
            if request.method != "POST" or request.url.params.get("action") != "save":
                return response
            data = json.loads(response.read())
            self.saves.append(json.loads(request.content)["filename"])
            data["n_saved"] -= 1
            headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
            return httpx2.Response(response.status_code, headers=headers, content=json.dumps(data).encode())

        monkeypatch.setattr(httpx2.HTTPTransport, "handle_request", handle_request)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_save_that_fails_its_check_leaves_the_previous_slot_file_in_use(
    one_slot: LlamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _new_model(one_slot.url)
    conv = Conversation(model, system="You are a helpful assistant.", options=SHORT)
    conv.submit("Remember this code word: PAPAYA. Now tell me about the sea in one sentence.")
    conv.save()
    label = conv.history.conversation_id
    good, n_good = _backend(model).slot_keeper.slot_file(label)
    assert good in slot_file_names(label, one_slot.url) and n_good > 40
    before = _digest(one_slot.slot_dir / good)

    conv.submit("And about the mountains?")
    with monkeypatch.context() as patch:
        counted_short = _SaveCountedShort(patch)
        session = conv.save()
    assert session is not None
    assert counted_short.saves and good not in counted_short.saves  # the save went into the other file
    assert _digest(one_slot.slot_dir / good) == before  # the good file is as it was
    assert _backend(model).slot_keeper.slot_file(label) == (good, n_good)
    assert slot_file_tokens(one_slot.slot_dir / good) == conv.cache.tokens[:n_good]

    # A new kernel, every slot taken by others meanwhile: the session names the good file, which is restored.
    client = LlamaServerClient(one_slot.url)
    client.erase_slot(0)
    fresh = _new_model(one_slot.url)
    resumed = Conversation.restore(fresh, session)
    assert resumed.submit("And about the forest?").text
    timings: dict[str, Any] = _backend(fresh).last_completion["timings"]
    assert timings["cache_n"] >= n_good, timings
    assert "could not be restored" not in (fresh.notice or "")

    # The next save that checks out goes into the other file and becomes the conversation's.
    resumed.save()
    newer, n_newer = _backend(fresh).slot_keeper.slot_file(label)
    assert {newer, good} == set(slot_file_names(label, one_slot.url)) and n_newer > n_good
    assert slot_file_tokens(one_slot.slot_dir / newer) == resumed.cache.tokens[:n_newer]


def test_a_descriptor_naming_a_single_slot_file_still_restores(one_slot: LlamaServer) -> None:
    model = _new_model(one_slot.url)
    conv = Conversation(model, system="You are a helpful assistant.", options=SHORT)
    conv.submit("Remember this code word: MANGO. Now tell me about the sea in one sentence.")
    conv.save()
    label = conv.history.conversation_id
    name, n_saved = _backend(model).slot_keeper.slot_file(label)
    assert name is not None and n_saved > 0
    # As an older lmchat saved it: one file per conversation, named without .a/.b.
    single = slot_file_name(label, one_slot.url)
    (one_slot.slot_dir / name).rename(one_slot.slot_dir / single)
    buffer = bytearray(_backend(model).state_size())
    size = _backend(model).export_state(buffer)
    descriptor = json.loads(bytes(buffer[:size]).rstrip(b" \0"))
    descriptor["slot_file"] = single
    client = LlamaServerClient(one_slot.url)
    client.erase_slot(0)

    backend = _backend(_new_model(one_slot.url))  # a new kernel
    backend.label = label
    assert backend.import_state(json.dumps(descriptor).encode(), conv.cache.tokens)
    assert backend.slot_keeper.slot_file(label) == (single, n_saved)
    slot = backend.slot_keeper.take(label)  # the file goes back into a slot
    assert next(s for s in client.slots() if s.id == slot).n_tokens == n_saved
