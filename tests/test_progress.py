"""Progress of re-reading a history: one count for the whole conversation, from its first token, ending in a line."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from lmchat_jupyter import ChatHistory, Conversation, Model
from lmchat_jupyter.core.history import Message
from lmchat_jupyter.ui import progress
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


def _fail_after(model: Model, monkeypatch: pytest.MonkeyPatch, batches: int, error: BaseException) -> None:
    """The backend evaluates ``batches`` batches, then raises ``error`` (a dead backend, Ctrl-C)."""
    real = model.backend.evaluate
    calls = 0

    def evaluate(tokens: Sequence[int]) -> None:
        nonlocal calls
        calls += 1
        if calls > batches:
            raise error
        real(tokens)

    monkeypatch.setattr(model.backend, "evaluate", evaluate)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("backend died")])
def test_a_failed_evaluation_ends_its_bar_as_a_line(
    model: Model, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: BaseException
) -> None:
    update = token_progress("Re-reading default")
    _fail_after(model, monkeypatch, 2, error)
    with pytest.raises(type(error)):
        Conversation.from_history(model, long_history(), progress=update)
    out = capsys.readouterr().out
    assert out.startswith("Re-reading default: stopped at ") and out.count("\n") == 1, out
    update(10_000, 10_000)  # a later evaluation given the same callback shows nothing more
    assert capsys.readouterr().out == ""


def test_a_failed_bar_in_the_notebook_becomes_text(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[dict[str, str]] = []

    class Handle:
        def update(self, data: dict[str, str], raw: bool = False) -> None:
            shown.append(data)

    monkeypatch.setattr(progress, "_in_notebook", lambda: True)
    monkeypatch.setattr("IPython.display.display", lambda *_a, **_k: Handle())
    update = token_progress("Re-reading default")
    _fail_after(model, monkeypatch, 2, RuntimeError("backend died"))
    with pytest.raises(RuntimeError):
        Conversation.from_history(model, long_history(), progress=update)
    # The widget's place now holds one line (nothing live is left to be saved in the .ipynb), one total in it.
    assert len(shown) == 1 and list(shown[0]) == ["text/plain"], shown
    line = shown[0]["text/plain"]
    assert line.startswith("Re-reading default: stopped at ") and line.count(" of ") == 1, line
