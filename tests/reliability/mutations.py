"""Damaged session files, generated the same way in the test and in the worker that restores them.

:func:`all_cases` lists every case for a set of pristine sessions in a fixed order (the random
choices are seeded), so the test process and a worker process agree on case ids and only ids
travel between them. A case is a dict: ``id``, ``base`` (the pristine session it starts from),
``family``, ``what``, ``expect``, ``history`` (whether the history must still be recoverable from
the error), ``verify`` (the restore's verify mode) and ``build`` (makes the file's bytes, or names
a special kind of path: see ``SPECIAL``).

``expect`` is one of:

* ``error``: a typed error (SessionCorruptError, or SessionMismatchError where the header says so);
* ``error-or-intact``: an error, or a restore identical to the pristine one (the damage hit bytes
  nothing reads, or the engine fell back to evaluating the tokens). Alignment padding is not such a
  place: no checksum covers it, but every byte of it must be zero, so damage there is an ``error``;
* ``safe``: any typed error, or a restore whose KV cache agrees with its tokens and that can go on
  (a forged but self-consistent file: no checksum can tell it from a real one);
* ``mismatch``: SessionMismatchError carrying the history;
* ``earlier``: a restore of what the whole records before the damaged one make (``messages``: its
  message count), its KV cache agreeing with its tokens (a damaged, torn or foreign record and what
  follows it are ignored, never an error: the base and the records before it are whole). With
  ``or_error`` a typed error is fine too: bytes right after the base that do not start like a record
  (the first record's magic damaged) make the file refused, as bytes appended to a session are.

A base whose file has records (saved after each turn) gets only the record generators: damage to a
base is what the other bases are for.
"""

from __future__ import annotations

import functools
import json
import random
import struct
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmchat_jupyter.core import signing
from lmchat_jupyter.engine.session import container as session_format
from lmchat_jupyter.engine.session import records as session_records
from lmchat_jupyter.engine.session.history_patches import history_in

from .forge import KvLayout, Layout, digest, forge, patch, reseal, table_entry, with_table

Case = dict[str, Any]
SPECIAL = ("empty", "directory", "fifo", "symlink-loop", "dangling-symlink")
Transform = Callable[[bytes], bytes]


def all_cases(layouts: dict[str, Layout], limits: dict[str, tuple[int, int]]) -> list[Case]:
    """Every case the generators make for these pristine sessions, in a fixed order.

    ``limits`` gives each base session's model's ``(n_vocab, n_ctx)``.
    """
    cases: list[Case] = []
    for base, layout in layouts.items():
        n_vocab, n_ctx = limits[base]
        others = {name: lay for name, lay in layouts.items() if name != base and _same_model(name, base)}
        rng = random.Random(f"cases:{base}")
        generators = (_record_damage,) if _record_spans(layout) else _BASE_GENERATORS
        for gen in generators:
            for case in gen(layout, rng, n_vocab=n_vocab, n_ctx=n_ctx, others=others):
                case.setdefault("history", False)
                case.setdefault("verify", "auto")
                case["base"] = base
                cases.append(case)
    for i, case in enumerate(cases):
        case["id"] = i
    return cases


def _same_model(a: str, b: str) -> bool:
    return a.split("-")[0] == b.split("-")[0]


def select(cases: list[Case], n: int, *, heavy: bool = True, seed: str = "select") -> list[Case]:
    """``n`` cases spread evenly over every (base, family) pair, the same ones on every run.

    ``heavy=False`` leaves out the cases that cost a minute each (evaluating a full context).
    """
    groups: dict[tuple[str, str], list[Case]] = defaultdict(list)
    for case in cases:
        if heavy or not case.get("heavy"):
            groups[(case["base"], case["family"])].append(case)
    rng = random.Random(seed)
    for key in sorted(groups):
        rng.shuffle(groups[key])
    keys = sorted(groups)
    chosen: list[Case] = []
    depth = 0
    while len(chosen) < n and any(len(groups[k]) > depth for k in keys):
        for key in keys:
            if len(groups[key]) > depth and len(chosen) < n:
                chosen.append(groups[key][depth])
        depth += 1
    return sorted(chosen, key=lambda c: c["id"])


def describe(case: Case) -> dict[str, Any]:
    """The JSON-able part of a case."""
    return {k: v for k, v in case.items() if k != "build"}


# --- builders ----------------------------------------------------------------------------------


def _build(fn: Callable[..., bytes | str], *args: Any) -> dict[str, Any]:
    """The case's file, built only when the case runs (files are up to megabytes each)."""
    return {"build": functools.partial(fn, *args)}


def _const(value: bytes | str) -> bytes | str:
    return value


def _truncate(layout: Layout, at: int) -> bytes:
    return layout.blob[:at]


