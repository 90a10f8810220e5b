"""The notebook's path on a real llama-server: a ``Conversation`` on ``load_model("http://…")`` (LlamaServerBackend).

.venv/bin/python -m benchmarks.server_backend_bench                 # ~8k-token history; writes its RESULTS.md block
.venv/bin/python -m benchmarks.server_backend_bench --tokens 2000 --no-write   # a quicker look

1. Resume, as after a kernel restart: the conversation's saved session restored on a new model object (its
   slot file restored into an erased slot before the answer) against the same history restored without its
   session (the server reads it all again); time to the first token of the next answer.
2. Streaming: the wall time per token the conversation hands out against the server's own time per token in
   the same answer, and the kernel's CPU time per token (the engine's turn loop, the stream and the pieces).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lmchat_jupyter import Conversation, load_model
from lmchat_jupyter.llama_server_client import LlamaServerClient
from lmchat_jupyter.models import ServerModel
from lmchat_jupyter.results import GenerationOptions
from lmchat_jupyter.server_backend import LlamaServerBackend
from tests.servers import LlamaServer, llama_server_binary

from .server_bench import HERE, _history, write_block

__all__ = ["main"]


def _backend(model: ServerModel) -> LlamaServerBackend:
    backend = model.backend
    assert isinstance(backend, LlamaServerBackend)
    return backend


def _first_token(conv: Conversation, prompt: str) -> tuple[float, int]:
    start = time.perf_counter()
    turn = iter(conv.stream(prompt, max_tokens=4))
    next(turn)
    elapsed = time.perf_counter() - start
    for _ in turn:
        pass
    assert isinstance(conv.model, ServerModel)
    return elapsed, int(_backend(conv.model).last_completion["timings"]["prompt_n"])


def _new_model(url: str) -> ServerModel:
    model = load_model(url, reuse=False)  # as a new kernel connects
    assert isinstance(model, ServerModel)
    return model


def bench_resume(server: LlamaServer, n_tokens: int) -> dict[str, Any]:
    client = LlamaServerClient(server.url)
    options = GenerationOptions(temperature=0.0, seed=1, max_tokens=4)
    history = _history(client, n_tokens)
    conv = Conversation.from_history(_new_model(server.url), history, options=options)
    _first_token(conv, "Summarise part 0 in five words.")  # the server reads the history once
    session = conv.save()  # the slot goes to the conversation's slot file
    assert session is not None
    client.erase_slot(0)
    restored_conv = Conversation.restore(_new_model(server.url), session, options=options)
    restored = _first_token(restored_conv, "Which part mentions gulls?")
    client.erase_slot(0)
    reread_conv = Conversation.from_history(_new_model(server.url), conv.history, options=options)
    reread = _first_token(reread_conv, "Which part mentions gulls?")
    return {
        "history_tokens": len(conv.cache.tokens),
        "session_bytes": len(session),
        "restored_ttft_s": restored[0],
        "restored_prompt_tokens": restored[1],
        "reread_ttft_s": reread[0],
        "reread_prompt_tokens": reread[1],
        "speedup": reread[0] / restored[0],
    }


def bench_stream(server: LlamaServer, n: int, runs: int) -> dict[str, Any]:
    model = _new_model(server.url)
    walls, servers, cpus, counts = [], [], [], []
    for i in range(runs):
        conv = Conversation(model, options=GenerationOptions(temperature=0.0, seed=1, max_tokens=n))
        first, cpu_first, count = 0.0, 0.0, 0
        for _ in conv.stream(f"Write a long story about harbour number {i}, with many details."):
            count += 1
            if not first:
                first, cpu_first = time.perf_counter(), time.process_time()
        wall, cpu = time.perf_counter() - first, time.process_time() - cpu_first
        generated = conv.last_result.generated_tokens if conv.last_result is not None else count
        walls.append(wall / (generated - 1) * 1000)
        servers.append(float(_backend(model).last_completion["timings"]["predicted_per_token_ms"]))
        cpus.append(cpu / (generated - 1))
        counts.append(generated)
    added = [(w - s) / s * 100 for w, s in zip(walls, servers, strict=True)]
    return {
        "runs": runs,
        "median_tokens": statistics.median(counts),
        "ms_per_token": statistics.median(walls),
        "server_ms_per_token": statistics.median(servers),
        "overhead_pct": statistics.median(added),
        "cpu_us_per_token": statistics.median(cpus) * 1e6,
        "cpu_pct_of_server": statistics.median(cpus) * 1000 / statistics.median(servers) * 100,
    }


def markdown(resume: dict[str, Any], stream: dict[str, Any], load: tuple[float, float]) -> str:
    return "\n".join(
        [
            "## Shared server through the engine (`%%chat --model http://…`)",
            "",
            f"`python -m benchmarks.server_backend_bench`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"a `Conversation` on `load_model(URL)` (LlamaServerBackend), llama-server and SmolLM2-135M as above, "
            f"1-min load {load[0]:.2f} at the start, {load[1]:.2f} at the end.",
            "",
            "| Measurement | lmchat | Baseline | Ratio | Target |",
            "|---|---:|---:|---:|---|",
            f"| Resume after a restart at {resume['history_tokens']:,} tokens: first token, session restored "
            f"(slot file) vs history only | {resume['restored_ttft_s']:.3f} s "
            f"({resume['restored_prompt_tokens']} tokens read) | {resume['reread_ttft_s']:.2f} s "
            f"({resume['reread_prompt_tokens']:,} tokens read) | {resume['speedup']:.0f}× "
            f"| ≥ 50× at ~8k ({_verdict(resume)}) |",
            f"| Streamed token: wall time per token the conversation hands out vs the server's own "
            f"(~{stream['median_tokens']:.0f} tokens, median of {stream['runs']} answers) "
            f"| {stream['ms_per_token']:.2f} ms | {stream['server_ms_per_token']:.2f} ms "
            f"| {stream['overhead_pct']:+.1f}% | ≤ 5% ({'met' if stream['overhead_pct'] <= 5 else 'missed'}) |",
            f"| Kernel CPU per streamed token (turn loop, stream, pieces) vs the server's time per token "
            f"| {stream['cpu_us_per_token']:.0f} µs | {stream['server_ms_per_token']:.2f} ms "
            f"| {stream['cpu_pct_of_server']:.1f}% | — |",
            "",
            f"The session file in the sidecar: {resume['session_bytes'] / 1e3:.0f} kB (history, tokens and the "
            "slot file's name; the KV cache stays on the server).",
        ]
    )


def _verdict(resume: dict[str, Any]) -> str:
    met = "met" if resume["speedup"] >= 50 else "missed"
    if resume["history_tokens"] < 7000:
        return f"{met} at this shorter history, where re-reading costs less than at 8k"
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8000, help="history length for the resume measurement")
    parser.add_argument("--stream-tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    llama_server_binary()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        server = LlamaServer(Path(scratch) / "slots", parallel=1, ctx_per_slot=args.tokens + 1024)
        server.start()
        try:
            resume = bench_resume(server, args.tokens)
            stream = bench_stream(server, args.stream_tokens, args.runs)
        finally:
            server.stop()
    section = markdown(resume, stream, (load_start, os.getloadavg()[0]))
    print(section)
    print(json.dumps({"resume": resume, "stream": stream}, indent=1))
    if not args.no_write:
        write_block(HERE / "RESULTS.md", "backend", section)


if __name__ == "__main__":
    main()
