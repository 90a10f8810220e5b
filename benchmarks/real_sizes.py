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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmchat_jupyter import Conversation, Model, load_model, session

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
    lines += [
        "",
        "Ratios are medians of interleaved pairs within this run; absolute times move with the machine's load.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join([DEFAULT_MODEL, *TWINS]))
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the section and the plot into kv-twins/")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    lengths = [int(n) for n in args.lengths.split(",")]
    started = time.time()
    result: dict[str, Any] = {
        "command": "python -m benchmarks.real_sizes " + " ".join(argv if argv is not None else []),
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
    text = section(result)
    print(text)
    print(json.dumps(result))
    if args.write:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "real_sizes.json").write_text(json.dumps(result, indent=1) + "\n")
        write_block(args.out / "RESULTS.md", "real-sizes", text)
        write_size_plot(args.out / "cost.png", result)


if __name__ == "__main__":
    main()