def _flip(layout: Layout, at: int, bit: int) -> bytes:
    out = bytearray(layout.blob)
    out[at] ^= 1 << bit
    return bytes(out)


def _overwrite(layout: Layout, at: int, data: bytes) -> bytes:
    out = bytearray(layout.blob)
    out[at : at + len(data)] = data
    return bytes(out)


def _resealed(layout: Layout, name: str, transform: Transform) -> bytes:
    return reseal(layout, {name: transform(layout.section(name))})


def _with_header_changes(layout: Layout, changes: dict[str, Any]) -> bytes:
    return reseal(layout, {}, changes)


def _forged_lead(layout: Layout, claim: int) -> bytes:
    blob = layout.blob
    head = blob[16 : 16 + claim]
    return struct.pack("<8sII", blob[:8], 1, claim) + head + bytes.fromhex(digest(head)) + blob[16 + claim + 8 :]


def _forged_header(layout: Layout, head: bytes | dict[str, Any]) -> bytes:
    return forge(head, layout.blob[layout.data_start :])


# --- generators ----------------------------------------------------------------------------------


def _special(layout: Layout, rng: random.Random, **_: Any) -> Iterator[Case]:
    for kind in SPECIAL:
        yield {"family": "special", "what": kind, **_build(_const, kind), "expect": "error"}


def _history_survives(layout: Layout, touched_from: int, touched_to: int) -> bool:
    """True when bytes ``[touched_from, touched_to)`` miss the lead, the header and the history."""
    start, length = layout.sections["history"]
    protected = [(0, layout.header_end + 8), (start, start + length)]
    return all(touched_to <= a or touched_from >= b for a, b in protected)


def _truncations(layout: Layout, rng: random.Random, **_: Any) -> Iterator[Case]:
    size = len(layout.blob)
    last_end = max(s + n for s, n in layout.sections.values())
    points: set[int] = set()
    for b in layout.boundaries():
        for d in (-7, -1, 0, 1, 7):
            if 0 <= b + d < size:
                points.add(b + d)
    points.update(rng.randrange(size) for _ in range(8))
    for at in sorted(points):
        yield {
            "family": "truncate",
            "what": f"cut at byte {at} of {size}",
            **_build(_truncate, layout, at),
            "expect": "error-or-intact" if at >= last_end else "error",
            "history": _history_survives(layout, at, size),
        }


def _regions(layout: Layout) -> list[tuple[str, int, int, bool]]:
    """(name, start, end, checksummed) for every part of the file; padding has no checksum (it must be zero)."""
    regions = [
        ("magic", 0, 8, True),
        ("format version", 8, 12, True),
        ("header length", 12, 16, True),
        ("header", layout.header_start, layout.header_end, True),
        ("header digest", layout.header_end, layout.header_end + 8, True),
    ]
    if layout.data_start > layout.header_end + 8:
        regions.append(("lead padding", layout.header_end + 8, layout.data_start, False))
    for name, (start, length) in sorted(layout.sections.items(), key=lambda kv: kv[1][0]):
        regions.append((f"section {name}", start, start + length, True))
        pad_end = start + length + (-length) % 64
        if pad_end > start + length:
            regions.append((f"padding after {name}", start + length, pad_end, False))
    return regions


def _bit_flips(layout: Layout, rng: random.Random, **_: Any) -> Iterator[Case]:
    for name, start, end, checked in _regions(layout):
        for _flip_no in range(12 if checked else 3):
            at = rng.randrange(start, end)
            bit = rng.randrange(8)
            yield {
                "family": "bit flip",
                "what": f"bit {bit} of byte {at} ({name})",
                **_build(_flip, layout, at, bit),
                "expect": "error",
                "history": _history_survives(layout, at, at + 1),
            }
        if checked and end - start >= 16:
            at = rng.randrange(start, end - 15)
            noise = bytes(rng.randrange(256) for _ in range(16))
            yield {
                "family": "burst",
                "what": f"16 random bytes at {at} ({name})",
                **_build(_overwrite, layout, at, noise),
                "expect": "error",
                "history": _history_survives(layout, at, at + 16),
            }


def padding_regions(layout: Layout) -> list[tuple[str, int, int]]:
    """(name, start, end) of each run of zero bytes the container pads with: after the header's digest
    and after each section whose length is not a multiple of 64."""
    return [(name, start, end) for name, start, end, checksummed in _regions(layout) if not checksummed]


def _padding_damage(layout: Layout, rng: random.Random, **_: Any) -> Iterator[Case]:
    """A byte that is not zero in the padding, at its first and last byte: refused, the history kept."""
    for name, start, end in padding_regions(layout):
        for at, value in sorted({(start, 1), (end - 1, 0x80), (rng.randrange(start, end), 0xFF)}):
            yield {
                "family": "padding",
                "what": f"byte {at} ({name}) set to {value:#04x}",
                **_build(_overwrite, layout, at, bytes([value])),
                "expect": "error",
                "history": _history_survives(layout, at, at + 1),
            }


