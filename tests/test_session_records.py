"""Saves that append what a turn added: bytes per turn, restores of base + records, torn records, compaction."""

from __future__ import annotations

import os
import time
from pathlib import Path

import llama_cpp
import pytest

from lmchat_jupyter import Conversation, Model, ModelSettings
from lmchat_jupyter.backends.local.llama import LlamaBackend
from lmchat_jupyter.engine.session.container import PREFIX, parse
from lmchat_jupyter.engine.session.records import read_records

GREEDY = {"temperature": 0.0, "max_tokens": 24}
PROMPTS = [
    "My name is Ada and I like red apples.",
    "What fruit do I like?",
    "And what is my name?",
    "Name a colour.",
    "Name a city.",
]
SYSTEM = "You are a helpful assistant. Answer briefly."
#: A system prompt of about 400 tokens: a base larger than a few turns' records (no compaction yet).
LONG_SYSTEM = SYSTEM + " Background: " + "The orchard by the sea grows red apples and green pears. " * 30


def _records(path: Path) -> int:
    """How many whole records follow the base; the file must be whole (nothing ignored)."""
    data = path.read_bytes()
    with memoryview(data) as view:
        base = parse(view, str(path))
        scan = read_records(view, base.end, base.chain, signed=True)
        assert scan.problem is None, scan.problem
        count = len(scan.records)
        for record in scan.records:
            record.release()
        for section in base.sections.values():
            section.release()
    return count


class Writes:
    """Bytes a save wrote to one file: the growth of the same file, or all of a new one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ino, self.size = self._stat()

    def _stat(self) -> tuple[int, int]:
        info = self.path.stat() if self.path.exists() else None
        return (info.st_ino, info.st_size) if info else (0, 0)

    def after_save(self) -> tuple[int, bool]:
        """(bytes written, whether they were appended to the same file)."""
        ino, size = self._stat()
        appended = ino == self.ino
        written = size - self.size if appended else size
        self.ino, self.size = ino, size
        return written, appended


def _kv_bytes_per_token(model: Model) -> float:
    """KV state bytes per token, from llama.cpp's own state sizes of a short and a longer conversation."""
    sizes = []
    for prompt in ("Hi.", "Hi. " + "One two three four five six seven eight nine ten. " * 20):
        conv = Conversation(model)
        conv.submit(prompt, temperature=0.0, max_tokens=1)
        conv.cache.activate()
        sizes.append((len(conv.cache.tokens), model.backend.state_size()))
    (n0, s0), (n1, s1) = sizes
    return (s1 - s0) / (n1 - n0)


def test_a_save_appends_what_the_turn_added_not_the_whole_context(model: Model, tmp_path: Path) -> None:
    """The bytes a save writes grow with the turn's tokens, however long the conversation already is."""
    path = tmp_path / "chat.lmsession"
    per_token = _kv_bytes_per_token(model)
    # A long system prompt: about 1,500 tokens of context before the first turn.
    conv = Conversation(model, system=SYSTEM + " Background: " + "The orchard grows apples and pears. " * 200)
    writes = Writes(path)
    conv.submit(PROMPTS[0], **GREEDY)
    conv.save(path)
    full, appended = writes.after_save()
    assert not appended and full > 1000 * per_token
    tokens = len(conv.cache.tokens)
    for prompt in PROMPTS[1:3]:
        conv.submit(prompt, **GREEDY)
        conv.save(path)
        written, appended = writes.after_save()
        new_tokens = len(conv.cache.tokens) - tokens
        tokens = len(conv.cache.tokens)
        assert appended, "a turn's save rewrote the whole file"
        # The new tokens' KV bytes, their tokens and text, the new messages and a header: 1.2x at most.
        change = len(conv.history.messages[-2].content) + len(conv.history.messages[-1].content) + 1024
        assert written <= 1.2 * (new_tokens * per_token + change) + 4096, (written, new_tokens, per_token)
        assert written < full / 10
    assert _records(path) == 2


def _conversation_saved_after_each_turn(model: Model, path: Path, turns: int) -> Conversation:
    conv = Conversation(model, system=LONG_SYSTEM)
    for prompt in PROMPTS[:turns]:
        conv.submit(prompt, **GREEDY)
        conv.save(path)
    return conv


def _next(conv: Conversation) -> tuple[str, list[int]]:
    answer = conv.submit("Say it again, in other words.", **GREEDY).text
    return answer, list(conv.cache.tokens)


def test_a_restore_of_base_and_records_answers_like_the_live_conversation(model: Model, tmp_path: Path) -> None:
    path = tmp_path / "chat.lmsession"
    live = _conversation_saved_after_each_turn(model, path, 4)
    assert _records(path) == 3
    restored = Conversation.restore(model, path)
    assert restored.restored_from is not None and "base + 3 records" in restored.restored_from
    assert [m.to_json() for m in restored.history] == [m.to_json() for m in live.history]
    assert restored.cache.tokens == live.cache.tokens
    assert _next(restored) == _next(live)


