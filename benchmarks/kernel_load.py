"""A bounded load test through real kernels: many notebooks on one llama-server with fewer slots, turns and restarts.

.venv/bin/python -m benchmarks.kernel_load                    # 8 kernels, 4 slots, 3 rounds
.venv/bin/python -m benchmarks.kernel_load --kernels 2 --slots 2 --rounds 1 --filler 2 --write /tmp/R.md

Each conversation is a notebook (its own .ipynb and sidecar in a temporary folder) whose kernel is started,
shut down and started again on the same notebook, as a user restarting it does. Its first kernel runs
``%load_ext lmchat`` and a ``%%chat --model URL`` cell that plants the conversation's code word (with some
filler text, so that there is a history worth restoring); every later kernel restores the conversation from the
sidecar and runs two cells: one that asks for the code word (the first answer after the restart: its slot file is
restored before it) and one more question. All kernels run at once.

Checked after every answer: the conversation holds every turn it had (none lost at a restart, none doubled), its
history holds its own code word and no other conversation's; counted: answers whose server prompt reused every
token the conversation held before the turn (its slot held its own prefix), answers that name the code word.
After the run each conversation's slot file is restored on the server and must hold its own code word only.
The same runs again with each conversation's slot file removed at every restart (the server reads the history
again): p50/p95 time to first token of the first answer after a restart, with and without slot restore.
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

from lmchat_jupyter.backends.server.llama_client import LlamaServerClient
from lmchat_jupyter.backends.server.slots import slot_file_names
from tests.kernel_driver import KernelDriver, notebook_file
from tests.servers import LlamaServer, llama_server_binary, slot_file_tokens

from .server_bench import write_block

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
WORDS = ["PAPAYA", "MANGO", "QUINCE", "LYCHEE", "GUAVA", "DAMSON", "FEIJOA", "LOQUAT", "MEDLAR", "SALAK"]
FILLER = "Log entry {i}: the lighthouse keeper wrote down the tide, the wind and the ships that passed the cape. "
ASK = "What is the code word? Answer with the word only."
MORE = "Name one animal that lives in the sea."
#: What the kernel tells about its conversation after a cell (one JSON line).
PROBE = (
    "(lambda c: {'messages': [[m.role, m.content] for m in c.history], 'tokens': c.info.token_count, "
    "'id': c.history.conversation_id, 'users': c.info.user_message_count, "
    "'result': None if c.last_result is None else [c.last_result.time_to_first_token, "
    "c.last_result.cached_tokens, c.last_result.prompt_tokens, c.last_result.generated_tokens], "
    "'notice': getattr(c.model.backend, 'notice', None)})(__import__('lmchat_jupyter').current())"
)


def chat_cell(url: str, max_tokens: int, prompt: str) -> str:
    return f"%%chat --model {url} --temperature 0 --max-tokens {max_tokens}\n{prompt}"


def conversation(
    url: str, folder: Path, index: int, rounds: int, filler: int, restore: bool, slot_dir: Path, max_tokens: int
) -> list[dict[str, Any]]:
    """One notebook's kernels, one after another: plant the code word, then restart and answer, ``rounds`` times."""
    word = WORDS[index % len(WORDS)]
    others = [w for w in WORDS if w != word]
    folder.mkdir(parents=True, exist_ok=True)
    notebook = notebook_file(folder, f"c{index}.ipynb")
    reports: list[dict[str, Any]] = []
    users = 0
    server_held = 0  # the tokens the server held for the conversation after its previous answer
    conversation_id = None
    for round_no in range(rounds + 1):
        started = time.perf_counter()
        kernel = KernelDriver(notebook, folder, ipc=folder / "kernel")
        try:
            loaded = kernel.run("%load_ext lmchat")
            restart_s = time.perf_counter() - started
            if loaded.error is not None:
                raise RuntimeError(f"%load_ext lmchat failed: {loaded.error}")
            restored = f"restored default: {2 * users} messages" in loaded.stdout if users else None
            if round_no == 0:
                text = f"The code word is {word}. " + "".join(FILLER.format(i=i) for i in range(filler))
                prompts = [("plant", text + f"Remember the code word {word}. Reply with OK.")]
            else:
                prompts = [("resumed", ASK), ("continued", MORE)]
            for turn_no, (kind, prompt) in enumerate(prompts):
                held_before = kernel.value(PROBE)["tokens"] if users else 0
                cell = kernel.run(chat_cell(url, max_tokens, prompt), cell_id=f"r{round_no}t{turn_no}")
                state = kernel.value(PROBE)
                conversation_id = state["id"]
                users += 1
                history = " ".join(content for _, content in state["messages"])
                ttft, cached, prompt_tokens, generated = state["result"] or [None, 0, 0, 0]
                reports.append(
                    {
                        "word": word,
                        "restore": restore,
                        "round": round_no,
                        "kind": kind,
                        "error": cell.error,
                        "restored_whole": restored if turn_no == 0 else None,
                        "restart_s": restart_s if turn_no == 0 else None,
                        "users": state["users"],
                        "expected_users": users,
                        "own_word": word in next((text for role, text in state["messages"] if role == "user"), ""),
                        "other_words": [w for w in others if w in history],
                        "named_word": kind == "resumed" and word.lower() in history.split(ASK)[-1].lower(),
                        "held_before": held_before,
                        "server_held_before": server_held,
                        "ttft": ttft,
                        "cached": cached,
                        "prompt": prompt_tokens,
                        "generated": generated,
                        "notice": state["notice"],
                    }
                )
                # The slot holds the prompt and the answer but the answer's last token (sampled, never evaluated).
                server_held = cached + prompt_tokens + generated - 1
            # The slot file the conversation's saved state names now (None: its last save found the slot taken).
            named = kernel.value(
                f"__import__('lmchat_jupyter').current().model.backend.slot_keeper.slot_file({conversation_id!r})"
            )
        finally:
            kernel.shutdown()
        if not restore and conversation_id is not None:
            # The server reads the history again: the conversation's slot file is gone at every restart.
            for name in slot_file_names(conversation_id, url):
                (slot_dir / name).unlink(missing_ok=True)
    if reports:
        reports[-1]["conversation_id"] = conversation_id
        reports[-1]["slot_file"] = named[0] if named else None
    return reports


