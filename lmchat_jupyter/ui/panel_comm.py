"""The chat panel's side of the ``lmchat`` comm: the conversation as the JupyterLab sidebar shows it.

The messages are defined in ``lmchat_jupyter/protocol/messages.schema.json``. The panel sends ``panel``
requests whose ``action`` is ``sync`` (send the state of conversation ``name``, and every change from
now on), ``send`` (``text``), ``stop``, ``regenerate``, ``edit`` (``id`` of a user message, ``text``:
the conversation goes back to just before that message and answers ``text``) or ``options``
(``temperature``, ``max_tokens``: how the panel's turns answer; by default as the conversation's last
``%%chat`` cell asked, see :attr:`KernelChats.turn_options`). The kernel sends
``panel_state`` (the whole conversation, on every change but a token), ``panel_stream`` (the answer so
far, at most every :data:`STREAM_SECONDS`) and ``panel_error``.

The panel's turns run on a background thread, as the chat widget's do, so that the kernel still
answers Stop while one generates. Every frontend sees every conversation's changes; each shows the
one it picked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..core.errors import LmchatError
from ..core.events import ConversationEvent
from ..core.history import ChatHistory
from ..core.results import GenerationOptions
from ..engine.conversation import Conversation
from ..notebook import kernel
from ..notebook import status as kernel_status
from ..notebook.replay import WIDGET_CELL_ID

__all__ = ["PanelChannel", "message_rows"]

log = logging.getLogger("lmchat")
#: Send the answer being generated at most this often (each message carries the whole answer so far).
STREAM_SECONDS = 0.05
#: Conversation events after which the panel gets the whole state again.
STATE_EVENTS = ("turn_started", "message_added", "rewound", "cleared", "restored", "model_changed")
MAX_TEXT_CHARS = 1_000_000
#: The sampling options the panel shows and sets, with the values it may set.
PANEL_OPTIONS: dict[str, tuple[type, float, float]] = {"temperature": (float, 0.0, 2.0), "max_tokens": (int, 1, 32768)}
#: The numbers a message's footer shows, and the types the panel takes them in.
_ROW_META: dict[str, tuple[type, ...]] = {
    "time": (int, float),
    "finish_reason": (str,),
    "tokens": (int,),
    "tokens_per_second": (int, float),
    "seconds": (int, float),
}

Send = Callable[[dict[str, Any]], None]


def message_rows(history: ChatHistory) -> list[dict[str, Any]]:
    """The history's messages (the system prompt left out) as the panel shows them."""
    rows = []
    for m in history:
        if m.role == "system":
            continue
        row: dict[str, Any] = {"id": m.id, "role": m.role, "content": m.content}
        for key, types in _ROW_META.items():
            value = m.meta.get(key)
            # A history from a notebook may hold anything there: the panel takes what the schema allows.
            if isinstance(value, bool) or not isinstance(value, types):
                continue
            if not isinstance(value, (int, float)) or value >= 0:  # no number of these is negative
                row[key] = value
        rows.append(row)
    return rows


