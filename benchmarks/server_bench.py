"""Shared-server benchmarks on a real llama-server (scripts/llama-server.sh, the embedded SmolLM2-135M), through
the path ``%%chat --model http://…`` runs: a ``Conversation`` on ``load_model(URL)`` (LlamaServerBackend).

.venv/bin/python -m benchmarks.server_bench                # ~8k-token history; writes its section of RESULTS.md
.venv/bin/python -m benchmarks.server_bench --tokens 2000 --no-write   # a quicker look

1. Resume, as after a kernel restart: the conversation's saved session restored on a new model object (its
   slot file restored into an erased slot before the answer) against the same history restored without its
   session (the server reads it all again); time to the first token of the next answer.
2. Streaming: the wall time per token the conversation hands out against the server's own time per token in
   the same answer, and the kernel's CPU time per token (the engine's turn loop, the stream and the pieces).
3. The HTTP client alone: lmchat's streamed completion against a bare http.client loop on the same request
   (token ids, 256 tokens, end of text ignored), alternating, median of the runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lmchat_jupyter import Conversation, load_model
from lmchat_jupyter.backends.server.llama_backend import LlamaServerBackend
from lmchat_jupyter.backends.server.llama_client import LlamaServerClient
from lmchat_jupyter.core.history import ChatHistory, Message
from lmchat_jupyter.core.results import GenerationOptions
from lmchat_jupyter.engine.models import ServerModel
from tests.servers import LlamaServer, llama_server_binary

__all__ = ["main", "write_block", "server_model", "last_completion"]

HERE = Path(__file__).resolve().parent
PARAGRAPH = (
    "The harbour wall was built of grey granite blocks, each cut by hand and hauled by cart from the quarry "
    "above the village. Fishermen mended their nets along it every morning while gulls argued overhead. "
)


def server_model(url: str) -> ServerModel:
    """The model on the server as a new kernel connects to it (nothing shared with earlier ones)."""
    model = load_model(url, reuse=False)
    assert isinstance(model, ServerModel)
    return model


def last_completion(model: ServerModel) -> dict[str, Any]:
    """The server's last event of the model's newest answer (``timings``: ``prompt_n``, ``cache_n``, …)."""
    backend = model.backend
    assert isinstance(backend, LlamaServerBackend)
    return backend.last_completion


def _history(client: LlamaServerClient, n_tokens: int) -> ChatHistory:
    history = ChatHistory([Message("system", "You are a helpful assistant.")])
    per_turn = len(client.tokenize(PARAGRAPH * 8)) + 30
    for i in range(max(1, n_tokens // per_turn)):
        history.messages.append(Message("user", f"Part {i}: " + PARAGRAPH * 8))
        history.messages.append(Message("assistant", f"Noted part {i}."))
    return history


def _first_token(conv: Conversation, prompt: str) -> tuple[float, int]:
    start = time.perf_counter()
    turn = iter(conv.stream(prompt, max_tokens=4))
    next(turn)
    elapsed = time.perf_counter() - start
    for _ in turn:
        pass
    assert isinstance(conv.model, ServerModel)
    return elapsed, int(last_completion(conv.model)["timings"]["prompt_n"])


def bench_resume(server: LlamaServer, n_tokens: int) -> dict[str, Any]:
    client = LlamaServerClient(server.url)
    options = GenerationOptions(temperature=0.0, seed=1, max_tokens=4)
    conv = Conversation.from_history(server_model(server.url), _history(client, n_tokens), options=options)
    _first_token(conv, "Summarise part 0 in five words.")  # the server reads the history once
    session = conv.save()  # the slot goes to the conversation's slot file
    assert session is not None
    client.erase_slot(0)
    restored = _first_token(
        Conversation.restore(server_model(server.url), session, options=options), "Which part mentions gulls?"
    )
    client.erase_slot(0)
    reread_conv = Conversation.from_history(server_model(server.url), conv.history, options=options)
    reread = _first_token(reread_conv, "Which part mentions gulls?")
    return {
        "history_tokens": len(conv.cache.tokens),
        "session_bytes": len(session),
        "slot_file_bytes": sum(p.stat().st_size for p in server.slot_dir.iterdir()),
        "restored_ttft_s": restored[0],
        "restored_prompt_tokens": restored[1],
        "reread_ttft_s": reread[0],
        "reread_prompt_tokens": reread[1],
        "speedup": reread[0] / restored[0],
    }


def bench_stream(server: LlamaServer, n: int, runs: int) -> dict[str, Any]:
    model = server_model(server.url)
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
        servers.append(float(last_completion(model)["timings"]["predicted_per_token_ms"]))
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


def _bare_stream(url: str, body: dict[str, Any]) -> tuple[float, int, float]:
    """The baseline: http.client and json.loads on the same request, nothing else."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    connection.request("POST", "/completion", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    count, first, server_ms = 0, 0.0, 0.0
    while line := response.readline():
        if line.startswith(b"data:"):
            event = json.loads(line[5:])
            count += len(event.get("tokens") or [])
            if count == 1 and not first:
                first = time.perf_counter()
            if event.get("stop"):
                server_ms = float(event["timings"]["predicted_per_token_ms"])
    connection.close()
    return time.perf_counter() - first, count, server_ms


def _client_stream(client: LlamaServerClient, tokens: list[int], n: int) -> tuple[float, int, float, float]:
    stream = client.stream_completion(tokens, id_slot=0, n_predict=n, ignore_eos=True, temperature=0.0, seed=1)
    first, cpu_first = 0.0, 0.0
    for _ in stream:
        if not first:
            first, cpu_first = time.perf_counter(), time.process_time()
    wall, cpu = time.perf_counter() - first, time.process_time() - cpu_first
    server_ms = float(stream.final["timings"]["predicted_per_token_ms"])
    return wall, len(stream.tokens), cpu, server_ms


