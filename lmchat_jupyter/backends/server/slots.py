"""Which llama-server slot a conversation uses for its next turn, and the name of its slot file.

A slot file name is an HMAC of the server address and the conversation id under a secret of the user's own,
so people who share a server cannot guess, restore or overwrite each other's files. The secret lives in
lmchat's cache folder (readable by its owner only); losing it costs nothing, because the sidecar records each
conversation's file name. Each conversation has two of them (:func:`slot_file_names`): a save goes into the
one its saved session does not name, so a save that turns out not to be the conversation's own never
replaces its last good file.

Slots are shared by every kernel that talks to the server. After each turn the conversation's slot is saved
to its file, so any idle slot can be reused without losing anything; a conversation keeps its slot while no
other request ran there since its own last turn, and otherwise takes the least recently used idle slot and
restores its file into it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ...core.errors import ServerAuthError, ServerError, ServerUnreachableError
from ...core.fingerprint import cache_dir
from .llama_client import LlamaServerClient, SlotInfo

__all__ = [
    "SlotClaim",
    "slot_file_name",
    "slot_file_names",
    "next_slot_file",
    "user_secret",
    "choose_slot",
    "idle_slots",
    "SECRET_FILE",
    "SLOT_WAIT_SECONDS",
]

SECRET_FILE = "server-slot-secret"
_SECRET_BYTES = 32
#: How long a turn waits for a slot while every slot is busy, before it queues behind one.
SLOT_WAIT_SECONDS = 60.0
# A slot that has just finished an answer: its conversation saves it in this time.
_SAVE_GRACE_SECONDS = 0.5


@dataclass(frozen=True)
class SlotClaim:
    """What this kernel left in a slot: the slot, and the id of its own last request there (from /slots)."""

    id_slot: int
    last_task: int | None


def user_secret() -> bytes:
    """This user's slot-name secret, created (mode 0600) on first use."""
    path = cache_dir() / SECRET_FILE
    with contextlib.suppress(OSError):
        data = path.read_bytes()
        if len(data) == _SECRET_BYTES:
            return data
    fresh = secrets.token_bytes(_SECRET_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two kernels that start at once agree on the first secret written.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        data = path.read_bytes()
        if len(data) == _SECRET_BYTES:
            return data
        path.unlink(missing_ok=True)  # a damaged secret: names derived from it are in the sidecars anyway
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(fresh)
    return fresh


def slot_file_name(conversation_id: str, server_url: str, secret: bytes | None = None) -> str:
    """The slot file name for a conversation on a server: ``lmchat-<32 hex digits>.slot``."""
    key = user_secret() if secret is None else secret
    digest = hmac.new(key, f"{server_url}\n{conversation_id}".encode(), hashlib.sha256).hexdigest()
    return f"lmchat-{digest[:32]}.slot"


def slot_file_names(conversation_id: str, server_url: str, secret: bytes | None = None) -> tuple[str, str]:
    """The two slot files a conversation saves into by turns: ``lmchat-<32 hex digits>.a.slot`` and ``.b.slot``.

    (Sessions saved before there were two name the one :func:`slot_file_name` gives; they still restore.)
    """
    stem = slot_file_name(conversation_id, server_url, secret).removesuffix(".slot")
    return f"{stem}.a.slot", f"{stem}.b.slot"


def next_slot_file(conversation_id: str, server_url: str, current: str | None, secret: bytes | None = None) -> str:
    """The file the next save of a conversation goes into: of its two, the one ``current`` (the file its
    newest verified save is in, which may be an older single name or another conversation's) is not."""
    first, second = slot_file_names(conversation_id, server_url, secret)
    return second if current == first else first


def choose_slot(slots: Sequence[SlotInfo], claim: SlotClaim | None, fallback: int = 0) -> tuple[int, bool]:
    """The slot for the next turn, and whether it still holds this conversation (so no restore is needed).

    Without slot information (a server started with --no-slots) the answer is ``fallback`` and a restore.
    """
    if not slots:
        return fallback, False
    by_id = {s.id: s for s in slots}
    if claim is not None and claim.last_task is not None:
        mine = by_id.get(claim.id_slot)
        # The slot's newest request is still this conversation's own: its cache holds the conversation.
        if mine is not None and not mine.is_processing and mine.last_task == claim.last_task:
            return mine.id, True
    idle = [s for s in slots if not s.is_processing]
    # Task ids only grow: the smallest last task is the slot used least recently; never-used slots come first.
    least_recent = min(idle or slots, key=lambda s: (s.last_task is not None, s.last_task or 0, s.id))
    return least_recent.id, False


def idle_slots(client: LlamaServerClient) -> list[SlotInfo]:
    """The server's slots once one of them is idle (or after :data:`SLOT_WAIT_SECONDS`); [] where the server
    does not list them (started with --no-slots). Unreachable or a wrong key: the ServerError is raised."""
    try:
        slots = client.slots()
        # Every slot busy: wait for one to free rather than queue behind another conversation's answer
        # (which would take the slot from under that conversation's save, or ours from under us).
        deadline = time.monotonic() + SLOT_WAIT_SECONDS
        waited = False
        while slots and time.monotonic() < deadline:
            if any(not s.is_processing for s in slots):
                if not waited:
                    break
                # A slot that has just finished an answer: give its conversation a moment to save it. Other
                # kernels waiting saw it free at the same moment: each waits a different time, and one that
                # finds it taken again waits on instead of queueing behind that answer.
                time.sleep(_SAVE_GRACE_SECONDS * (1 + random.random()))
                slots = client.slots()
                if any(not s.is_processing for s in slots):
                    break
            time.sleep(0.1)
            slots, waited = client.slots(), True
    except (ServerUnreachableError, ServerAuthError):
        raise
    except ServerError:
        return []
    return slots
