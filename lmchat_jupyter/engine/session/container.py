"""The session container: a checked, versioned byte layout. No llama.cpp here.

Layout::

    "LMCHATS\\x00"  u32 format  u32 header_len  header (JSON, UTF-8)  xxh3_64(header)  pad to 64
    sections, each at a 64-byte aligned offset from the data start, listed in the header with
    their length and xxh3_64: history (JSON), engine (JSON), tokens (int32 LE), kv (raw llama.cpp)

Format 2 (what lmchat writes): the same container, which may be followed by *records*, each the
turn-sized change of a later save (see :mod:`session_records`: the same layout under its own
magic). The header's ``size`` is then the length of this first part, the *base*. Format 1 files
(no records) still load.

A section of 8 MiB or more carries the xxh3_64 of each 4 MiB block (``"xxh3": [...]`` with
``"block": 4194304``) instead of one digest, so that its blocks are checked on several cores.
:func:`parse` can leave one section's checksum running on those threads (``overlap``): its
:class:`SectionCheck` says later whether the bytes were intact, while the caller already uses them.

The header also records the file's total length (``size``): a session is exactly what lmchat wrote,
and bytes appended after its last section make it refused.

Every length, offset, checksum and padding byte (:mod:`.padding`) is verified by :func:`parse` before use.
xxh3 runs at memory speed, so checking a 180 MB KV state costs a few milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import SessionCorruptError
from ...core.safe_files import open_regular
from .checks import SectionCheck
from .checks import block_digests as _block_digests
from .checks import digest_shape as _digest_shape
from .checks import section_digest as _section_digest
from .checks import xxh3 as _digest
from .padding import nonzero_padding

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "build",
    "parse",
    "salvage",
    "read_header",
    "ParsedSession",
    "SECTION_NAMES",
    "READ_VERSIONS",
    "lead_digest",
    "RECORD_MAGIC",
    "starts_record",
    "extent",
    "SectionCheck",
]

MAGIC = b"LMCHATS\x00"
#: The magic of a record appended after a base (format 2).
RECORD_MAGIC = b"LMCHATR\x00"
FORMAT_VERSION = 2
#: Format 1: a base alone (written before records existed); format 2: a base, then records.
READ_VERSIONS = (1, 2)
PREFIX = struct.Struct("<8sII")
ALIGN = 64
MAX_HEADER = 64 * 1024 * 1024
SECTION_NAMES = ("history", "engine", "tokens", "kv")


def _pad(n: int) -> int:
    return (-n) % ALIGN


def build(
    header: dict[str, Any],
    sections: Sequence[tuple[str, bytes | bytearray | memoryview]],
    seal: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    magic: bytes = MAGIC,
) -> list[memoryview]:
    """The chunks of a session file, in order; ``header`` gets the section table added, then ``seal`` (a signature).

    ``chunks[0]`` is the lead (magic, header, its digest, padding): :func:`lead_digest` of it chains
    the records that follow.
    """
    table = []
    offset = 0
    for name, data in sections:
        digest, block = _section_digest(data)
        entry: dict[str, Any] = {"name": name, "offset": offset, "length": len(data), "xxh3": digest}
        if block is not None:
            entry["block"] = block
        table.append(entry)
        offset += len(data) + _pad(len(data))
    # The header records the file's total length, which depends on the header's own length (and
    # signature): settle it by iterating (it changes at most when the number of digits does).
    size = 0
    while True:
        sealed = dict(header, sections=table, size=size)
        if seal is not None:
            sealed = seal(sealed)
        head = json.dumps(sealed, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        lead_length = PREFIX.size + len(head) + 8
        total = lead_length + _pad(lead_length) + offset
        if total == size:
            break
        size = total
    lead = PREFIX.pack(magic, FORMAT_VERSION, len(head)) + head + bytes.fromhex(_digest(head))
    chunks = [memoryview(lead + bytes(_pad(len(lead))))]
    for _, data in sections:
        chunks.append(memoryview(data))
        if _pad(len(data)):
            chunks.append(memoryview(bytes(_pad(len(data)))))
    return chunks


def lead_digest(lead: bytes | bytearray | memoryview) -> str:
    """What a record names the part before it by: the SHA-256 of that part's lead (its header included)."""
    return hashlib.sha256(lead).hexdigest()


@dataclass
class ParsedSession:
    header: dict[str, Any]
    sections: dict[str, memoryview]
    offsets: dict[str, int]
    #: Where the base ends (records, in format 2, follow), its format and its lead's digest.
    end: int = 0
    version: int = FORMAT_VERSION
    chain: str = ""
    #: The check still running on the section named by ``parse``'s ``overlap`` (None: all checked).
    pending: SectionCheck | None = None