def bench_client(server: LlamaServer, n: int, runs: int) -> dict[str, Any]:
    client = LlamaServerClient(server.url)
    tokens = client.tokenize(client.apply_template([{"role": "user", "content": "Tell me about harbours."}]))
    body = {"prompt": tokens, "id_slot": 0, "n_predict": n, "ignore_eos": True, "temperature": 0.0, "seed": 1}
    body |= {"cache_prompt": True, "stream": True, "return_tokens": True}
    # Per run: the wall time per streamed token the client saw, and the server's own time per token for
    # that very run; what the client adds is the difference (the server's pace drifts with the machine's load).
    ours, bare, ours_server, bare_server, cpu = [], [], [], [], []
    for _ in range(runs):
        wall, count, used, per_token = _client_stream(client, tokens, n)
        ours.append(wall / (count - 1) * 1000)
        ours_server.append(per_token)
        cpu.append(used / (count - 1))
        wall, count, per_token = _bare_stream(server.url, body)
        bare.append(wall / (count - 1) * 1000)
        bare_server.append(per_token)
    added = [(w - s) / s * 100 for w, s in zip(ours, ours_server, strict=True)]
    bare_added = [(w - s) / s * 100 for w, s in zip(bare, bare_server, strict=True)]
    return {
        "tokens": n,
        "runs": runs,
        "lmchat_ms_per_token": statistics.median(ours),
        "lmchat_server_ms_per_token": statistics.median(ours_server),
        "bare_ms_per_token": statistics.median(bare),
        "bare_server_ms_per_token": statistics.median(bare_server),
        "overhead_pct": statistics.median(added),
        "bare_overhead_pct": statistics.median(bare_added),
        "client_cpu_us_per_token": statistics.median(cpu) * 1e6,
        "client_cpu_pct_of_server": statistics.median(cpu) * 1000 / statistics.median(ours_server) * 100,
    }


def markdown(
    resume: dict[str, Any], stream: dict[str, Any], client: dict[str, Any], load: tuple[float, float], note: str = ""
) -> str:
    return "\n".join(
        [
            "## Shared server (llama-server)",
            "",
            f"`python -m benchmarks.server_bench`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; a "
            "`Conversation` on `load_model(URL)` (LlamaServerBackend, as `%%chat --model http://…` runs it), "
            f"llama-server built from llama-cpp-python's llama.cpp, SmolLM2-135M, 1-min load {load[0]:.2f} at the "
            f"start, {load[1]:.2f} at the end.",
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
            f"| HTTP client alone: wall time per streamed token vs the server's own, same run "
            f"({client['tokens']} tokens, median of {client['runs']} runs) "
            f"| {client['lmchat_ms_per_token']:.2f} ms vs {client['lmchat_server_ms_per_token']:.2f} ms "
            f"| bare http.client: {client['bare_ms_per_token']:.2f} ms vs "
            f"{client['bare_server_ms_per_token']:.2f} ms ({client['bare_overhead_pct']:+.1f}%) "
            f"| {client['overhead_pct']:+.1f}% | ≤ 5% ({'met' if client['overhead_pct'] <= 5 else 'missed'}) |",
            f"| HTTP client CPU per streamed token vs the server's time per token "
            f"| {client['client_cpu_us_per_token']:.0f} µs | {client['lmchat_server_ms_per_token']:.2f} ms "
            f"| {client['client_cpu_pct_of_server']:.1f}% | — |",
            "",
            f"The session file in the sidecar: {resume['session_bytes'] / 1e3:.0f} kB (history, tokens and the "
            f"slot file's name); the slot file on the server: {resume['slot_file_bytes'] / 1e6:.0f} MB.{note}",
        ]
    )


def _verdict(resume: dict[str, Any]) -> str:
    met = "met" if resume["speedup"] >= 50 else "missed"
    if resume["history_tokens"] < 7000:
        return f"{met} at this shorter history, where re-reading costs less than at 8k"
    return met


def write_block(path: Path, name: str, section: str) -> None:
    """Put ``section`` into RESULTS.md between ``<!-- begin server-NAME -->`` markers, in place of the last one.

    benchmarks.run rewrites the rest of the file and carries these blocks over.
    """
    begin, end = f"<!-- begin server-{name} -->", f"<!-- end server-{name} -->"
    block = f"{begin}\n{section}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8000, help="history length for the resume measurement")
    parser.add_argument("--stream-tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    parser.add_argument("--resume-from", type=Path, help="take the resume figures from this JSON (a previous run)")
    args = parser.parse_args()
    llama_server_binary()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        server = LlamaServer(Path(scratch) / "slots", parallel=1, ctx_per_slot=args.tokens + 1024)
        server.start()
        try:
            if args.resume_from:
                resume = json.loads(args.resume_from.read_text())["resume"]
            else:
                resume = bench_resume(server, args.tokens)
            stream = bench_stream(server, args.stream_tokens, args.runs)
            client = bench_client(server, args.stream_tokens, args.runs)
        finally:
            server.stop()
    note = f" The resume figures come from an earlier run ({args.resume_from.name})." if args.resume_from else ""
    section = markdown(resume, stream, client, (load_start, os.getloadavg()[0]), note)
    print(section)
    print(json.dumps({"resume": resume, "stream": stream, "client": client}, indent=1))
    if not args.no_write:
        write_block(HERE / "RESULTS.md", "bench", section)


if __name__ == "__main__":
    main()
