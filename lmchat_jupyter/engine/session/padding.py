"""The zero bytes of a session container: what its sections do not cover must be zero.

A container (:mod:`.container`) pads its lead (magic, header, header digest) and each section to a
64-byte boundary with zero bytes. No checksum covers them, so they are checked here: every byte between
the end of the header's digest and the end of the last section that no section of the table covers
must be zero. A byte that is not was not written by lmchat, and the file is refused like any other damage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["nonzero_padding"]


def nonzero_padding(buf: memoryview, lead_end: int, data_start: int, entries: Sequence[Any], end: int) -> str | None:
    """Where a byte outside every section (``entries``: the header's checked section table) is not zero,
    as a phrase for the refusal; None where all of them are zero.

    ``lead_end``: where the header's digest ends; ``data_start``: where the sections' offsets count from;
    ``end``: where the last section's padding ends.
    """
    covered = sorted((data_start + e["offset"], data_start + e["offset"] + e["length"]) for e in entries)
    gaps: list[tuple[int, int]] = []
    at = lead_end
    for start, stop in covered:
        if start > at:
            gaps.append((at, start))
        at = max(at, stop)
    gaps.append((at, end))
    for start, stop in gaps:
        if stop <= start:
            continue
        with buf[start:stop] as gap:
            data = gap.tobytes()
        stray = len(data) - len(data.lstrip(b"\0"))
        if stray < len(data):
            where = start + stray
            return f"its padding holds a non-zero byte at offset {where:,} (bytes lmchat did not write)"
    return None
