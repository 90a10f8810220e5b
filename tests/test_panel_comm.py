"""The chat panel's requests and updates on the kernel side, with the real model and real %%chat cells.

The panel's comm is replaced by a list that collects what the kernel sends; the requests are the
dicts the labextension sends. Everything the kernel sent is checked against the protocol's schema.
The browser side is in test_browser_panel.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from lmchat_jupyter import Conversation, ConversationEvent, current
from lmchat_jupyter.protocol import validate
from lmchat_jupyter.ui.panel_comm import PanelChannel

CHAT = "--temperature 0 --max-tokens 12"
LONG = "Write a long story about a dragon who learns to bake bread, with many details."


class Frontend:
    """What the kernel sent to the panel, and a way to send it requests."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.channel = PanelChannel(self.sent.append)

    def request(self, action: str, **extra: Any) -> None:
        self.channel.handle({"type": "panel", "action": action, **extra})

    def states(self, name: str = "default") -> list[dict[str, Any]]:
        return [m for m in self.sent if m["type"] == "panel_state" and m["name"] == name]

    def last_state(self, name: str = "default") -> dict[str, Any]:
        return self.states(name)[-1]

    def errors(self) -> list[str]:
        return [m["text"] for m in self.sent if m["type"] == "panel_error"]


@pytest.fixture
def frontend(shell: InteractiveShell) -> Iterator[Frontend]:
    f = Frontend()
    yield f
    f.channel.wait(120)
    f.channel.close()
    for message in f.sent:
        validate("PanelUpdate", message, closed=True)