def run_all(
    url: str, folder: Path, kernels: int, rounds: int, filler: int, restore: bool, slot_dir: Path, max_tokens: int
) -> list[dict[str, Any]]:
    """Every conversation's chain of kernels at once (one driving process each); every answer's report."""
    procs = []
    for i in range(kernels):
        args = [url, str(folder / f"c{i}"), str(i), str(rounds), str(filler), "restore" if restore else "reread"]
        command = [sys.executable, "-m", "benchmarks.kernel_load", "--worker", *args, str(slot_dir), str(max_tokens)]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, cwd=HERE.parent))
    reports: list[dict[str, Any]] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"a conversation's kernels failed ({proc.returncode})")
        reports += json.loads(out.decode().strip().splitlines()[-1])
    return reports


def check(reports: list[dict[str, Any]]) -> list[str]:
    """Every answer that broke a rule, one line each (an empty list: all good)."""
    problems = []
    for r in reports:
        where = f"{r['word']} round {r['round']} {r['kind']}"
        if r["error"] is not None:
            problems.append(f"{where}: the cell failed ({r['error']})")
        if r["restored_whole"] is False:
            problems.append(f"{where}: the restarted kernel did not restore the whole conversation")
        if r["users"] != r["expected_users"]:
            problems.append(f"{where}: {r['users']} turns, not {r['expected_users']} (a turn lost or doubled)")
        if not r["own_word"]:
            problems.append(f"{where}: its first message lost its code word")
        if r["other_words"]:
            problems.append(f"{where}: its history holds another conversation's code word {r['other_words']}")
    return problems


