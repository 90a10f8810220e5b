"""What a frontend shows of a real kernel's status while lmchat works: busy, then idle when the work ends.

A frontend shows the last ``status`` message the kernel published on IOPub (JupyterLab skips those
answering a few message types, such as ``kernel_info_request``). The kernel runs through
jupyter_client as JupyterLab runs it; the control and comm messages are the ones JupyterLab sends.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from .kernel_driver import KernelDriver, notebook_file

#: Status messages JupyterLab does not show (jupyter_server's untracked message types that are requests).
UNTRACKED = {"comm_info_request", "kernel_info_request", "shutdown_request", "interrupt_request", "debug_request"}
LONG = "Write a long story about a dragon who learns to bake bread, with many details."


class StatusWatch:
    """The IOPub status messages of a kernel, read as JupyterLab's status bar reads them."""

    def __init__(self, driver: KernelDriver) -> None:
        self.driver = driver
        self.shown = "idle"
        self.seen: list[tuple[str, str]] = []  # (state, the parent's msg_type), in order

    def read(self, seconds: float) -> None:
        """Read what arrives during ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.driver.kc.get_iopub_msg(timeout=left)
            except Exception:  # queue.Empty: nothing more within the time
                return
            self._take(msg)

    def until(self, what: str, check: Any, timeout: float = 120) -> None:
        """Read until ``check(msg)`` holds for a message read."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; status messages: {self.seen[-20:]}")
            try:
                msg = self.driver.kc.get_iopub_msg(timeout=left)
            except Exception:
                continue
            self._take(msg)
            if check(msg):
                return

    def _take(self, msg: dict[str, Any]) -> None:
        if msg["msg_type"] != "status":
            return
        parent_type = msg["parent_header"].get("msg_type", "")
        state = msg["content"]["execution_state"]
        self.seen.append((state, parent_type))
        if parent_type not in UNTRACKED:
            self.shown = state


def is_status(state: str, parent_id: str | None = None, parent_type: str | None = None) -> Any:
    def check(msg: dict[str, Any]) -> bool:
        parent = msg["parent_header"]
        return bool(
            msg["msg_type"] == "status"
            and msg["content"]["execution_state"] == state
            and (parent_id is None or parent.get("msg_id") == parent_id)
            and (parent_type is None or parent.get("msg_type") == parent_type)
        )

    return check


@pytest.fixture
def driver(tmp_path: Path) -> Any:
    nb = notebook_file(tmp_path, "status.ipynb")
    d = KernelDriver(nb, tmp_path)
    try:
        yield d
    finally:
        d.shutdown()


def test_an_answer_on_a_thread_shows_busy_until_it_is_stopped(driver: KernelDriver, tmp_path: Path) -> None:
    assert driver.run("%load_ext lmchat").error is None
    watch = StatusWatch(driver)
    # The widget's Send starts the answer on a thread; the request that started it ends at once.
    cell = driver.send(
        "from lmchat_jupyter import ChatWidget\n"
        "w = ChatWidget(max_tokens=4000)\n"
        "first = __import__('threading').Event()\n"
        "w.conversation.subscribe(lambda e: e.kind == 'token' and first.set())\n"
        f"w.submit({LONG!r})\n"
        "first.wait(120)"
    )
    watch.until("the cell to end", is_status("idle", cell))
    watch.read(1.0)
    assert watch.shown == "busy", watch.seen[-6:]
    # A cell that runs and ends meanwhile leaves the kernel busy: the answer goes on.
    other = driver.send("1 + 1")
    watch.until("the second cell to end", is_status("idle", other))
    watch.read(0.5)
    assert watch.shown == "busy", watch.seen[-6:]
    assert driver.value("w.conversation.busy") is True  # the answer was still being generated
    watch.read(0.5)
    # Stopped: idle once the answer has ended (the comm-less stop is what the Stop button calls).
    stop = driver.send("w.stop(); w.wait(60)")
    watch.until("the stop cell to end", is_status("idle", stop))
    watch.read(1.0)
    assert watch.shown == "idle", watch.seen[-6:]


