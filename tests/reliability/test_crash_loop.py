"""Crash loop: kill -9 a real kernel at random moments of a ``%%chat`` conversation, restart, restore.

Each cycle starts a kernel on the same notebook, restores with ``%load_ext lmchat``, checks what came
back, chats a little and kills the kernel with SIGKILL at one of these moments (seeded):

- ``generating``: while a ``%%chat`` cell streams its answer;
- ``after_reply``: the moment a turn's answer arrives (its background session save is likely running);
- ``appending``: 0-30 ms after a turn's answer arrives, while its background save appends the turn's
  record to the session (or writes it whole);
- ``saving``: during an explicit ``%chat save``, which may overlap that background save;
- ``idle``: between turns, after a random pause;
- ``restore``: during ``%load_ext lmchat`` itself.

After every restart: every turn whose cell returned before the kill is in the conversation, in
order, with its answer; a turn cut off mid-generation is absent or appears once, after them; the
restore reports the full session, or the history alone only when no session file was ever written;
no traceback; the new kernel holds the folder's lock (the dead kernel's flock died with it); the
temp files a killed save left are removed and none accumulate.

A kill often beats the background save, leaving the session a turn behind the history; the restore
then catches up from the history. Two tests at the end check that a catch-up evaluates only the missing turns and is saved again.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lmchat_jupyter import ModelSettings
from lmchat_jupyter.core.atomic import TEMP_SUFFIX
from lmchat_jupyter.engine.conversation import Progress
from lmchat_jupyter.engine.session import container as session_format
from lmchat_jupyter.engine.session import records as session_records
from lmchat_jupyter.engine.session.history_patches import history_in
from lmchat_jupyter.storage.sidecar import Sidecar
from lmchat_jupyter.storage.store import ChatStore

from ..kernel_driver import KernelDriver, notebook_file

CHAT = "%%chat --temperature 0 --max-tokens 24\n"
MOMENTS = ("generating", "after_reply", "appending", "saving", "idle", "restore")
QUESTIONS = (
    "Name a fruit.",
    "Name a colour.",
    "What is two plus two?",
    "Name an animal.",
    "Say hello.",
    "Name a city.",
    "Name a planet.",
    "What day comes after Monday?",
)
#: A kill leaves at most one temp file per writer that can be busy at once: the history (main
#: thread) or an explicit save (main thread), and the background session save.
MAX_TEMP_AFTER_KILL = 2
SETTINGS = ModelSettings(n_ctx=4096)
HISTORY_EXPR = "[[m.role, m.content] for m in __import__('lmchat_jupyter').current().history]"
STORE_EXPR = "__import__('lmchat_jupyter.notebook.kernel').notebook.kernel.chats().store"
STATUS = re.compile(r"^lmchat: restored default: (\d+) messages, (\d+) tokens — (.*)$", re.MULTILINE)


@dataclass
class Turn:
    prompt: str
    shown: str  # the answer as its cell displayed it (plain text, without the stats line)


@dataclass
class Tally:
    moments: Counter[str] = field(default_factory=Counter)
    restores: Counter[str] = field(default_factory=Counter)
    cut_turns_kept: int = 0
    cut_turns_lost: int = 0
    max_temp_after_kill: int = 0
    kills_leaving_temp: Counter[str] = field(default_factory=Counter)
    session_behind: Counter[str] = field(default_factory=Counter)
    torn_records: Counter[str] = field(default_factory=Counter)
    completed_turns: int = 0


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f".*{TEMP_SUFFIX}")) if folder.is_dir() else []


def user_turns(messages: list[dict[str, object]]) -> int:
    return sum(1 for m in messages if m.get("role") == "user")


def session_turns(path: Path) -> tuple[int, bool]:
    """The user turns a session holds (its base and whole records) and whether a torn record ends it.

    The base is never torn: :func:`session_format.parse` checks every length and checksum.
    """
    with memoryview(path.read_bytes()) as view:
        base = session_format.parse(view, str(path))
        scan = session_records.read_records(view, base.end, base.chain, signed=True)
        for record in scan.records:
            record.release()
        for section in base.sections.values():
            section.release()
        history = history_in(view[: scan.end])
    assert history is not None
    return history.user_message_count, scan.problem is not None


def wait_for(k: KernelDriver, msg_id: str, kinds: set[str], timeout: float = 120) -> bool:
    """Wait for an iopub message of one of ``kinds`` from ``msg_id``; False if the execution ended first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = k.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {kinds} from the kernel in {timeout} s") from None
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "status" and msg["content"]["execution_state"] in kinds:
            return True
        if kind in kinds:
            return True
        if kind == "status" and msg["content"]["execution_state"] == "idle":
            return False


