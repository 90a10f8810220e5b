"""Ctrl-C (SIGINT) at any point of a turn: the history and the KV cache agree afterwards.

The engine's promise: an interrupt during the answer keeps the partial answer (meta
``finish_reason: interrupted``) with exactly its generated tokens in the cache; an interrupt
before the first token leaves no trace of the turn. So after any interrupt the conversation must
equal one that was never interrupted: its history must be that of a conversation whose second
turn generated ``k`` tokens (``max_tokens=k``, greedy) or that never had a second turn, and its
next answer must be that conversation's next answer.

Interrupts are real SIGINTs, delivered four ways: at a chosen line of the engine or of
llama-cpp-python (a tracer counts the lines and raises the signal at the n-th one, which also
covers prompt evaluation, split into several batches here), from a timer thread after a random
delay, from a token listener, and from another process while the turn runs in a child process.
"""

from __future__ import annotations

import json
import linecache
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import llama_cpp
import pytest

import lmchat_jupyter
from lmchat_jupyter import Conversation, Model, load_model
from lmchat_jupyter.backends.local.llama import positions

SYSTEM = "You are a helpful assistant. Answer briefly."
FIRST = "My name is Ada and I like red apples."
SECOND = "Describe the city of Lyon, its two rivers, its food and its old town, in a few sentences."
THIRD = "What is my name?"
MAX_SECOND = 4
GREEDY = {"temperature": 0.0}
ROOTS = (os.path.dirname(lmchat_jupyter.__file__), os.path.dirname(llama_cpp.__file__))
ROOT = Path(__file__).resolve().parents[2]

Contents = list[tuple[str, str]]


