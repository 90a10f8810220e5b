"""Tools to take session files apart and put them back together, damaged on purpose.

``split`` reads a file's layout without trusting it to be valid for anything but the pristine input;
``forge`` writes a file from a header dict and raw data *with correct checksums*, so a test can
build files that lie (self-consistent but wrong lengths, offsets or contents) and still pass the
container's checksum test. ``KvLayout`` locates the fields of llama.cpp's sequence-state blob.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from lmchat_jupyter.engine.session import container as session_format

PREFIX = session_format.PREFIX
ALIGN = session_format.ALIGN


def digest(data: bytes | bytearray | memoryview) -> str:
    return xxhash.xxh3_64_hexdigest(data)


@dataclass
class Layout:
    """Where everything sits in a (pristine) session file."""

    blob: bytes
    header: dict[str, Any]
    header_start: int  # first byte of the JSON header
    header_end: int  # one past its last byte; the 8-byte header digest follows
    data_start: int  # sections are placed relative to this offset
    sections: dict[str, tuple[int, int]]  # name -> (absolute start, length)

    def section(self, name: str) -> bytes:
        start, length = self.sections[name]
        return self.blob[start : start + length]

    def boundaries(self) -> list[int]:
        """Every offset where one part of the file ends and the next begins."""
        points = {0, 8, 12, PREFIX.size, self.header_end, self.header_end + 8, self.data_start, len(self.blob)}
        for start, length in self.sections.values():
            points.update((start, start + length))
        return sorted(p for p in points if 0 <= p <= len(self.blob))


def split(blob: bytes) -> Layout:
    parsed = session_format.parse(memoryview(blob), "pristine")
    _, _, head_len = PREFIX.unpack_from(blob, 0)
    header_end = PREFIX.size + head_len
    data_start = header_end + 8 + (-(header_end + 8)) % ALIGN
    sections = {name: (parsed.offsets[name], len(view)) for name, view in parsed.sections.items()}
    for view in parsed.sections.values():
        view.release()
    return Layout(blob, parsed.header, PREFIX.size, header_end, data_start, sections)


def forge(
    header: dict[str, Any] | bytes,
    data: bytes,
    *,
    magic: bytes = session_format.MAGIC,
    version: int = session_format.FORMAT_VERSION,
    header_len: int | None = None,
) -> bytes:
    """A session file with ``header`` (a dict, or raw JSON bytes) and ``data`` after the aligned lead.

    The header digest is always correct, so the file passes the header checksum whatever it says.
    """
    head = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    lead = PREFIX.pack(magic, version, len(head) if header_len is None else header_len) + head
    lead += bytes.fromhex(digest(head))
    lead += bytes((-len(lead)) % ALIGN)
    return lead + data


def reseal(layout: Layout, replace: dict[str, bytes], header_changes: dict[str, Any] | None = None) -> bytes:
    """The session rebuilt with some sections replaced, every length and checksum recomputed."""
    header = {k: v for k, v in layout.header.items() if k != "sections"}
    header.update(header_changes or {})
    sections = [(name, replace.get(name, layout.section(name))) for name in layout.sections]
    return b"".join(bytes(chunk) for chunk in session_format.build(header, sections))


def with_table(layout: Layout, table: list[Any], header_changes: dict[str, Any] | None = None) -> bytes:
    """The pristine data under a header whose section table is ``table`` (lengths/offsets may lie)."""
    header = dict(layout.header, sections=table)
    header.update(header_changes or {})
    return forge(header, layout.blob[layout.data_start :])


def table_entry(layout: Layout, name: str) -> dict[str, Any]:
    start, length = layout.sections[name]
    return {"name": name, "offset": start - layout.data_start, "length": length, "xxh3": digest(layout.section(name))}


@dataclass
class KvLayout:
    """The fields of a llama.cpp sequence-state blob for a plain (one-stream, unified) KV cache.

    ``u32 magic, u32 seq, u32 n_stream, u32 cell_count, cell_count x (i32 pos, u32 n_seq, i32 seq),
    u32 v_trans, u32 n_layer, per layer (i32 type, u64 row size, rows)...``. A sliding-window model
    stores two such caches (full layers, then window layers) after one magic and seq.
    """

    kv: bytes
    cell_count: int

    N_STREAM = 8
    CELL_COUNT = 12
    CELLS = 16
    CELL_SIZE = 12

    @classmethod
    def of(cls, kv: bytes) -> KvLayout:
        (count,) = struct.unpack_from("<I", kv, cls.CELL_COUNT)
        return cls(kv, count)

    @property
    def cells_end(self) -> int:
        return self.CELLS + self.CELL_SIZE * self.cell_count

    def pos_offset(self, cell: int) -> int:
        return self.CELLS + self.CELL_SIZE * cell

    def n_seq_offset(self, cell: int) -> int:
        return self.pos_offset(cell) + 4

    def seq_offset(self, cell: int) -> int:
        return self.pos_offset(cell) + 8

    @property
    def v_trans_offset(self) -> int:
        return self.cells_end

    @property
    def n_layer_offset(self) -> int:
        return self.cells_end + 4

    @property
    def first_k_type_offset(self) -> int:
        return self.cells_end + 8

    @property
    def first_k_row_offset(self) -> int:
        return self.cells_end + 12

    @property
    def first_k_data_offset(self) -> int:
        return self.cells_end + 20

    def positions(self) -> list[int]:
        raw = np.frombuffer(self.kv, dtype="<i4", count=3 * self.cell_count, offset=self.CELLS)
        return [int(p) for p in raw[0::3]]


def patch(data: bytes, offset: int, fmt: str, *values: Any) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)
