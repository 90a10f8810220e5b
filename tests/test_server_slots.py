"""Slot file names (unguessable without the user's secret) and the choice of a slot for the next turn."""

from __future__ import annotations

import os
import stat

import pytest

from lmchat_jupyter.fingerprint import cache_dir
from lmchat_jupyter.llama_server_client import SLOT_FILE_NAME, SlotInfo
from lmchat_jupyter.server_slots import SECRET_FILE, SlotClaim, choose_slot, slot_file_name, user_secret

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
