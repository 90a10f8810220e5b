"""Restore, resume, save and autosave against context length, on SmolLM2-135M and the KV-shape twins.

    python -m benchmarks.real_sizes [--models smollm2-135m,llama-3.2-1b-kv-twin,llama-3.1-8b-kv-twin]
                                    [--lengths 512,2048,8192] [--reps 5] [--write]

For each model and history length (the history's KV state tiled from its first tokens, see
:mod:`benchmarks.long_sessions`), in one run, with the model loaded once:

- **restore**: ``Conversation.restore`` (every check; the KV checksum running on other threads while
  llama.cpp reads the bytes), the same restore with every byte checked first (what lmchat did before),
  and the floor, ``mmap`` + ``llama_state_seq_set_data`` of the raw state, interleaved;
- **resume vs live**: from a restart (no conversation owning the cache, the model loaded) to the
  first token of the next message, against the live conversation's time to that same first token
  (its turn then dropped again), interleaved;
- **save**: a whole save to a new file, and the autosave of the resumed turn (a record appended).

Prints a Markdown section and JSON; ``--write`` puts the section into benchmarks/kv-twins/RESULTS.md
and draws benchmarks/kv-twins/cost.png (:mod:`benchmarks.cost_plot`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmchat_jupyter import Conversation, Model, load_model
from lmchat_jupyter.engine.session import reader as session

from .cost_plot import write_size_plot
from .floors import floor_restore, write_raw_state
from .long_sessions import conversation_at
from .report import write_block
from .twins import TWINS, twin_path
from .workload import first_token, make_history, release

__all__ = ["measure_length", "main"]

HERE = Path(__file__).resolve().parent
OUT = HERE / "kv-twins"
DEFAULT_MODEL = "smollm2-135m"
LABELS = {DEFAULT_MODEL: "SmolLM2-135M"} | {k: f"{v.stands_for} KV twin" for k, v in TWINS.items()}


def _load(key: str, n_ctx: int) -> Model:
    return load_model(None if key == DEFAULT_MODEL else str(twin_path(TWINS[key])), n_ctx=n_ctx)


def _restore(model: Model, path: Path, overlap: bool) -> Conversation:
    """``Conversation.restore``'s steps, with the KV checksum overlapped with loading or run first."""
    with session.open_session(model, path, overlap) as saved:
        conv = Conversation(model, history=saved.history)
        with model.lock:
            conv.cache.activate()
            session.load_into(conv.cache, saved, "auto", True, None)
    conv.history.token_count = len(conv.cache.tokens)
    return conv


def _timed(run: Callable[[], object], model: Model) -> float:
    release(model)
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    release(model)
    return elapsed


def _median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def measure_length(model: Model, n_tokens: int, reps: int, folder: Path) -> dict[str, Any]:
    live = conversation_at(model, make_history(model, n_tokens))
    tokens = len(live.cache.tokens)
    path, raw = folder / f"{n_tokens}.lmsession", folder / f"{n_tokens}.raw"
    save_s = []
    for i in range(1 if n_tokens > 4096 else 2):
        target = folder / f"{n_tokens}-save{i}.lmsession"
        start = time.perf_counter()
        live.save(target)
        save_s.append(time.perf_counter() - start)
        os.replace(target, path)
    with model.lock:
        live.cache.activate()
        state_bytes = write_raw_state(model.backend, raw)
        live.cache.park()  # kept aside while the restores below use the model
    restore_s, checked_first_s, floor_s = [], [], []
    for _ in range(reps):
        restore_s.append(_timed(lambda: _restore(model, path, True), model))
        checked_first_s.append(_timed(lambda: _restore(model, path, False), model))
        floor_s.append(_timed(lambda: floor_restore(model.llm, raw), model))
    resume_s, live_s = [], []
    for _ in range(reps):
        release(model)
        start = time.perf_counter()
        resumed = Conversation.restore(model, path)
        resume_s.append(first_token(resumed) - start)
        del resumed
        release(model)
        with model.lock:
            live.cache.activate()  # its state back (not timed): a live conversation owns the cache
        start = time.perf_counter()
        live_s.append(first_token(live) - start)
        live.drop_turns(1)
        with model.lock:
            live.cache.park()  # its state aside (not timed) while the next resume uses the model
    # The autosave of a resumed turn: a record appended to the file the conversation came from.
    copy = folder / f"{n_tokens}-append.lmsession"
    shutil.copyfile(path, copy)
    release(model)
    resumed = Conversation.restore(model, copy)
    first_token(resumed)
    before = copy.stat().st_size
    start = time.perf_counter()
    resumed.save(copy)
    append_s = time.perf_counter() - start
    record_bytes = copy.stat().st_size - before
    del resumed, live
    release(model)
    for leftover in (raw, copy):
        leftover.unlink()
    med = statistics.median
    return {
        "tokens": tokens,
        "state_bytes": state_bytes,
        "file_bytes": path.stat().st_size,
        "restore": med(restore_s),
        "restore_checked_first": med(checked_first_s),
        "restore_floor": med(floor_s),
        "restore_vs_floor": _median_ratio(restore_s, floor_s),
        "checked_first_vs_floor": _median_ratio(checked_first_s, floor_s),
        "resume": med(resume_s),
        "live": med(live_s),
        "resume_vs_live": _median_ratio(resume_s, live_s),
        "save": med(save_s),
        "append": append_s,
        "record_bytes": record_bytes,
        "samples": {
            "restore": restore_s,
            "checked_first": checked_first_s,
            "floor": floor_s,
            "resume": resume_s,
            "live": live_s,
            "save": save_s,
        },
    }


