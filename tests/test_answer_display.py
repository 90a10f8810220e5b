"""A `%%chat` answer whose turn fails part-way: its output must not keep looking like a live stream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from lmchat_jupyter import Conversation
from lmchat_jupyter.core.errors import ServerUnreachableError
from lmchat_jupyter.ui import output


class FailingTurn:
    """A turn whose server goes away after two pieces: the engine drops it, so it has no result."""

    result = None

    def __iter__(self) -> Iterator[str]:
        yield "The capital of"
        yield " France is"
        raise ServerUnreachableError("the server stopped answering in the middle of a reply")


class Handle:
    def __init__(self) -> None:
        self.shown: list[dict[str, str]] = []

    def update(self, bundle: dict[str, str], raw: bool = False) -> None:
        self.shown.append(bundle)


def test_a_dropped_answer_loses_its_streaming_cursor(shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    handles: list[Handle] = []

    def display(*_args: Any, **_kwargs: Any) -> Handle:
        handles.append(Handle())
        return handles[-1]

    monkeypatch.setattr(output, "display", display)
    monkeypatch.setattr(output, "REFRESH_SECONDS", 0.0)
    monkeypatch.setattr(Conversation, "stream", lambda *_a, **_k: FailingTurn())
    with pytest.raises(UsageError, match="stopped answering"):  # one line, as every lmchat error
        shell.run_cell_magic("chat", "", "What is the capital of France?")
    (handle,) = handles
    last = handle.shown[-1]["text/plain"]
    assert "▌" not in last, handle.shown
    assert last.startswith("The capital of France is") and "not kept" in last, last
