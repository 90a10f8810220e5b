"""One test per failure the damaged-session harness found, each small enough to run in-process.

Each test reproduces the exact damage that once ended in an untyped error, a hang, a cache that
disagreed with its tokens, or a lost history.
"""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from lmchat_jupyter import (
    ChatHistory,
    Conversation,
    HistoryFormatError,
    Model,
    SessionCorruptError,
    SessionMismatchError,
)
from lmchat_jupyter.backends.local.llama import positions
from lmchat_jupyter.engine.session.container import read_header

from .forge import KvLayout, Layout, forge, patch, reseal, split

GREEDY = {"temperature": 0.0, "max_tokens": 8}
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture(scope="module")
def saved(model: Model) -> tuple[Conversation, bytes, Layout]:
    conv = Conversation(model, system="You are terse.")
    conv.submit("Name a colour.", **GREEDY)
    blob = conv.save()
    assert blob is not None
    return conv, blob, split(blob)


def next_answer(conv: Conversation) -> str:
    return conv.submit("And a fruit?", **GREEDY).text


def cache_agrees(conv: Conversation) -> bool:
    low, high = positions(conv.model.llm)
    n = len(conv.cache.tokens)
    return conv.model.llm.n_tokens == n and high == n - 1 and low == 0


def test_a_symlink_loop_is_a_corrupt_session_not_an_oserror(model: Model, tmp_path: Path) -> None:
    path = tmp_path / "loop.lmsession"
    path.symlink_to(path)
    with pytest.raises(SessionCorruptError, match="cannot be read"):
        Conversation.restore(model, path)
    with pytest.raises(SessionCorruptError):
        read_header(path)


