"""ChatStore: a notebook's named conversations, kept in its sidecar folder and saved as they change.

After every completed turn the readable history is written at once (small, fsynced), so a killed
kernel never loses a finished turn; the full session (KV state included) follows on a background
thread, so the next cell does not wait for the disk. A restore takes the full session when it
matches the history, evaluates only the turns the session is missing, and falls back to the history
alone when the session is absent, foreign or damaged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..core import signing
from ..core.atomic import atomic_write
from ..core.errors import LmchatError, StorageError
from ..core.events import ConversationEvent
from ..core.history import ChatHistory, Message
from ..engine.autosave import BackgroundSaver
from ..engine.conversation import Conversation, Progress
from ..engine.models import Model, ModelSettings, ServerModel, load_model
from . import clearing, embedded_chats, folder_share, restoring, space, waiting
from .metadata import EmbeddedChat
from .reconcile import Relation, is_backup_name, move_aside, relation
from .save_errors import save_failed_line
from .saved import SavedChat, disk_history, read_saved
from .sidecar import HISTORY_SUFFIX, SESSION_SUFFIX, Sidecar, check_name

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
        #: The inference server's API key from `%chat config --api-key` (memory only; None: $LMCHAT_API_KEY).
        self.api_key: str | None = None
        self.autosave = autosave
        self.notify = notify
        self.progress: Callable[[str], Progress | None] = progress or (lambda _label: None)
        self.conversations: dict[str, Conversation] = {}
        self.active = DEFAULT_NAME
        self.statuses: dict[str, str] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._saver = BackgroundSaver(self.save, self._save_failed)
        self._closed = self._failure_said = False  # _failure_said: the current change's failed save was said
        self.last_save_error: str | None = None
        #: Histories from the notebook's metadata, evaluated when their conversation is first used.
        self.embedded: dict[str, EmbeddedChat] = {}
        #: Conversations saved beside a folder that another kernel holds: name -> the name saved under.
        self.beside: dict[str, str] = {}
        self.said: set[str] = set()  # conversations whose unsigned files' model was named to the user
        #: Conversations whose KV cache stays off the disk until they change: dropped by `%chat forget`
        #: or the size cap, or restored from a history alone (else the next shutdown writes it back).
        self.kv_cache_off: set[str] = set()
        #: Past this size, saving removes the KV caches of the least recently saved conversations.
        self.max_sidecar_bytes: int | None = space.cap_from_environment()
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
        except StorageError as exc:  # UnsafeFileError too: a link or FIFO where the folder or lock should be
            self.notify(f"lmchat: {exc}. Chats stay in memory only.")
        if self.sidecar.writable:
            self.sidecar.remove_stale_temp_files()
            space.keep_out_of_git(self.sidecar.folder)

    def move_to(self, sidecar: Sidecar) -> None:
        """Follow a renamed or moved notebook: its chats go with it to the new sidecar folder."""
        if sidecar.folder == self.sidecar.folder:
            return
        self.flush()
        old = self.sidecar
        moved = False
        if old.writable and old.folder.is_dir() and not os.path.lexists(sidecar.folder):  # a link too
            try:
                old.folder.rename(sidecar.folder)
                moved = True
            except OSError as exc:
                self.notify(f"lmchat: could not move {old.folder} to {sidecar.folder}: {exc}; saving afresh there")
        old.release()
        self.sidecar = sidecar
        self._open_sidecar()
        if not moved and self.sidecar.writable:
            folder_share.settle(self)  # the folder already holds conversations: keep every one of them
            return
        for name in self.conversations:
            self._schedule(name)

    # --- conversations --------------------------------------------------------------------------

    def model_for(self, spec: str | None) -> Model:
        return load_model(
            spec if spec is not None else self.model_spec, self.settings, progress=self.notify, api_key=self.api_key
        )

    def set_api_key(self, api_key: str | None) -> None:
        """Send ``api_key`` to inference servers from now on, in the conversations already open too."""
        self.api_key = api_key
        for conv in self.conversations.values():
            if isinstance(conv.model, ServerModel):
                conv.model.set_api_key(api_key)

    def get(
        self, name: str | None = None, *, create: bool = True, system: str | None = None, model: str | None = None
    ) -> Conversation:
        """The conversation called ``name`` (default: the active one), restoring or creating it; one created
        here runs on the model spec ``model`` (None: the kernel's own)."""
        name = check_name(name or self.active)
        conv = self.conversations.get(name)
        try:
            conv = conv or self.restore(name)
            pending = self.embedded.get(name)
            conv = waiting.take(self, pending, conv) if pending is not None else conv  # kept where it fails
        except LmchatError as exc:  # nothing was dropped: every use fails the same way until the user chooses
            raise waiting.explain(self, name, exc) from None
        if conv is None:
            if not create:
                raise LmchatError(f"there is no conversation called {name!r}; `%chat list` shows them")
            self.keep_aside(name, "they could not be restored")
            conv = Conversation(self.model_for(model), system=system)
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
        previous = self.conversations.get(name)
        if (
            previous is not None
            and previous is not conv
            and previous.history.user_message_count
            and relation(conv.history, previous.history) not in (Relation.SAME, Relation.A_EXTENDS)
        ):
            self.flush()
            self.keep_aside(name, "another conversation replaced it")
        self._unsubscribe.pop(name, lambda: None)()
        self.conversations[name] = conv
        self._unsubscribe[name] = conv.subscribe(lambda event: self._on_event(name, event))
        for listener in list(self.adopt_listeners):
            listener(name, conv)

    def forget(self, name: str) -> None:
        """Stop tracking ``name`` in memory (its files stay; the next use restores them)."""
        self._unsubscribe.pop(name, lambda: None)()
        self.conversations.pop(name, None)
        self.statuses.pop(name, None)

    def names(self) -> list[str]:
        return sorted(set(self.conversations) | set(self.sidecar.names()) | set(self.embedded))

    def waiting(self, name: str) -> ChatHistory | None:
        """The history of ``name`` where it is not evaluated yet (the notebook's, or a copied sidecar's)."""
        if name in self.conversations:
            return None
        pending = self.embedded.get(name)
        if pending is not None:
            return pending.history
        return restoring.unsigned_history(self, name, read_saved(self.sidecar, name))

    def keep_aside(self, name: str, why: str) -> str | None:
        """Move ``name``'s files to ``NAME.replaced-<time>`` before they are overwritten; say where."""
        if not self.sidecar.writable:
            return None
        kept = move_aside(self.sidecar.folder, check_name(name), [SESSION_SUFFIX, HISTORY_SUFFIX])
        if kept is not None:
            self.notify(
                f"lmchat: the saved files of {name!r} are kept as {kept!r} in {self.sidecar.folder} ({why}); "
                f"`%chat use {kept}` opens them"
            )
        return kept

    def disk_history(self, name: str) -> ChatHistory | None:
        """The history the sidecar holds for ``name``, read without evaluating it."""
        return disk_history(self.sidecar, name)

    def restore(self, name: str, saved: SavedChat | None = None) -> Conversation | None:
        """Restore ``name`` from the sidecar (full session, else history); None when nothing is saved.

        Only files this user's kernels signed choose the model and bring their KV state; from any
        other file the visible history is evaluated on the kernel's own model.
        """
        return restoring.restore(self, name, saved)

    def offer_embedded(self, chats: list[EmbeddedChat]) -> list[str]:
        """Histories found in the notebook's metadata, kept to be evaluated at first use; one line each.

        The sidecar's conversation wins where it holds the notebook's (instant restore); a notebook
        history that continues it is added at first use; a different one is kept under a new name.
        Model specs from metadata are not followed: the kernel's own model is used.
        """
        return embedded_chats.offer_all(self, chats)

    def restore_all(self) -> list[str]:
        """Restore every conversation in the sidecar; returns one status line each."""
        lines = []
        for entry, why in self.sidecar.ignored().items():
            self.notify(f"lmchat: ignoring {entry}: {why}")
        for name in self.sidecar.names():
            if is_backup_name(name):
                continue  # kept aside: listed, restored when used
            if name not in self.conversations:
                saved = read_saved(self.sidecar, name)  # once: deciding and restoring share it
                if restoring.defer_unsigned(self, name, saved):
                    continue
                try:
                    self.restore(name, saved)
                except LmchatError as exc:
                    self.notify(f"lmchat: {name!r} could not be restored: {exc}")
            if name in self.statuses:
                lines.append(self.statuses[name])
        return lines

    # --- saving ---------------------------------------------------------------------------------

    def _on_event(self, name: str, event: ConversationEvent) -> None:
        if event.kind in ("rewound", "cleared"):
            clearing.taken_out(self, name, event.conversation)  # before the history file is written: see there
        if event.kind in ("turn_finished", "rewound", "cleared", "restored", "model_changed"):
            if self.autosave and not self.sidecar.writable and not self._closed:
                if not folder_share.take_over(self):
                    folder_share.save_beside(self, name, event.conversation)
                return  # taking over saved every conversation
            self.keep(name, event.conversation)

    def where_saved(self, name: str) -> str:
        """How ``name`` is saved, in a few words (``%chat info``, the widget's status line)."""
        if not self.autosave:
            return "saving is off"
        if self.sidecar.writable:
            return "saved"
        beside = self.beside.get(name)
        if beside is not None:
            return f"saved beside as {beside!r} (another kernel holds the folder)"
        return "another kernel holds the folder: what only this kernel has is saved beside it"

    def keep(self, name: str, conv: Conversation) -> None:
        """Save ``conv`` as ``name``: its history at once, its full session in the background."""
        self.kv_cache_off.discard(name)
        self._failure_said = False
        self._write_history(name, conv)
        self._schedule(name)

    def _write_history(self, name: str, conv: Conversation) -> None:
        if not (self.autosave and self.sidecar.writable):
            return
        self.write_history_file(self.sidecar.history_path(name), conv)

    def write_history_file(self, path: Path, conv: Conversation) -> bool:
        """Write ``conv``'s readable history, signed, to ``path``; False (and said) where that failed."""
        data = conv.history.to_json()
        data["model"] = {"spec": conv.model.spec, "name": conv.model.name}
        try:
            atomic_write(path, [signing.history_document(data)])
        except StorageError as exc:
            self._save_failed(str(exc))
            return False
        return True

    def _schedule(self, name: str) -> None:
        if not (self.autosave and self.sidecar.writable) or self._closed:
            return
        self._saver.schedule(name)

    def save(self, name: str, path: Path | None = None) -> bool:
        """Save ``name``'s full session now (to its sidecar file unless ``path`` is given)."""
        conv = self.conversations.get(name)
        if conv is not None and path is None and not conv.history.user_message_count:
            return clearing.drop_session(self, name)  # emptied: no session file may bring its messages back
        if conv is None or conv.history.user_message_count == 0 or (path is None and name in self.kv_cache_off):
            return False
        target = path or self.sidecar.session_path(name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            conv.save(target)
        except (LmchatError, OSError) as exc:
            self._save_failed(str(exc))
            return False
        self.last_save_error = None
        if path is None:
            space.enforce_cap(self, keep={name})
        return True

    def _save_failed(self, message: str) -> None:
        # Said once per change saved (a turn, a rewind: one cell's worth) and at shutdown; not once per kernel.
        if not self._failure_said:
            self.notify(save_failed_line(message))
        self._failure_said = True
        self.last_save_error = message

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every scheduled save is on disk."""
        self._saver.flush(timeout)

    def close(self) -> None:
        """Save everything and release the folder (kernel shutdown, restart, SIGTERM)."""
        if self._closed:
            return
        if self.autosave and not self.sidecar.writable:
            folder_share.take_over(self)
        self.flush()
        self._closed, self._failure_said = True, False
        if self.autosave and self.sidecar.writable:
            for name, conv in self.conversations.items():
                if conv.history.user_message_count and not conv.busy:
                    self._write_history(name, conv)
                    self.save(name)
        elif self.autosave:
            for name, conv in list(self.conversations.items()):
                if conv.history.user_message_count and not conv.busy:
                    folder_share.save_beside(self, name, conv, with_session=True)
        for unsubscribe in self._unsubscribe.values():
            unsubscribe()
        self.sidecar.release()
