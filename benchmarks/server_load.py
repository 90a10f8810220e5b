"""A bounded load test: many conversations, one llama-server with fewer slots, turns and restarts alternating.

.venv/bin/python -m benchmarks.server_load                     # 8 conversations, 4 slots, 4 rounds
.venv/bin/python -m benchmarks.server_load --conversations 3 --slots 2 --rounds 2 --no-write

Each conversation is a chain of processes (a kernel and its restarts), each a ``Conversation`` on
``load_model(URL)`` as ``%%chat --model http://…`` runs it: every process restores the conversation from the
session file the previous one saved (as a sidecar holds it), answers one turn, saves the session and exits;
all conversations run at once. Each conversation has a code word in its first message only. Checked for every
turn: whether the server reused all of the conversation's own tokens from before the turn (its cache held
exactly this conversation's prefix, so no other's text) is counted; the history grew by one turn, nothing was
lost; and after the run, the slot file each conversation's session names restores and holds its own code word
and no other. Reported: p50/p95 time to first token of resumed turns with the slot file restored, and with
the session's tokens read again instead (``use_kv=False``: the server reads the history).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lmchat_jupyter import Conversation
from lmchat_jupyter.backends.server.llama_backend import LlamaServerBackend
from lmchat_jupyter.backends.server.llama_client import LlamaServerClient
from lmchat_jupyter.core.results import GenerationOptions
from tests.servers import LlamaServer, llama_server_binary, slot_file_tokens

from .server_bench import server_model, write_block

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
WORDS = ["PAPAYA", "MANGO", "QUINCE", "LYCHEE", "GUAVA", "DAMSON", "FEIJOA", "LOQUAT", "MEDLAR", "SALAK"]
OPTIONS = GenerationOptions(temperature=0.7, seed=None, max_tokens=24)


def worker(url: str, session: Path, word: str, restore: bool) -> dict[str, Any]:
    """One process of a conversation's chain: restore the session, one turn, save it (and what the server held)."""
    model = server_model(url)
    notes = session.with_suffix(".json")
    resumed = session.exists()
    if resumed:
        conv = Conversation.restore(model, session, use_kv=restore, options=OPTIONS)
        held_before = json.loads(notes.read_text())["server_held"]
        prompt = "Tell me one more thing about it."
    else:
        conv = Conversation(model, system="You are a helpful assistant.", options=OPTIONS)
        held_before = 0
        prompt = f"Remember this code word: {word}. Now tell me about the sea."
    before_messages = len(conv.history)
    start = time.perf_counter()
    first = 0.0
    for _ in conv.stream(prompt):
        first = first or time.perf_counter() - start
    result = conv.last_result
    assert result is not None
    conv.save(session)
    backend = model.backend
    assert isinstance(backend, LlamaServerBackend)
    # The slot holds the prompt and the answer but the answer's last token (sampled, never evaluated).
    server_held = result.cached_tokens + result.prompt_tokens + result.generated_tokens - 1
    slot_file = backend.slot_keeper.slot_file(conv.history.conversation_id)[0]
    notes.write_text(json.dumps({"server_held": server_held, "slot_file": slot_file}))
    return {
        "word": word,
        "restore": restore,
        "resumed": resumed,
        "ttft": first or result.total_seconds,
        "cached": result.cached_tokens,
        "held_before": held_before,
        "grew": len(conv.history) - before_messages,
        "own_word_in_history": word in conv.history[1].content,
    }


def run(url: str, folder: Path, conversations: int, rounds: int, restore: bool) -> list[dict[str, Any]]:
    """All conversations' chains at once; returns every turn's report."""
    folder.mkdir(parents=True, exist_ok=True)
    reports: list[dict[str, Any]] = []
    for _ in range(rounds):
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.server_load", "--worker", url, str(folder / f"c{i}.lmsession")]
                + [WORDS[i % len(WORDS)], "restore" if restore else "reread"],
                stdout=subprocess.PIPE,
                cwd=HERE.parent,
            )
            for i in range(conversations)
        ]
        for proc in procs:
            out, _ = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"a conversation's process failed ({proc.returncode})")
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    return reports


def check(reports: list[dict[str, Any]]) -> list[str]:
    """Every turn that broke a rule, as one line each (an empty list: all good)."""
    problems = []
    for r in reports:
        if r["grew"] != 2:
            problems.append(f"{r['word']}: the history grew by {r['grew']} messages, not one turn")
        if not r["own_word_in_history"]:
            problems.append(f"{r['word']}: its first message lost its code word")
    return problems


