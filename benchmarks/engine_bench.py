"""Measures on the engine in this process: resume, restore I/O, save, size, generation, small sessions."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from lmchat_jupyter import AutoSave, ChatHistory, Conversation, ConversationEvent, Model, load_model
from lmchat_jupyter.engine.session import container as session_format

from .bare import bare_chat_completion
from .floors import floor_restore, floor_write, write_raw_state
from .workload import NEXT_PROMPT, SYSTEM, evict, first_token, make_history, median_time, release

__all__ = ["Config", "LengthResult", "ModelResult", "bench_model", "GEN_PROMPT"]

GEN_PROMPT = "Write a detailed step by step guide to planning backups for a PostgreSQL database."


@dataclass
class Config:
    """What one run measures and how often."""

    lengths: list[int]
    n_ctx: int
    reps: int  # repetitions of the fast measures (median)
    gen_reps: int  # repetitions of each generation measure (median)
    gen_tokens: int  # answer length for the generation and autosave measures
    autosave_length: int  # the history length whose autosave share is reported
    small_length: int  # the history length of the q8_0 session measure
    workdir: Path


@dataclass
class LengthResult:
    """Everything measured at one history length (seconds, bytes)."""

    tokens: int
    resume: float
    resume_samples: list[float]
    resume_cold: float
    resume_restore: float  # the restore part of the resume
    resume_next: float  # the rest: evaluating the next message and its first token
    next_tokens: int  # tokens the next message added (evaluated by every strategy)
    reprefill: float  # Conversation.from_history (the history evaluated again) to first token
    restore: float
    restore_samples: list[float]
    restore_floor: float
    restore_floor_samples: list[float]
    restore_ratio: float  # median of the per-pair ratios (each restore is paired with a floor run)
    restore_cold: float
    restore_floor_cold: float
    save: float
    save_samples: list[float]
    save_floor: float
    save_ratio: float  # median of the per-pair ratios (each save is paired with a floor write)
    file_bytes: int
    state_bytes: int
    copy_out: float  # llama_state_seq_get_data into a new buffer (part of a save)
    checksum: float  # session_format.parse of the file in memory: every xxh3 check (part of save and restore)
    session: Path
    history: ChatHistory = field(repr=False)
    # The same history and next message sent by a separate process that never imports lmchat
    # (benchmarks/bare_process.py): its time to the first token, and the prompt tokens it evaluated.
    reprefill_process: float = 0.0
    reprefill_process_tokens: int = 0


@dataclass
class ModelResult:
    """Everything measured on one model."""

    label: str
    name: str
    spec: str | None
    path: str
    load_seconds: float
    n_swa: int
    n_ctx: int
    zero_seconds: float = 0.0  # zeroing the whole n_ctx KV buffer (a clear after a loaded state does it)
    cold_start: float = 0.0
    cold_start_samples: list[float] = field(default_factory=list)
    lengths: list[LengthResult] = field(default_factory=list)
    generation: dict[str, Any] = field(default_factory=dict)
    autosave: dict[str, Any] = field(default_factory=dict)
    small: dict[str, Any] = field(default_factory=dict)
    memory: list[dict[str, Any]] = field(default_factory=list)
    kernel: dict[str, Any] = field(default_factory=dict)


def bench_model(label: str, spec: str | None, cfg: Config, log: Any = print) -> ModelResult:
    start = time.perf_counter()
    model = load_model(spec, n_ctx=cfg.n_ctx)
    res = ModelResult(
        label=label,
        name=model.name,
        spec=spec,
        path=str(model.path),
        load_seconds=model.load_seconds or time.perf_counter() - start,
        n_swa=model.n_swa,
        n_ctx=model.n_ctx,
    )
    model.sha256  # noqa: B018  hashed once per process and cached, as in a kernel
    res.zero_seconds, _ = median_time(lambda: _timed(lambda: _zero_kv(model)), cfg.reps)
    res.cold_start, res.cold_start_samples = median_time(lambda: _cold_start(model), cfg.reps)
    log(f"  cold start (no history): {res.cold_start * 1e3:.0f} ms")
    res.generation = _generation(model, cfg)
    log(
        f"  generation: Conversation.stream {res.generation['conversation_tps']:.1f} tok/s, "
        f"bare create_chat_completion {res.generation['bare_tps']:.1f} tok/s"
    )
    for n_tokens in cfg.lengths:
        lr = _at_length(model, n_tokens, cfg, log)
        res.lengths.append(lr)
        if n_tokens == cfg.autosave_length:
            res.autosave = _autosave_share(model, lr.session, cfg)
            log(f"  autosave at {lr.tokens} tokens: {res.autosave['share'] * 100:.1f}% of the turn")
    res.small = _small_sessions(spec, cfg, res, log)
    return res


def _parse(data: bytes) -> None:
    parsed = session_format.parse(memoryview(data), "benchmark")
    for view in parsed.sections.values():
        view.release()


def _zero_kv(model: Model) -> None:
    llama_cpp.llama_memory_clear(model.llm._ctx.memory, True)


def _cold_start(model: Model) -> float:
    release(model)
    start = time.perf_counter()
    conv = Conversation(model, system=SYSTEM)
    return first_token(conv) - start


def _at_length(model: Model, n_tokens: int, cfg: Config, log: Any) -> LengthResult:
    history = make_history(model, n_tokens)
    work = cfg.workdir
    session = work / f"{_slug(model)}-{n_tokens}.lmsession"
    raw = work / f"{_slug(model)}-{n_tokens}.kv"
    blank = work / "floor-write.bin"

    # Re-prefill from the history alone (this also builds the KV state that gets saved).
    release(model)
    start = time.perf_counter()
    conv = Conversation.from_history(model, history)
    reprefill_history = first_token(conv) - start
    conv.rewind_to(len(history))
    conv.prefill()  # the opening of the next user message, which a live answer is followed by
    tokens = conv.info.token_count
    log(f"  {tokens} tokens: from_history re-prefill {reprefill_history:.2f} s")

    # Save, against writing as many bytes with fsync.
    conv.save(session)  # first save re-decodes the last token for the verification logits
    data = session.read_bytes()
    # Interleaved, so that load changes on the machine hit both alike.
    save_pairs = [(_timed(lambda: conv.save(session)), floor_write(blank, data)) for _ in range(max(1, cfg.reps))]
    save_samples = [a for a, _ in save_pairs]
    save, save_floor = statistics.median(save_samples), statistics.median(b for _, b in save_pairs)
    blank.unlink()
    backend: Any = model.backend  # the local backend, as the floors read it
    state_bytes = backend.state_size()
    write_raw_state(backend, raw)
    file_bytes = session.stat().st_size
    # Parts of save and restore that the floors do not have, timed alone to explain the ratios.
    copy_out, _ = median_time(
        lambda: _timed(lambda: backend.export_state(np.empty(state_bytes, dtype=np.uint8).data)),
        cfg.reps,
    )
    checksum, _ = median_time(lambda: _timed(lambda: _parse(data)), cfg.reps)
    data = b""  # let the copy go before the restore measures

    # Restore alone (warm page cache), against mmap + llama_state_seq_set_data of the raw state.
    def restore_once() -> float:
        release(model)
        start = time.perf_counter()
        Conversation.restore(model, session)
        return time.perf_counter() - start

    def floor_once() -> float:
        release(model)
        return floor_restore(model.llm, raw)

    restore_once()  # warm the page cache and the allocator
    floor_once()
    # Interleaved, so that load changes on the machine hit both alike.
    pairs = [(restore_once(), floor_once()) for _ in range(max(1, cfg.reps))]
    restore_samples = [a for a, _ in pairs]
    floor_samples = [b for _, b in pairs]

    # Cold page cache: the session file (or the raw state) is dropped from the cache first.
    evict(session)
    restore_cold = restore_once()
    evict(raw)
    floor_cold = floor_once()

    # Resume: restore start to the first token of the next answer.
    parts: list[tuple[float, float, int]] = []  # restore, next message to its first token, its tokens

    def resume_once(cold: bool = False) -> float:
        if cold:
            evict(session)
        release(model)
        start = time.perf_counter()
        conv = Conversation.restore(model, session)
        restored = time.perf_counter()
        arrived = first_token(conv)
        if not cold and conv.last_result is not None:
            parts.append((restored - start, arrived - restored, conv.last_result.prompt_tokens))
        return arrived - start

    resume, resume_samples = median_time(resume_once, cfg.reps)
    resume_cold = resume_once(cold=True)

    release(model)
    bare = bare_process_reprefill(model, history, work)
    log(f"  {tokens} tokens: re-prefill in a bare llama-cpp-python process {bare['first_token_seconds']:.2f} s")
    log(
        f"  {tokens} tokens: resume {resume * 1e3:.0f} ms (cold {resume_cold * 1e3:.0f} ms), "
        f"re-prefill {reprefill_history:.2f} s; restore {statistics.median(restore_samples) * 1e3:.1f} ms "
        f"vs floor {statistics.median(floor_samples) * 1e3:.1f} ms; save {save * 1e3:.0f} ms vs "
        f"{save_floor * 1e3:.0f} ms; {file_bytes / state_bytes:.4f}x state size"
    )
    return LengthResult(
        tokens=tokens,
        resume=resume,
        resume_samples=resume_samples,
        resume_cold=resume_cold,
        resume_restore=statistics.median(p[0] for p in parts),
        resume_next=statistics.median(p[1] for p in parts),
        next_tokens=parts[0][2],
        reprefill=reprefill_history,
        restore=statistics.median(restore_samples),
        restore_samples=restore_samples,
        restore_floor=statistics.median(floor_samples),
        restore_floor_samples=floor_samples,
        restore_ratio=statistics.median(a / b for a, b in pairs),
        restore_cold=restore_cold,
        restore_floor_cold=floor_cold,
        save=save,
        save_samples=save_samples,
        save_floor=save_floor,
        save_ratio=statistics.median(a / b for a, b in save_pairs),
        file_bytes=file_bytes,
        state_bytes=state_bytes,
        copy_out=copy_out,
        checksum=checksum,
        session=session,
        history=history,
        reprefill_process=bare["first_token_seconds"],
        reprefill_process_tokens=bare["tokens"],
    )


def bare_process_reprefill(model: Model, history: ChatHistory, work: Path) -> dict[str, Any]:
    """Time to first token of ``create_chat_completion`` on history + next question, in a process without lmchat."""
    messages = work / "bare-messages.json"
    messages.write_text(json.dumps([*history.as_chat_messages(), {"role": "user", "content": NEXT_PROMPT}]))
    script = Path(__file__).with_name("bare_process.py")
    cmd = [sys.executable, str(script), str(model.path), str(model.n_ctx), str(messages)]
    # The same OpenMP wait policy as this process (PASSIVE unless the user chose one): with llama.cpp's
    # spinning default, the bare process ran 10-25x slower on a loaded 2-core machine, which would
    # measure the machine's load rather than the re-prefill.
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    messages.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"the bare llama-cpp-python process failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["lmchat_modules"]:
        raise RuntimeError(f"the bare process imported lmchat: {result['lmchat_modules']}")
    return result


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _slug(model: Model) -> str:
    return "".join(c if c.isalnum() else "-" for c in model.name.lower())


def _autosave_share(model: Model, session: Path, cfg: Config) -> dict[str, Any]:
    """Turns with autosave on, each from the same saved history: the save's share of the turn's wall time."""
    target = cfg.workdir / "autosave.lmsession"
    runs = []
    for _ in range(max(1, cfg.gen_reps)):
        release(model)
        conv = Conversation.restore(model, session)
        saver = AutoSave(conv, target)
        marks: dict[str, float] = {}

        def mark(event: ConversationEvent, marks: dict[str, float] = marks) -> None:
            if event.kind in ("turn_finished", "saved", "save_failed"):
                marks[event.kind] = time.perf_counter()

        conv.subscribe(mark)
        start = time.perf_counter()
        result = conv.submit(GEN_PROMPT, temperature=0.0, max_tokens=cfg.gen_tokens)
        end = time.perf_counter()
        saver.close()  # waits for the file, written in the background
        if "saved" not in marks:
            raise RuntimeError(f"the autosave did not happen: {saver.last_error}")
        blocking = end - marks["turn_finished"]  # what the turn waited for: the KV state copied out
        written = marks["saved"] - marks["turn_finished"]
        runs.append(
            (blocking / (end - start), blocking, written, end - start, result.generated_tokens, conv.info.token_count)
        )
    written_bytes = target.stat().st_size  # every autosave rewrites the whole session file
    target.unlink()
    release(model)
    share, blocking, written, turn, generated, tokens = sorted(runs)[len(runs) // 2]  # the median turn
    return {
        "tokens": tokens,
        "generated_tokens": generated,
        "turn_seconds": turn,
        "save_seconds": blocking,
        "written_seconds": written,
        "share": share,
        "written_bytes": written_bytes,
    }


def _generation(model: Model, cfg: Config) -> dict[str, Any]:
    """Tokens/s of Conversation.stream vs bare Llama.create_chat_completion, same prompt and settings."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": GEN_PROMPT}]
    conv_runs: list[dict[str, Any]] = []
    bare_runs: list[dict[str, Any]] = []

    def via_conversation() -> dict[str, Any]:
        release(model)
        conv = Conversation(model, system=SYSTEM)
        start = time.perf_counter()
        result = conv.submit(GEN_PROMPT, temperature=0.0, max_tokens=cfg.gen_tokens)
        return {
            "text": result.text,
            "tokens": result.generated_tokens,
            "seconds": time.perf_counter() - start,
            "decode_seconds": result.total_seconds - result.time_to_first_token,
        }

    def bare() -> dict[str, Any]:
        return bare_chat_completion(model, messages, cfg.gen_tokens)

    for _ in range(max(1, cfg.gen_reps)):
        bare_runs.append(bare())
        conv_runs.append(via_conversation())
    same_text = all(b["text"].strip() == c["text"].strip() for b, c in zip(bare_runs, conv_runs, strict=True))
    n_conv = conv_runs[0]["tokens"]
    n_bare = n_conv if same_text else bare_runs[0]["tokens"]

    def rate(runs: list[dict[str, Any]], n: int) -> float:
        return statistics.median((n - 1) / r["decode_seconds"] for r in runs if r["decode_seconds"] > 0) if n > 1 else 0

    conv_tps = rate(conv_runs, n_conv)
    bare_tps = rate(bare_runs, n_bare)
    return {
        "tokens": n_conv,
        "bare_tokens": n_bare,
        "same_text": same_text,
        "conversation_tps": conv_tps,
        "bare_tps": bare_tps,
        "ratio": conv_tps / bare_tps if bare_tps else 0.0,
        "conversation_seconds": statistics.median(r["seconds"] for r in conv_runs),
        "bare_seconds": statistics.median(r["seconds"] for r in bare_runs),
    }


