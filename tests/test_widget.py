"""ChatWidget driven through its Python side (buttons, input box) with the real model, beside real %%chat cells."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

import lmchat_jupyter
from lmchat_jupyter import ChatHistory, ConversationEvent
from lmchat_jupyter.notebook.kernel import chats
from lmchat_jupyter.ui.widget import WIDGET_CELL_ID, ChatWidget

from .kernel_driver import KernelDriver, notebook_file

CHAT = "--temperature 0 --max-tokens 12"
LONG = "Write a long story about a dragon who learns to bake bread, with many details."


def chat(ip: InteractiveShell, prompt: str, line: str = CHAT) -> None:
    ip.run_cell_magic("chat", line, prompt)


def type_and_send(w: ChatWidget, text: str) -> None:
    """What the browser does: the box's value arrives, then the Send button's click."""
    w.input.value = text
    w.send_button.click()


def first_tokens(w: ChatWidget, n: int = 1) -> tuple[threading.Event, list[int]]:
    """An event set once ``n`` answer tokens were generated, and the running count of them."""
    seen = threading.Event()
    count = [0]

    def on_event(e: ConversationEvent) -> None:
        if e.kind == "token":
            count[0] += 1
            if count[0] >= n:
                seen.set()

    w.conversation.subscribe(on_event)
    return seen, count


def wait_for(check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def shown_matches_history(w: ChatWidget) -> bool:
    history = [(m.role, m.content) for m in w.conversation.history if m.role != "system"]
    return w.shown == history


def test_widget_and_magic_are_one_conversation(shell: InteractiveShell) -> None:
    w = lmchat_jupyter.ChatWidget(temperature=0, max_tokens=12)
    assert w.shown == [] and "nothing to save yet" in w.status.value
    type_and_send(w, "My name is Ada.")
    assert w.input.value == ""
    assert w.wait(timeout=300)
    conv = lmchat_jupyter.current()
    assert w.conversation is conv
    assert [m.role for m in conv.history] == ["user", "assistant"]
    assert conv.history[0].cell_id == conv.history[1].cell_id == WIDGET_CELL_ID
    assert shown_matches_history(w)
    assert re.search(r"\d+ / [\d,]+ tokens · [\d.]+ tok/s last answer · cut at max tokens · saved$", w.status.value)
    after_widget = conv.info.token_count

    # The widget follows a %%chat cell token by token while it generates.
    seen: list[list[tuple[str, str]]] = []
    conv.subscribe(lambda e: seen.append(w.shown) if e.kind == "token" else None)
    chat(shell, "What is my name?")
    result = conv.last_result
    assert result is not None
    # The %%chat turn was answered on top of the widget's turn, which was still in the KV cache.
    assert result.cached_tokens >= after_widget - 1 and result.prompt_tokens < after_widget
    assert [m.content for m in conv.history if m.role == "user"] == ["My name is Ada.", "What is my name?"]
    streamed = {s[-1][1] for s in seen if len(s) == 4}
    assert len(streamed) >= 2, "the widget did not show the %%chat answer growing"
    assert all(result.text.startswith(t) for t in streamed)
    assert shown_matches_history(w)

    # ... and the next %%chat cell sees a widget turn sent after it.
    type_and_send(w, "I live in Paris.")
    assert w.wait(timeout=300)
    chat(shell, "Where do I live?")
    users = [m.content for m in conv.history if m.role == "user"]
    assert users == ["My name is Ada.", "What is my name?", "I live in Paris.", "Where do I live?"]
    assert shown_matches_history(w)
    # Widget turns are saved with the session like the cells' turns.
    chats().store.flush()
    saved = ChatHistory.load(Path("notes.lmchat") / "default.history.json")
    assert [m.content for m in saved if m.role == "user"] == users
    w.close()


def test_stop_ends_the_answer_and_a_waiting_cell_goes_next(
    shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    w = ChatWidget(temperature=0, max_tokens=400)
    conv = w.conversation
    started, count = first_tokens(w, 3)
    type_and_send(w, LONG)
    # The answer runs on a background thread: this thread is free to press Stop while it streams.
    assert started.wait(timeout=300)
    assert w.stop_button.disabled is False and w.send_button.disabled is True
    w.stop_button.click()
    at_stop = count[0]
    assert w.wait(timeout=300)
    result = conv.last_result
    assert result is not None and result.finish_reason == "stopped"
    assert result.generated_tokens <= at_stop + 2
    assert conv.history[-1].meta.get("finish_reason") == "stopped"
    assert shown_matches_history(w)
    assert w.stop_button.disabled is True and w.send_button.disabled is False
    assert "tok/s last answer · stopped" in w.status.value

    # A %%chat cell run while the widget answers waits for it, then answers on top of it.
    w.options["max_tokens"] = 40
    started, _ = first_tokens(w)
    type_and_send(w, "Tell me about the moon.")
    assert started.wait(timeout=300)
    capsys.readouterr()
    chat(shell, "Thank you.")
    assert "waiting for the widget's answer" in capsys.readouterr().out
    users = [m.content for m in conv.history if m.role == "user"]
    assert users == [LONG, "Tell me about the moon.", "Thank you."]
    assert [m.role for m in conv.history] == ["user", "assistant"] * 3
    assert conv.last_result is not None and conv.last_result.cached_tokens > result.generated_tokens
    assert shown_matches_history(w)
    w.close()


def test_a_message_sent_as_a_stopped_answer_tidies_up_goes_next(shell: InteractiveShell) -> None:
    w = ChatWidget(temperature=0, max_tokens=12)
    type_and_send(w, "Hello there.")
    assert w.wait(timeout=300)
    # The answer is over (the status says so) but its thread is still finishing: as right after Stop.
    tidying = threading.Event()
    w._thread = threading.Thread(target=tidying.wait, daemon=True)
    w._thread.start()
    type_and_send(w, "And again.")
    assert "busy" not in w.status.value and w.input.value == ""
    tidying.set()
    assert w.wait(timeout=300)
    assert [text for role, text in w.shown if role == "user"] == ["Hello there.", "And again."]
    assert shown_matches_history(w)
    w.close()


def test_clear_asks_first_and_stops_an_answer(shell: InteractiveShell) -> None:
    w = ChatWidget(temperature=0, max_tokens=12)
    conv = w.conversation
    type_and_send(w, "Hello there.")
    assert w.wait(timeout=300)
    w.clear_button.click()
    assert w.confirm.layout.display == "flex" and len(conv.history) == 2
    cancel = w.confirm.children[2]
    cancel.click()
    assert w.confirm.layout.display == "none" and len(conv.history) == 2

    w.options["max_tokens"] = 400
    started, _ = first_tokens(w)
    type_and_send(w, LONG)
    assert started.wait(timeout=300)
    w.clear_button.click()
    w.confirm.children[1].click()  # "Yes, clear it", while the answer streams
    assert w.wait(timeout=300)
    # The clear runs on its own thread once the stopped answer has released the conversation.
    wait_for(lambda: not conv.history.messages and not w.shown and chats().replay_cursor["default"] == 0)
    w.options["max_tokens"] = 12
    # The cleared conversation answers again from an empty context.
    type_and_send(w, "Hi.")
    assert w.wait(timeout=300)
    assert conv.last_result is not None and conv.last_result.cached_tokens == 0
    w.close()


def test_rewind_load_and_picker_show_at_once(shell: InteractiveShell, tmp_path: Path) -> None:
    w = ChatWidget()
    chat(shell, "My name is Ada.")
    chat(shell, "I like red apples.")
    assert len(w.shown) == 4
    shell.run_line_magic("chat", "rewind 1")
    assert [r for r, _ in w.shown] == ["user", "assistant"] and shown_matches_history(w)
    saved = tmp_path / "saved.lmsession"
    shell.run_line_magic("chat", f"save {saved}")
    shell.run_line_magic("chat", "clear")
    assert w.shown == []
    old = w.conversation
    shell.run_line_magic("chat", f"load {saved}")
    # %chat load replaces the conversation object: the widget follows the new one.
    assert w.conversation is not old and w.conversation is lmchat_jupyter.current()
    assert [t for _, t in w.shown][0] == "My name is Ada." and shown_matches_history(w)

    assert w.picker.layout.display == "none"
    chat(shell, "Hello.", line=f"--name other {CHAT}")
    assert w.picker.layout.display == "flex" and list(w.picker.options) == ["default", "other"]
    w.picker.value = "other"
    assert w.conversation is chats().store.conversations["other"]
    assert [t for _, t in w.shown][0] == "Hello."
    w.close()


def test_a_new_cell_after_a_restart_keeps_the_widget_turns(shell: InteractiveShell) -> None:
    w = ChatWidget(temperature=0, max_tokens=12)
    type_and_send(w, "My name is Ada.")
    assert w.wait(timeout=300)
    widget_turn = [(m.role, m.content) for m in w.conversation.history]
    w.close()
    # A restart: the conversation comes back from the sidecar; JupyterLab sends cell ids.
    shell.run_line_magic("unload_ext", "lmchat")
    shell.run_line_magic("load_ext", "lmchat")
    chats().cell_id = "cell-7"
    chat(shell, "What is my name?")
    history = [(m.role, m.content) for m in lmchat_jupyter.current().history]
    assert history[:2] == widget_turn and [r for r, _ in history] == ["user", "assistant"] * 2


def test_plain_text_and_a_cell_run_again(shell: InteractiveShell) -> None:
    w = ChatWidget()
    text = w._repr_mimebundle_()["text/plain"]
    assert "ipywidgets>=8" in text and "JupyterLab 4" in text and "Notebook 7" in text
    # Where this text shows in JupyterLab, ipywidgets is there: the widget came from a previous kernel.
    assert "belongs to a previous kernel: run this cell again" in text and "pip install" not in text
    assert "application/vnd.jupyter.widget-view+json" in w._repr_mimebundle_()
    # Running the same cell again retires the widget it showed before; other cells' widgets stay.
    chats().cell_id = "cell-1"
    first = shell.run_line_magic("chat", "widget")
    second = shell.run_line_magic("chat", "widget")
    assert isinstance(first, ChatWidget) and isinstance(second, ChatWidget)
    assert first.comm is None and first.send_button.comm is None and second.comm is not None
    chat(shell, "Hi.")
    assert first.shown == [] and len(second.shown) == 2 and len(w.shown) == 2
    for widget in (w, second):
        widget.close()


def test_a_widget_turn_survives_a_restart(tmp_path: Path) -> None:
    notebook = notebook_file(tmp_path, "widget.ipynb")
    k = KernelDriver(notebook, tmp_path)
    try:
        assert k.run("%load_ext lmchat").error is None
        run = k.run(
            "import lmchat_jupyter\n"
            "w = lmchat_jupyter.ChatWidget(temperature=0, max_tokens=12)\n"
            "w.input.value = 'My name is Ada.'\n"
            "w.send_button.click()\n"
            "print('returned', len(w.conversation.history.messages) <= 2)"
        )
        assert run.error is None and "returned True" in run.stdout, run.text
        assert k.value("w.wait(300)") is True
        shown = k.value("w.shown")
        assert [r for r, _ in shown] == ["user", "assistant"] and shown[0][1] == "My name is Ada."
    finally:
        k.shutdown()
    k = KernelDriver(notebook, tmp_path)
    try:
        assert "restored default: 2 messages" in k.run("%load_ext lmchat").stdout
        run = k.run("import lmchat_jupyter\nw = lmchat_jupyter.ChatWidget()\nw")
        assert run.error is None, run.text
        assert k.value("w.shown") == shown
        assert "saved" in k.value("w.status.value")
    finally:
        k.shutdown()


def test_a_notebook_history_is_evaluated_at_the_widgets_first_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metadata = {
        "format": 1,
        "conversations": {
            "default": {
                "id": "conv1",
                "messages": [
                    {"id": "m1", "role": "user", "content": "My name is Ada.", "cell_id": "c1"},
                    {"id": "m2", "role": "assistant", "content": "Nice to meet you, Ada!", "cell_id": "c1"},
                ],
            }
        },
    }
    notebook_file(tmp_path, "shared.ipynb", {"lmchat": metadata})
    monkeypatch.setenv("JPY_SESSION_NAME", str(tmp_path / "shared.ipynb"))
    monkeypatch.chdir(tmp_path)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "lmchat")
    try:
        store = chats().store
        w = ChatWidget()
        # Shown from the notebook's history; nothing evaluated by opening the widget.
        assert w.shown == [("user", "My name is Ada."), ("assistant", "Nice to meet you, Ada!")]
        assert "not evaluated yet" in w.status.value and "2 messages" in w.status.value
        assert store.conversations == {}
        type_and_send(w, "What is my name?")
        assert w.wait(300)
        conv = store.conversations["default"]
        assert conv.info.user_message_count == 2 and w.conversation is conv
        assert [role for role, _ in w.shown] == ["user", "assistant"] * 2
        assert "tok/s" in w.status.value
        w.close()
    finally:
        ip.run_line_magic("unload_ext", "lmchat")
