"""A restore checks the KV bytes while llama.cpp reads them: damage found then leaves nothing loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmchat_jupyter import Conversation, Model, SessionCorruptError
from lmchat_jupyter.backends.local.llama import positions
from lmchat_jupyter.engine.session.container import parse

GREEDY = {"temperature": 0.0, "max_tokens": 16}


def _with_nan_in_kv(path: Path) -> None:
    """Write NaN (f16 0xFFFF) over values deep in the KV section: llama.cpp's structure checks pass,
    only the checksum tells."""
    data = bytearray(path.read_bytes())
    with memoryview(data) as view:
        parsed = parse(view, str(path))
        start, length = parsed.offsets["kv"], len(parsed.sections["kv"])
        for section in parsed.sections.values():
            section.release()
    at = start + length * 3 // 4
    data[at : at + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))


def test_damaged_kv_bytes_read_by_llama_cpp_leave_the_model_empty_and_other_conversations_usable(
    model: Model, tmp_path: Path
) -> None:
    saved = Conversation(model, system="You are a helpful assistant. Answer briefly.")
    saved.submit("My name is Ada and I like red apples.", **GREEDY)
    path = tmp_path / "damaged.lmsession"
    saved.save(path)
    _with_nan_in_kv(path)
    live = Conversation(model, system="You are terse.")
    live.submit("Name a colour.", **GREEDY)
    expected = live.fork().submit("Name a fruit.", **GREEDY).text

    with pytest.raises(SessionCorruptError, match="section 'kv' fails its checksum") as caught:
        Conversation.restore(model, path)

    assert caught.value.history is not None
    assert [m.content for m in caught.value.history] == [m.content for m in saved.history]
    assert positions(model.llm)[1] == -1, "the damaged state was left in llama.cpp's cache"
    assert live.submit("Name a fruit.", **GREEDY).text == expected