def parse(buf: memoryview, source: str, magic: bytes = MAGIC, overlap: str | None = None) -> ParsedSession:
    """Check and split a session's base (or, with another ``magic``, one record at the start of ``buf``).

    Raises :class:`SessionCorruptError` saying what is wrong. In format 2 bytes may follow the base:
    the caller reads them as records. ``overlap``: a section whose checksum is left running on the
    checksum threads (``ParsedSession.pending``; everything else about it, its place and length, is
    checked here); the caller must call its :meth:`SectionCheck.passed` before trusting what it did
    with those bytes, even when this raises after starting it (it waits for the threads).
    """

    def corrupt(why: str) -> SessionCorruptError:
        return SessionCorruptError(
            f"{source} is not a usable lmchat session: {why}. The file was not loaded; "
            "restore from its history instead, or delete it to start over"
        )

    header, data_start, version = _checked_header(buf, corrupt, magic)
    sections: dict[str, memoryview] = {}
    offsets: dict[str, int] = {}
    pending: SectionCheck | None = None
    try:
        for entry in header["sections"]:
            later = overlap is not None and pending is None and isinstance(entry, dict) and entry.get("name") == overlap
            name, start, view, check = _checked_section(buf, entry, data_start, corrupt, later)
            if check is not None:
                pending = check
            if name in sections:
                raise corrupt(f"its section table names {name!r} twice")
            sections[name] = view
            offsets[name] = start
        missing = [n for n in SECTION_NAMES if n not in sections]
        if missing:
            raise corrupt(f"it lacks the section(s) {', '.join(missing)}")
        follows = "anything" if magic != MAGIC else "records" if version >= 2 else "nothing"
        end = _check_length(header, data_start, buf, corrupt, follows)
        lead_end = PREFIX.size + PREFIX.unpack_from(buf, 0)[2] + 8
        if (stray := nonzero_padding(buf, lead_end, data_start, header["sections"], end)) is not None:
            raise corrupt(stray)
    except BaseException:
        if pending is not None:
            pending.passed()  # the threads let go of the buffer before it may be closed
        raise
    lead = buf[:data_start]
    chain = lead_digest(lead)
    lead.release()
    return ParsedSession(header, sections, offsets, end, version, chain, pending)


def _check_length(
    header: dict[str, Any],
    data_start: int,
    buf: memoryview,
    corrupt: Callable[[str], SessionCorruptError],
    follows: str = "nothing",
) -> int:
    """A session is exactly what lmchat wrote: nothing after its last section, nothing missing; returns its end.

    ``size`` in the header is the length of what it describes; files written before it was recorded
    are held to the end of their last section (sections follow one another, each padded to 64 bytes).
    ``follows``: what may come after it: ``"nothing"``, ``"records"`` (bytes that start like a record,
    read by the caller; anything else was appended by something other than lmchat) or ``"anything"``
    (a record: the next one follows).
    """
    end = data_start + max((e["offset"] + e["length"] + _pad(e["length"]) for e in header["sections"]), default=0)
    recorded = header.get("size", end)
    if type(recorded) is not int or recorded != end:
        raise corrupt(f"its header records a length of {recorded!r} bytes, but its sections end at byte {end:,}")
    size = len(buf)
    tail_ok = follows == "anything" or (
        follows == "records" and starts_record(bytes(buf[end : end + len(RECORD_MAGIC)]))
    )
    if size < end or (size > end and not tail_ok):
        raise corrupt(f"it has {size - end:,} bytes after the end of its last section (appended to?)")
    return end


def starts_record(lead: bytes) -> bool:
    """Whether bytes that follow a base (the first 8 or fewer) begin a record, whole or torn."""
    return bool(lead) and RECORD_MAGIC.startswith(lead[: len(RECORD_MAGIC)])


def salvage(buf: memoryview, name: str, magic: bytes = MAGIC) -> memoryview | None:
    """Section ``name`` of a session (or record) that :func:`parse` refused, if that section and the
    header are intact. Only that section is checked: the rest is not read.

    A damaged KV state should not cost the conversation: its history is usually still there.
    """
    try:
        header, data_start, _ = _checked_header(buf, SessionCorruptError, magic)
        for entry in header["sections"]:
            if isinstance(entry, dict) and entry.get("name") == name:
                return _checked_section(buf, entry, data_start, SessionCorruptError)[2]
    except SessionCorruptError:
        pass
    return None


def extent(buf: memoryview, magic: bytes = MAGIC) -> tuple[int, str, dict[str, Any]] | None:
    """Where a session's base (or a record) ends, its lead's digest and its header, from its checked
    header alone (no section is read); None where the header is not intact or its table is malformed."""
    try:
        header, data_start, _ = _checked_header(buf, SessionCorruptError, magic)
        entries = header["sections"]
        end = data_start + max((e["offset"] + e["length"] + _pad(e["length"]) for e in entries), default=0)
    except (SessionCorruptError, TypeError, KeyError):
        return None
    if header.get("size", end) != end or end > len(buf):
        return None
    lead = buf[:data_start]
    chain = lead_digest(lead)
    lead.release()
    return end, chain, header