def _lead_lies(layout: Layout, rng: random.Random, **_: Any) -> Iterator[Case]:
    size = len(layout.blob)
    head_len = layout.header_end - layout.header_start
    for magic in (b"\0" * 8, b"LMCHATS\x01", b"lmchats\x00", b"GGUF\x03\0\0\0", b"PK\x03\x04\0\0\0\0", b"\xff" * 8):
        yield {"family": "magic", "what": f"magic {magic!r}", **_build(_overwrite, layout, 0, magic), "expect": "error"}
    for version in (0, 3, 4, 255, 2**16, 2**32 - 1):
        packed = struct.pack("<I", version)
        yield {"family": "version", "what": f"format {version}", **_build(_overwrite, layout, 8, packed),
               "expect": "error"}  # fmt: skip
    for claim in (0, 1, head_len - 1, head_len + 1, head_len + 64, size - 24, size, 2**26, 2**26 + 1, 2**31, 2**32 - 1):
        packed = struct.pack("<I", claim)
        yield {"family": "header length", "what": f"header length {claim} (really {head_len})",
               **_build(_overwrite, layout, 12, packed), "expect": "error"}  # fmt: skip
    # Lengths that lie but come with a matching digest (the digest covers the claimed bytes).
    for claim in (head_len - 1, head_len // 2, head_len + 8, head_len + 100):
        yield {"family": "header length", "what": f"header length {claim} with its digest",
               **_build(_forged_lead, layout, claim), "expect": "error"}  # fmt: skip
    yield {"family": "lead", "what": "the lead alone", **_build(_truncate, layout, 16), "expect": "error"}
    yield {"family": "lead", "what": "a text file", **_build(_const, b"# notes\n" * 100), "expect": "error"}
    yield {"family": "lead", "what": "one byte", **_build(_const, b"L"), "expect": "error"}


def _header_lies(layout: Layout, rng: random.Random, **_: Any) -> Iterator[Case]:
    bad: list[tuple[str, bytes | dict[str, Any]]] = [
        ("header is a list", b"[1,2,3]"),
        ("header is a string", b'"sections"'),
        ("header is null", b"null"),
        ("header is a number", b"1e999"),
        ("header is empty", b""),
        ("header is not JSON", b"{sections: []}"),
        ("header is not UTF-8", b'{"sections":[], "x":"\xff\xfe"}'),
        ("header nests 100000 lists", b"[" * 100_000 + b"]" * 100_000),
        ("header nests 100000 objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
        ("header has a 5000-digit number", b'{"sections":[],"n_tokens":' + b"9" * 5000 + b"}"),
        ("header has NaN", b'{"sections":NaN}'),
        ("header has duplicate keys", b'{"sections":[],"sections":"x"}'),
    ]
    rest = {k: v for k, v in layout.header.items() if k != "sections"}
    bad += [
        ("section table missing", rest),
        ("section table is a dict", dict(rest, sections={"kv": {}})),
        ("section table is empty", dict(rest, sections=[])),
        ("section table is a string", dict(rest, sections="history")),
    ]
    for what, head in bad:
        yield {"family": "header", "what": what, **_build(_forged_header, layout, head), "expect": "error"}


def _table_lies(layout: Layout, rng: random.Random, **_: Any) -> Iterator[Case]:
    names = list(layout.sections)
    table = [table_entry(layout, n) for n in names]
    size = len(layout.blob)

    def variant(what: str, new_table: list[Any], expect: str = "error") -> Case:
        return {"family": "lying table", "what": what, **_build(with_table, layout, new_table), "expect": expect}

    for i, name in enumerate(names):
        entry = table[i]
        for field, values in (
            ("length", (entry["length"] + 1, entry["length"] - 1, 0, size, 2**40, 2**63, 2**64 + 5, -1, -(2**63),
                        1.5, "12", None, True, [1])),
            ("offset", (entry["offset"] + 1, entry["offset"] - 1, -1, -(2**40), size, 2**40, 2**64, 0.0, "0",
                        None, False)),
            ("xxh3", ("0" * 16, "", "zz", 12, None, entry["xxh3"].upper())),
            ("name", ("KV", "kv ", "", None, 7, "history\x00")),
        ):  # fmt: skip
            for value in values:
                if value == entry[field] and type(value) is type(entry[field]):
                    continue
                changed = [dict(e) for e in table]
                changed[i][field] = value
                yield variant(f"{name}.{field} = {value!r}", changed)
        # Lengths that lie, with the checksum of the bytes they claim: only bounds and parsing stop them.
        start, length = layout.sections[name]
        for delta in (-8, -1, 1, 64):
            new_len = length + delta
            if new_len < 0 or start + new_len > size:
                continue
            changed = [dict(e) for e in table]
            changed[i]["length"] = new_len
            changed[i]["xxh3"] = digest(layout.blob[start : start + new_len])
            yield variant(f"{name} length {delta:+d}, checksum recomputed", changed, expect="safe")
    # Sections pointing at each other's bytes, with those bytes' checksums.
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                changed = [dict(e) for e in table]
                changed[i] = dict(table[j], name=a)
                yield variant(
                    f"{a} points at the bytes of {b}", changed, expect="error-or-intact" if a == "kv" else "safe"
                )
    yield variant("a section missing", table[:-1])
    yield variant("a section twice", table + [table[0]])
    yield variant("an unknown section", table + [dict(table[0], name="extra")])
    yield variant("entries are lists", [[e["name"], e["offset"], e["length"], e["xxh3"]] for e in table])
    yield variant("entries are null", [None for _ in table])
    yield variant("sections listed in reverse", list(reversed(table)), expect="error-or-intact")


def _section_case(layout: Layout, family: str, what: str, name: str, transform: Transform, expect: str,
                  history: bool, verify: str = "auto") -> Case:  # fmt: skip
    return {"family": family, "what": what, **_build(_resealed, layout, name, transform), "expect": expect,
            "history": history, "verify": verify}  # fmt: skip


def _replace_with(data: bytes) -> Transform:
    return functools.partial(_const_transform, data)


def _const_transform(data: bytes, _old: bytes) -> bytes:
    return data


def _history_forgeries(layout: Layout, rng: random.Random, **_: Any) -> Iterator[Case]:
    good = json.loads(layout.section("history"))

    def hist(what: str, data: bytes, expect: str = "error") -> Case:
        return _section_case(layout, "forged history", what, "history", _replace_with(data), expect, False)

    def doc(**change: Any) -> bytes:
        return json.dumps(dict(good, **change)).encode()

    msgs = good["messages"]
    deep = b"[" * 100_000 + b"]" * 100_000
    yield hist("history is not JSON", b"{not json")
    yield hist("history is not UTF-8", b'{"format":1,"messages":[],"x":"\xff"}')
    yield hist("history nests deeply", deep)
    yield hist("a message nests deeply", b'{"format":1,"messages":[' + deep + b"]}")
    yield hist(
        "a meta nests deeply", b'{"format":1,"messages":[{"role":"user","content":"x","meta":{"a":' + deep + b"}}]}"
    )
    yield hist("history format 2", doc(format=2))
    yield hist("history format missing", json.dumps({k: v for k, v in good.items() if k != "format"}).encode())
    yield hist("messages is a dict", doc(messages={}))
    yield hist("a message with role 'tool'", doc(messages=msgs + [{"role": "tool", "content": "x"}]))
    yield hist("a message without content", doc(messages=msgs + [{"role": "user"}]))
    yield hist("a message with a numeric content", doc(messages=msgs + [{"role": "user", "content": 5}]))
    yield hist("a system message in the middle", doc(messages=msgs + [{"role": "system", "content": "late"}]))
    yield hist("an id with control characters", doc(conversation_id="a\nb"))
    yield hist("an id of 10000 characters", doc(conversation_id="a" * 10_000))
    yield hist("a meta holding an object", doc(messages=[dict(msgs[-1], meta={"x": {"y": 1}})]))
    yield hist("25000 messages", doc(messages=[{"role": "user", "content": "x"}] * 25_000))
    yield hist("a message of 2.5 million characters", doc(messages=[{"role": "user", "content": "x" * 2_500_000}]))
    yield hist("no messages at all", doc(messages=[]), expect="safe")
    yield hist("other messages than the tokens hold", doc(messages=[{"role": "user", "content": "Other."}]), "safe")


def _engine_forgeries(layout: Layout, rng: random.Random, **_: Any) -> Iterator[Case]:
    good = json.loads(layout.section("engine"))
    n_tok = len(layout.section("tokens")) // 4
    text = good["text"]
    half = len(text) // 2

    def eng(what: str, data: bytes | dict[str, Any], expect: str = "error") -> Case:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        return _section_case(layout, "forged engine state", what, "engine", _replace_with(raw), expect, True)

    yield eng("engine is not JSON", b"{")
    yield eng("engine is not UTF-8", b'{"text":"\xff"}')
    yield eng("engine nests deeply", b"[" * 100_000 + b"]" * 100_000)
    yield eng("engine is a list", b"[]")
    yield eng("text is a number", dict(good, text=5))
    yield eng("checkpoints missing", {"text": text})
    yield eng("checkpoints empty", dict(good, checkpoints=[]))
    yield eng("a checkpoint of three numbers", dict(good, checkpoints=[[0, 0, 0]]))
    yield eng("a checkpoint of strings", dict(good, checkpoints=[["0", "0"]]))
    yield eng("a checkpoint past the text", dict(good, checkpoints=[[0, 0], [len(text) + 1, n_tok]]))
    yield eng("a checkpoint past the tokens", dict(good, checkpoints=[[0, 0], [len(text), n_tok + 1]]))
    yield eng("a negative checkpoint", dict(good, checkpoints=[[0, 0], [-1, 3]]))
    yield eng("checkpoints going back", dict(good, checkpoints=[[0, 0], [5, 9], [6, 2]]))
    yield eng("a huge checkpoint", dict(good, checkpoints=[[0, 0], [2**70, 2**70]]))
    yield eng("checkpoints not from zero", dict(good, checkpoints=[[3, 2]]), expect="safe")
    yield eng("text cut short", dict(good, text=text[:half], checkpoints=[[0, 0], [half, n_tok // 2]]), "safe")
    yield eng("text replaced", dict(good, text="x" * len(text)), expect="safe")
    yield eng("text empty", dict(good, text="", checkpoints=[[0, 0]]), expect="safe")


def _token_forgeries(layout: Layout, rng: random.Random, *, n_vocab: int, n_ctx: int, **_: Any) -> Iterator[Case]:
    tokens = np.frombuffer(layout.section("tokens"), dtype="<i4")

    def tok(what: str, data: bytes | np.ndarray, expect: str = "error") -> Case:
        raw = data if isinstance(data, bytes) else np.asarray(data, dtype="<i4").tobytes()
        return _section_case(layout, "forged tokens", what, "tokens", _replace_with(raw), expect, True)

    shuffled = tokens.copy()
    random.Random(1).shuffle(shuffled)  # type: ignore[arg-type]
    yield tok("tokens of odd length", layout.section("tokens")[:-1])
    yield tok("a token id of n_vocab", np.append(tokens[:-1], n_vocab))
    yield tok("a token id of -1", np.append(tokens[:-1], -1))
    yield tok("a token id of 2**31-1", np.append(tokens[:-1], 2**31 - 1))
    yield tok("more tokens than n_ctx", np.resize(tokens, n_ctx + 1))
    yield dict(tok("exactly n_ctx tokens", np.resize(tokens, n_ctx), expect="safe"), heavy=True)
    yield tok("one token fewer", tokens[:-1], expect="safe")
    yield tok("one token more", np.append(tokens, tokens[-1]), expect="safe")
    yield tok("the first token dropped", tokens[1:], expect="safe")
    yield tok("no tokens", b"", expect="safe")
    yield tok("tokens reversed", tokens[::-1], expect="safe")
    yield tok("other token ids, same count", (tokens + 7) % n_vocab, expect="safe")
    yield tok("tokens shuffled", shuffled, expect="safe")


def _kv_patch(fmt: str, offset: int, value: int, kv: bytes) -> bytes:
    return patch(kv, offset, fmt, value)


def _kv_positions(kind: str, kv: bytes) -> bytes:
    lay = KvLayout.of(kv)
    out = bytearray(kv)
    n = lay.cell_count
    for cell in range(n):
        pos = cell + 1000 if kind == "shift" else n - 1 - cell
        struct.pack_into("<i", out, lay.pos_offset(cell), pos)
    return bytes(out)


def _kv_flips(seed: int, count: int, kv: bytes) -> bytes:
    rng = random.Random(seed)
    start = KvLayout.of(kv).first_k_data_offset
    out = bytearray(kv)
    for _ in range(count):
        out[rng.randrange(start, len(kv))] ^= 1 << rng.randrange(8)
    return bytes(out)


def _kv_nan(kv: bytes) -> bytes:
    start = KvLayout.of(kv).first_k_data_offset
    out = bytearray(kv)
    out[start : start + 4096] = b"\x00\x7e" * 2048  # f16 NaN
    return bytes(out)


def _kv_random(seed: int, kv: bytes) -> bytes:
    return random.Random(seed).randbytes(len(kv))


def _kv_zeros(kv: bytes) -> bytes:
    return bytes(len(kv))


def _kv_cut(at: int, kv: bytes) -> bytes:
    return kv[:at]


def _kv_append(kv: bytes) -> bytes:
    return kv + bytes(100)


def _kv_forgeries(layout: Layout, rng: random.Random, *, others: dict[str, Layout], **_: Any) -> Iterator[Case]:
    kv = layout.section("kv")
    lay = KvLayout.of(kv)
    n = lay.cell_count

    def forged(what: str, transform: Transform, expect: str = "safe", verify: str = "auto") -> Case:
        return _section_case(layout, "forged kv", what, "kv", transform, expect, True, verify)

    def field(fmt: str, offset: int, value: int) -> Transform:
        return functools.partial(_kv_patch, fmt, offset, value)

    yield forged("kv of random bytes", functools.partial(_kv_random, rng.randrange(2**32)), "error-or-intact")
    yield forged("kv of zeros", _kv_zeros, "error-or-intact")
    yield forged("kv empty", _replace_with(b""), "error-or-intact")
    yield forged("kv with 100 bytes appended", _kv_append, "error-or-intact")
    cuts = {4, 8, 12, 16, lay.cells_end - 1, lay.cells_end, lay.first_k_data_offset, len(kv) // 2, len(kv) - 1}
    cuts.update(rng.randrange(len(kv)) for _ in range(4))
    for at in sorted(cuts):
        yield forged(f"kv cut at {at} of {len(kv)}", functools.partial(_kv_cut, at), "error-or-intact")
    for count in (0, n - 1, n + 1, 2 * n, 2**31, 2**32 - 1):
        yield forged(f"kv cell count {count} (really {n})", field("<I", lay.CELL_COUNT, count))
    for streams in (0, 2, 2**32 - 1):
        yield forged(f"kv stream count {streams}", field("<I", lay.N_STREAM, streams))
    yield forged("kv magic changed", field("<I", 0, 0x12345678))
    yield forged("kv source sequence 7", field("<i", 4, 7), "error-or-intact")
    for what, cell, value in (
        ("a negative position", n // 2, -5),
        ("position 2**31-1", n - 1, 2**31 - 1),
        ("position -2**31", 0, -(2**31)),
        ("a duplicated position", n // 2, max(0, n // 2 - 1)),
        ("a position past the tokens", n - 1, n + 10),
    ):
        yield forged(f"kv with {what}", field("<i", lay.pos_offset(cell), value))
    yield forged("kv positions shifted by 1000", functools.partial(_kv_positions, "shift"))
    yield forged("kv positions reversed", functools.partial(_kv_positions, "reverse"))
    for value in (0, 2, 2**32 - 1):
        yield forged(f"kv cell with {value} sequences", field("<I", lay.n_seq_offset(n // 2), value))
    for value in (-1, 1, 2**31 - 1):
        yield forged(f"kv cell in sequence {value}", field("<i", lay.seq_offset(n // 2), value))
    (v_trans,) = struct.unpack_from("<I", kv, lay.v_trans_offset)
    yield forged("kv v_trans flipped", field("<I", lay.v_trans_offset, 1 - v_trans))
    (n_layer,) = struct.unpack_from("<I", kv, lay.n_layer_offset)
    for value in (0, n_layer - 1, n_layer + 1, 2**32 - 1):
        yield forged(f"kv layer count {value} (really {n_layer})", field("<I", lay.n_layer_offset, value))
    for value in (0, 8, 39, -1, 2**31 - 1):
        yield forged(f"kv key type {value}", field("<i", lay.first_k_type_offset, value))
    (row,) = struct.unpack_from("<Q", kv, lay.first_k_row_offset)
    for value in (0, row - 1, row + 1, 2**63, 2**64 - 1):
        yield forged(f"kv key row size {value} (really {row})", field("<Q", lay.first_k_row_offset, value))
    for count in (1, 50):
        flips = functools.partial(_kv_flips, rng.randrange(2**32), count)
        yield forged(f"{count} bit flips in the kv tensors", flips)
        yield forged(f"{count} bit flips in the kv tensors, verified", flips, "error-or-intact", "always")
    yield forged("NaN in the kv tensors", _kv_nan)
    yield forged("NaN in the kv tensors, verified", _kv_nan, "error-or-intact", "always")
    for other_name, other in others.items():
        other_kv = _replace_with(other.section("kv"))
        yield forged(f"the kv of {other_name}", other_kv)
        yield forged(f"the kv of {other_name}, verified", other_kv, "error-or-intact", "always")


def _compat_forgeries(layout: Layout, rng: random.Random, **_: Any) -> Iterator[Case]:
    compat = layout.header.get("compat", {})

    def header(what: str, changes: dict[str, Any], expect: str = "mismatch", verify: str = "auto") -> Case:
        return {"family": "forged header fields", "what": what, **_build(_with_header_changes, layout, changes),
                "expect": expect, "history": True, "verify": verify}  # fmt: skip

    for key in sorted(compat):
        yield header(f"compat.{key} changed", {"compat": dict(compat, **{key: _other_value(compat[key])})})
    yield header("compat missing", {"compat": None})
    yield header("compat is a list", {"compat": [1, 2]})
    yield header("compat is a string", {"compat": "llama"})
    yield header("compat is a number", {"compat": 3})
    yield header("compat has an extra field", {"compat": dict(compat, extra=1)})
    yield header("compat model_name is a dict", {"compat": dict(compat, model_name={"a": 1})})
    for value in (None, [], [[1]], [["a", "b"]], [[1, 2, 3]], "x", [[0, 1e308]], {"a": 1}, [[2**70, 1.0]]):
        yield header(f"verify = {value!r}", {"verify": value}, expect="error-or-intact", verify="always")
    yield header("n_tokens lies", {"n_tokens": 10**9}, expect="error-or-intact")
    yield header("unknown header fields", {"future": {"x": [1]}}, expect="error-or-intact")


def _other_value(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    return "other"


_BASE_GENERATORS = (
    _special,
    _truncations,
    _bit_flips,
    _lead_lies,
    _header_lies,
    _table_lies,
    _history_forgeries,
    _engine_forgeries,
    _token_forgeries,
    _kv_forgeries,
    _compat_forgeries,
    _padding_damage,
)


# --- records -------------------------------------------------------------------------------------


@dataclass
class RecordSpan:
    """One record of a pristine file: where it is, its parts, and the messages once it is applied."""

    start: int
    end: int
    header_end: int  # one past the JSON header (its 8-byte digest follows)
    sections: dict[str, tuple[int, int]]  # name -> (absolute start, length)
    messages: int
    header: dict[str, Any]


def _record_spans(layout: Layout) -> list[RecordSpan]:
    """The records after a pristine file's base (none for a file of one part)."""
    blob = layout.blob
    with memoryview(blob) as view:
        base = session_format.parse(view, "pristine")
        for section in base.sections.values():
            section.release()
        if base.end == len(blob):
            return []
        scan = session_records.read_records(view, base.end, base.chain, signed=False)
        assert scan.problem is None, scan.problem
        spans = []
        for record in scan.records:
            _, _, head_len = struct.unpack_from("<8sII", blob, record.start)
            history = history_in(view[: record.start + record.length])
            assert history is not None
            data_start = record.start + 16 + head_len + 8 + (-(16 + head_len + 8)) % 64
            sections = {e["name"]: (data_start + e["offset"], e["length"]) for e in record.header["sections"]}
            spans.append(RecordSpan(record.start, record.start + record.length, record.start + 16 + head_len,
                                    sections, len(history), record.header))  # fmt: skip
            record.release()
    return spans


def _messages_before(layout: Layout, spans: list[RecordSpan], index: int) -> int:
    """Messages a restore gives when record ``index`` and those after it are ignored."""
    if index > 0:
        return spans[index - 1].messages
    with memoryview(layout.blob) as view:
        history = history_in(view[: spans[0].start])
    assert history is not None
    return len(history)


def _earlier(what: str, family: str, build: dict[str, Any], messages: int) -> Case:
    return {"family": family, "what": what, **build, "expect": "earlier", "messages": messages}


def _record_bytes(layout: Layout, span: RecordSpan, header: dict[str, Any], replace: dict[str, bytes],
                  seal: bool = True) -> bytes:  # fmt: skip
    """A record rebuilt with header fields and sections replaced (checksums and, with ``seal``, signature valid)."""
    fields = {k: v for k, v in header.items() if k not in ("sections", "size", "signature")}
    sections = [(name, replace.get(name, layout.blob[s : s + n])) for name, (s, n) in span.sections.items()]
    chunks = session_records.build_record(fields, sections, seal=signing.sign_header if seal else None)
    return b"".join(bytes(c) for c in chunks)


def _with_record(layout: Layout, index: int, record: bytes) -> bytes:
    """The file up to record ``index``, then ``record`` in its place and nothing after it."""
    spans = _record_spans(layout)
    return layout.blob[: spans[index].start] + record


def _forged_record(layout: Layout, index: int, changes: dict[str, Any], replace: dict[str, bytes],
                   seal: bool = True) -> bytes:  # fmt: skip
    span = _record_spans(layout)[index]
    return _with_record(layout, index, _record_bytes(layout, span, dict(span.header, **changes), replace, seal))


def _swapped_kv(layout: Layout, index: int, other: int) -> bytes:
    spans = _record_spans(layout)
    start, length = spans[other].sections["kv"]
    return _forged_record(layout, index, {}, {"kv": layout.blob[start : start + length]})


def _records_reordered(layout: Layout) -> bytes:
    spans = _record_spans(layout)
    blob = layout.blob
    return blob[: spans[0].start] + b"".join(blob[s.start : s.end] for s in reversed(spans))


def _record_padding(span: RecordSpan) -> list[tuple[str, int, int]]:
    """(name, start, end) of a record's zero padding: after its header's digest and after each section."""
    data_start = min((s for s, _ in span.sections.values()), default=span.end)
    regions = [("lead padding", span.header_end + 8, data_start)]
    for name, (start, length) in span.sections.items():
        regions.append((f"padding after {name}", start + length, start + length + (-length) % 64))
    return [(name, start, end) for name, start, end in regions if end > start]


def _record_damage(layout: Layout, rng: random.Random, **_: Any) -> Iterator[Case]:
    """Torn, damaged, foreign and forged records: each ends the reading, the records before it stay."""
    spans = _record_spans(layout)
    size = len(layout.blob)
    last = len(spans) - 1
    for i, span in enumerate(spans):
        before = _messages_before(layout, spans, i)
        kv_start, kv_len = span.sections["kv"]
        points = {span.start + d for d in (1, 7, 8, 16)} | {span.header_end, span.header_end + 8}
        points |= {kv_start, kv_start + 1, kv_start + kv_len // 2, span.end - 7, span.end - 1}
        points |= {rng.randrange(span.start + 1, span.end) for _ in range(4)}
        for at in sorted(p for p in points if span.start < p < span.end):
            yield _earlier(f"record {i + 1} cut at byte {at} of {size}", "torn record",
                           _build(_truncate, layout, at), before)  # fmt: skip
        regions = [("magic", span.start, span.start + 8), ("header", span.start + 16, span.header_end),
                   ("header digest", span.header_end, span.header_end + 8)]  # fmt: skip
        regions += [(f"section {name}", s, s + n) for name, (s, n) in span.sections.items() if n]
        for name, start, end in regions:
            for _ in range(3):
                at = rng.randrange(start, end)
                case = _earlier(f"record {i + 1}: bit {at % 8} flipped at byte {at} ({name})", "damaged record",
                                _build(_flip, layout, at, at % 8), before)  # fmt: skip
                case["or_error"] = i == 0 and name == "magic"
                yield case
        for name, _start, end in _record_padding(span):
            yield _earlier(f"record {i + 1}: byte {end - 1} ({name}) not zero", "damaged record",
                           _build(_overwrite, layout, end - 1, b"\x01"), before)  # fmt: skip
        header = span.header
        forged: list[tuple[str, dict[str, Any], dict[str, bytes], bool]] = [
            ("unsigned", {}, {}, False),
            ("numbered wrong", {"record": header["record"] + 1}, {}, True),
            ("following another part", {"prev": "0" * 64}, {}, True),
            ("starting a position later", {"from": header["from"] + 1}, {}, True),
            ("covering a position more", {"to": header["to"] + 1}, {}, True),
            ("positions reversed", {"from": header["to"], "to": header["from"]}, {}, True),
            ("text from elsewhere", {"text_from": header["text_from"] + 1}, {}, True),
            ("no KV state", {}, {"kv": b""}, True),
            ("a history change keeping too much", {}, {"history": b'{"keep": 100000, "messages": []}'}, True),
            ("a history change that is not JSON", {}, {"history": b"{"}, True),
            ("a history change with a bad message", {}, {"history": b'{"keep": 0, "messages": [{"role": "x"}]}'}, True),
            ("an engine section that is a list", {}, {"engine": b"[]"}, True),
            ("checkpoints past the text", {}, {"engine": b'{"text": "", "checkpoints": [[0, 0], [99999, 1]]}'}, True),
            ("a token outside the vocabulary", {}, {"tokens": struct.pack("<i", 2**31 - 1) * (header["to"] - header["from"])}, True),
        ]  # fmt: skip
        for what, changes, replace, seal in forged:
            yield _earlier(f"record {i + 1} {what}", "forged record",
                           _build(_forged_record, layout, i, changes, replace, seal), before)  # fmt: skip
        if i < last:
            # Another record's KV state: llama.cpp refuses its positions, the tokens are evaluated again.
            yield {"family": "forged record", "what": f"record {i + 1} with record {i + 2}'s KV state",
                   **_build(_swapped_kv, layout, i, i + 1), "expect": "safe"}  # fmt: skip
    yield _earlier("records in reverse order", "foreign record", _build(_records_reordered, layout),
                   _messages_before(layout, spans, 0))  # fmt: skip
    yield _earlier("a record of another file after the base", "foreign record",
                   _build(_with_record, layout, 0, layout.blob[spans[-1].start :]), _messages_before(layout, spans, 0))  # fmt: skip
    whole = spans[-1].messages
    for extra in (b"L", b"LMCHATR", b"\x00" * 64, b"appended"):
        yield _earlier(f"{extra[:8]!r} after the last record", "torn record",
                       _build(_const, layout.blob + extra), whole)  # fmt: skip
