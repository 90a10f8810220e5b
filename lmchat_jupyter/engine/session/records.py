"""Records: what a save appends to a session instead of writing it again, one per saved change.

A record has the layout of a session (:mod:`session_format`) under its own magic. Its sections hold
only what changed since the part before it: the tokens evaluated since (``tokens``), the KV state of
their positions alone (``kv``), the rendered text they add and the checkpoints (``engine``), and the
messages that differ (``history``: how many of the earlier ones to keep, and the rest). Its header
names the part before it by the SHA-256 of that part's lead (``prev``), so records cannot be moved
between files or reordered, and carries the positions it covers (``from``, ``to``) and, like a
base, the logits of its last position and this user's signature.

A file is read as its base followed by every whole record in order. The first record that is not
whole (a save killed while appending, a damaged byte) ends the reading: it and what follows it are
ignored, and the session is what the records before it make.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...core import signing
from ...core.errors import SessionCorruptError
from . import container as session_format

__all__ = ["ParsedRecord", "RecordScan", "read_records", "record_histories", "build_record", "MAX_RECORDS"]

#: Records a reader follows at most; a writer writes the whole session again well before.
MAX_RECORDS = 4096


@dataclass
class ParsedRecord:
    """One whole record: its header, its sections (views of the file) and where it starts."""

    header: dict[str, Any]
    sections: dict[str, memoryview]
    start: int
    length: int
    chain: str

    def release(self) -> None:
        for view in self.sections.values():
            view.release()


@dataclass
class RecordScan:
    """The whole records after a base, and why reading stopped early (None: the file ended)."""

    records: list[ParsedRecord]
    end: int
    problem: str | None = None


def build_record(
    header: dict[str, Any],
    sections: list[tuple[str, bytes | bytearray | memoryview]],
    seal: Callable[[dict[str, Any]], dict[str, Any]] | None = signing.sign_header,
) -> list[memoryview]:
    """The chunks of one record (``header`` gets its section table, length and signature added)."""
    return session_format.build(header, sections, seal=seal, magic=session_format.RECORD_MAGIC)


def read_records(buf: memoryview, start: int, chain: str, signed: bool) -> RecordScan:
    """The whole records from ``start`` on, each naming the one before (the base's lead digest ``chain`` first).

    ``signed``: the base carries this user's signature, so every record must too.
    """
    records: list[ParsedRecord] = []
    pos = start
    while pos < len(buf):
        if len(records) >= MAX_RECORDS:
            return RecordScan(records, pos, f"more than {MAX_RECORDS:,} records")
        view = buf[pos:]
        try:
            record = _checked_record(view, pos, chain, signed, len(records) + 1)
        except SessionCorruptError as exc:
            return RecordScan(
                records, pos, f"{len(buf) - pos:,} bytes from byte {pos:,} are not a whole record ({exc})"
            )
        finally:
            view.release()
        records.append(record)
        chain = record.chain
        pos += record.length
    return RecordScan(records, pos)


def _checked_record(view: memoryview, pos: int, chain: str, signed: bool, index: int) -> ParsedRecord:
    parsed = session_format.parse(view, "record", magic=session_format.RECORD_MAGIC)
    header = parsed.header
    try:
        if header.get("prev") != chain:
            raise SessionCorruptError("it does not follow the part before it")
        if header.get("record") != index:
            raise SessionCorruptError(f"it is numbered {header.get('record')!r}, not {index}")
        if signed and not signing.header_is_signed(header):
            raise SessionCorruptError("it is not signed by this user's kernels")
        first, last = header.get("from"), header.get("to")
        if type(first) is not int or type(last) is not int or not 0 <= first <= last:
            raise SessionCorruptError("its positions are malformed")
    except SessionCorruptError:
        for section in parsed.sections.values():
            section.release()
        raise
    return ParsedRecord(header, parsed.sections, pos, parsed.end, parsed.chain)


def record_histories(buf: memoryview, start: int, chain: str) -> list[memoryview]:
    """The history sections of the records from ``start`` on, each checked with its header alone (their
    KV states are not read: for a file whose visible history is all that is used). Stops at the first
    record that does not follow the one before it, is cut short, or whose history section is damaged."""
    found: list[memoryview] = []
    pos = start
    while pos < len(buf) and len(found) < MAX_RECORDS:
        view = buf[pos:]
        try:
            where = session_format.extent(view, session_format.RECORD_MAGIC)
            if where is None or where[2].get("prev") != chain:
                break
            section = session_format.salvage(view, "history", session_format.RECORD_MAGIC)
            if section is None:
                break
        finally:
            view.release()
        found.append(section)
        pos += where[0]
        chain = where[1]
    return found
