"""The kernel's busy/idle status as frontends show it, kept "busy" while lmchat or a cell still works.

JupyterLab, Notebook 7 and VS Code show the kernel busy or idle from the kernel's IOPub ``status``
messages, whatever request they answer. Two things make them say "Idle" while work goes on:

- the chat widget's and the chat panel's answers are generated on a thread (so that the kernel still
  answers Stop): the request that started one (a comm message) ends with ``idle`` at once;
- a comm opened during a running cell (``%load_ext lmchat``, a progress bar, a widget) makes JupyterLab
  create a subshell for it: the kernel publishes ``idle`` for that control request, and for each
  comm message handled on the subshell, while the cell still runs.

:class:`StatusKeeper` reads the kernel's own status messages (a SUB socket on its IOPub port, status
topic only: the protocol, no kernel internals; a message not signed with the kernel's key is dropped)
and answers each ``idle`` with ``busy`` while a cell runs (the cell's ``execute_request`` as parent) or
an answer is generated (the request that started it).
When the last answer ends and no cell runs it publishes ``idle``; a ``busy`` of its own that arrives
after its reason ended is followed by ``idle``. Its ``idle`` messages have no parent, so that no
frontend takes one for the end of a request (a cell's, a comm message's) that may still be under
way. A kernel without IOPub (a plain IPython shell, tests without a kernel) gets no keeper:
:func:`generating` then does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jupyter_client.session import Session

__all__ = ["StatusKeeper", "start", "stop", "generating", "current_request"]

log = logging.getLogger("lmchat")
#: How long the reader waits for a message before it looks whether it should stop.
POLL_MS = 250

Header = dict[str, Any]


class StatusKeeper:
    """Answers the kernel's ``idle`` with ``busy`` while a cell runs or lmchat generates.

    ``session`` reads the messages at ``address`` (the kernel's IOPub): it holds the kernel's key and
    signature scheme, and a session of its own keeps the signatures it has seen apart from the kernel's.
    """

    def __init__(self, kernel: Any, address: str, session: Session) -> None:
        self._kernel = kernel
        self._address = address
        self._session = session
        self._topic = f"kernel.{kernel.ident}.status".encode()
        self._lock = threading.Lock()
        self._cell: Header | None = None  # the execute_request running on the main shell
        self._turns: dict[int, Header] = {}  # answers being generated -> the request that started each
        self._next_turn = 0
        self._own: set[str] = set()  # msg_ids of the status messages published here, until read back
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._read, name="lmchat-status", daemon=True)

    # --- what keeps the kernel busy -------------------------------------------------------------

    def start(self, running_cell: Header | None = None) -> None:
        """Start reading; ``running_cell``: the execute_request running now (``%load_ext`` in a cell)."""
        self._cell = running_cell or None
        self._thread.start()
        self._connected.wait(0.3)  # a comm opened right after must not slip past an unconnected reader

    def stop(self) -> None:
        """Stop reading; an answer still generating is reported idle (nobody will end it here)."""
        with self._lock:
            ending = self._turns and self._cell is None
            self._turns.clear()
        if ending:
            self._publish("idle")
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(2)

    @contextlib.contextmanager
    def generating(self, parent: Header | None = None) -> Iterator[None]:
        """Report the kernel busy while the block runs (an answer on a thread); ``parent``: its request."""
        parent = parent or {}
        with self._lock:
            turn = self._next_turn
            self._next_turn += 1
            self._turns[turn] = parent
        self._publish("busy", parent)
        try:
            yield
        finally:
            with self._lock:
                self._turns.pop(turn, None)
                done = not self._turns and self._cell is None
            if done:
                self._publish("idle")

    # --- the kernel's status messages -----------------------------------------------------------

    def _reason(self) -> Header | None:
        """The request the kernel is busy with in lmchat's view (called with the lock held)."""
        if self._cell is not None:
            return self._cell
        return next(reversed(self._turns.values()), None) if self._turns else None

    def on_status(self, state: str, msg_id: str, parent: Header) -> None:
        """One status message read back from IOPub (the kernel's or one of ours)."""
        ours = msg_id in self._own
        self._own.discard(msg_id)
        with self._lock:
            request = parent.get("msg_id")
            on_main_shell = parent.get("msg_type") == "execute_request" and not parent.get("subshell_id")
            if not ours and on_main_shell and state == "busy":
                self._cell = parent
            elif self._cell is not None and state == "idle" and request == self._cell.get("msg_id"):
                self._cell = None
            reason = self._reason()
        if state == "idle" and reason is not None:
            self._publish("busy", reason)
        elif state == "busy" and ours and reason is None:
            self._publish("idle")  # published as its reason ended: take it back

    def _publish(self, state: str, parent: Header | None = None) -> None:
        """Publish ``state``; an ``idle`` has no parent: a frontend that waits for its request's idle (a
        cell's outputs, a comm message's) must not take it for the kernel's, which may still be to come."""
        session = self._kernel.session
        try:
            msg = session.msg("status", {"execution_state": state}, parent=parent)
            self._own.add(msg["header"]["msg_id"])  # before it is sent: the reader may see it at once
            session.send(self._kernel.iopub_socket, msg, ident=self._topic)
        except Exception:  # the kernel is shutting down: nothing to tell
            log.debug("lmchat: could not publish the kernel's status", exc_info=True)

    def _read(self) -> None:
        import zmq

        socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SUBSCRIBE, self._topic)
            socket.connect(self._address)
            poller = zmq.Poller()
            poller.register(socket, zmq.POLLIN)
            while not self._stopping.is_set():
                if not poller.poll(POLL_MS):
                    continue
                frames = socket.recv_multipart()
                status = _parse_status(frames, self._session)
                if status is None:
                    self._connected.set()  # the kernel's welcome for this subscription
                    continue
                self._connected.set()
                self.on_status(*status)
        except Exception:
            log.exception("lmchat: reading the kernel's status stopped")
        finally:
            self._connected.set()
            socket.close(0)