def _small_sessions(spec: str | None, cfg: Config, res: ModelResult, log: Any) -> dict[str, Any]:
    """q8_0 K and V with flash attention: session size and speed against the default f16 cache."""
    ref = next((lr for lr in res.lengths if lr.tokens >= cfg.small_length - 64), res.lengths[-1])
    model = load_model(spec, n_ctx=cfg.n_ctx, type_k="q8_0", type_v="q8_0", flash_attn=True)
    history = ref.history
    release(model)
    start = time.perf_counter()
    conv = Conversation.from_history(model, history)
    reprefill = first_token(conv) - start
    conv.rewind_to(len(history))
    conv.prefill()
    session = cfg.workdir / f"{_slug(model)}-q8.lmsession"
    conv.save(session)

    def resume_once() -> float:
        release(model)
        start = time.perf_counter()
        conv = Conversation.restore(model, session)
        return first_token(conv) - start

    resume, _ = median_time(resume_once, cfg.reps)
    gen = _generation(model, replace(cfg, gen_reps=1))
    out = {
        "tokens": ref.tokens,
        "file_bytes": session.stat().st_size,
        "f16_file_bytes": ref.file_bytes,
        "size_ratio": session.stat().st_size / ref.file_bytes,
        "reprefill": reprefill,
        "f16_reprefill": ref.reprefill,
        "resume": resume,
        "f16_resume": ref.resume,
        "conversation_tps": gen["conversation_tps"],
        "f16_conversation_tps": res.generation["conversation_tps"],
    }
    session.unlink()
    release(model)
    log(
        f"  q8_0 KV + flash attention at {ref.tokens} tokens: {out['size_ratio']:.2f}x the f16 file, "
        f"{gen['conversation_tps']:.1f} vs {res.generation['conversation_tps']:.1f} tok/s"
    )
    return out