def check_slot_files(url: str, slot_dir: Path, reports: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """Restore the slot file each conversation names on the server: it holds its own code word and no other one.

    A file that a save overwrote after the slot had changed hands is no longer named (the conversation forgot
    it) and is never restored: it is not checked."""
    client, problems, checked = LlamaServerClient(url), [], 0
    for r in reports:
        if "conversation_id" not in r:
            continue
        name = r["slot_file"]
        if name is None:
            continue  # its last save found the slot taken: the next restart reads the history
        n_restored = client.restore_slot(0, name).n_tokens
        text = client.detokenize(slot_file_tokens(slot_dir / name))
        others = [w for w in WORDS if w != r["word"] and w in text]
        checked += 1
        if r["word"] not in text or others or n_restored == 0:
            problems.append(f"{r['word']}: its slot file holds its own word: {r['word'] in text}, others: {others}")
    return checked, problems


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p95 (nearest rank)."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[max(0, round(0.95 * len(ordered)) - 1)]


def summarise(restored: list[dict[str, Any]], reread: list[dict[str, Any]]) -> dict[str, Any]:
    def of(reports: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
        return [r for r in reports if r["kind"] == kind and r["ttft"] is not None]

    def reused(reports: list[dict[str, Any]]) -> tuple[int, int]:
        return sum(r["cached"] >= r["server_held_before"] for r in reports), len(reports)

    everything = restored + reread
    return {
        "ttft_restore": percentiles([r["ttft"] for r in of(restored, "resumed")]),
        "ttft_restore_whole": percentiles(
            [r["ttft"] for r in of(restored, "resumed") if r["cached"] >= r["server_held_before"]] or [float("nan")]
        ),
        "ttft_reread": percentiles([r["ttft"] for r in of(reread, "resumed")]),
        "ttft_continued": percentiles([r["ttft"] for r in of(everything, "continued")]),
        "restart_s": percentiles([r["restart_s"] for r in everything if r["restart_s"] is not None]),
        "held_p50": statistics.median([r["held_before"] for r in of(everything, "resumed")]),
        "reused_restore": reused(of(restored, "resumed")),
        "reused_reread": reused(of(reread, "resumed")),
        "reused_continued": reused(of(everything, "continued")),
        "named": (sum(r["named_word"] for r in of(everything, "resumed")), len(of(everything, "resumed"))),
        "answers": len(everything),
        "restarts": sum(r["restart_s"] is not None for r in everything),
        "notices": sorted({r["notice"].split(" (")[0] for r in restored if r["notice"]}),
    }


def markdown(s: dict[str, Any]) -> str:
    """The load test's part of RESULTS.md."""
    verdict = "none" if not s["problems"] else "; ".join(s["problems"])
    restore, reread, continued, restart = s["ttft_restore"], s["ttft_reread"], s["ttft_continued"], s["restart_s"]
    notices = "; ".join(s["notices"]) if s["notices"] else "none"
    return "\n".join(
        [
            "## Shared server under load, through kernels (`%%chat --model http://…`)",
            "",
            f"`python -m benchmarks.kernel_load`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
            f"{s['kernels']} notebooks, each a chain of real ipykernels (jupyter_client; `%load_ext lmchat`, "
            f"`%%chat --model URL`, shut down and started again on the same notebook, restored from its sidecar), "
            f"all at once on one llama-server with {s['slots']} slots; {s['rounds']} restarts per notebook after the "
            f"turn that plants its code word (with {s['filler']} lines of filler: {s['held_p50']:.0f} tokens held at "
            f"the median restart), two answers after each restart (greedy, at most {s['max_tokens']} tokens). Run "
            f"twice: slot files kept, then removed at every restart (the server reads the history again). "
            f"{s['answers']} answers, {s['restarts']} kernel restarts, {s['wall_s']:.0f} s, 1-min load "
            f"{s['load'][0]:.2f} / {s['load'][1]:.2f}.",
            "",
            "| Time to first token (the turn's start in the kernel to its first token) | p50 | p95 |",
            "|---|---:|---:|",
            f"| first answer after a restart, slot file restored | {restore[0]:.2f} s | {restore[1]:.2f} s |",
            f"| (those of them whose slot held its own restored prefix when the answer ran) "
            f"| {s['ttft_restore_whole'][0]:.2f} s | {s['ttft_restore_whole'][1]:.2f} s |",
            f"| first answer after a restart, slot file removed (history re-read) | {reread[0]:.2f} s "
            f"| {reread[1]:.2f} s |",
            f"| the next answer, no restart between | {continued[0]:.2f} s | {continued[1]:.2f} s |",
            f"| (kernel start + `%load_ext lmchat` with the restore from the sidecar) | {restart[0]:.2f} s "
            f"| {restart[1]:.2f} s |",
            "",
            f"First answers after a restart whose prompt the server took whole from the slot (cached tokens ≥ what "
            f"the server held of the conversation after its previous answer): {s['reused_restore'][0]} of {s['reused_restore'][1]} with the slot file "
            f"restored, {s['reused_reread'][0]} of {s['reused_reread'][1]} with it removed (a slot that still held "
            f"the conversation from its previous kernel); next answers: {s['reused_continued'][0]} of "
            f"{s['reused_continued'][1]}. Answers that named their code word: {s['named'][0]} of {s['named'][1]} "
            f"(SmolLM2-135M; the history holds it either way). Slot files checked after the run: "
            f"{s['slot_files_checked']}, each holding its own code word only. Notices in the kernels with slot "
            f"files kept: {notices}.",
            "",
            f"Conversations lost: {s['lost']}. Problems (a failed cell, a restart that did not restore the whole "
            f"conversation, a turn lost or doubled, a history without its code word or with another's, a slot file "
            f"holding another conversation): {verdict}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=8, help=argparse.SUPPRESS)
    parser.add_argument("--kernels", type=int, default=8)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="restarts per notebook after its first turn")
    parser.add_argument("--filler", type=int, default=40, help="filler lines in the first message (~20 tokens each)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--write", type=Path, default=HERE / "RESULTS.md", help="the RESULTS.md to update")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--reports", type=Path, help="write every answer's report here (JSON)")
    args = parser.parse_args()
    if args.worker:
        url, folder, index, rounds, filler, mode, slot_dir, max_tokens = args.worker
        reports = conversation(
            url, Path(folder), int(index), int(rounds), int(filler), mode == "restore", Path(slot_dir), int(max_tokens)
        )
        print(json.dumps(reports))
        return
    llama_server_binary()
    load_start, started = os.getloadavg()[0], time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        slot_dir = Path(scratch) / "slots"
        with LlamaServer(slot_dir, parallel=args.slots, ctx_per_slot=4096) as server:

            def chains(restore: bool) -> list[dict[str, Any]]:
                folder = Path(scratch) / ("restore" if restore else "reread")
                sizes = (args.kernels, args.rounds, args.filler)
                return run_all(server.url, folder, *sizes, restore, slot_dir, args.max_tokens)

            restored = chains(True)
            checked, slot_problems = check_slot_files(server.url, slot_dir, restored)
            reread = chains(False)
    problems = check(restored) + slot_problems + check(reread)
    lost = len(
        {
            (r["word"], r["restore"])
            for r in restored + reread
            if r["users"] < r["expected_users"] or r["restored_whole"] is False
        }
    )
    summary = {
        **summarise(restored, reread),
        "kernels": args.kernels,
        "slots": args.slots,
        "rounds": args.rounds,
        "filler": args.filler,
        "max_tokens": args.max_tokens,
        "problems": problems,
        "lost": lost,
        "slot_files_checked": checked,
        "wall_s": time.perf_counter() - started,
        "load": (load_start, os.getloadavg()[0]),
    }
    print(json.dumps(summary, indent=1))
    if args.reports:
        args.reports.write_text(json.dumps(restored + reread, indent=1))
    if not args.no_write:
        write_block(args.write, "kernel-load", markdown(summary))
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