def _checked_header(
    buf: memoryview, corrupt: Callable[[str], SessionCorruptError], expect: bytes = MAGIC
) -> tuple[dict[str, Any], int, int]:
    """The header, checked, where the sections start, and the format."""
    size = len(buf)
    if size < PREFIX.size:
        raise corrupt(f"it is {size} bytes long, too short for a session header")
    magic, version, head_len = PREFIX.unpack_from(buf, 0)
    if magic != expect:
        raise corrupt("it does not start with the lmchat session signature")
    if version not in READ_VERSIONS or (expect != MAGIC and version != FORMAT_VERSION):
        raise corrupt(
            f"it uses session format {version}; this lmchat reads formats {READ_VERSIONS[0]} to {FORMAT_VERSION}"
        )
    head_end = PREFIX.size + head_len
    if head_len > MAX_HEADER or head_end + 8 > size:
        raise corrupt(f"its header claims {head_len:,} bytes, more than the file holds (truncated?)")
    head = buf[PREFIX.size : head_end]
    if bytes(buf[head_end : head_end + 8]).hex() != _digest(head):
        raise corrupt("its header checksum does not match (damaged header)")
    header = _json(bytes(head))
    if header is None:
        raise corrupt("its header is not valid JSON")
    if not isinstance(header, dict) or not isinstance(header.get("sections"), list):
        raise corrupt("its header has no section table")
    return header, head_end + 8 + _pad(head_end + 8), version


def _checked_section(
    buf: memoryview,
    entry: object,
    data_start: int,
    corrupt: Callable[[str], SessionCorruptError],
    later: bool = False,
) -> tuple[str, int, memoryview, SectionCheck | None]:
    """One section table entry checked against the data: (name, absolute start, bytes, None), or
    with ``later`` its checksum left running: (..., the :class:`SectionCheck`)."""
    if not isinstance(entry, dict):
        raise corrupt("its section table is malformed")
    name, offset, length, digest, block = (entry.get(k) for k in ("name", "offset", "length", "xxh3", "block"))
    if name not in SECTION_NAMES:
        raise corrupt(f"its section table names {name!r}")
    if not (isinstance(offset, int) and isinstance(length, int)) or not _digest_shape(digest, block, length):
        raise corrupt(f"section {name!r} has a malformed entry")
    start = data_start + offset
    if offset < 0 or length < 0 or start + length > len(buf):
        raise corrupt(f"section {name!r} runs past the end of the data (truncated?)")
    view = buf[start : start + length]
    failure = f"section {name!r} fails its checksum (damaged data)"
    if later:
        return str(name), start, view, SectionCheck(view, digest, block, corrupt(failure))  # type: ignore[arg-type]
    actual = _digest(view) if isinstance(digest, str) else _block_digests(view, block)  # type: ignore[arg-type]
    if actual != digest:
        view.release()
        raise corrupt(failure)
    return str(name), start, view, None


def _json(data: bytes) -> Any:
    """``data`` parsed as UTF-8 JSON, or None. Nesting too deep for the parser counts as invalid."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def read_header(path: Path) -> dict[str, Any]:
    """A session file's header alone, checked, without reading its sections."""
    with os.fdopen(open_regular(path, error=SessionCorruptError), "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        lead = fh.read(PREFIX.size)
        if len(lead) < PREFIX.size:
            raise SessionCorruptError(f"{path} is too short to be an lmchat session")
        magic, version, head_len = PREFIX.unpack(lead)
        if magic != MAGIC or version not in READ_VERSIONS or head_len > MAX_HEADER:
            raise SessionCorruptError(
                f"{path} is not an lmchat session of format {READ_VERSIONS[0]} to {FORMAT_VERSION}"
            )
        head = fh.read(head_len)
        digest = fh.read(8)
        if len(head) != head_len or digest.hex() != _digest(head):
            raise SessionCorruptError(f"{path} has a damaged header")
        header = _json(head)
        if header is None:
            raise SessionCorruptError(f"{path} has a header that is not JSON")
        if not isinstance(header, dict):
            raise SessionCorruptError(f"{path} has a malformed header")
        recorded = header.get("size", size)
        follows = b""
        if version >= 2 and type(recorded) is int and 0 <= recorded < size:
            fh.seek(recorded)
            follows = fh.read(len(RECORD_MAGIC))
    if recorded != size and not starts_record(follows):
        raise SessionCorruptError(f"{path} is {size:,} bytes long, but its header records {recorded!r}")
    return header
