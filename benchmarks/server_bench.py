"""Shared-server benchmarks on a real llama-server (scripts/llama-server.sh, the embedded SmolLM2-135M).

.venv/bin/python -m benchmarks.server_bench                # ~8k-token history; writes its section of RESULTS.md
.venv/bin/python -m benchmarks.server_bench --tokens 1000 --no-write   # a quick look

1. Resume: a conversation of about N tokens resumed by a new ServerChat (its slot file restored into an
   erased slot) against the same conversation whose server re-reads the history; time to the first token
   of the next answer, as the user sees it (template, tokens, slot choice, restore and all).
2. Client overhead per streamed token: lmchat's client against a bare http.client loop on the same request
   (token ids, 256 tokens, end of text ignored), alternating, median of the runs; and the client's own CPU
   time per token against the server's time per token.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lmchat_jupyter.history import ChatHistory, Message
from lmchat_jupyter.llama_server_client import LlamaServerClient
from lmchat_jupyter.results import GenerationOptions
from lmchat_jupyter.server_chat import ServerChat
from tests.servers import LlamaServer, llama_server_binary

__all__ = ["main", "write_block"]

HERE = Path(__file__).resolve().parent
PARAGRAPH = (
    "The harbour wall was built of grey granite blocks, each cut by hand and hauled by cart from the quarry "
    "above the village. Fishermen mended their nets along it every morning while gulls argued overhead. "
)


def _history(client: LlamaServerClient, n_tokens: int) -> ChatHistory:
    history = ChatHistory([Message("system", "You are a helpful assistant.")])
    per_turn = len(client.tokenize(PARAGRAPH * 8)) + 30
    for i in range(max(1, n_tokens // per_turn)):
        history.messages.append(Message("user", f"Part {i}: " + PARAGRAPH * 8))
        history.messages.append(Message("assistant", f"Noted part {i}."))
    return history


def _first_token(chat: ServerChat, prompt: str) -> tuple[float, int, int]:
    start = time.perf_counter()
    stream = chat.stream(prompt, max_tokens=4)
    next(stream)
    elapsed = time.perf_counter() - start
    for _ in stream:
        pass
    assert chat.last_result is not None
    return elapsed, chat.last_result.prompt_tokens, chat.last_result.cached_tokens


def bench_resume(server: LlamaServer, n_tokens: int) -> dict[str, Any]:
    client = LlamaServerClient(server.url)
    options = GenerationOptions(temperature=0.0, seed=1, max_tokens=4)
    chat = ServerChat(server.url, history=_history(client, n_tokens), options=options)
    _first_token(chat, "Summarise part 0 in five words.")  # reads the history once and saves the slot
    record = chat.record()
    client.erase_slot(0)
    restored_chat = ServerChat.resume(record)
    restored = _first_token(restored_chat, "Which part mentions gulls?")
    client.erase_slot(0)
    reread_chat = ServerChat.resume({**record, "slot_file": None})
    reread = _first_token(reread_chat, "Which part mentions gulls?")
    size = (server.slot_dir / str(record["slot_file"])).stat().st_size
    return {
        "history_tokens": chat.history.token_count,
        "restored_ttft_s": restored[0],
        "restored_prompt_tokens": restored[1],
        "reread_ttft_s": reread[0],
        "reread_prompt_tokens": reread[1],
        "speedup": reread[0] / restored[0],
        "slot_file_bytes": size,
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


def _lmchat_stream(client: LlamaServerClient, tokens: list[int], n: int) -> tuple[float, int, float, float]:
    stream = client.stream_completion(tokens, id_slot=0, n_predict=n, ignore_eos=True, temperature=0.0, seed=1)
    first, cpu_first = 0.0, 0.0
    for _ in stream:
        if not first:
            first, cpu_first = time.perf_counter(), time.process_time()
    wall, cpu = time.perf_counter() - first, time.process_time() - cpu_first
    server_ms = float(stream.final["timings"]["predicted_per_token_ms"])
    return wall, len(stream.tokens), cpu, server_ms


def bench_overhead(server: LlamaServer, n: int, runs: int) -> dict[str, Any]:
    client = LlamaServerClient(server.url)
    tokens = client.tokenize(client.apply_template([{"role": "user", "content": "Tell me about harbours."}]))
    body = {"prompt": tokens, "id_slot": 0, "n_predict": n, "ignore_eos": True, "temperature": 0.0, "seed": 1}
    body |= {"cache_prompt": True, "stream": True, "return_tokens": True}
    # Per run: the wall time per streamed token the client saw, and the server's own time per token for
    # that very run; what the client adds is the difference (the server's pace drifts with the machine's load).
    ours, bare, ours_server, bare_server, cpu = [], [], [], [], []
    for _ in range(runs):
        wall, count, used, per_token = _lmchat_stream(client, tokens, n)
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


def markdown(resume: dict[str, Any], overhead: dict[str, Any], load: tuple[float, float], note: str = "") -> str:
    met_resume = "met" if resume["speedup"] >= 50 else "missed"
    met_overhead = "met" if overhead["overhead_pct"] <= 5 else "missed"
    return "\n".join(
        [
            "## Shared server (llama-server)",
            "",
            f"`python -m benchmarks.server_bench`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"llama-server built from llama-cpp-python's llama.cpp, SmolLM2-135M, 1-min load {load[0]:.2f} "
            f"at the start, {load[1]:.2f} at the end.",
            "",
            "| Measurement | lmchat | Baseline | Ratio | Target |",
            "|---|---:|---:|---:|---|",
            f"| Resume at {resume['history_tokens']:,} tokens: time to first token, slot restored vs history "
            f"re-read | {resume['restored_ttft_s']:.3f} s ({resume['restored_prompt_tokens']} tokens read) "
            f"| {resume['reread_ttft_s']:.2f} s ({resume['reread_prompt_tokens']:,} tokens read) "
            f"| {resume['speedup']:.0f}× | ≥ 50× ({met_resume}) |",
            f"| Streamed token: wall time the client sees vs the server's own time per token, same run "
            f"({overhead['tokens']} tokens, median of {overhead['runs']} runs) "
            f"| {overhead['lmchat_ms_per_token']:.2f} ms vs {overhead['lmchat_server_ms_per_token']:.2f} ms "
            f"| bare http.client: {overhead['bare_ms_per_token']:.2f} ms vs "
            f"{overhead['bare_server_ms_per_token']:.2f} ms ({overhead['bare_overhead_pct']:+.1f}%) "
            f"| {overhead['overhead_pct']:+.1f}% | ≤ 5% ({met_overhead}) |",
            f"| Client CPU per streamed token vs the server's time per token "
            f"| {overhead['client_cpu_us_per_token']:.0f} µs | {overhead['lmchat_server_ms_per_token']:.2f} ms "
            f"| {overhead['client_cpu_pct_of_server']:.1f}% | — |",
            "",
            f"The slot file of the resumed conversation: {resume['slot_file_bytes'] / 1e6:.0f} MB.{note}",
        ]
    )


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
    import os

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        server = LlamaServer(Path(scratch) / "slots", parallel=1, ctx_per_slot=args.tokens + 1024)
        server.start()
        try:
            if args.resume_from:
                resume = json.loads(args.resume_from.read_text())["resume"]
            else:
                resume = bench_resume(server, args.tokens)
            overhead = bench_overhead(server, args.stream_tokens, args.runs)
        finally:
            server.stop()
    note = f" The resume figures come from an earlier run ({args.resume_from.name})." if args.resume_from else ""
    section = markdown(resume, overhead, (load_start, os.getloadavg()[0]), note)
    print(section)
    print(json.dumps({"resume": resume, "overhead": overhead}, indent=1))
    if not args.no_write:
        write_block(HERE / "RESULTS.md", "bench", section)


if __name__ == "__main__":
    main()