def _load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (5-min {five:.1f})"


def section(result: dict[str, Any]) -> str:
    """The Markdown section for RESULTS.md."""
    lines = [
        "## Restore, resume and autosave at real sizes",
        "",
        f"`{result['command']}` — {result['date']}, {result['seconds']:.0f} s in all; 1-minute load average "
        f"{result['load_start']} at the start, {result['load_end']} at the end ({result['cores']} cores shared). "
        "No GPU machine was lent to this run: the GPU benchmark remains to be done when one is.",
        "",
        "| Model | History (tokens) | KV state | Restore (every check) | Checked first, then loaded | "
        "mmap + set_data floor | Restore vs floor (target ≤ 1.2×) | Checked first vs floor | "
        "Resume to first token | Live conversation's first token | Resume vs live (target ≤ 1.05×) | "
        "Whole save | Autosave of the turn (record) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in result["models"]:
        for r in model["lengths"]:
            met = "met" if r["restore_vs_floor"] <= 1.2 else "missed"
            met_resume = "met" if r["resume_vs_live"] <= 1.05 else "missed"
            lines.append(
                f"| {model['label']} | {r['tokens']:,} | {r['state_bytes'] / 1e6:,.1f} MB "
                f"| {r['restore'] * 1e3:.1f} ms | {r['restore_checked_first'] * 1e3:.1f} ms "
                f"| {r['restore_floor'] * 1e3:.1f} ms | {r['restore_vs_floor']:.2f}× ({met}) "
                f"| {r['checked_first_vs_floor']:.2f}× | {r['resume'] * 1e3:.0f} ms | {r['live'] * 1e3:.0f} ms "
                f"| {r['resume_vs_live']:.2f}× ({met_resume}) | {r['save']:.2f} s "
                f"| {r['record_bytes'] / 1e6:.2f} MB in {r['append'] * 1e3:.0f} ms |"
            )
    lines += ["", *_memory_lines(result.get("memory")), *_where_the_time_goes(result)]
    return "\n".join(lines)


def _memory_lines(probe: dict[str, Any] | None) -> list[str]:
    """The memory probe's rows (``python -m benchmarks.memory_probe``), where a run was given one."""
    if not probe:
        return []
    lines = [
        f"Peak memory above the loaded model ({probe['label']}, `benchmarks.memory_probe` in a process of its "
        "own; target ≤ 1.1× the state):",
        "",
        "| History (tokens) | KV state | Restore | Whole save | A turn's autosave (record appended) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in probe["rows"]:
        restore, save = _against(row["restore_ratio"], 1.1), _against(row["save_ratio"], 1.1)
        lines.append(
            f"| {row['tokens']:,} | {row['state_bytes'] / 2**30:.2f} GiB | {restore} | {save} "
            f"| {row['append_ratio']:.4f}× ({row['append_extra_bytes'] / 1e6:.1f} MB for a "
            f"{row['record_bytes'] / 1e6:.1f} MB record) |"
        )
    return [
        *lines,
        "",
        "A restore maps the file and llama.cpp copies from the map: the extra memory is the file's pages "
        "while they are read (they leave with the map). A whole save copies the state once, straight into the "
        "buffer that is written. A record holds only the new positions' state, copied from the scratch sequence.",
        "",
    ]


def _against(ratio: float, target: float) -> str:
    return f"{ratio:.3f}× ({'met' if ratio <= target else 'missed'})"


def _where_the_time_goes(result: dict[str, Any]) -> list[str]:
    rows = [(m["label"], r) for m in result["models"] for r in m["lengths"]]
    worst_restore = max(rows, key=lambda lr: lr[1]["restore_vs_floor"])
    best_restore = min(rows, key=lambda lr: lr[1]["restore_vs_floor"])
    worst_resume = max(rows, key=lambda lr: lr[1]["resume_vs_live"])
    gains = [r["restore_checked_first"] / r["restore"] for _, r in rows]
    return [
        "Where the time goes. **Restore**: the floor is llama.cpp copying the state out of the mapped file. "
        "Beyond it a restore checksums every byte (xxh3 per 4 MiB block, the header's HMAC and digest, the "
        "history parsed, tokens and fingerprint checked); the checks other than the KV bytes' take about a "
        "millisecond. The KV checksum now runs on the checksum threads while llama.cpp reads the same bytes "
        "(a failed check empties the cache and raises, the history kept), instead of before it: across this "
        f"run the restore that checks every byte first took a median {statistics.median(gains):.2f}× the "
        f"overlapped one's time, and the overlapped restore {best_restore[1]['restore_vs_floor']:.2f}–"
        f"{worst_restore[1]['restore_vs_floor']:.2f}× the floor (worst: {worst_restore[0]} at "
        f"{worst_restore[1]['tokens']:,} tokens). Overlapping hides the checksum only as far as a core is free: it still "
        "reads every byte once more, on the same cores and memory bus as llama.cpp's copy, so with both cores "
        "busy (a run at a 1-minute load average of 4 to 6 on these 2 cores gained 1.03×) its time adds to the "
        "copy instead of hiding behind it. "
        "Restores of a few milliseconds (512 tokens) are within the scheduler's noise on a loaded machine. "
        "**Resume vs live**: both evaluate the same next message against the same context and decode its first "
        "token; a resume adds the restore alone (no re-evaluation: the saved state includes everything the live "
        "conversation held), so the ratio is 1 + restore / time to first token, and noise between the two halves "
        f"of a pair (worst: {worst_resume[1]['resume_vs_live']:.2f}× for {worst_resume[0]} at "
        f"{worst_resume[1]['tokens']:,} tokens). The twins' random weights do not change what is timed (the same "
        "tokens evaluated over a KV cache of the real model's shape), but their tiny widths make the next "
        "message's evaluation far cheaper than the real model's, so their ratio is an upper bound for the real "
        "model. In a notebook the restart's restore happens when `%load_ext lmchat` runs, before the next "
        "`%%chat` cell, which then starts from a live conversation; the ratio here is `Conversation.restore` "
        "followed at once by the message. **Save**: a whole save copies the state out of llama.cpp, checksums it, writes and fsyncs it; "
        "a turn's autosave appends a record of the new positions alone (the last column), whatever the length.",
        "",
        "Ratios are medians of interleaved pairs within this run; absolute times move with the machine's load.",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join([DEFAULT_MODEL, *TWINS]))
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the section and the plot into kv-twins/")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--memory", type=Path, help="a memory probe's JSON to add to the section (with its model)")
    parser.add_argument("--render", type=Path, help="write the section and plot of a saved run, measuring nothing")
    args = parser.parse_args(argv)
    if args.render is not None:
        result = json.loads(args.render.read_text())
        if args.memory is not None:
            result["memory"] = json.loads(args.memory.read_text())
        _write(args.out, result)
        print(section(result))
        return
    lengths = [int(n) for n in args.lengths.split(",")]
    started = time.time()
    result: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.real_sizes", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": len(os.sched_getaffinity(0)),
        "load_start": _load_average(),
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="lmchat-sizes-") as tmp:
        for key in args.models.split(","):
            model = _load(key, max(lengths) + 512)
            rows = [measure_length(model, n, args.reps, Path(tmp)) for n in lengths]
            result["models"].append({"key": key, "label": LABELS.get(key, key), "lengths": rows})
            del model
    result["seconds"] = time.time() - started
    result["load_end"] = _load_average()
    if args.memory is not None:
        result["memory"] = json.loads(args.memory.read_text())
    text = section(result)
    print(text)
    print(json.dumps(result))
    if args.write:
        _write(args.out, result)


def _write(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_sizes.json").write_text(json.dumps(result, indent=1) + "\n")
    write_block(out / "RESULTS.md", "real-sizes", section(result))
    write_size_plot(out / "cost.png", result)


if __name__ == "__main__":
    main()
