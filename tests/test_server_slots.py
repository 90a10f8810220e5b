"""Slot file names (unguessable without the user's secret) and the choice of a slot for the next turn."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmchat_jupyter.backends.server.llama_client import SLOT_FILE_NAME, LlamaServerClient, SlotInfo
from lmchat_jupyter.backends.server.slots import (
    SECRET_FILE,
    SlotClaim,
    choose_slot,
    idle_slots,
    next_slot_file,
    slot_file_name,
    slot_file_names,
    user_secret,
)
from lmchat_jupyter.core.fingerprint import cache_dir

from .servers import DIRECT, LlamaServer, running_llama_server

URL = "http://127.0.0.1:8080"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCHAT_CACHE_DIR", str(tmp_path))


def _slot(id: int, last_task: int | None, busy: bool = False) -> SlotInfo:
    return SlotInfo(id=id, n_ctx=4096, is_processing=busy, n_tokens=0, last_task=last_task)


def test_the_secret_is_created_once_and_only_its_owner_can_read_it() -> None:
    first = user_secret()
    assert user_secret() == first and len(first) == 32
    mode = stat.S_IMODE(os.stat(cache_dir() / SECRET_FILE).st_mode)
    assert mode == 0o600


def test_a_damaged_secret_is_replaced() -> None:
    cache_dir().mkdir(parents=True, exist_ok=True)
    (cache_dir() / SECRET_FILE).write_bytes(b"short")
    assert len(user_secret()) == 32


def test_names_depend_on_conversation_server_and_secret() -> None:
    name = slot_file_name("abc123", URL)
    assert SLOT_FILE_NAME.fullmatch(name) and name.startswith("lmchat-") and name.endswith(".slot")
    assert slot_file_name("abc123", URL) == name
    assert slot_file_name("abc124", URL) != name
    assert slot_file_name("abc123", "http://127.0.0.1:8081") != name
    assert slot_file_name("abc123", URL, secret=b"x" * 32) != name
    assert "abc123" not in name


def test_a_conversation_saves_into_its_two_files_by_turns() -> None:
    first, second = slot_file_names("abc123", URL)
    stem = slot_file_name("abc123", URL).removesuffix(".slot")
    assert (first, second) == (f"{stem}.a.slot", f"{stem}.b.slot")
    assert all(SLOT_FILE_NAME.fullmatch(name) for name in (first, second))
    assert next_slot_file("abc123", URL, None) == first
    assert next_slot_file("abc123", URL, first) == second
    assert next_slot_file("abc123", URL, second) == first
    # An older session's single file, or the file of the conversation a fork started from: never written over.
    assert next_slot_file("abc123", URL, slot_file_name("abc123", URL)) == first
    assert next_slot_file("abc123", URL, slot_file_names("origin", URL)[0]) == first


def test_a_slot_that_ran_nothing_else_since_is_kept_without_a_restore() -> None:
    slots = [_slot(0, 5), _slot(1, 9)]
    assert choose_slot(slots, SlotClaim(1, 9)) == (1, True)


def test_a_slot_someone_else_used_since_is_left_for_the_least_recently_used() -> None:
    slots = [_slot(0, 5), _slot(1, 12), _slot(2, 7)]
    assert choose_slot(slots, SlotClaim(1, 9)) == (0, False)


def test_never_used_slots_come_first_and_busy_slots_last() -> None:
    assert choose_slot([_slot(0, 3), _slot(1, None)], None) == (1, False)
    assert choose_slot([_slot(0, 3, busy=True), _slot(1, 8)], SlotClaim(0, 3)) == (1, False)
    # All busy: the least recently used one (the request waits for it).
    assert choose_slot([_slot(0, 3, busy=True), _slot(1, 8, busy=True)], None) == (0, False)


def test_without_slot_information_the_fallback_slot_is_restored() -> None:
    assert choose_slot([], SlotClaim(1, 4), fallback=1) == (1, False)


@pytest.fixture
def one_slot(tmp_path: Path) -> Iterator[LlamaServer]:
    yield from running_llama_server(tmp_path / "slots", parallel=1, ctx_per_slot=1024)


def test_a_freed_slot_taken_again_during_the_grace_is_waited_for_not_queued_behind(one_slot: LlamaServer) -> None:
    """Several kernels waiting for a slot see it free at the same moment; the one that comes second must wait
    for another free slot rather than take the busy one (queued behind an answer, its restore overwritten)."""
    client = LlamaServerClient(one_slot.url)
    tokens = client.tokenize("Tell me a long story about the sea.")

    def answer() -> None:  # another kernel's answer: long enough to outlast the grace
        body = {"prompt": tokens, "id_slot": 0, "n_predict": 160, "ignore_eos": True, "cache_prompt": True}
        request = urllib.request.Request(one_slot.url + "/completion", data=json.dumps(body).encode())
        DIRECT.open(request, timeout=120).read()

    def busy(want: bool) -> None:
        deadline = time.monotonic() + 60
        while client.slots()[0].is_processing != want and time.monotonic() < deadline:
            time.sleep(0.01)

    def second_waiter() -> None:  # sees the slot free a little later than we do, and takes it
        busy(True)
        busy(False)
        time.sleep(0.25)
        answer()

    first = threading.Thread(target=answer)
    other = threading.Thread(target=second_waiter)
    first.start()
    other.start()
    busy(True)
    slots = idle_slots(client)
    assert any(not s.is_processing for s in slots), slots
    first.join()
    other.join()