def kill_now(k: KernelDriver) -> None:
    """SIGKILL first, then the client's cleanup (which would otherwise delay the signal)."""
    os.kill(k.pid, signal.SIGKILL)
    k.kill()


def shown_answer(display: str) -> str:
    """The answer of a display's plain text, without the stats line under it."""
    return display.rsplit("\n\n", 1)[0]


class CrashLoop:
    def __init__(self, notebook: Path, seed: int) -> None:
        self.notebook = notebook
        self.folder = notebook.with_name(notebook.name.removesuffix(".ipynb") + ".lmchat")
        self.rng = random.Random(seed)
        self.turns: list[Turn] = []
        self.cut_prompt: str | None = None  # the turn in flight at the last kill, if any
        self.asked = 0
        self.restore_seconds = 2.0
        self.tally = Tally()
        self.last_moment = ""
        self.log: list[str] = []  # one line per kill: the moment, the turns before it, the delay

    # --- one kernel's life ----------------------------------------------------------------------

    def after_kill(self) -> bool:
        """What the killed kernel left on disk, before the next one starts; True if the session is behind."""
        left = temp_files(self.folder)
        assert len(left) <= MAX_TEMP_AFTER_KILL, f"temp files after one kill: {left}"
        self.tally.max_temp_after_kill = max(self.tally.max_temp_after_kill, len(left))
        if left:
            self.tally.kills_leaving_temp[self.last_moment] += 1
        session, history = self.folder / "default.lmsession", self.folder / "default.history.json"
        behind = False
        if session.is_file() and history.is_file():
            in_session, torn = session_turns(session)
            if torn:  # killed while appending a record: the restore takes the records before it
                self.tally.torn_records[self.last_moment] += 1
                self.note("a torn record at the end of the session")
            in_history = user_turns(json.loads(history.read_text(encoding="utf-8"))["messages"])
            assert in_session <= in_history, (in_session, in_history)
            if in_session < in_history:  # the kill beat the background save: the restore catches up
                self.tally.session_behind[self.last_moment] += 1
                self.note(f"session {in_session} turns, history {in_history}")
                behind = True
        if left:
            self.note(f"left {', '.join(left)}")
        return behind

    def note(self, text: str) -> None:
        if self.log:
            self.log[-1] += f"; {text}"

    def start(self) -> KernelDriver:
        """A new kernel, restored and checked."""
        behind = self.after_kill()
        had_session = (self.folder / "default.lmsession").is_file()
        k = KernelDriver(self.notebook, self.notebook.parent)
        try:
            began = time.monotonic()
            loaded = k.run("%load_ext lmchat")
            self.restore_seconds = time.monotonic() - began
            self.check_restore(k, loaded.text, loaded.error, had_session, behind)
        except BaseException:
            k.shutdown()
            raise
        return k

    def check_restore(self, k: KernelDriver, output: str, error: str | None, had_session: bool, behind: bool) -> None:
        assert error is None and "Traceback" not in output, output
        assert "in use by another kernel" not in output, output
        # The dead kernel's flock died with it: this kernel holds the folder and saves.
        assert k.value(f"{STORE_EXPR}.sidecar.writable") is True
        history = k.value(HISTORY_EXPR)
        statuses = STATUS.findall(output)
        if not self.turns and not history:
            assert not statuses, output
        else:
            assert len(statuses) == 1, output
            messages, _tokens, note = statuses[0]
            assert int(messages) == len(history), output
            if note.startswith("full session"):
                self.tally.restores["full session, caught up from the history" if behind else "full session"] += 1
                self.note(f"restored in {self.restore_seconds:.1f} s")
            else:
                # The history alone, only when no session was ever saved (killed before the first
                # background save); a session file that exists must always be usable.
                assert note == "history from default.history.json", output
                assert not had_session, output
                self.tally.restores["history"] += 1
                self.note(f"restored from the history in {self.restore_seconds:.1f} s")
        self.check_history(history)
        # Stale temp files are gone, and this kernel's own saves (a restore saves) leave none.
        k.value(f"{STORE_EXPR}.flush() or 1")
        assert temp_files(self.folder) == [], temp_files(self.folder)

    def check_history(self, history: list[list[str]]) -> None:
        roles = [role for role, _ in history]
        assert roles == ["user", "assistant"] * (len(history) // 2), roles
        pairs = [(history[i][1], history[i + 1][1]) for i in range(0, len(history), 2)]
        prompts = [p for p, _ in pairs]
        assert len(set(prompts)) == len(prompts), f"a turn appears twice: {prompts}"
        done = len(self.turns)
        assert len(pairs) >= done, f"completed turns lost: have {prompts}, expected {[t.prompt for t in self.turns]}"
        for turn, (prompt, answer) in zip(self.turns, pairs, strict=False):
            assert prompt == turn.prompt, f"completed turns out of order: {prompts}"
            assert answer == turn.shown, (prompt, answer, turn.shown)
        extra = pairs[done:]
        if self.cut_prompt is not None and not extra:
            self.tally.cut_turns_lost += 1
        if extra:
            # Only the turn cut off by the kill may be there beyond the completed ones.
            assert len(extra) == 1 and extra[0][0] == self.cut_prompt, (extra, self.cut_prompt)
            self.turns.append(Turn(extra[0][0], extra[0][1]))
            self.tally.cut_turns_kept += 1
        self.cut_prompt = None

    def prompt(self) -> str:
        self.asked += 1
        return f"{QUESTIONS[self.asked % len(QUESTIONS)]} (question {self.asked})"

    def turn(self, k: KernelDriver) -> None:
        prompt = self.prompt()
        run = k.run(CHAT + prompt, cell_id=f"cell-{self.asked}")
        assert run.error is None and "Traceback" not in run.text, run.text
        self.turns.append(Turn(prompt, shown_answer(run.displays[-1])))
        self.tally.completed_turns += 1

    def cycle(self, moment: str) -> None:
        self.tally.moments[moment] += 1
        if moment == "restore":
            self.after_kill()
            k = KernelDriver(self.notebook, self.notebook.parent)
            self.last_moment = moment
            msg_id = k.send("%load_ext lmchat")
            assert wait_for(k, msg_id, {"busy"})
            delay = self.rng.uniform(0, self.restore_seconds)
            time.sleep(delay)
            kill_now(k)
            self.log.append(f"{moment}: killed {delay:.3f} s into a {self.restore_seconds:.3f} s restore")
            return
        k = self.start()
        self.last_moment = moment
        try:
            before = self.rng.randint(0, 2)
            for _ in range(before):
                self.turn(k)
            delay = 0.0
            if moment == "generating":
                prompt = self.prompt()
                msg_id = k.send(CHAT + prompt, cell_id=f"cell-{self.asked}")
                self.cut_prompt = prompt
                wait_for(k, msg_id, {"update_display_data"})  # tokens are streaming
                delay = self.rng.uniform(0, 0.15)
            elif moment == "after_reply":
                self.turn(k)
            elif moment == "appending":
                self.turn(k)
                delay = self.rng.uniform(0, 0.03)
            elif moment == "saving":
                if not self.turns:
                    self.turn(k)
                msg_id = k.send("%chat save")
                assert wait_for(k, msg_id, {"busy"})
                delay = self.rng.uniform(0, 0.05)
            elif moment == "idle":
                delay = self.rng.uniform(0, 1.0)
            time.sleep(delay)
        except BaseException:
            k.shutdown()
            raise
        kill_now(k)
        self.log.append(f"{moment}: {before} turns first, killed after {delay:.3f} s")

    def finish(self) -> None:
        """A fresh kernel after the last kill restores everything and goes on."""
        k = self.start()
        try:
            self.turn(k)
            (role, prompt), (_, answer) = k.value(HISTORY_EXPR)[-2:]
            assert (role, prompt, answer) == ("user", self.turns[-1].prompt, self.turns[-1].shown)
        finally:
            k.shutdown()
        saved = json.loads((self.folder / "default.history.json").read_text(encoding="utf-8"))
        assert [m["content"] for m in saved["messages"] if m["role"] == "user"] == [t.prompt for t in self.turns]
        assert temp_files(self.folder) == []


@pytest.mark.parametrize("cycles", [pytest.param(5, id="quick"), pytest.param(50, id="long", marks=pytest.mark.slow)])
def test_crash_loop(tmp_path: Path, cycles: int) -> None:
    loop = CrashLoop(notebook_file(tmp_path, "crash loop.ipynb"), seed=cycles)
    if cycles < len(MOMENTS):
        # A kill during a record's append at least once (the quick variant's other moments are drawn).
        schedule = ["appending", *(loop.rng.choice(MOMENTS) for _ in range(cycles - 1))]
    else:  # every moment at least once, a restore only once there is something to restore
        rest = [loop.rng.choice(MOMENTS) for _ in range(cycles - len(MOMENTS))]
        others = [m for m in MOMENTS if m != "after_reply"]
        schedule = ["after_reply", *loop.rng.sample(others, len(others)), *rest]
    began = time.monotonic()
    for moment in schedule:
        loop.cycle(moment)
    loop.finish()
    tally = loop.tally
    print("\n" + "\n".join(f"cycle {i + 1}, {line}" for i, line in enumerate(loop.log)))
    print(
        f"\ncrash loop: {cycles} cycles in {time.monotonic() - began:.0f} s; kills {dict(tally.moments)}; "
        f"restores {dict(tally.restores)}; {tally.completed_turns} completed turns, {len(loop.turns)} in the end; "
        f"turns cut by a kill kept {tally.cut_turns_kept}, gone {tally.cut_turns_lost}; "
        f"at most {tally.max_temp_after_kill} temp files right after a kill (kills leaving any: "
        f"{dict(tally.kills_leaving_temp)}); session behind the history after a kill: {dict(tally.session_behind)}; "
        f"torn records after a kill: {dict(tally.torn_records)}"
    )
    assert tally.restores.total() - tally.restores["history"] >= tally.restores["history"]


def session_behind_history(folder: Path) -> int:
    """A session of three turns beside a history of four: a kill beat the last background save.

    Returns how many tokens the session holds.
    """
    first = ChatStore(Sidecar(folder), settings=SETTINGS, notify=lambda _line: None)
    conv = first.get()
    for prompt in ("My name is Ada.", "I like red apples.", "I live by the sea."):
        conv.submit(prompt, temperature=0.0, max_tokens=16)
    first.flush()
    older = (folder / "default.lmsession").read_bytes()
    cached = conv.info.token_count
    conv.submit("What is my name?", temperature=0.0, max_tokens=16)
    first.close()
    (folder / "default.lmsession").write_bytes(older)
    return cached


def test_a_session_behind_its_history_catches_up_with_the_missing_turn_only(tmp_path: Path) -> None:
    cached = session_behind_history(tmp_path)
    evaluated: Counter[str] = Counter()

    def progress(label: str) -> Progress:
        def report(done: int, total: int) -> None:
            if done == total:
                evaluated[label] += total

        return report

    store = ChatStore(Sidecar(tmp_path), settings=SETTINGS, notify=lambda _line: None, progress=progress)
    restored = store.get()
    total = restored.info.token_count
    store.close()
    assert restored.info.user_message_count == 4 and "full session" in store.statuses["default"]
    # The session held the first three turns: only the fourth needs evaluating.
    assert evaluated["Catching up"] <= total - cached, (dict(evaluated), cached, total)


def test_a_caught_up_session_is_saved_again(tmp_path: Path) -> None:
    session_behind_history(tmp_path)
    store = ChatStore(Sidecar(tmp_path), settings=SETTINGS, notify=lambda _line: None)
    try:
        assert store.get().info.user_message_count == 4
        store.flush()
        assert session_turns(tmp_path / "default.lmsession") == (4, False)
    finally:
        store.close()