def _parse_status(frames: list[bytes], session: Session) -> tuple[str, str, Header] | None:
    """``(execution_state, msg_id, parent_header)`` of a status message signed with ``session``'s key; None
    for anything else (another message, a wrong or repeated signature, frames that are no message)."""
    try:
        _topic, parts = session.feed_identities(frames)
        msg = session.deserialize(parts)
    except Exception:  # ValueError (signature, no delimiter), TypeError (too few frames), a bad JSON part
        return None
    header, parent, content = msg.get("header"), msg.get("parent_header"), msg.get("content")
    if not isinstance(header, dict) or header.get("msg_type") != "status":
        return None
    state = content.get("execution_state") if isinstance(content, dict) else None
    if not isinstance(state, str):
        return None
    return state, str(header.get("msg_id", "")), parent if isinstance(parent, dict) else {}


def _iopub() -> tuple[str, Session] | None:
    """The kernel's IOPub address and a session that checks its signatures; None without an IOPub port."""
    from ipykernel.connect import get_connection_info
    from jupyter_client.session import Session

    info = get_connection_info(unpack=True)
    assert isinstance(info, dict)
    ip, port = info.get("ip") or "127.0.0.1", info.get("iopub_port")
    if not port:
        return None
    if info.get("transport", "tcp") == "ipc":
        address = f"ipc://{ip}-{port}"
    else:
        address = f"tcp://{'127.0.0.1' if ip in ('0.0.0.0', '*', '') else ip}:{port}"
    scheme = info.get("signature_scheme") or "hmac-sha256"
    return address, Session(key=info.get("key") or b"", signature_scheme=scheme)


_KEEPER: StatusKeeper | None = None
_UNAVAILABLE = False  # this kernel's IOPub cannot be read (no connection file): do not look again
_START_LOCK = threading.Lock()


def _kernel() -> Any:
    try:
        from ipykernel.kernelbase import Kernel
    except ImportError:  # not in a kernel
        return None
    kernel = Kernel.instance() if Kernel.initialized() else None
    return kernel if getattr(kernel, "iopub_socket", None) is not None else None


def current_request() -> Header:
    """The request being handled on this thread (a comm message, a cell): the parent of its answer's status."""
    kernel = _kernel()
    try:
        parent = kernel.get_parent() if kernel is not None else None
    except Exception:
        return {}
    header = parent.get("header") if isinstance(parent, dict) else None
    return header if isinstance(header, dict) else {}


def start() -> StatusKeeper | None:
    """The kernel's keeper, started on first use; None outside a kernel with IOPub.

    Called in a cell (``%load_ext``, a widget being made), the keeper knows that this cell runs.
    """
    global _KEEPER, _UNAVAILABLE
    with _START_LOCK:
        if _KEEPER is not None or _UNAVAILABLE:
            return _KEEPER
        kernel = _kernel()
        if kernel is None:
            return None
        try:
            iopub = _iopub()
        except Exception:
            log.debug("lmchat: no connection file: the kernel's status stays as it is", exc_info=True)
            iopub = None
        if iopub is None:
            _UNAVAILABLE = True
            return None
        keeper = StatusKeeper(kernel, *iopub)
        # Started from a cell (``%load_ext``): that cell still runs, on the main thread.
        request = current_request() if threading.current_thread() is threading.main_thread() else {}
        keeper.start(request if request.get("msg_type") == "execute_request" else None)
        _KEEPER = keeper
        return keeper


def stop() -> None:
    """Stop the kernel's keeper (``%unload_ext``); the next :func:`start` makes a new one."""
    global _KEEPER
    with _START_LOCK:
        keeper, _KEEPER = _KEEPER, None
    if keeper is not None:
        keeper.stop()


@contextlib.contextmanager
def generating(parent: Header | None = None) -> Iterator[None]:
    """Around an answer generated on a thread: frontends show the kernel busy until it ends."""
    keeper = start()
    if keeper is None:
        yield
        return
    with keeper.generating(parent):
        yield