def test_a_subshell_created_during_a_cell_leaves_it_busy(driver: KernelDriver, tmp_path: Path) -> None:
    gate = tmp_path / "release"
    watch = StatusWatch(driver)
    # The comm opened by %load_ext makes JupyterLab create a subshell while the cell still runs.
    cell = driver.send(
        f"%load_ext lmchat\nimport pathlib, time\nwhile not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.02)"
    )
    watch.until("the cell to start", is_status("busy", cell))
    watch.until("lmchat to ask for the frontend", lambda m: m["msg_type"] == "comm_open")
    request = driver.kc.session.msg("create_subshell_request", {})
    driver.kc.control_channel.send(request)
    watch.until("the subshell request to end", is_status("idle", request["header"]["msg_id"]))
    watch.read(0.5)
    assert watch.shown == "busy", watch.seen[-6:]
    # JupyterLab then opens its comm on that subshell, which says hello while the cell still runs.
    subshell = driver.kc.get_control_msg(timeout=30)["content"]["subshell_id"]
    hello = {"type": "hello", "format": 1, "notebook_path": "status.ipynb", "metadata": None}
    comm_open = driver.kc.session.msg("comm_open", {"comm_id": "status-test", "target_name": "lmchat", "data": hello})
    comm_open["header"]["subshell_id"] = subshell
    driver.kc.shell_channel.send(comm_open)
    watch.until("the hello to be handled", is_status("idle", comm_open["header"]["msg_id"]))
    watch.read(0.5)
    assert watch.shown == "busy", watch.seen[-6:]
    gate.touch()
    watch.until("the cell to end", is_status("idle", cell))
    watch.read(0.5)
    assert watch.shown == "idle", watch.seen[-6:]


def test_a_panel_answer_shows_busy_until_it_ends(driver: KernelDriver) -> None:
    setup = "import dataclasses, lmchat_jupyter\nc = lmchat_jupyter.current()\n"
    setup += "c.options = dataclasses.replace(c.options, max_tokens=4000)"
    assert driver.run("%load_ext lmchat").error is None
    assert driver.run(setup).error is None
    watch = StatusWatch(driver)

    def comm(msg_type: str, content: dict[str, Any]) -> str:
        msg = driver.kc.session.msg(msg_type, {"comm_id": "panel-test", **content})
        driver.kc.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    hello = {"type": "hello", "format": 1, "notebook_path": "status.ipynb", "metadata": None}
    watch.until("the hello", is_status("idle", comm("comm_open", {"target_name": "lmchat", "data": hello})))
    send = comm("comm_msg", {"data": {"type": "panel", "action": "send", "text": LONG}})
    watch.until("the panel's request to end", is_status("idle", send))
    watch.until("the answer to stream", lambda m: m.get("content", {}).get("data", {}).get("type") == "panel_stream")
    watch.read(0.5)
    assert watch.shown == "busy", watch.seen[-6:]
    stop = comm("comm_msg", {"data": {"type": "panel", "action": "stop"}})
    watch.until("the stop request to end", is_status("idle", stop))
    watch.until("the stopped answer", lambda m: m.get("content", {}).get("data", {}).get("type") == "panel_state")
    watch.read(1.0)
    assert watch.shown == "idle", watch.seen[-6:]


def test_an_answer_that_fails_leaves_the_kernel_idle(driver: KernelDriver) -> None:
    assert driver.run("%load_ext lmchat").error is None
    watch = StatusWatch(driver)
    # Longer than the model's context: the turn fails on its thread, the widget says why.
    cell = driver.send(
        "from lmchat_jupyter import ChatWidget\nw = ChatWidget()\nw.submit('bread ' * 20000)\nw.wait(120)"
    )
    watch.until("the cell to end", is_status("idle", cell))
    watch.read(1.0)
    assert watch.shown == "idle", watch.seen[-6:]
    assert "error" in driver.value("w.status.value")


