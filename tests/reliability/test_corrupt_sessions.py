"""Damaged session files: every one ends in a typed error (with the history where it survived), none crashes.

The cases come from :mod:`.mutations` (truncations around every boundary, bit flips and bursts in
every region, wrong magic, versions and lengths, lying section tables with correct checksums,
forged but self-consistent sections, a directory or a FIFO in the file's place). Each batch of
restores runs in a worker process, so a segfault or an abort in llama.cpp is caught and named.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lmchat_jupyter import Conversation, Model
from lmchat_jupyter.core.errors import SessionCorruptError

from .forge import Layout, split
from .mutations import Case, all_cases, padding_regions, select
from .runner import run_cases

GREEDY = {"temperature": 0.0, "max_tokens": 12}


def _keep(folder: Path, name: str, conv: Conversation, model_path: str | None) -> dict[str, Any]:
    path = folder / f"{name}.lmsession"
    conv.save(path)
    # One thread: the workers share the machine with the test run, and llama.cpp's threads spin.
    settings = {"n_ctx": conv.model.n_ctx, "n_threads": 1}
    return {
        "path": str(path),
        "model": {"path": model_path, "settings": settings},
        "limits": [conv.model.llm.n_vocab(), conv.model.n_ctx],
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pristine")


def _saved_after_each_turn(folder: Path, model: Model) -> Conversation:
    """SmolLM2 saved after each of three turns: a base and two records."""
    conv = Conversation(model, system="You are terse. " + "Remember: the orchard grows red apples. " * 20)
    for prompt in ("Name a colour.", "Name a fruit.", "Name a city."):
        conv.submit(prompt, **GREEDY)
        conv.save(folder / "smol-rec.lmsession")
    return conv


@pytest.fixture(scope="module")
def bases(model: Model, gemma: Model, gemma_file: Path, pristine: Path) -> dict[str, Any]:
    """Pristine sessions to damage: SmolLM2 after one turn, Gemma 3 (sliding window, two caches) after
    one, and SmolLM2 saved after each of three turns (damaged records)."""
    one = Conversation(model, system="You are a helpful assistant. Answer briefly.")
    one.submit("My name is Ada and I like red apples.", **GREEDY)
    sliding = Conversation(gemma)
    sliding.submit("Name three colours.", **GREEDY)
    recorded = _saved_after_each_turn(pristine, model)
    return {
        "smol-1": _keep(pristine, "smol-1", one, None),
        "gemma-1": _keep(pristine, "gemma-1", sliding, str(gemma_file)),
        "smol-rec": _keep(pristine, "smol-rec", recorded, None),
    }


@pytest.fixture(scope="module")
def more_bases(bases: dict[str, Any], model: Model, pristine: Path) -> dict[str, Any]:
    """Also SmolLM2 after three turns (more checkpoints, another KV to swap in)."""
    three = Conversation(model, system="You are terse.")
    for prompt in ("Name a colour.", "Name a fruit.", "Name a city."):
        three.submit(prompt, **GREEDY)
    return dict(bases, **{"smol-3": _keep(pristine, "smol-3", three, None)})


def judge(case: Case, result: dict[str, Any], reference: dict[str, Any]) -> str | None:
    """None when the outcome is one the case allows; else what went wrong."""
    outcome = result["outcome"]
    expect = case["expect"]
    if outcome in ("crashed", "hang", "untyped", "other-typed"):
        return f"{outcome}: {result.get('type', '')} {result.get('message', '')}"
    if expect == "earlier" and outcome != "restored" and not case.get("or_error"):
        return f"{outcome} where the base and the records before the damage are whole: {result.get('message', '')}"
    if outcome == "not-found":
        return None if case["what"] == "dangling-symlink" else "SessionNotFoundError for a file that exists"
    if outcome == "mismatch":
        if expect not in ("mismatch", "safe"):
            return "SessionMismatchError, but the header names the same model and settings"
        return None if result["history"] == reference["history"] else "the mismatch error lacks the history"
    if outcome == "corrupt":
        if expect == "mismatch":
            return f"SessionCorruptError where the file only names other settings: {result['message']}"
        if case["history"] and result["history"] != reference["history"]:
            return "the history survived the damage, but the error does not carry it"
        return None
    assert outcome == "restored", outcome
    if expect in ("error", "mismatch"):
        return f"restored a file that should have been refused ({result['note']})"
    problems = [
        result.get("agrees"),
        result.get("agrees_after"),
        result.get("next_untyped") and f"the next turn raised {result['next_untyped']}",
    ]
    if expect == "earlier":  # restored: the records before the damage
        messages = case["messages"]
        if result["history"] != reference["history"][:messages]:
            problems.append(f"restored {len(result['history'])} messages, not the {messages} before the damage")
    if expect == "error-or-intact":
        if result["history"] != reference["history"]:
            problems.append("restored with another history")
        elif result.get("next") != reference["next"]:
            problems.append(f"the next answer differs: {result.get('next')!r} != {reference['next']!r}")
    found = [p for p in problems if p]
    return "; ".join(found) if found else None


def run_harness(bases: dict[str, Any], n: int, *, heavy: bool) -> None:
    layouts: dict[str, Layout] = {name: split(Path(b["path"]).read_bytes()) for name, b in bases.items()}
    limits = {name: tuple(b["limits"]) for name, b in bases.items()}
    everything = all_cases(layouts, limits)  # type: ignore[arg-type]
    cases = select(everything, n, heavy=heavy)
    job = {
        "bases": {k: {"path": v["path"], "model": v["model"]} for k, v in bases.items()},
        "limits": {k: list(v) for k, v in limits.items()},
    }
    results, references = run_cases(job, [c["id"] for c in cases])
    failures = []
    tally: Counter[tuple[str, str]] = Counter()
    for case in cases:
        result = results[case["id"]]
        tally[(case["family"], result["outcome"])] += 1
        problem = judge(case, result, references[case["base"]])
        if problem:
            failures.append(f"#{case['id']} {case['base']} {case['family']}: {case['what']} -> {problem}")
    print(f"\n{len(cases)} of {len(everything)} cases; outcomes by family:")
    for (family, outcome), count in sorted(tally.items()):
        print(f"  {family:24} {outcome:10} {count}")
    slowest = sorted(results.values(), key=lambda r: -r.get("seconds", 0))[:5]
    print("slowest:", ", ".join(f"#{r['id']} {r.get('seconds')} s" for r in slowest))
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)


def test_a_byte_that_is_not_zero_in_the_padding_is_refused_and_the_history_kept(model: Model, tmp_path: Path) -> None:
    conv = Conversation(model, system="You are a helpful assistant. Answer briefly.")
    conv.submit("My name is Ada and I like red apples.", **GREEDY)
    path = tmp_path / "padded.lmsession"
    conv.save(path)
    layout = split(path.read_bytes())
    messages = [(m.role, m.content) for m in conv.history.messages]
    regions = padding_regions(layout)
    assert len(regions) >= 2, regions  # the lead's and some section's: lengths are seldom multiples of 64
    for name, start, end in regions:
        for at in sorted({start, end - 1}):
            damaged = bytearray(layout.blob)
            damaged[at] = 0x01
            path.write_bytes(damaged)
            with pytest.raises(SessionCorruptError, match="padding holds a non-zero byte") as refused:
                Conversation.restore(model, path)
            assert f"offset {at:,}" in str(refused.value), (name, str(refused.value))
            history = refused.value.history  # the history is kept, as for any other damage
            assert history is not None, name
            assert [(m.role, m.content) for m in history.messages] == messages
            assert "Conversation.from_history" in str(refused.value)
    path.write_bytes(layout.blob)  # the pristine file restores
    assert [(m.role, m.content) for m in Conversation.restore(model, path).history.messages] == messages


def test_damaged_sessions_fail_safely(bases: dict[str, Any]) -> None:
    run_harness(bases, 100, heavy=False)


@pytest.mark.slow
def test_damaged_sessions_fail_safely_long(more_bases: dict[str, Any]) -> None:
    run_harness(more_bases, 1000, heavy=True)