def check_slot_files(url: str, folder: Path, slot_dir: Path, conversations: int) -> list[str]:
    """Read the slot file each conversation's session names back: it restores, and its tokens hold its own code
    word only."""
    client, problems = LlamaServerClient(url), []
    for i in range(conversations):
        slot_file = json.loads((folder / f"c{i}.json").read_text())["slot_file"]
        if slot_file is None:
            continue  # its last save found the slot taken: it names no file (its next turn reads the history)
        n_restored = client.restore_slot(0, slot_file).n_tokens
        text = client.detokenize(slot_file_tokens(slot_dir / slot_file))
        own = WORDS[i % len(WORDS)]
        others = [w for w in WORDS[:conversations] if w != own and w in text]
        if own not in text or others or n_restored == 0:
            problems.append(f"conversation {i}: its slot file holds {own in text=}, other words {others}")
    return problems


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[max(0, round(0.95 * len(ordered)) - 1)]


def markdown(summary: dict[str, Any]) -> str:
    """The load test's part of RESULTS.md."""
    restore, reread = summary["ttft_restore_p50_p95"], summary["ttft_reread_p50_p95"]
    verdict = "none" if not summary["problems"] else "; ".join(summary["problems"])
    return "\n".join(
        [
            "## Shared server under load",
            "",
            f"`python -m benchmarks.server_load`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
            f"{summary['conversations']} conversations (each a chain of processes, a `Conversation` on "
            "`load_model(URL)` in each: restore the session, one turn, save, exit), "
            f"one llama-server with {summary['slots']} slots, {summary['rounds']} rounds with slot restore and "
            f"{summary['rounds']} with the session's tokens read again instead (`use_kv=False`); {summary['turns']} turns, "
            f"{summary['wall_s']:.0f} s, 1-min load {summary['load'][0]:.2f} / {summary['load'][1]:.2f}.",
            "",
            "| Time to first token of a resumed turn | p50 | p95 |",
            "|---|---:|---:|",
            f"| slot file restored | {restore[0]:.2f} s | {restore[1]:.2f} s |",
            f"| history re-read | {reread[0]:.2f} s | {reread[1]:.2f} s |",
            "",
            f"Resumed turns with slot restore that reused every token of their own conversation: "
            f"{summary['reused_all'][0]} of {summary['reused_all'][1]}. The others had no slot file of their own "
            "(their last save found the slot already taken by a waiting conversation) or lost their slot between "
            "the restore and the request, and the server read them again: with every conversation starting its "
            "turn at the same moment, four slots are contended on every round. The histories are short (a few "
            "hundred tokens), so re-reading costs little here; the resume benchmark above shows it at 7.6k tokens.",
            "",
            f"Problems (a lost or doubled turn, a first message without its code word, a slot file that does not "
            f"restore or holds another conversation's code word): {verdict}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=4, metavar=("URL", "SESSION", "WORD", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.worker:
        url, session, word, mode = args.worker
        print(json.dumps(worker(url, Path(session), word, mode == "restore")))
        return
    llama_server_binary()
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        server = LlamaServer(Path(scratch) / "slots", parallel=args.slots, ctx_per_slot=2048).start()
        try:
            restored = run(server.url, Path(scratch) / "restore", args.conversations, args.rounds, True)
            problems = check(restored)
            problems += check_slot_files(server.url, Path(scratch) / "restore", server.slot_dir, args.conversations)
            reread = run(server.url, Path(scratch) / "reread", args.conversations, args.rounds, False)
            problems += check(reread)
        finally:
            server.stop()
    wall = time.perf_counter() - started
    resumed = [r for r in restored if r["resumed"]]
    reused_all = sum(r["cached"] >= r["held_before"] for r in resumed)
    with_restore = _percentiles([r["ttft"] for r in resumed])
    without = _percentiles([r["ttft"] for r in reread if r["resumed"]])
    summary = {
        "conversations": args.conversations,
        "slots": args.slots,
        "rounds": args.rounds,
        "turns": len(restored) + len(reread),
        "problems": problems,
        "reused_all": (reused_all, len(resumed)),
        "ttft_restore_p50_p95": with_restore,
        "ttft_reread_p50_p95": without,
        "wall_s": wall,
        "load": (load_start, os.getloadavg()[0]),
    }
    print(json.dumps(summary, indent=1))
    if not args.no_write:
        write_block(HERE / "RESULTS.md", "load", markdown(summary))
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
