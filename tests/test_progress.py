"""Progress of re-reading a history: one count for the whole conversation, from its first token, ending in a line."""

from __future__ import annotations

import pytest

from lmchat_jupyter import ChatHistory, Conversation, Model
from lmchat_jupyter.core.history import Message
from lmchat_jupyter.ui.progress import MIN_TOKENS_FOR_BAR, token_progress


def long_history(turns: int = 4) -> ChatHistory:
    paragraph = " ".join(f"Step {i}: knead the dough, let it rest, fold it again." for i in range(12))
    messages = []
    for turn in range(turns):
        messages += [
            Message("user", f"Question {turn}: {paragraph}"),
            Message("assistant", f"Answer {turn}. {paragraph}"),
        ]
    return ChatHistory(messages)


def test_one_count_for_the_whole_history(model: Model) -> None:
    calls: list[tuple[int, int]] = []
    conv = Conversation.from_history(model, long_history(), progress=lambda done, total: calls.append((done, total)))
    first_done, estimate = calls[0]
    done, total = calls[-1]
    # Before anything is evaluated, against the whole conversation; then never backwards, one total throughout.
    assert first_done == 0 and estimate > 2 * model.llm.n_batch
    assert {t for _d, t in calls[:-1]} == {estimate}
    assert [d for d, _t in calls] == sorted(d for d, _t in calls)
    # It ends at what was evaluated: the conversation's tokens (less the next message's opening, evaluated after).
    assert done == total and abs(total - estimate) <= 8 and total <= conv.info.token_count
    assert len(calls) >= 4  # one per batch, not one per message


def test_a_terminal_gets_a_line_instead_of_the_bar(capsys: pytest.CaptureFixture[str]) -> None:
    update = token_progress("Re-reading default")
    update(0, 100)  # too short for a bar: nothing shown
    assert capsys.readouterr().out == ""
    update = token_progress("Re-reading default")
    total = MIN_TOKENS_FOR_BAR * 2
    for done in range(0, total + 1, 256):
        update(done, total)
    update(total, total)  # once finished, later calls show nothing more
    out = capsys.readouterr().out
    assert out.startswith(f"Re-reading default: {total:,} tokens in ") and out.count("\n") == 1, out