# --- the keeper's reader, without a kernel ------------------------------------------------------------


def test_only_status_messages_signed_with_the_kernels_key_are_read() -> None:
    from jupyter_client.session import Session

    from lmchat_jupyter.notebook.status import _parse_status

    kernel, reader, forger = Session(key=b"kernel key"), Session(key=b"kernel key"), Session(key=b"another key")
    topic = b"kernel.k.status"
    parent = kernel.msg("execute_request", {"code": ""})["header"]
    genuine = kernel.msg("status", {"execution_state": "idle"}, parent=parent)
    frames = [topic, *kernel.serialize(genuine)]
    read = _parse_status(frames, reader)
    assert read is not None and read[:2] == ("idle", genuine["header"]["msg_id"])
    assert read[2]["msg_id"] == parent["msg_id"]
    assert _parse_status(frames, reader) is None  # the same signature again: a replay
    forged = forger.msg("status", {"execution_state": "idle"}, parent=parent)
    assert _parse_status([topic, *forger.serialize(forged)], reader) is None
    # A genuine message's signature over other content (the state changed in transit).
    busy = kernel.serialize(kernel.msg("status", {"execution_state": "busy"}))
    idle = kernel.serialize(kernel.msg("status", {"execution_state": "idle"}))
    assert _parse_status([topic, *busy[:5], idle[5], *busy[6:]], reader) is None
    unsigned = Session(key=b"").serialize(Session(key=b"").msg("status", {"execution_state": "idle"}))
    assert _parse_status([topic, *unsigned], reader) is None
    assert _parse_status([topic, b"no message"], reader) is None


class RecordingKeeper:
    """A :class:`StatusKeeper` on a socket the test publishes to, recording the status messages it takes."""

    def __init__(self, key: bytes) -> None:
        import queue

        import zmq
        from jupyter_client.session import Session

        from lmchat_jupyter.notebook.status import StatusKeeper

        self.publisher = zmq.Context.instance().socket(zmq.PUB)
        port = self.publisher.bind_to_random_port("tcp://127.0.0.1")
        self.taken: queue.Queue[tuple[str, str]] = queue.Queue()
        taken = self.taken

        class Keeper(StatusKeeper):
            def on_status(self, state: str, msg_id: str, parent: dict[str, Any]) -> None:
                taken.put((state, msg_id))

        kernel = type("Kernel", (), {"ident": "k", "session": Session(key=key), "iopub_socket": None})()
        self.keeper = Keeper(kernel, f"tcp://127.0.0.1:{port}", Session(key=key))
        self.keeper.start()

    def publish(self, session: Any, state: str) -> str:
        msg = session.msg("status", {"execution_state": state})
        session.send(self.publisher, msg, ident=b"kernel.k.status")
        return str(msg["header"]["msg_id"])

    def close(self) -> None:
        self.keeper.stop()
        self.publisher.close(0)


def test_a_status_message_with_a_wrong_signature_is_ignored() -> None:
    import queue

    from jupyter_client.session import Session

    kernel, forger = Session(key=b"kernel key"), Session(key=b"another key")
    reader = RecordingKeeper(b"kernel key")
    try:
        # Until the subscription is up messages are lost: publish a forged and a genuine one until one is taken.
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the keeper never read a message"
            reader.publish(forger, "idle")
            genuine = reader.publish(kernel, "busy")
            try:
                first = reader.taken.get(timeout=0.2)
                break
            except queue.Empty:
                continue
        assert first == ("busy", genuine)
        reader.publish(forger, "idle")
        genuine = reader.publish(kernel, "idle")
        assert reader.taken.get(timeout=10) == ("idle", genuine)
        time.sleep(0.3)
        assert reader.taken.empty()
    finally:
        reader.close()