def test_a_fifo_in_place_of_the_file_does_not_block(model: Model, tmp_path: Path) -> None:
    path = tmp_path / "pipe.lmsession"
    os.mkfifo(path)
    outcome: list[BaseException | None] = []

    def restore() -> None:
        try:
            Conversation.restore(model, path)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    worker = threading.Thread(target=restore, daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():
        # Unblock the reader (a writer opening the FIFO) so the thread can end, then fail.
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(30)
        pytest.fail("restoring a FIFO blocked")
    assert isinstance(outcome[0], SessionCorruptError), outcome
    assert "not a regular file" in str(outcome[0])


def test_deeply_nested_json_is_corrupt_not_a_recursion_error(
    model: Model, saved: tuple[Conversation, bytes, Layout], tmp_path: Path
) -> None:
    _, _, layout = saved
    # Nothing left for the garbage collector: a finalizer it ran deep inside the parser (a model an
    # earlier test dropped) would meet the recursion limit there, in code this test does not check.
    gc.collect()
    header_only = forge(DEEP, layout.blob[layout.data_start :])
    with pytest.raises(SessionCorruptError, match="not valid JSON") as no_history:
        Conversation.restore(model, header_only)
    assert no_history.value.history is None
    path = tmp_path / "deep.lmsession"
    path.write_bytes(header_only)
    with pytest.raises(SessionCorruptError):
        read_header(path)
    with pytest.raises(SessionCorruptError, match="history does not parse"):
        Conversation.restore(model, reseal(layout, {"history": DEEP}))
    with pytest.raises(SessionCorruptError, match="do not parse") as deep_engine:
        Conversation.restore(model, reseal(layout, {"engine": DEEP}))
    assert isinstance(deep_engine.value.history, ChatHistory)
    with pytest.raises(HistoryFormatError, match="nests too deeply"):
        ChatHistory.from_bytes(b'{"format":1,"messages":[' + DEEP + b"]}")


def test_tokens_that_disagree_with_the_kv_state_are_evaluated_again(
    model: Model, saved: tuple[Conversation, bytes, Layout]
) -> None:
    conv, _, layout = saved
    tokens = np.frombuffer(layout.section("tokens"), dtype="<i4")
    for forged in (np.append(tokens, tokens[-1]), np.append(tokens, tokens[:5])):
        blob = reseal(layout, {"tokens": forged.astype("<i4").tobytes()})
        restored = Conversation.restore(model, blob)
        assert restored.restored_from is not None and "refused" in restored.restored_from
        assert len(restored.cache.tokens) == len(forged)
        assert cache_agrees(restored)
        assert next_answer(restored)
        assert cache_agrees(restored)


def test_kv_cells_at_other_positions_are_refused(model: Model, saved: tuple[Conversation, bytes, Layout]) -> None:
    conv, _, layout = saved
    kv = layout.section("kv")
    cells = KvLayout.of(kv)
    last = cells.cell_count - 1
    reference = Conversation.restore(model, layout.blob)
    expected = next_answer(reference)
    for position in (2**31 - 1, last + 10, -5):
        cell = last if position > last else last // 2
        blob = reseal(layout, {"kv": patch(kv, cells.pos_offset(cell), "<i", position)})
        restored = Conversation.restore(model, blob)
        assert restored.restored_from is not None and "refused" in restored.restored_from, position
        assert cache_agrees(restored)
        # The tokens were evaluated again, so the conversation goes on exactly as the pristine one.
        assert next_answer(restored) == expected


def test_an_empty_kv_section_at_the_end_of_a_file_is_evaluated_again(
    model: Model, saved: tuple[Conversation, bytes, Layout], tmp_path: Path
) -> None:
    _, _, layout = saved
    path = tmp_path / "empty-kv.lmsession"
    path.write_bytes(reseal(layout, {"kv": b""}))
    restored = Conversation.restore(model, path)
    assert restored.restored_from is not None and "refused" in restored.restored_from
    assert cache_agrees(restored)


@pytest.mark.parametrize("compat", [[1, 2], "llama", 3, None])
def test_a_compat_field_that_is_not_an_object_is_a_mismatch(
    model: Model, saved: tuple[Conversation, bytes, Layout], compat: object
) -> None:
    conv, _, layout = saved
    with pytest.raises(SessionMismatchError, match="fingerprint") as info:
        Conversation.restore(model, reseal(layout, {}, {"compat": compat}))
    assert isinstance(info.value.history, ChatHistory)
    assert [m.content for m in info.value.history] == [m.content for m in conv.history]


def test_a_damaged_session_still_gives_back_its_history(
    model: Model, saved: tuple[Conversation, bytes, Layout], tmp_path: Path
) -> None:
    conv, blob, layout = saved
    kv_start, kv_len = layout.sections["kv"]
    tokens_start, _ = layout.sections["tokens"]
    damaged = {
        "kv bit flip": bytes(b ^ 1 if i == kv_start + kv_len // 2 else b for i, b in enumerate(blob)),
        "truncated in the kv": blob[: kv_start + 100],
        "truncated in the tokens": blob[: tokens_start + 2],
    }
    for what, data in damaged.items():
        path = tmp_path / f"{what}.lmsession"
        path.write_bytes(data)
        for source in (data, path):
            with pytest.raises(SessionCorruptError, match="history .* is intact") as info:
                Conversation.restore(model, source)
            history = info.value.history
            assert isinstance(history, ChatHistory), what
            assert [(m.id, m.content) for m in history] == [(m.id, m.content) for m in conv.history]
    assert isinstance(history, ChatHistory)
    moved = Conversation.from_history(model, history)
    assert moved.submit("And a fruit?", **GREEDY).text
    # The header is gone: nothing says where the history is, so nothing is claimed.
    with pytest.raises(SessionCorruptError) as info:
        Conversation.restore(model, blob[:40])
    assert info.value.history is None


def test_a_poisoned_cache_does_not_outlive_its_conversation(
    model: Model, saved: tuple[Conversation, bytes, Layout]
) -> None:
    """A self-consistent file with NaN in its KV tensors passes every structural check and, unverified,
    loads; its answer is garbage. The NaN it spreads into cells past its tokens must not reach the
    conversations that use the model afterwards (masked cells are still multiplied by 0)."""
    _, blob, layout = saved
    expected = next_answer(Conversation.restore(model, blob))
    kv = bytearray(layout.section("kv"))
    start = KvLayout.of(bytes(kv)).first_k_data_offset
    kv[start : start + 4096] = b"\x00\x7e" * 2048  # f16 NaN
    poisoned = Conversation.restore(model, reseal(layout, {"kv": bytes(kv)}), verify="never")
    poisoned.submit("Tell me a long story.", temperature=0.0, max_tokens=24)
    assert next_answer(Conversation.restore(model, blob)) == expected
    fresh = Conversation(model, system="You are terse.")
    fresh.history.messages.extend(ChatHistory.from_bytes(layout.section("history")).messages[1:])
    assert next_answer(fresh) == expected


def test_a_restored_state_is_checked_by_its_first_evaluation(
    model: Model, saved: tuple[Conversation, bytes, Layout]
) -> None:
    """``verify`` re-decodes the last restored token at the state's first use, not during the restore.

    A state whose saved logits agree goes on from the KV bytes; one whose logits disagree (here the
    stored logits lie) is evaluated again before the next turn answers, and says so. Either way the answer
    is that of the saved tokens evaluated afresh, and the cache agrees with the conversation.
    """
    _, blob, layout = saved
    expected = next_answer(Conversation.restore(model, blob, use_kv=False))

    checked = Conversation.restore(model, blob, verify="always")
    assert checked.restored_from is not None and checked.restored_from.startswith("full session")
    assert next_answer(checked) == expected
    assert checked.last_result is not None and checked.last_result.cached_tokens > 0
    assert checked.restored_from.startswith("full session") and cache_agrees(checked)

    verify = layout.header["verify"]
    lying = [[verify[1][0], verify[0][1]], [verify[0][0], verify[1][1]], *verify[2:]]  # best two swapped
    forged = Conversation.restore(model, reseal(layout, {}, {"verify": lying}), verify="always")
    assert forged.restored_from is not None and forged.restored_from.startswith("full session")
    assert next_answer(forged) == expected
    assert "did not verify" in forged.restored_from and cache_agrees(forged)

    # Saved again before any turn, a restored state keeps the logits it came with (never its own).
    again = Conversation.restore(model, reseal(layout, {}, {"verify": lying}), verify="always")
    resaved = again.save()
    assert resaved is not None and split(resaved).header["verify"] == lying


def test_large_sections_are_checked_block_by_block() -> None:
    """A section of 8 MiB or more carries one checksum per 4 MiB block, checked on several cores:
    damage in any block, and a block table that does not fit the section, are caught."""
    from lmchat_jupyter.engine.session import checks as section_checks
    from lmchat_jupyter.engine.session import container as session_format

    rng = np.random.default_rng(7)
    kv = rng.integers(0, 256, 9 * 1024 * 1024 + 123, dtype=np.uint8).tobytes()
    sections = [("history", b"{}"), ("engine", b"{}"), ("tokens", b""), ("kv", kv)]
    blob = b"".join(bytes(c) for c in session_format.build({"n_tokens": 0}, sections))
    parsed = session_format.parse(memoryview(blob), "blocks")
    (entry,) = [e for e in parsed.header["sections"] if e["name"] == "kv"]
    assert entry["block"] == section_checks.BLOCK and len(entry["xxh3"]) == 3
    assert bytes(parsed.sections["kv"]) == kv
    for section in parsed.sections.values():
        section.release()
    layout = split(blob)
    start, _ = layout.sections["kv"]
    for where in (0, 5 * 1024 * 1024, len(kv) - 1):  # first, middle and last block
        damaged = bytearray(blob)
        damaged[start + where] ^= 0x10
        with pytest.raises(SessionCorruptError, match="fails its checksum"):
            session_format.parse(memoryview(bytes(damaged)), "blocks")
    header = {k: v for k, v in layout.header.items()}
    for lie in ({"xxh3": entry["xxh3"][:2]}, {"block": 1}, {"block": None}, {"xxh3": [1, 2, 3]}, {"block": True}):
        table = [dict(e, **lie) if e["name"] == "kv" else e for e in layout.header["sections"]]
        forged = forge(dict(header, sections=table), layout.blob[layout.data_start :])
        with pytest.raises(SessionCorruptError, match="malformed entry"):
            session_format.parse(memoryview(forged), "blocks")