class PanelChannel:
    """Answers the panel's requests and tells it about every change of every conversation."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._listening: dict[int, Callable[[], None]] = {}
        self._partial: dict[int, list[str]] = {}  # id(conversation) -> the answer being generated
        self._sent_at: dict[int, float] = {}
        self._panel_turns: set[str] = set()  # conversations answering a turn the panel started
        self._threads: list[threading.Thread] = []
        self._store: Any = None  # the store whose new conversations it follows

    # --- incoming -------------------------------------------------------------------------------

    def handle(self, data: dict[str, Any]) -> None:
        """One request from a panel; a bad one is answered with ``panel_error``, never raised."""
        action, name = data.get("action"), data.get("name")
        name = name if isinstance(name, str) and name else None
        try:
            if action == "sync":
                self.send_state(name)
            elif action == "send":
                self._start(name, "send", _text(data))
            elif action == "stop":
                self._existing(name).stop()
            elif action == "regenerate":
                self._start(name, "regenerate", "")
            elif action == "edit":
                self._start(name, "edit", _text(data), data.get("id"))
            elif action == "options":
                self._set_options(name, data)
            else:
                raise LmchatError(f"the panel asked for {action!r}, which this kernel's lmchat does not know")
        except (LmchatError, ValueError) as exc:
            self._error(name, str(exc))

    def _existing(self, name: str | None) -> Conversation:
        store = kernel.chats().store
        conv = store.conversations.get(name or store.active)
        if conv is None:
            raise LmchatError("this conversation has no messages yet")
        return conv

    def _set_options(self, name: str | None, data: dict[str, Any]) -> None:
        """The panel changed how its turns answer: kept until it changes them again or a ``%%chat`` cell runs."""
        state = kernel.chats()
        name = name or state.store.active
        chosen = {key: _option(key, data[key]) for key in PANEL_OPTIONS if key in data}
        state.turn_options[name] = {**state.turn_options.get(name, {}), **chosen}
        self.send_state(name)

    def _start(self, name: str | None, action: str, text: str, message_id: object = None) -> None:
        store = kernel.chats().store
        name = name or store.active
        conv = store.conversations.get(name)
        # Only an answer under way is refused: a save holding the turn lock for a moment is waited for.
        if name in self._panel_turns or (conv is not None and id(conv) in self._partial):
            raise LmchatError("an answer is being generated: wait for it or press Stop")
        if action == "edit":
            _user_index(conv.history if conv is not None else store.waiting(name), message_id)
        request = kernel_status.current_request()
        thread = threading.Thread(
            target=self._generate, args=(name, action, text, message_id, request), name="lmchat-panel", daemon=True
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _generate(self, name: str, action: str, text: str, message_id: object, request: dict[str, Any]) -> None:
        with kernel_status.generating(request):  # JupyterLab says "Busy" until the answer ends
            self._answer(name, action, text, message_id)

    def _answer(self, name: str, action: str, text: str, message_id: object) -> None:
        self._panel_turns.add(name)
        try:
            # The first message creates the conversation (loading the model) or evaluates its history.
            conv = kernel.chats().store.get(name)
            self.listen()
            if action == "edit":
                conv.rewind_to(_user_index(conv.history, message_id))
            options = kernel.chats().turn_options.get(name, {})
            turn = (
                conv.regenerate(**options)
                if action == "regenerate"
                else conv.stream(text, cell_id=WIDGET_CELL_ID, **options)
            )
            for _ in turn:
                pass
        except (LmchatError, ValueError) as exc:
            self._error(name, str(exc))
        except Exception as exc:  # on a thread nobody reads: the panel must still hear of it
            log.exception("lmchat: the panel's turn failed")
            self._error(name, f"the answer failed: {exc}")
        finally:
            self._panel_turns.discard(name)
            self.send_state(name)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the panel's turns in progress; False if one still runs after ``timeout``."""
        for thread in list(self._threads):
            thread.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    # --- outgoing -------------------------------------------------------------------------------

    def listen(self) -> None:
        """Follow every conversation of the store (new ones included, through the store's listeners)."""
        store = self._store = kernel.chats().store
        for name, conv in store.conversations.items():
            self._follow(name, conv)
        if self._adopted not in store.adopt_listeners:
            store.adopt_listeners.append(self._adopted)

    def close(self) -> None:
        for unsubscribe in self._listening.values():
            unsubscribe()
        self._listening.clear()
        if self._store is not None and self._adopted in self._store.adopt_listeners:
            self._store.adopt_listeners.remove(self._adopted)
        self._store = None

    def _adopted(self, name: str, conv: Conversation) -> None:
        self._follow(name, conv)
        self.send_state(name)

    def _follow(self, name: str, conv: Conversation) -> None:
        with self._lock:
            if id(conv) in self._listening:
                return
            self._listening[id(conv)] = conv.subscribe(lambda event: self._on_event(name, event))

    def _on_event(self, name: str, event: ConversationEvent) -> None:
        key = id(event.conversation)
        if event.kind == "token":
            partial = self._partial.setdefault(key, [])
            partial.append(event.text)
            now = time.monotonic()
            if now - self._sent_at.get(key, 0.0) >= STREAM_SECONDS:
                self._sent_at[key] = now
                self._send({"type": "panel_stream", "name": name, "text": "".join(partial)})
            return
        if event.kind == "turn_started":
            self._partial[key] = []
        elif event.kind in ("message_added", "rewound", "cleared"):
            self._partial.pop(key, None)
        if event.kind in STATE_EVENTS:
            self.send_state(name)

    def send_state(self, name: str | None, follow: bool = True) -> None:
        """The whole state of conversation ``name`` (default: the one ``%%chat`` uses), and every name.

        With ``follow`` every later change is sent too; without, this says only that lmchat is loaded
        (a kernel whose panel is closed sends nothing as it generates).
        """
        store = kernel.chats().store
        name = name or store.active
        conv = store.conversations.get(name)
        # A history not evaluated yet (the notebook's, a copied folder's) is shown as it is: it is
        # evaluated at its first message, not because the panel looked at it.
        waiting = store.waiting(name) if conv is None else None
        if conv is None and waiting is None and name in store.names():
            conv = store.get(name, create=False)  # saved, not restored yet: the panel asked for it
        if follow:
            self.listen()
        state: dict[str, Any] = {
            "type": "panel_state",
            "name": name,
            "names": sorted(set(store.names()) | {name, store.active}),
            "active": store.active,
            "messages": [],
            "generating": name in self._panel_turns,
            "panel_turn": name in self._panel_turns,
            "model": None,
            "waiting": waiting is not None,
        }
        if waiting is not None:
            state["messages"] = message_rows(waiting)
        chosen = GenerationOptions(**kernel.chats().turn_options.get(name, {}))
        if conv is not None:
            chosen = replace(conv.options, **kernel.chats().turn_options.get(name, {}))
        state["options"] = {"temperature": chosen.temperature, "max_tokens": chosen.max_tokens}
        if conv is not None:
            info = conv.info
            partial = self._partial.get(id(conv))
            state.update(
                messages=message_rows(conv.history),
                generating=partial is not None or name in self._panel_turns,
                partial="".join(partial) if partial is not None else None,
                model=conv.model.display_name,
                tokens=info.token_count,
                n_ctx=info.n_ctx if conv.model.context_known else None,  # None: the panel shows no size
            )
        self._send(state)

    def _error(self, name: str | None, text: str) -> None:
        self._send({"type": "panel_error", "name": name or kernel.chats().store.active, "text": text})


def _user_index(history: ChatHistory | None, message_id: object) -> int:
    """Where the user message ``message_id`` is in ``history``: the conversation goes back to there."""
    ids = [m.id for m in history] if history is not None else []
    if message_id not in ids or history is None or history[ids.index(message_id)].role != "user":
        raise LmchatError("that message is no longer in the conversation; send it as a new one")
    return ids.index(message_id)


def _option(key: str, value: object) -> float | int:
    """``value`` for option ``key`` as the panel may set it; ValueError, saying what it takes, otherwise."""
    kind, low, high = PANEL_OPTIONS[key]
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or number != number or not low <= number <= high or (kind is int and number != int(number)):
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{key.replace('_', ' ')} must be {what} from {low:g} to {high:g}; got {value!r}")
    return int(number) if kind is int else float(number)


def _text(data: dict[str, Any]) -> str:
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the message is empty; write something to send")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"the message is longer than {MAX_TEXT_CHARS:,} characters; send a shorter one")
    return text
