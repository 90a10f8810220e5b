"""Session files written by an earlier lmchat still load: committed files of format 1 and 2.

tests/fixtures/sessions/ holds what lmchat 0.1.0 wrote before the package moved into layer folders
(expected.json says which commit and model): a format-2 file of a base and one appended record, and
a format-1 file (one sequence, no records). Both were signed with the committed ``secret``, so here
they are this user's files; with another user's secret the engine loads them all the same (which
files a notebook trusts is the store's business, tested with the sidecar).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lmchat_jupyter import Conversation, Model

FIXTURES = Path(__file__).parent / "fixtures" / "sessions"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
GREEDY = {"temperature": 0.0, "max_tokens": 12}


@pytest.fixture
def writer_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Sign and check as the user who wrote the fixtures (the secret must be the owner's alone)."""
    secret = tmp_path / "secret"
    shutil.copy(FIXTURES / "secret", secret)
    secret.chmod(0o600)
    monkeypatch.setenv("LMCHAT_SECRET_FILE", str(secret))
    return secret


@pytest.mark.parametrize(
    ("name", "how"),
    [("format2-base-and-record.lmsession", "base + 1 record"), ("format1-one-sequence.lmsession", "full session")],
)
def test_a_committed_session_restores_its_kv_and_answers_like_its_history_read_again(
    model: Model, writer_secret: Path, tmp_path: Path, name: str, how: str
) -> None:
    path = tmp_path / name
    shutil.copy(FIXTURES / name, path)
    expected = EXPECTED[name]
    restored = Conversation.restore(model, path)
    assert restored.restored_from is not None and how in restored.restored_from, restored.restored_from
    assert [m.content for m in restored.history.messages] == expected["messages"]
    assert len(restored.cache.tokens) == expected["tokens"]
    reread = Conversation.from_history(model, restored.history)
    question = "Say it again, in other words."
    assert restored.submit(question, **GREEDY).text == reread.submit(question, **GREEDY).text
    assert restored.cache.tokens == reread.cache.tokens


def test_a_committed_session_of_another_user_loads_at_the_engine_level(
    model: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMCHAT_SECRET_FILE", str(tmp_path / "another-secret"))
    path = tmp_path / "chat.lmsession"
    shutil.copy(FIXTURES / "format2-base-and-record.lmsession", path)
    restored = Conversation.restore(model, path)
    messages = EXPECTED["format2-base-and-record.lmsession"]["messages"]
    assert [m.content for m in restored.history.messages] == messages
    assert restored.restored_from is not None and "base + 1 record" in restored.restored_from