def wait_for(check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def short_answers() -> Conversation:
    """The conversation, made now, answering briefly and always alike."""
    conv = current()
    conv.options = replace(conv.options, temperature=0.0, max_tokens=12)
    return conv


def test_sync_before_any_message_creates_nothing(frontend: Frontend) -> None:
    frontend.request("sync")
    state = frontend.last_state()
    assert state["messages"] == [] and state["model"] is None and state["generating"] is False
    assert state["names"] == ["default"]
    from lmchat_jupyter.notebook.kernel import chats

    assert chats().store.conversations == {}  # no model was loaded for a look


def test_send_streams_and_ends_with_the_answer_and_its_stats(frontend: Frontend) -> None:
    conv = short_answers()
    frontend.request("send", text="Hello! My name is Ada.")
    frontend.channel.wait(120)
    assert conv.history.user_message_count == 1
    user, answer = frontend.last_state()["messages"]
    assert user["role"] == "user" and user["content"] == "Hello! My name is Ada."
    assert answer["role"] == "assistant" and answer["content"] == conv.history[-1].content
    assert abs(user["time"] - time.time()) < 600 and answer["time"] >= user["time"]
    assert answer["tokens"] > 0 and answer["seconds"] > 0 and "tokens_per_second" in answer
    assert frontend.last_state()["generating"] is False and frontend.last_state()["model"]
    assert any(s["generating"] and s["panel_turn"] for s in frontend.states()), "no state said 'generating'"
    streams = [m["text"] for m in frontend.sent if m["type"] == "panel_stream"]
    assert streams and answer["content"].startswith(streams[-1])


def test_a_chat_cell_shows_in_the_panel(shell: InteractiveShell, frontend: Frontend) -> None:
    frontend.request("sync")
    shell.run_cell_magic("chat", CHAT, "What is the capital of France?")
    state = frontend.last_state()
    assert [m["content"] for m in state["messages"]][0] == "What is the capital of France?"
    assert state["messages"][1]["content"] == current().history[-1].content
    assert not state["generating"]


def test_stop_keeps_the_partial_answer_marked(frontend: Frontend) -> None:
    frontend.request("sync")
    seen = threading.Event()
    conv = current()
    conv.subscribe(lambda e: seen.set() if isinstance(e, ConversationEvent) and e.kind == "token" else None)
    frontend.request("send", text=LONG)
    assert seen.wait(120)
    frontend.request("stop")
    frontend.channel.wait(120)
    answer = frontend.last_state()["messages"][-1]
    assert answer["finish_reason"] == "stopped" and answer["content"]


def test_regenerate_replaces_the_last_answer(shell: InteractiveShell, frontend: Frontend) -> None:
    shell.run_cell_magic("chat", CHAT, "Say hello.")
    conv = current()
    first = conv.history[-1]
    short_answers()
    frontend.request("regenerate")
    frontend.channel.wait(120)
    messages = frontend.last_state()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[-1]["id"] != first.id and conv.history[-1].id == messages[-1]["id"]


def test_edit_rewinds_to_the_message_and_answers_the_new_text(shell: InteractiveShell, frontend: Frontend) -> None:
    shell.run_cell_magic("chat", CHAT, "My name is Ada.")
    shell.run_cell_magic("chat", CHAT, "What is my name?")
    conv = current()
    second = conv.history.messages[-2]
    short_answers()
    frontend.request("edit", id=second.id, text="What is two plus two?")
    frontend.channel.wait(120)
    contents = [m["content"] for m in frontend.last_state()["messages"]]
    assert contents[0] == "My name is Ada." and contents[2] == "What is two plus two?" and len(contents) == 4
    assert "What is my name?" not in contents


def test_bad_requests_say_what_to_do_and_change_nothing(shell: InteractiveShell, frontend: Frontend) -> None:
    shell.run_cell_magic("chat", CHAT, "Hi.")
    before = current().history.to_json()
    frontend.request("send", text="   ")
    frontend.request("edit", id="no-such-message", text="Hello")
    frontend.request("explode")
    errors = frontend.errors()
    assert len(errors) == 3
    assert "empty" in errors[0] and "no longer in the conversation" in errors[1] and "'explode'" in errors[2]
    assert current().history.to_json() == before


def test_a_second_conversation_is_listed_and_can_be_picked(shell: InteractiveShell, frontend: Frontend) -> None:
    frontend.request("sync")
    shell.run_cell_magic("chat", f"--name other {CHAT}", "Hi from the other chat.")
    assert frontend.last_state("other")["names"] == ["default", "other"]
    frontend.request("sync", name="other")
    assert frontend.last_state("other")["messages"][0]["content"] == "Hi from the other chat."


def test_the_notebooks_history_shows_before_it_is_evaluated(shell: InteractiveShell, frontend: Frontend) -> None:
    from lmchat_jupyter.ui.frontend import bridge

    messages = [
        {"id": "m1", "role": "user", "content": "My name is Ada."},
        {"id": "m2", "role": "assistant", "content": "Nice to meet you, Ada!"},
    ]
    conversations = {"default": {"id": "conv1", "model": {"spec": None}, "messages": messages}}
    bridge()._take_metadata({"format": 1, "conversations": conversations})
    frontend.request("sync")
    state = frontend.last_state()
    assert state["waiting"] is True and state["model"] is None
    assert [m["content"] for m in state["messages"]] == ["My name is Ada.", "Nice to meet you, Ada!"]
    from lmchat_jupyter.notebook.kernel import chats

    assert "default" not in chats().store.conversations  # looking did not evaluate it

    frontend.request("edit", id="m1", text="My name is Grace.")  # the first message evaluates it, then edits
    frontend.channel.wait(120)
    state = frontend.last_state()
    assert state["waiting"] is False and state["model"]
    assert [m["content"] for m in state["messages"]][0] == "My name is Grace." and len(state["messages"]) == 2


def test_panel_turns_answer_as_the_last_chat_cell_asked(shell: InteractiveShell, frontend: Frontend) -> None:
    frontend.request("sync")
    shell.run_cell_magic("chat", "--temperature 0 --max-tokens 8", "Say hello.")
    assert frontend.last_state()["options"] == {"temperature": 0.0, "max_tokens": 8}
    frontend.request("send", text=LONG)
    frontend.channel.wait(120)
    answer = frontend.last_state()["messages"][-1]
    assert answer["role"] == "assistant" and answer["tokens"] <= 8 and answer["finish_reason"] == "length"


def test_the_panel_changes_its_options_until_the_next_chat_cell(shell: InteractiveShell, frontend: Frontend) -> None:
    frontend.request("sync")
    shell.run_cell_magic("chat", "--temperature 0 --max-tokens 12", "Say hello.")
    frontend.request("options", max_tokens=5)
    assert frontend.last_state()["options"] == {"temperature": 0.0, "max_tokens": 5}
    frontend.request("send", text=LONG)
    frontend.channel.wait(120)
    assert frontend.last_state()["messages"][-1]["tokens"] <= 5
    frontend.request("regenerate")
    frontend.channel.wait(120)
    assert frontend.last_state()["messages"][-1]["tokens"] <= 5
    for bad in ({"max_tokens": 0}, {"max_tokens": "8"}, {"max_tokens": True}, {"max_tokens": 2.5}):
        frontend.request("options", **bad)
    for bad_t in ({"temperature": -1}, {"temperature": 3}, {"temperature": float("nan")}):
        frontend.request("options", **bad_t)
    assert len(frontend.errors()) == 7 and all("must be" in e for e in frontend.errors())
    assert frontend.last_state()["options"] == {"temperature": 0.0, "max_tokens": 5}
    shell.run_cell_magic("chat", "--temperature 0.5 --max-tokens 9", "Say hello again.")
    assert frontend.last_state()["options"] == {"temperature": 0.5, "max_tokens": 9}
