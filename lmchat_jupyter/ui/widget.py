"""ChatWidget: a chat in the notebook's output area, on the same conversation as ``%%chat``.

The widget listens to its conversation's events, so turns from ``%%chat`` cells stream into it and
rewinds, clears and restores show at once. Its own turns are generated on a background thread (the
kernel stays responsive); the conversation's turn lock keeps one generation at a time.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import ipywidgets as W

from ..core.errors import LmchatError
from ..core.events import ConversationEvent
from ..core.history import ChatHistory
from ..engine.conversation import Conversation
from ..notebook import kernel
from ..notebook import status as kernel_status
from ..notebook.replay import WIDGET_CELL_ID
from ..storage.reconcile import length_note
from ._widget_status import status_line
from .views import bubble, enter_sends, show, widget_marker

__all__ = ["ChatWidget"]

#: Redraw a streaming answer at most this often (each redraw sends the whole answer so far).
REFRESH_SECONDS = 0.05
#: What shows where the widget cannot: in an output saved from a previous kernel (its widget died with
#: that kernel) or in a frontend without ipywidgets.
PLAIN = (
    "Chat widget on conversation {name!r} ({count} messages). If you read this instead of the chat, the "
    "widget belongs to a previous kernel: run this cell again. (Widgets need JupyterLab 4 or Notebook 7 with "
    "ipywidgets>=8.) %%chat cells and `%chat history` use the same conversation."
)
#: The cell id of the widget's turns. Where cells have ids, ``%%chat`` finds its turns by them
#: (replay.decide), so a widget turn, which matches no cell, is never taken for a cell's turn.
#: The widget each notebook cell made last: running the cell again retires the old one.
_BY_CELL: dict[str, ChatWidget] = {}


class ChatWidget(W.VBox):  # type: ignore[misc]
    """The kernel's conversation ``name`` (default: the one ``%%chat`` uses) as a chat.

    ``options`` are generation options for the widget's turns (``temperature``, ``max_tokens``, ...).
    """

    def __init__(self, name: str | None = None, **options: Any) -> None:
        kernel_status.start()  # here, in the cell that shows the widget: it knows that the cell runs
        self._state = kernel.chats()
        self._store = self._state.store
        self.name = name or self._store.active
        self.options = options
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._bubbles: list[tuple[str, str, str, W.Output, W.VBox]] = []  # message id, role, text shown, views
        self._stream: list[str] | None = None  # the answer being generated
        self._stream_views: tuple[W.Output, W.VBox] | None = None
        self._shown_at = 0.0
        self._note = ""
        self._unsubscribe: Any = None
        self._conv: Conversation
        #: The history shown while the conversation waits for its first message to be evaluated.
        self._waiting: ChatHistory | None = None
        self.picker = W.Dropdown(description="Chat", layout=W.Layout(width="max-content"))
        self.messages = W.VBox(layout=W.Layout(flex="0 0 auto"))  # never squeezed: the box around it scrolls
        # column-reverse keeps the view scrolled to the newest message as messages arrive.
        scroller = W.Box(
            [self.messages], layout=W.Layout(flex_flow="column-reverse", max_height="32em", overflow_y="auto")
        )
        self.input = W.Textarea(
            placeholder="Message — Enter sends, Shift+Enter starts a new line",
            continuous_update=False,
            layout=W.Layout(width="100%", height="4.5em"),
        )
        self.input.add_class("lmchat-input")
        self.send_button = W.Button(description="Send", button_style="primary", icon="paper-plane")
        self.send_button.add_class("lmchat-send")
        self.stop_button = W.Button(description="Stop", icon="stop", disabled=True)
        self.clear_button = W.Button(description="Clear", icon="trash")
        yes = W.Button(description="Yes, clear it", button_style="danger")
        no = W.Button(description="Cancel")
        self.confirm = W.HBox([W.Label("Forget every message of this conversation?"), yes, no])
        self.confirm.layout.display = "none"
        self.status = W.Label()
        self.status.add_class("lmchat-status")
        buttons = W.HBox([self.send_button, self.stop_button, self.clear_button])
        super().__init__([self.picker, scroller, self.input, buttons, self.confirm, self.status, enter_sends()])
        self.add_class("lmchat-chat")
        self.send_button.on_click(lambda _b: self.submit())
        self.stop_button.on_click(lambda _b: self.stop())
        self.clear_button.on_click(lambda _b: setattr(self.confirm.layout, "display", "flex"))
        yes.on_click(lambda _b: self.clear())
        no.on_click(lambda _b: setattr(self.confirm.layout, "display", "none"))
        self.picker.observe(self._picked, "value")
        self._open(self.name)
        self._store.adopt_listeners.append(self._adopted)
        cell = self._state.cell_id
        if cell is not None:
            # A widget shown again by the same cell replaces the one there; closed, it stops listening.
            old = _BY_CELL.pop(cell, None)
            if old is not None:
                old.close()
            _BY_CELL[cell] = self

    # --- what it shows --------------------------------------------------------------------------

    @property
    def conversation(self) -> Conversation:
        if self._waiting is not None:
            self._attach(self._store.get(self.name))
        return self._conv

    @property
    def shown(self) -> list[tuple[str, str]]:
        """The messages on display as ``(role, text)``, an answer being generated included."""
        with self._lock:
            rows = [(role, text) for _id, role, text, _out, _box in self._bubbles]
            return rows + ([("assistant", "".join(self._stream))] if self._stream is not None else [])

    def __repr__(self) -> str:
        return PLAIN.format(name=self.name, count=self._history().message_count)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = {**super()._repr_mimebundle_(**kwargs), **widget_marker(self.name)}
        data["text/plain"] = repr(self)  # ipywidgets cuts it at 110 characters
        return data

    # --- actions --------------------------------------------------------------------------------

    def submit(self, text: str | None = None) -> None:
        """Send ``text`` (default: the input box's) and answer it on a background thread, as Send does."""
        message = (self.input.value if text is None else text).strip()
        if not message:
            return
        previous = self._thread
        if previous is not None and previous.is_alive() and self._stream is not None:
            self._set_note("busy: wait for the answer or press Stop")
            return
        if text is None:
            self.input.value = ""
        # Another answer on this conversation (a second widget's) or a save may hold it: the turn waits.
        conv = None if self._waiting is not None else self._conv
        self._set_note("waiting for the answer in progress…" if conv is not None and conv.busy else "")
        request = kernel_status.current_request()  # the Send click's message, or the cell that called submit
        self._thread = threading.Thread(
            target=self._generate, args=(conv, message, previous, request), name="lmchat-widget"
        )
        self._thread.daemon = True
        self._thread.start()

    def _generate(
        self, conv: Conversation | None, message: str, previous: threading.Thread | None, request: dict[str, Any]
    ) -> None:
        with kernel_status.generating(request):  # JupyterLab says "Busy" until the answer ends
            self._answer(conv, message, previous)

    def _answer(self, conv: Conversation | None, message: str, previous: threading.Thread | None) -> None:
        if previous is not None:
            # A stopped or finished answer's thread may still be tidying up (its last save, the next
            # message's opening): a message sent meanwhile goes next rather than being refused.
            previous.join()
        try:
            if conv is None:  # the first message: now the conversation's history is evaluated
                self._set_note("evaluating the conversation's history…")
                conv = self._store.get(self.name)
                self._attach(conv)
                self._set_note("")
            for _ in conv.stream(message, cell_id=WIDGET_CELL_ID, **self.options):
                pass
        except (LmchatError, ValueError) as exc:  # e.g. the context is full: the message goes back in the box
            self._note = f"error: {exc}"
            if not self.input.value:
                self.input.value = message
        finally:
            self._refresh()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the widget's answer in progress; False if it is still running after ``timeout``."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def stop(self) -> None:
        """End the answer being generated after its current token; the partial answer is kept."""
        if self._waiting is None:
            self._conv.stop()

    def clear(self) -> None:
        """Forget every message (the system prompt stays), stopping an answer in progress first."""
        self.confirm.layout.display = "none"
        conv = self.conversation
        conv.stop()

        def run() -> None:
            conv.clear()
            self._state.replay_cursor[self.name] = 0

        if conv.busy:  # the turn lock is released once the stopped answer is kept
            threading.Thread(target=run, name="lmchat-widget-clear", daemon=True).start()
        else:
            run()

    def close(self) -> None:
        """Stop following the conversation and close the widget and every widget inside it."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._adopted in self._store.adopt_listeners:
            self._store.adopt_listeners.remove(self._adopted)
        inside = list(self.children)
        while inside:
            child = inside.pop()
            inside += list(getattr(child, "children", ()))
            child.close()
        super().close()

    # --- following the conversation -------------------------------------------------------------

    def _open(self, name: str) -> None:
        """Show ``name``; one not evaluated yet shows its history, and is evaluated at its first message."""
        waiting = self._store.waiting(name)
        if waiting is None:
            self._attach(self._store.get(name))
        else:
            self._follow(None, waiting)

    def _history(self) -> ChatHistory:
        return self._waiting if self._waiting is not None else self._conv.history

    def _attach(self, conv: Conversation) -> None:
        self._follow(conv, None)

    def _follow(self, conv: Conversation | None, waiting: ChatHistory | None) -> None:
        """Show ``conv`` live, or the history ``waiting`` for its first message (``conv`` None)."""
        with self._lock:
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            self._waiting = waiting
            if conv is not None:
                self._conv = conv
                self._unsubscribe = conv.subscribe(self._on_event)
            self._stream = self._stream_views = None
            self._update_picker()
            self._render()
            self._refresh()

    def _adopted(self, name: str, conv: Conversation) -> None:
        """A conversation was created, restored or replaced (``%chat load``): follow it if it is ours."""
        if name == self.name and (self._waiting is not None or conv is not self._conv):
            self._attach(conv)
        else:
            self._update_picker()

    def _update_picker(self) -> None:
        names = sorted(set(self._store.names()) | {self.name})
        self.picker.unobserve(self._picked, "value")
        self.picker.options, self.picker.value = names, self.name
        self.picker.observe(self._picked, "value")
        self.picker.layout.display = "flex" if len(names) > 1 else "none"

    def _picked(self, change: dict[str, Any]) -> None:
        if change["new"] and change["new"] != self.name:
            self.name = change["new"]
            self._open(self.name)

    def _on_event(self, event: ConversationEvent) -> None:
        with self._lock:
            if event.conversation is not self._conv:
                return
            if event.kind == "token":
                self._stream_piece(event.text)
                return
            if event.kind == "turn_started":
                self._note = ""
                self._stream, self._stream_views = [], None
                self._render()
            elif event.kind == "message_added" and event.message is not None and self._stream_views is not None:
                # The finished answer keeps the bubble it streamed into.
                out, box = self._stream_views
                self._bubbles.append((event.message.id, "assistant", event.message.content, out, box))
                show(out, event.message.content)
                self._stream = self._stream_views = None
                self._render()
            elif event.kind in ("rewound", "cleared", "restored", "model_changed"):
                self._render()
            self._refresh()

    def _stream_piece(self, piece: str) -> None:
        if self._stream is None:  # this widget appeared while an answer was under way
            self._stream = []
            self._render()
        if self._stream is None or self._stream_views is None:
            return
        self._stream.append(piece)
        now = time.monotonic()
        if now - self._shown_at >= REFRESH_SECONDS:
            self._shown_at = now
            show(self._stream_views[0], "".join(self._stream) + " ▌")
            self._refresh()

    def _render(self) -> None:
        """Make the bubbles match the history, reusing those whose message is unchanged."""
        with self._lock:
            history = [m for m in self._history() if m.role != "system"]
            if self._stream is not None and not (history and history[-1].role == "user"):
                self._stream = self._stream_views = None  # the turn was taken back before its answer
            known = {b[0]: b for b in self._bubbles}
            bubbles = []
            for m in history:
                old = known.pop(m.id, None)
                if old is not None and old[2] != m.content:
                    show(old[3], m.content)
                views = old[3:] if old is not None else bubble(m.role, m.content)
                bubbles.append((m.id, m.role, m.content, *views))
            for _id, _role, _text, out, box in known.values():
                out.close()
                box.close()
            self._bubbles = bubbles
            if self._stream is not None and self._stream_views is None:
                self._stream_views = bubble("assistant", "".join(self._stream))
            extra = [self._stream_views[1]] if self._stream_views is not None else []
            self.messages.children = tuple(b[4] for b in bubbles) + tuple(extra)

    def _set_note(self, note: str) -> None:
        self._note = note
        self._refresh()

    def _refresh(self) -> None:
        """The status line and which buttons work."""
        with self._lock:
            generating = self._waiting is None and self._stream is not None
            if self._waiting is not None:
                line = f"{length_note(self._waiting)}, not evaluated yet: that happens at your first message"
            else:
                line = status_line(self._conv, self._store, self.name, generating)
            self.status.value = " · ".join([line] + ([self._note] if self._note else []))
            self.send_button.disabled = generating
            self.stop_button.disabled = not generating