@pytest.fixture(autouse=True)
def _ctrl_c_as_in_a_terminal() -> Any:
    """Python's own SIGINT handler, whatever this process inherited: a shell that starts a job in
    the background without job control (``cmd &`` in a script) makes it ignore SIGINT, and Python
    then keeps SIG_IGN. The kernel and an interactive Python have the default handler."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def chat_model(smollm_path: Path) -> Model:
    """Small batches, so that a prompt is evaluated in several steps an interrupt can fall between."""
    return load_model(smollm_path, n_ctx=1024, n_batch=16, n_threads=1)


def contents(conv: Conversation) -> Contents:
    return [(m.role, m.content) for m in conv.history]


class References:
    """What never-interrupted conversations look like, by the number of tokens their second turn generated."""

    def __init__(self, model: Model) -> None:
        self.model = model
        first = Conversation(model, system=SYSTEM)
        first.submit(FIRST, max_tokens=6, **GREEDY)
        blob = first.save()
        assert blob is not None
        self.after_first = blob
        self._cache: dict[int | None, tuple[Contents, str, list[int]]] = {}

    def start(self) -> Conversation:
        """A conversation after its first turn, ready for the turn that will be interrupted."""
        return Conversation.restore(self.model, self.after_first)

    def of(self, k: int | None) -> tuple[Contents, str, list[int]]:
        """History, next answer and the cache's tokens after it, when the second turn generated ``k``
        tokens (None: no second turn)."""
        if k not in self._cache:
            conv = self.start()
            if k is not None:
                conv.submit(SECOND, max_tokens=k, **GREEDY)
            history = contents(conv)
            answer = conv.submit(THIRD, max_tokens=6, **GREEDY).text
            self._cache[k] = (history, answer, list(conv.cache.tokens))
        return self._cache[k]


@pytest.fixture(scope="module")
def refs(chat_model: Model) -> References:
    return References(chat_model)


def cache_problem(conv: Conversation) -> str | None:
    llm = conv.model.llm
    n = len(conv.cache.tokens)
    low, high = positions(llm)
    if conv.model.owner is conv.cache and (llm.n_tokens != n or high != n - 1 or (n and low != 0)):
        return (
            f"the cache holds positions {low}..{high} and llama-cpp-python counts {llm.n_tokens}; the conversation {n}"
        )
    return None


def judge(conv: Conversation, refs: References) -> str | None:
    """None when ``conv`` equals a never-interrupted conversation; else what differs."""
    if conv.busy or conv.model.lock._is_owned():  # type: ignore[attr-defined]
        return "a lock is still held: every later turn would wait forever"
    problem = cache_problem(conv)
    if problem:
        return problem
    now = contents(conv)
    matches = [k for k in (None, *range(1, MAX_SECOND + 1)) if refs.of(k)[0] == now]
    if not matches:
        return f"the history matches no uninterrupted conversation: {now[3:]}"
    answer = conv.submit(THIRD, max_tokens=6, **GREEDY).text
    problem = cache_problem(conv)
    if problem:
        return f"after the next turn: {problem}"
    expected = {refs.of(k)[1] for k in matches}
    if answer not in expected:
        return f"the next answer {answer!r} differs from {expected} (second turn of {matches} tokens)"
    # The same answer can come from a different context: the cache must hold the very same tokens.
    if not any(refs.of(k)[2] == conv.cache.tokens for k in matches):
        return f"after the next turn the cache holds other tokens than an uninterrupted conversation's ({matches})"
    return None


def count_lines(conv: Conversation) -> int:
    """How many lines of the engine and of llama-cpp-python one interrupted-to-be turn runs."""
    count = 0

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return local if frame.f_code.co_filename.startswith(ROOTS) else None

    sys.settrace(calls)
    try:
        conv.submit(SECOND, max_tokens=MAX_SECOND, **GREEDY)
    finally:
        sys.settrace(None)
    return count


def interrupt_at_line(conv: Conversation, line: int) -> bool:
    """Run the second turn, raising SIGINT at its ``line``-th traced line; True if the turn was interrupted."""
    count = 0
    fired = False

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count, fired
        if fired:
            return None
        if event == "line":
            count += 1
            if count == line:
                fired = True
                signal.raise_signal(signal.SIGINT)
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return local if not fired and frame.f_code.co_filename.startswith(ROOTS) else None

    sys.settrace(calls)
    try:
        conv.submit(SECOND, max_tokens=MAX_SECOND, **GREEDY)
    except KeyboardInterrupt:
        return True
    finally:
        sys.settrace(None)
    return False


def interrupt_after(conv: Conversation, delay: float) -> bool:
    """Run the second turn while a timer thread sends SIGINT to this process after ``delay`` seconds."""
    done = threading.Event()

    def fire() -> None:
        if not done.wait(delay):
            os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Thread(target=fire)
    timer.start()
    interrupted = False
    try:
        try:
            conv.submit(SECOND, max_tokens=MAX_SECOND, **GREEDY)
        finally:
            done.set()
            # A signal sent just as the turn ended lands here, inside the try.
            timer.join()
            time.sleep(0.01)
    except KeyboardInterrupt:
        interrupted = True
    timer.join()
    return interrupted


def run_cases(refs: References, inject: Callable[[Conversation, Any], bool], points: list[Any]) -> None:
    failures = []
    interrupted = 0
    for point in points:
        conv = refs.start()
        if inject(conv, point):
            interrupted += 1
        problem = judge(conv, refs)
        if problem:
            failures.append(f"{point}: {problem}")
    print(f"\n{len(points)} cases, {interrupted} interrupted, {len(failures)} failed")
    assert not failures, "\n".join(failures)


def line_points(refs: References, n: int | None) -> list[int]:
    total = count_lines(refs.start())
    if n is None or n >= total:
        return list(range(1, total + 1))
    rng = random.Random(f"lines:{total}")
    return sorted(
        {round(1 + i * (total - 1) / (n - 1)) for i in range(n)} | {rng.randint(1, total) for _ in range(n // 4)}
    )


def interrupt_at_source(conv: Conversation, target: tuple[str, int]) -> bool:
    """Run the second turn, raising SIGINT just before the ``nth`` run of the engine line containing
    ``text`` (with an ``after:`` prefix: just after it, before the next line of the same function)."""
    text, nth = target
    after = text.startswith("after:")
    text = text.removeprefix("after:")
    seen = 0
    fired = False
    armed: FrameType | None = None

    def local(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal seen, fired, armed
        if fired or event != "line":
            return None if fired else local
        if armed is frame:
            fired = True
            signal.raise_signal(signal.SIGINT)
            return None
        if text in linecache.getline(frame.f_code.co_filename, frame.f_lineno):
            seen += 1
            if seen == nth:
                if after:
                    armed = frame
                else:
                    fired = True
                    signal.raise_signal(signal.SIGINT)
        return local

    def calls(frame: FrameType, event: str, arg: object) -> Any:
        return local if not fired and frame.f_code.co_filename.startswith(ROOTS[0]) else None

    sys.settrace(calls)
    try:
        conv.submit(SECOND, max_tokens=MAX_SECOND, **GREEDY)
    except KeyboardInterrupt:
        return True
    finally:
        sys.settrace(None)
    assert fired, f"the engine never ran a line containing {text!r} {nth} times"
    return False


#: Places where an interrupt once left the history and the cache disagreeing, or the turn half recorded.
WINDOWS = [
    ('hooks.emit("turn_started", user)', 1),  # the user message added, its answer not begun
    ("sample = backend.sampler(opts)", 1),  # the prompt evaluated, the sampler not set up
    ("self.state.tokens.extend(chunk)", 2),  # the second prompt batch evaluated, not recorded
    ("state.text += new_text", 1),  # the whole prompt evaluated, its text not recorded
    ("self.state.tokens.append(token)", 2),  # a token in the cache, not yet in the records
    ("generated += 1", 2),  # a token recorded, not yet counted or decoded
    ("cache.state.text += piece", 2),  # a token decoded, its text not recorded
    ('answer = Message("assistant", text', 1),  # the turn's closing bookkeeping
    ("history.messages.append(answer)", 1),
    ("after:interrupts.acquire(self._turn_lock)", 1),  # the turn lock taken, its release not yet guaranteed
]


@pytest.mark.parametrize("window", WINDOWS, ids=[f"{text} #{n}" for text, n in WINDOWS])
def test_sigint_in_a_bookkeeping_window(refs: References, window: tuple[str, int]) -> None:
    run_cases(refs, interrupt_at_source, [window])


def test_sigint_at_lines_of_a_turn(refs: References) -> None:
    run_cases(refs, interrupt_at_line, line_points(refs, 24))


@pytest.mark.slow
def test_sigint_at_every_line_of_a_turn(refs: References) -> None:
    run_cases(refs, interrupt_at_line, line_points(refs, None))


def turn_seconds(refs: References) -> float:
    conv = refs.start()
    began = time.perf_counter()
    conv.submit(SECOND, max_tokens=MAX_SECOND, **GREEDY)
    return time.perf_counter() - began


def test_sigint_from_a_timer_thread(refs: References) -> None:
    span = turn_seconds(refs)
    rng = random.Random("timer")
    run_cases(refs, interrupt_after, [rng.uniform(0, span) for _ in range(6)])


@pytest.mark.slow
def test_sigint_from_a_timer_thread_long(refs: References) -> None:
    span = turn_seconds(refs)
    rng = random.Random("timer-long")
    run_cases(refs, interrupt_after, [rng.uniform(0, span * 1.1) for _ in range(100)])


def test_keyboard_interrupt_from_a_token_listener(refs: References) -> None:
    def at_token(conv: Conversation, j: int) -> bool:
        seen = 0

        def listener(_text: str) -> None:
            nonlocal seen
            seen += 1
            if seen == j:
                raise KeyboardInterrupt

        conv.on_token(listener)
        try:
            conv.submit(SECOND, max_tokens=MAX_SECOND, **GREEDY)
        except KeyboardInterrupt:
            return True
        return False

    run_cases(refs, at_token, list(range(1, MAX_SECOND + 1)))


CHILD = """
import json, os, signal, sys, time
from lmchat_jupyter import Conversation, load_model
from tests.reliability.test_interrupts import SECOND, MAX_SECOND, GREEDY
model = load_model(None, n_ctx=1024, n_batch=16, n_threads=1)
blob = open(sys.argv[1], "rb").read()
for line in sys.stdin:
    conv = Conversation.restore(model, blob)
    print("go", flush=True)
    try:
        conv.submit(SECOND, max_tokens=MAX_SECOND, **GREEDY)
    except KeyboardInterrupt:
        outcome = "interrupted"
    else:
        outcome = "finished"
        try:
            time.sleep(60)  # every case gets exactly one SIGINT: one that comes after the turn lands here
        except KeyboardInterrupt:
            pass
    turn = conv.save()
    open(sys.argv[2] + "/" + line.strip() + ".lmsession", "wb").write(turn)
    print(json.dumps({"case": line.strip(), "outcome": outcome}), flush=True)
