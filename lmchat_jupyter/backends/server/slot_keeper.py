"""Which llama-server slot and which slot file hold each conversation of a backend.

Between answers a conversation's KV state lives in its slot file (named from the conversation id and a
secret of the user's own: :func:`.slots.slot_file_names`). After an answer the keeper notes the slot and the
id of the request that ran there (a :class:`.slots.SlotClaim`); the save that follows writes the slot only
while the slot is idle and no other request ran there since, and into the conversation's other file, never
the one its newest good save is in. That file becomes the conversation's (and what its saved session names)
only once the server says it wrote the conversation's token count: a save that fails or holds something
else leaves the previous file, which holds an earlier prefix, as it was. llama-server cannot delete a slot
file: the older of the two stays until the save after next writes over it. Before an answer the
conversation takes the slot it still holds, or the least recently used idle one with its file restored into
it (a refused restore only means the server reads the conversation again).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from ...core.errors import ServerError, SlotStorageError
from .llama_client import LlamaServerClient, SlotInfo
from .slots import SlotClaim, choose_slot, idle_slots, next_slot_file

__all__ = ["SlotKeeper"]


class SlotKeeper:
    """The slots and slot files of the conversations on one llama-server (``tell``: say why one was not used)."""

    def __init__(self, client: LlamaServerClient, total_slots: int, tell: Callable[[str], None]) -> None:
        self.client = client
        self.total_slots = total_slots
        self._tell = tell
        self._claims: dict[str, SlotClaim] = {}  # conversation -> the slot that holds it and the request that ran there
        self._files: dict[str, tuple[str, int]] = {}  # conversation -> slot file of its newest saved prefix, tokens
        self._unsaved: dict[str, tuple[int, int]] = {}  # conversation -> slot and token count of an answer not saved

    def slot_file(self, label: str | None) -> tuple[str | None, int]:
        """The slot file holding the newest saved prefix of ``label`` and its token count; (None, 0) for none."""
        return self._files.get(label, (None, 0)) if label is not None else (None, 0)

    def adopt(self, label: str, file: str, n_tokens: int) -> None:
        """``file`` (from a saved session) holds ``n_tokens`` of ``label``: restore it before the next answer."""
        if self._files.get(label, (None, 0))[0] != file:
            self._claims.pop(label, None)  # from another process or conversation: no slot holds it yet
        self._files[label] = (file, n_tokens)

    def take(self, label: str | None) -> int:
        """A slot for the next answer of ``label``, with its slot file restored into it where needed."""
        claim = self._claims.get(label) if label is not None else None
        fallback = int(hashlib.sha256((label or "-").encode()).hexdigest()[:8], 16) % max(1, self.total_slots)
        slot, holds_it = choose_slot(idle_slots(self.client), claim, fallback)
        saved = self._files.get(label) if label is not None else None
        if label is not None:
            self._claims.pop(label, None)
            self._unsaved.pop(label, None)
        if holds_it or label is None or saved is None or saved[1] == 0:
            return slot
        try:
            self.client.restore_slot(slot, saved[0])
        except SlotStorageError as exc:
            self._files.pop(label, None)
            self._tell(f"the saved slot could not be restored ({exc}); the server reads the conversation again")
        except ServerError as exc:
            self._tell(f"the saved slot was not restored in time ({exc}); the server reads the conversation again")
        return slot

    def answered(self, label: str | None, slot: int, n_cached: int) -> None:
        """An answer of ``label`` ended in ``slot``, which holds ``n_cached`` tokens: note it for its save."""
        if label is None:
            return
        info = self._slot(slot)
        if info is not None and not info.is_processing:
            self._claims[label] = SlotClaim(slot, info.last_task)
            self._unsaved[label] = (slot, n_cached)

    def lost(self, label: str | None) -> None:
        """An answer of ``label`` broke off: what its slot holds is not known, so it is neither kept nor saved."""
        if label is not None:
            self._claims.pop(label, None)

    def save(self, label: str | None) -> None:
        """Save the slot of ``label``'s last answer to its slot file, if it has one not saved and the slot still holds it."""
        if label is None or label not in self._unsaved:
            return
        slot, n_cached = self._unsaved.pop(label)
        claim = self._claims.get(label)
        info = self._slot(slot)
        if info is None or info.is_processing or claim is None or info.last_task != claim.last_task:
            return  # another request ran there since: the previous file keeps an earlier prefix
        current = self._files.get(label, (None, 0))[0]
        name = next_slot_file(label, self.client.url, current)
        try:
            saved = self.client.save_slot(slot, name)
        except SlotStorageError as exc:
            after = "the previous slot file (an earlier point of the conversation) stays in use"
            if current is None:
                after = "after a restart the server reads the conversation again"
            self._tell(f"the slot was not saved ({exc}); {after}")
            return
        except ServerError:
            return  # a save that may still run later: its file is not trusted, the previous one stays
        if saved.n_tokens != n_cached:
            return  # the slot held another conversation by then: the previous file stays the conversation's
        self._files[label] = (name, n_cached)

    def _slot(self, slot: int) -> SlotInfo | None:
        """What ``/slots`` says of ``slot`` now (None: not listed, or the server did not say)."""
        try:
            return next((s for s in self.client.slots() if s.id == slot), None)
        except ServerError:
            return None