@pytest.mark.parametrize("cut", ["in its lead", "in its KV state", "one byte short"])
def test_a_torn_last_record_restores_the_turn_before_it(model: Model, tmp_path: Path, cut: str) -> None:
    path = tmp_path / "chat.lmsession"
    before = _conversation_saved_after_each_turn(model, path, 2)
    size_before = path.stat().st_size
    tokens_before = list(before.cache.tokens)
    messages_before = [m.to_json() for m in before.history]
    before.submit(PROMPTS[2], **GREEDY)
    before.save(path)
    size = path.stat().st_size
    at = {"in its lead": size_before + PREFIX.size + 5, "in its KV state": (size_before + size) // 2}.get(cut, size - 1)
    os.truncate(path, at)
    restored = Conversation.restore(model, path)
    assert restored.restored_from is not None and "ignored" in restored.restored_from
    assert [m.to_json() for m in restored.history] == messages_before
    assert restored.cache.tokens == tokens_before
    # The next save writes the file whole again: no torn bytes stay in it.
    writes = Writes(path)
    restored.submit(PROMPTS[2], **GREEDY)
    restored.save(path)
    _, appended = writes.after_save()
    assert not appended and _records(path) == 0
    assert Conversation.restore(model, path).cache.tokens == restored.cache.tokens


def test_records_as_large_as_the_base_are_compacted_into_one_whole_file(model: Model, tmp_path: Path) -> None:
    path = tmp_path / "chat.lmsession"
    conv = Conversation(model, system="Be brief.")
    writes = Writes(path)
    kinds = []
    for prompt in PROMPTS * 2:
        conv.submit(prompt, **GREEDY)
        conv.save(path)
        kinds.append(writes.after_save()[1])
    assert kinds[0] is False and kinds[1] is True
    compacted = kinds.index(False, 1)  # the first whole write after records
    assert compacted < len(kinds) - 1 and kinds[compacted + 1] is True, kinds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.lmsession"]  # no temp file left
    restored = Conversation.restore(model, path)
    assert restored.cache.tokens == conv.cache.tokens
    assert [m.to_json() for m in restored.history] == [m.to_json() for m in conv.history]


def test_a_rewind_into_what_was_saved_makes_the_next_save_whole(model: Model, tmp_path: Path) -> None:
    path = tmp_path / "chat.lmsession"
    conv = _conversation_saved_after_each_turn(model, path, 3)
    conv.drop_turns(2)
    writes = Writes(path)
    conv.submit("Name an animal.", **GREEDY)
    conv.save(path)
    _, appended = writes.after_save()
    assert not appended and _records(path) == 0
    conv.submit("Name a tree.", **GREEDY)
    conv.save(path)
    assert writes.after_save()[1] and _records(path) == 1
    restored = Conversation.restore(model, path)
    assert [m.to_json() for m in restored.history] == [m.to_json() for m in conv.history]
    assert _next(restored) == _next(conv)


def test_a_restored_file_is_appended_to_and_a_replaced_one_is_written_whole(model: Model, tmp_path: Path) -> None:
    path = tmp_path / "chat.lmsession"
    _conversation_saved_after_each_turn(model, path, 2)
    restored = Conversation.restore(model, path)
    writes = Writes(path)
    restored.submit(PROMPTS[2], **GREEDY)
    restored.save(path)
    assert writes.after_save()[1] and _records(path) == 2
    # Another file in its place (a copy renamed over it): the next save must not append to it.
    copy = tmp_path / "copy"
    copy.write_bytes(path.read_bytes())
    copy.replace(path)
    writes = Writes(path)
    restored.submit(PROMPTS[3], **GREEDY)
    restored.save(path)
    assert not writes.after_save()[1] and _records(path) == 0
    assert Conversation.restore(model, path).cache.tokens == restored.cache.tokens


def test_a_session_of_a_one_sequence_context_loads_into_a_two_sequence_one(
    model: Model, smollm_path: Path, tmp_path: Path
) -> None:
    """Sessions saved before contexts had a scratch sequence (format 1, one sequence) still load, and
    the other way round: sequence 0's state is the same bytes."""
    llm = llama_cpp.Llama(model_path=str(smollm_path), n_ctx=4096, verbose=False)
    settings = ModelSettings()
    backend = LlamaBackend(
        llm, smollm_path, {k: getattr(settings, k) for k in ("type_k", "type_v", "flash_attn", "swa_full")}
    )
    single = Model(None, smollm_path, settings, backend, backend.name)
    assert not backend.deltas_supported and model.backend.deltas_supported  # type: ignore[attr-defined]
    assert single.fingerprint() == model.fingerprint()
    old = Conversation(single, system=LONG_SYSTEM)
    old.submit(PROMPTS[0], **GREEDY)
    blob = bytearray(old.save() or b"")
    blob[8:12] = (1).to_bytes(4, "little")  # format 1: what lmchat wrote before records
    restored = Conversation.restore(model, bytes(blob))
    assert restored.restored_from is not None and restored.restored_from.startswith("full session")
    assert _next(restored) == _next(old)
    newer = _conversation_saved_after_each_turn(model, tmp_path / "new.lmsession", 2)
    back = Conversation.restore(single, tmp_path / "new.lmsession")
    assert back.restored_from is not None and "base + 1 record" in back.restored_from
    assert _next(back) == _next(newer)


APPENDING_CHILD = r"""
import sys, time
from pathlib import Path
from lmchat_jupyter import Conversation, load_model
from lmchat_jupyter.engine.session import writer as session_save
from lmchat_jupyter.core.atomic import append_whole

path = Path(sys.argv[1])
conv = Conversation(load_model(n_ctx=4096), system=sys.argv[2])
for prompt in sys.argv[3:5]:
    conv.submit(prompt, temperature=0.0, max_tokens=24)
    conv.save(path)
conv.submit(sys.argv[5], temperature=0.0, max_tokens=24)
point = conv._saved_at
with conv.model.lock:
    plan = session_save.plan_save(conv.history, conv.model, conv.cache, point, path)


def slowly(chunks):
    # The record's real bytes, handed over in 4 KiB pieces: a kill lands inside the append.
    print("appending", sum(len(c) for c in chunks), flush=True)
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        for i in range(0, len(view), 4096):
            time.sleep(0.002)
            yield view[i : i + 4096]


append_whole(path, slowly(plan.chunks), point.identity)
print("done", flush=True)
time.sleep(60)
"""


def test_a_kill_during_an_append_restores_the_turn_before(model: Model, tmp_path: Path) -> None:
    """kill -9 while a record is being appended: the file restores the turns before it, whole."""
    import random
    import signal
    import subprocess
    import sys

    rng = random.Random(7)
    expected = _conversation_saved_after_each_turn(model, tmp_path / "expected.lmsession", 2)
    for attempt in range(3):
        path = tmp_path / f"killed-{attempt}.lmsession"
        child = subprocess.Popen(
            [sys.executable, "-c", APPENDING_CHILD, str(path), LONG_SYSTEM, *PROMPTS[:3]],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.startswith("appending"), line
            record = int(line.split()[1])
            size_before = path.stat().st_size
            time.sleep(rng.uniform(0.01, 0.2))
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
        torn = path.stat().st_size - size_before
        assert 0 < torn < record, (torn, record)  # the kill landed inside the append
        restored = Conversation.restore(model, path)
        assert restored.restored_from is not None and "ignored" in restored.restored_from
        assert [m.content for m in restored.history] == [m.content for m in expected.history]
        assert restored.cache.tokens == expected.cache.tokens


def test_two_conversations_taking_turns_on_one_model_each_append_to_their_file(model: Model, tmp_path: Path) -> None:
    """Parking (another conversation takes the model between turns) keeps what a file holds appendable."""
    paths = [tmp_path / "a.lmsession", tmp_path / "b.lmsession"]
    convs = [Conversation(model, system=LONG_SYSTEM), Conversation(model, system=SYSTEM + " Be brief.")]
    kinds: list[list[bool]] = [[], []]
    writes = [Writes(p) for p in paths]
    for prompt in PROMPTS[:3]:
        for conv in convs:
            conv.submit(prompt, **GREEDY)
        for i, conv in enumerate(convs):  # the first is parked when it saves: the second holds the model
            conv.save(paths[i])
            kinds[i].append(writes[i].after_save()[1])
    assert kinds == [[False, True, True], [False, True, True]]
    for conv, path in zip(convs, paths, strict=True):
        restored = Conversation.restore(model, path)
        assert restored.cache.tokens == conv.cache.tokens
        assert _next(restored) == _next(conv)


def test_a_damaged_last_record_says_what_was_restored_and_what_was_caught_up(tmp_path: Path) -> None:
    from lmchat_jupyter.storage.sidecar import Sidecar
    from lmchat_jupyter.storage.store import ChatStore

    store = ChatStore(Sidecar(tmp_path))
    conv = store.get("default", system=LONG_SYSTEM)
    for prompt in PROMPTS[:3]:
        conv.submit(prompt, **GREEDY)
        store.flush()
    store.close()
    path = tmp_path / "default.lmsession"
    os.truncate(path, path.stat().st_size - 3)  # the last record, torn
    store = ChatStore(Sidecar(tmp_path), notify=lambda _line: None)
    try:
        [status] = store.restore_all()
        restored = store.conversations["default"]
        assert restored.info.message_count == 7
        assert "base + 1 record," in status and " tokens restored" in status, status
        assert "caught up with the newer history (default.history.json): 2 messages re-read" in status, status
        assert "not loaded" not in status and "restore from its history instead" not in status, status
    finally:
        store.close()
