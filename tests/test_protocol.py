"""The kernel↔labextension protocol: every message the kernel sends matches lmchat_jupyter/protocol/messages.schema.json.

Checked closed: a property the schema does not name fails too. The extension's side (its types generated from
the schema, its check of what arrives) is tested by ``jlpm protocol:check`` in labextension/.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from lmchat_jupyter.protocol import (
    CHAT_WIDGET_MIME,
    FORMAT,
    FRONTEND_TARGET,
    KERNEL_TARGET,
    METADATA_KEY,
    SCHEMA,
    validate,
    validate_comm,
)

from .kernel_driver import KernelDriver, notebook_file

jsonschema = pytest.importorskip("jsonschema")

CHAT = "--temperature 0 --max-tokens 8"
Sent = tuple[str, str, dict[str, Any]]  # target, "open" or "message", data


def kernel_message_types() -> set[str]:
    """The ``type`` of every message the schema lets the kernel send."""
    found: set[str] = set()

    def walk(name: str) -> None:
        definition = SCHEMA["$defs"][name]
        for branch in definition.get("oneOf", []):
            walk(branch["$ref"].rsplit("/", 1)[-1])
        if "properties" in definition:
            found.add(definition["properties"]["type"]["const"])

    walk("KernelMessage")
    return found


def check_sent(sent: list[Sent]) -> set[str]:
    """Check each message against the schema, as sent by the kernel on its target; the types seen."""
    for target, event, data in sent:
        try:
            validate_comm(target, "kernel", event, data, closed=True)
        except jsonschema.ValidationError:
            # Say which definition it breaks, and how: the envelope's error names only the oneOf.
            validate("RequestHello" if event == "open" else "KernelMessage", data, closed=True)
            raise
    return {data["type"] for _target, _event, data in sent}


# --- the schema and its constants ----------------------------------------------------------------


def test_the_schema_is_json_schema_and_its_constants_are_the_ones_in_use() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    from lmchat_jupyter.storage import metadata
    from lmchat_jupyter.ui import frontend

    assert (KERNEL_TARGET, FRONTEND_TARGET, FORMAT) == ("lmchat", "lmchat.frontend", 1)
    assert (metadata.METADATA_KEY, metadata.METADATA_FORMAT) == (METADATA_KEY, FORMAT)
    assert frontend.KERNEL_TARGET is KERNEL_TARGET and frontend.FRONTEND_TARGET is FRONTEND_TARGET
    assert CHAT_WIDGET_MIME.startswith("application/") and CHAT_WIDGET_MIME.endswith("+json")  # nbformat: JSON


def spoiled(definition: dict[str, Any], example: Any) -> Iterator[tuple[str, Any]]:
    """The example with one thing wrong (the same cases as labextension/scripts/protocol.mjs)."""
    if isinstance(definition.get("minLength"), int):
        yield "too short", ""
    for key in definition.get("required", []):
        yield f"without {key}", {k: v for k, v in example.items() if k != key}
    for key, prop in definition.get("properties", {}).items():
        if isinstance(prop, dict):
            if "const" in prop or "$ref" in prop:
                yield f"{key}: an object", {**example, key: {"wrong": True}}
            if prop.get("type") == "string":
                yield f"{key}: a number", {**example, key: 7}
            if "enum" in prop:
                yield f"{key}: none of its values", {**example, key: "none"}
            if isinstance(prop.get("minimum"), int):
                yield f"{key}: under its minimum", {**example, key: prop["minimum"] - 1}
            if prop.get("type") == "array":
                yield f"{key}: not an array", {**example, key: {}}
    yield "a list", [example]
    yield "null", None


@pytest.mark.parametrize("name", sorted(n for n, d in SCHEMA["$defs"].items() if "examples" in d))
def test_examples_are_valid_and_each_spoiled_one_is_not(name: str) -> None:
    definition = SCHEMA["$defs"][name]
    for example in definition["examples"]:
        validate(name, example, closed=True)
        for change, wrong in spoiled(definition, example):
            with pytest.raises(jsonschema.ValidationError):
                validate(name, wrong)
                pytest.fail(f"{name}: the example {change} is accepted")


def test_receivers_ignore_what_they_do_not_know_but_senders_tests_do_not() -> None:
    newer = {"type": "panel_stream", "name": "default", "text": "Hel", "tokens": 2}
    validate("KernelMessage", newer)  # what a frontend receiving it accepts
    with pytest.raises(jsonschema.ValidationError):
        validate("KernelMessage", newer, closed=True)
    with pytest.raises(KeyError, match="defines no 'Nothing'"):
        validate("Nothing", {})


# --- what the kernel sends, in this process --------------------------------------------------------


class FakeComm:
    """A comm whose messages are collected, as the labextension would receive them."""

    def __init__(self, target: str, sent: list[Sent]) -> None:
        self.target = target
        self.sent = sent
        self.on_message: Any = None

    def on_msg(self, callback: Any) -> None:
        self.on_message = callback

    def on_close(self, callback: Any) -> None:
        pass

    def send(self, data: dict[str, Any]) -> None:
        self.sent.append((self.target, "message", copy.deepcopy(data)))

    def close(self) -> None:
        pass

    def receive(self, data: dict[str, Any]) -> None:
        """A message from the extension: it must be one the schema allows too."""
        validate_comm(self.target, "frontend", "message", data, closed=True)
        self.on_message({"content": {"data": data}})


def hello(metadata: object = None) -> dict[str, Any]:
    return {"type": "hello", "format": FORMAT, "notebook_path": "notes.ipynb", "metadata": metadata}


def test_every_message_the_kernel_sends_in_a_session(shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmchat_jupyter.ui.frontend import bridge

    sent: list[Sent] = []

    def create_comm(target_name: str, data: dict[str, Any]) -> FakeComm:
        sent.append((target_name, "open", copy.deepcopy(data)))
        return FakeComm(target_name, sent)

    monkeypatch.setattr("comm.create_comm", create_comm)
    b = bridge()
    b.ask_frontend()  # lmchat loaded after the notebook opened: the kernel asks for a hello
    late = b.comms[-1]
    late.receive(hello())
    early = FakeComm(KERNEL_TARGET, sent)
    validate_comm(KERNEL_TARGET, "frontend", "open", hello(), closed=True)
    b.on_open(early, {"content": {"data": hello()}})

    early.receive({"type": "panel", "action": "sync"})
    shell.run_cell_magic("chat", CHAT, "My name is Ada.")
    early.receive({"type": "panel", "action": "send", "text": "   "})  # refused: panel_error
    options = {"type": "panel", "action": "options", "name": "default", "max_tokens": 6}
    validate_comm(KERNEL_TARGET, "frontend", "message", options, closed=True)
    early.receive(options)
    early.receive({"type": "panel", "action": "send", "name": "default", "text": "What is my name?"})
    b.panel.wait(120)
    for embed in ("metadata-only", "off", "full"):
        shell.run_line_magic("chat", f"config --embed {embed}")
    early.receive({"type": "path", "notebook_path": "renamed.ipynb"})
    # A notebook carrying a conversation not evaluated yet: the panel shows it as it waits.
    waiting = {"id": "c2", "model": {"spec": None}, "messages": [{"id": "m1", "role": "user", "content": "Hi."}]}
    late.receive(hello({"format": FORMAT, "conversations": {"notes": waiting}}))
    late.receive({"type": "panel", "action": "sync", "name": "notes"})
    shell.run_line_magic("chat", "strip")
    b.panel.wait(120)

    seen = check_sent(sent)
    assert seen == kernel_message_types(), f"not exercised: {kernel_message_types() - seen}"
    assert {target for target, _event, _data in sent} == {KERNEL_TARGET, FRONTEND_TARGET}
    values = [data["value"] for _t, _e, data in sent if data["type"] == "metadata"]
    assert {v.get("embed", "full") for v in values} == {"full", "metadata-only", "off"}
    states = [data for _t, _e, data in sent if data["type"] == "panel_state"]
    assert any(s["waiting"] and s["name"] == "notes" for s in states)
    assert any(s["generating"] and s["panel_turn"] for s in states)
    assert any(s.get("options") == {"temperature": 0.0, "max_tokens": 6} for s in states)


def test_panel_rows_take_only_the_meta_values_the_schema_allows() -> None:
    from lmchat_jupyter.core.history import ChatHistory, Message
    from lmchat_jupyter.ui.panel_comm import message_rows

    odd = {"time": "yesterday", "tokens": True, "seconds": None, "finish_reason": 3, "tokens_per_second": 12.5}
    history = ChatHistory([Message("user", "Hi.", meta=odd), Message("assistant", "Hello!", meta={"tokens": -1})])
    rows = message_rows(history)
    for row in rows:
        validate("PanelMessage", row, closed=True)
    assert rows[0] == {"id": rows[0]["id"], "role": "user", "content": "Hi.", "tokens_per_second": 12.5}
    assert "tokens" not in rows[1]


# --- what a real kernel sends on the wire ------------------------------------------------------------


def exchange(k: KernelDriver, msg: dict[str, Any], timeout: float = 300) -> list[dict[str, Any]]:
    """Send ``msg`` on the shell channel; the iopub messages it caused, until the kernel is idle again."""
    k.kc.shell_channel.send(msg)
    parent = msg["header"]["msg_id"]
    caused: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        reply = k.kc.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") != parent:
            continue
        if reply["msg_type"] == "status" and reply["content"]["execution_state"] == "idle":
            return caused
        caused.append(reply)


def execute(k: KernelDriver, code: str) -> dict[str, Any]:
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
    return dict(k.kc.session.msg("execute_request", content, metadata={"cellId": f"cell-{uuid.uuid4().hex[:8]}"}))


def test_a_real_kernel_speaks_the_protocol(tmp_path: Path) -> None:
    k = KernelDriver(notebook_file(tmp_path, "wire.ipynb"), tmp_path)
    targets: dict[str, str] = {}  # comm id -> target, for lmchat's comms (not the widgets')
    sent: list[Sent] = []
    markers: list[object] = []

    def collect(replies: list[dict[str, Any]]) -> None:
        for reply in replies:
            kind, content = reply["msg_type"], reply["content"]
            if kind == "comm_open" and content["target_name"] in (KERNEL_TARGET, FRONTEND_TARGET):
                targets[content["comm_id"]] = content["target_name"]
                sent.append((content["target_name"], "open", content["data"]))
            elif kind == "comm_msg" and content["comm_id"] in targets:
                sent.append((targets[content["comm_id"]], "message", content["data"]))
            elif kind in ("display_data", "execute_result") and CHAT_WIDGET_MIME in content["data"]:
                markers.append(content["data"][CHAT_WIDGET_MIME])
            assert kind != "error", content

    try:
        collect(exchange(k, execute(k, "%load_ext lmchat")))
        comm_id = uuid.uuid4().hex
        targets[comm_id] = KERNEL_TARGET
        opening = hello()
        validate_comm(KERNEL_TARGET, "frontend", "open", opening, closed=True)
        open_msg = {"comm_id": comm_id, "target_name": KERNEL_TARGET, "data": opening}
        collect(exchange(k, dict(k.kc.session.msg("comm_open", open_msg))))
        sync = {"type": "panel", "action": "sync"}
        collect(exchange(k, dict(k.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": sync}))))
        collect(exchange(k, execute(k, f"%%chat {CHAT}\nMy name is Ada.")))
        collect(exchange(k, execute(k, "%chat widget")))
        collect(exchange(k, execute(k, "%chat strip")))
    finally:
        k.shutdown()
    seen = check_sent(sent)
    assert {"request_hello", "metadata", "strip", "panel_state", "panel_stream"} <= seen, seen
    assert markers, "the chat widget's output carries no marker"
    for marker in markers:
        validate("ChatWidgetMarker", marker, closed=True)