"""


def test_sigint_from_another_process(refs: References, tmp_path: Path) -> None:
    """As Jupyter interrupts a kernel: SIGINT from outside while the turn runs; the saved session is judged here."""
    before = tmp_path / "before.lmsession"
    before.write_bytes(refs.after_first)
    rng = random.Random("child")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(before), str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    failures = []
    try:
        for case in range(4):
            child.stdin.write(f"{case}\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "go"
            time.sleep(rng.uniform(0.0, 1.5))
            child.send_signal(signal.SIGINT)
            report = json.loads(child.stdout.readline())
            conv = Conversation.restore(refs.model, tmp_path / f"{case}.lmsession")
            problem = judge(conv, refs)
            if problem:
                failures.append(f"case {case} ({report['outcome']}): {problem}")
    finally:
        child.stdin.close()
        child.wait(60)
    assert child.returncode == 0
    assert not failures, "\n".join(failures)


def test_the_gate_holds_sigint_until_a_safe_point() -> None:
    from lmchat_jupyter.core import interrupts

    with pytest.raises(KeyboardInterrupt), interrupts.held():
        signal.raise_signal(signal.SIGINT)
        reached = True  # held back: the block goes on
        interrupts.checkpoint()  # ... until here
        reached = False
    assert reached
    with pytest.raises(KeyboardInterrupt), interrupts.held(), interrupts.held():  # nested: delivered at the end
        signal.raise_signal(signal.SIGINT)
    with interrupts.held(), pytest.raises(KeyboardInterrupt), interrupts.released():
        signal.raise_signal(signal.SIGINT)
        time.sleep(1)  # released: interrupted as usual
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_gate_hands_the_signal_to_the_handler_it_found() -> None:
    from lmchat_jupyter.core import interrupts

    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with interrupts.held():
            signal.raise_signal(signal.SIGINT)
            assert seen == []
        assert seen == [signal.SIGINT]
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with interrupts.held():
            signal.raise_signal(signal.SIGINT)
            interrupts.checkpoint()  # ignored before, ignored now
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_gate_does_nothing_off_the_main_thread() -> None:
    from lmchat_jupyter.core import interrupts

    handlers: list[object] = []

    def worker() -> None:
        with interrupts.held():
            handlers.append(signal.getsignal(signal.SIGINT))
            interrupts.checkpoint()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert handlers == [signal.default_int_handler]
