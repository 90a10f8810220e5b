"""ChatStore: a notebook's named conversations, kept in its sidecar folder and saved as they change.

After every completed turn the readable history is written at once (small, fsynced), so a killed
kernel never loses a finished turn; the full session (KV state included) follows on a background
thread, so the next cell does not wait for the disk. A restore takes the full session when it
matches the history, evaluates only the turns the session is missing, and falls back to the history
alone when the session is absent, foreign or damaged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

from .atomic import atomic_write
from .conversation import Conversation, Progress
from .errors import LmchatError, SessionCorruptError, SessionMismatchError, StorageError
from .events import ConversationEvent
from .history import ChatHistory, Message
from .metadata import EmbeddedChat
from .models import Model, ModelSettings, load_model
from .sidecar import Sidecar, check_name

__all__ = ["ChatStore", "DEFAULT_NAME"]

DEFAULT_NAME = "default"
Notify = Callable[[str], None]


class ChatStore:
    """The conversations of one notebook in one kernel."""

    def __init__(
        self,
        sidecar: Sidecar,
        *,
        model_spec: str | None = None,
        settings: ModelSettings | None = None,
        autosave: bool = True,
        notify: Notify = print,
        progress: Callable[[str], Progress | None] | None = None,
    ) -> None:
        self.sidecar = sidecar
        self.model_spec = model_spec
        self.settings = settings or ModelSettings()
        self.autosave = autosave
        self.notify = notify
        self.progress = progress or (lambda _label: None)
        self.conversations: dict[str, Conversation] = {}
        self.active = DEFAULT_NAME
        self.statuses: dict[str, str] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._pending: set[str] = set()
        self._saving = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False
        self.last_save_error: str | None = None
        #: Called with (name, conversation) whenever a conversation is created, restored or replaced.
        self.adopt_listeners: list[Callable[[str, Conversation], None]] = []
        self._open_sidecar()

    # --- the folder -----------------------------------------------------------------------------

    def _open_sidecar(self) -> None:
        try:
            if not self.sidecar.acquire():
                self.notify(
                    f"lmchat: {self.sidecar.folder} is in use by another kernel ({self.sidecar.locked_by_other}). "
                    "This kernel reads its chats but will not save them; shut the other kernel down to save here."
                )
        except StorageError as exc:
            self.notify(f"lmchat: {exc}. Chats stay in memory only.")
        if self.sidecar.writable:
            self.sidecar.remove_stale_temp_files()

    def move_to(self, sidecar: Sidecar) -> None:
        """Follow a renamed or moved notebook: its chats go with it to the new sidecar folder."""
        if sidecar.folder == self.sidecar.folder:
            return
        self.flush()
        old = self.sidecar
        if old.writable and old.folder.is_dir() and not sidecar.folder.exists():
            try:
                old.folder.rename(sidecar.folder)
            except OSError as exc:
                self.notify(f"lmchat: could not move {old.folder} to {sidecar.folder}: {exc}; saving afresh there")
        old.release()
        self.sidecar = sidecar
        self._open_sidecar()
        for name in self.conversations:
            self._schedule(name)

    # --- conversations --------------------------------------------------------------------------

    def model_for(self, spec: str | None) -> Model:
        return load_model(spec if spec is not None else self.model_spec, self.settings, progress=self.notify)

    def get(self, name: str | None = None, *, create: bool = True, system: str | None = None) -> Conversation:
        """The conversation called ``name`` (default: the active one), restoring or creating it."""
        name = check_name(name or self.active)
        conv = self.conversations.get(name)
        if conv is None:
            conv = self.restore(name)
        if conv is None:
            if not create:
                raise LmchatError(f"there is no conversation called {name!r}; `%chat list` shows them")
            conv = Conversation(self.model_for(None), system=system)
            self.adopt(name, conv)
        elif system is not None and conv.history.system != system:
            if conv.history.user_message_count:
                raise LmchatError(
                    f"conversation {name!r} already has a different system prompt; `%chat clear` it first "
                    "or use another --name"
                )
            if conv.history.system is not None:
                conv.history.messages[0].content = system
            else:
                conv.history.messages.insert(0, Message("system", system))
        return conv

    def adopt(self, name: str, conv: Conversation) -> None:
        """Track ``conv`` under ``name``: save it as it changes."""
        name = check_name(name)
        old = self._unsubscribe.pop(name, None)
        if old is not None:
            old()
        self.conversations[name] = conv
        self._unsubscribe[name] = conv.subscribe(lambda event: self._on_event(name, event))
        for listener in list(self.adopt_listeners):
            listener(name, conv)

    def names(self) -> list[str]:
        return sorted(set(self.conversations) | set(self.sidecar.names()))

    def restore(self, name: str) -> Conversation | None:
        """Restore ``name`` from the sidecar (full session, else history); None when nothing is saved."""
        session_path = self.sidecar.session_path(name)
        history_path = self.sidecar.history_path(name)
        history, spec = self._read_history(history_path)
        if history is None and not session_path.exists():
            return None
        if spec is None:
            spec = _session_model_spec(session_path)
        model = self.model_for(spec)
        conv: Conversation | None = None
        note = ""
        if session_path.exists():
            try:
                conv = Conversation.restore(model, session_path, progress=self.progress(f"Restoring {name}"))
                note = conv.restored_from or ""
            except SessionMismatchError as exc:
                note = f"the saved session belongs to another model or settings ({', '.join(exc.differences)})"
                history = history or _as_history(exc.history)
            except (SessionCorruptError, LmchatError) as exc:
                note = f"the saved session could not be used: {exc}"
        behind = False
        if conv is not None and history is not None:
            conv, behind = self._catch_up(conv, history, model)
            if behind:
                note += "; caught up with the newer history"
        if conv is None and history is not None:
            conv = Conversation.from_history(model, history, progress=self.progress(f"Re-reading {name}"))
            note = f"history from {history_path.name}" + (f"; {note}" if note else "")
        if conv is None:
            self.notify(f"lmchat: {name!r} could not be restored: {note}")
            return None
        self.adopt(name, conv)
        if behind:
            self._schedule(name)  # else every restart would catch up again
        status = f"{name}: {conv.info.message_count} messages, {conv.info.token_count} tokens — {note}"
        self.statuses[name] = status
        return conv

    def _catch_up(self, conv: Conversation, history: ChatHistory, model: Model) -> tuple[Conversation, bool]:
        """Bring a restored session up to the (newer or equal) history written after each turn.

        Returns the conversation and whether it differs from the saved session (then it needs saving).
        """
        saved = [m.id for m in conv.history]
        latest = [m.id for m in history]
        if latest[: len(saved)] == saved:
            if len(latest) > len(saved):
                conv.history.messages.extend(history.messages[len(saved) :])
                conv.prefill(self.progress("Catching up"))
                return conv, True
            return conv, False
        if saved[: len(latest)] == latest:
            return conv, False  # the session is newer than the history file
        return Conversation.from_history(model, history, progress=self.progress("Re-reading")), True

    def _read_history(self, path: Path) -> tuple[ChatHistory | None, str | None]:
        if not path.exists():
            return None, None
        try:
            history = ChatHistory.load(path)
        except LmchatError as exc:
            self.notify(f"lmchat: ignoring {path.name}: {exc}")
            return None, None
        spec = None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            model_info = raw.get("model") if isinstance(raw, dict) else None
            if isinstance(model_info, dict) and isinstance(model_info.get("spec"), str):
                spec = model_info["spec"]
        except (OSError, ValueError):
            pass
        return history, spec

    def offer_embedded(self, chats: list[EmbeddedChat]) -> list[str]:
        """Histories found in the notebook's metadata: used where the sidecar has no match for them.

        The sidecar's session wins when it holds the same conversation (instant restore); a missing
        or different sidecar conversation is replaced by the embedded history, evaluated again.
        Model specs from metadata are not followed: the kernel's own model is used.
        """
        lines = []
        for chat in chats:
            conv = self.conversations.get(chat.name) or self.restore(chat.name)
            embedded = [m.id for m in chat.history]
            if conv is not None and conv.history.conversation_id == chat.history.conversation_id:
                have = [m.id for m in conv.history]
                if embedded[: len(have)] == have and len(embedded) > len(have):
                    conv, _ = self._catch_up(conv, chat.history, conv.model)
                    self.adopt(chat.name, conv)
                    self._write_history(chat.name, conv)
                    self._schedule(chat.name)
                continue
            model = conv.model if conv is not None else self.model_for(None)
            conv = Conversation.from_history(model, chat.history, progress=self.progress(f"Re-reading {chat.name}"))
            self.adopt(chat.name, conv)
            status = (
                f"{chat.name}: {conv.info.message_count} messages, {conv.info.token_count} tokens — "
                "history from the notebook's metadata (evaluated again)"
            )
            self.statuses[chat.name] = status
            self._write_history(chat.name, conv)
            self._schedule(chat.name)
            lines.append(status)
        return lines

    def restore_all(self) -> list[str]:
        """Restore every conversation in the sidecar; returns one status line each."""
        lines = []
        for name in self.sidecar.names():
            if name not in self.conversations:
                try:
                    self.restore(name)
                except LmchatError as exc:
                    self.notify(f"lmchat: {name!r} could not be restored: {exc}")
            if name in self.statuses:
                lines.append(self.statuses[name])
        return lines

    # --- saving ---------------------------------------------------------------------------------

    def _on_event(self, name: str, event: ConversationEvent) -> None:
        if event.kind in ("turn_finished", "rewound", "cleared", "restored", "model_changed"):
            self._write_history(name, event.conversation)
            self._schedule(name)

    def _write_history(self, name: str, conv: Conversation) -> None:
        if not (self.autosave and self.sidecar.writable):
            return
        data = conv.history.to_json()
        data["model"] = {"spec": conv.model.spec, "name": conv.model.name}
        try:
            atomic_write(self.sidecar.history_path(name), [json.dumps(data, ensure_ascii=False, indent=1).encode()])
        except StorageError as exc:
            self._save_failed(str(exc))

    def _schedule(self, name: str) -> None:
        if not (self.autosave and self.sidecar.writable) or self._closed:
            return
        with self._saving:
            self._pending.add(name)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._save_loop, name="lmchat-autosave", daemon=True)
                self._worker.start()
            self._saving.notify_all()

    def _save_loop(self) -> None:
        try:
            while True:
                with self._saving:
                    if not self._pending:
                        self._worker = None
                        self._saving.notify_all()
                        return
                    name = self._pending.pop()
                try:
                    self.save(name)
                except Exception as exc:  # noqa: BLE001 - reported; the next save may succeed
                    self._save_failed(f"{type(exc).__name__}: {exc}")
        except BaseException:
            # A dead worker must not leave flush() (and so the kernel's shutdown) waiting for it.
            with self._saving:
                self._worker = None
                self._saving.notify_all()
            raise

    def save(self, name: str, path: Path | None = None) -> bool:
        """Save ``name``'s full session now (to its sidecar file unless ``path`` is given)."""
        conv = self.conversations.get(name)
        if conv is None or conv.history.user_message_count == 0:
            return False
        target = path or self.sidecar.session_path(name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            conv.save(target)
        except (LmchatError, OSError) as exc:
            self._save_failed(str(exc))
            return False
        self.last_save_error = None
        return True

    def _save_failed(self, message: str) -> None:
        if message != self.last_save_error:
            self.notify(f"lmchat: could not save ({message}). The chat goes on in memory; the last saved file is kept.")
        self.last_save_error = message

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every scheduled save is on disk."""
        with self._saving:
            self._saving.wait_for(lambda: not self._pending and self._worker is None, timeout=timeout)

    def close(self) -> None:
        """Save everything and release the folder (kernel shutdown, restart, SIGTERM)."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self.autosave and self.sidecar.writable:
            for name, conv in self.conversations.items():
                if conv.history.user_message_count and not conv.busy:
                    self._write_history(name, conv)
                    self.save(name)
        for unsubscribe in self._unsubscribe.values():
            unsubscribe()
        self.sidecar.release()


def _as_history(value: object) -> ChatHistory | None:
    return value if isinstance(value, ChatHistory) else None


def _session_model_spec(path: Path) -> str | None:
    """The model spec recorded in a session's header, read without loading the rest."""
    from .session_format import read_header

    try:
        header = read_header(path)
    except (LmchatError, OSError):
        return None
    spec = header.get("model_spec")
    return spec if isinstance(spec, str) else None
