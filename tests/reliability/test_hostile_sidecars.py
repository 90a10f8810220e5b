"""Hostile sidecar folders in a real kernel: ``%load_ext lmchat`` and a Run-All against each.

For every case of ``hostile_sidecars.py`` a notebook gets the hostile folder beside it, and a real
kernel (through jupyter_client, as JupyterLab drives one) runs the notebook's cells: ``%load_ext
lmchat``, a ``%%chat`` turn, a turn on a second conversation, ``%chat list``, then ``%unload_ext``
(which saves everything, as a shutdown does), in four cells. Then:

- nothing outside the sidecar folder changed: a victim folder (the files the links point at) and
  the notebooks' folder (the sidecars left out) are compared entry by entry, links not followed,
  with sizes, modification times and contents;
- no cell ran past its timeout (a hang), the kernel is alive, no traceback, no cell error;
- the user was told: a message naming the file and what is wrong with it;
- the chat went on: the turns were answered;
- the only model loaded is the one the user chose (the default).

Many folders share one kernel (each loads the extension afresh for its notebook), so that the run
stays short on two cores; a case that fails (a hang, a dead kernel, an error) costs a fresh kernel
for the cases after it, so that one failure does not spoil the others. The
long variant runs every case and then a second pass on what the first one left (a restart).
"""

from __future__ import annotations

import gc
import queue
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lmchat_jupyter import Conversation, Model
from lmchat_jupyter.backends.specs import default_model_path
from lmchat_jupyter.storage.sidecar import sidecar_for

from ..kernel_driver import KernelDriver, notebook_file
from .hostile_sidecars import QUICK, SIDECAR, HostileCase, all_cases, can_make_devices, make_victim, snapshot

CHAT = "%%chat --temperature 0 --max-tokens 4\n"
CELL_TIMEOUT = 60.0
MODELS_EXPR = (
    "sorted({str(o.path) for o in __import__('gc').get_objects() if isinstance(o, __import__('lmchat_jupyter').Model)})"
)
COUNT_EXPR = "__import__('lmchat_jupyter').current().info.user_message_count"


@dataclass
class Outcome:
    case: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    told: str = ""


class Hang(Exception):
    pass


def run_cell(k: KernelDriver, code: str, outcome: Outcome) -> str:
    try:
        run = k.run(code, timeout=CELL_TIMEOUT)
    except queue.Empty:
        raise Hang(f"no reply within {CELL_TIMEOUT:.0f} s to {code.splitlines()[0]!r}") from None
    if run.error is not None:
        outcome.problems.append(f"cell {code.splitlines()[0]!r} failed: {run.error}")
    if "Traceback" in run.text:
        outcome.problems.append(f"a traceback in {code.splitlines()[0]!r}: {run.text[-500:]}")
    return run.text


def run_notebook(k: KernelDriver, notebook: Path, outcome: Outcome) -> None:
    """The notebook's Run-All, then the extension unloaded (everything saved, the folder released)."""
    text = [
        run_cell(k, f"__vsc_ipynb_file__ = {str(notebook)!r}\n%load_ext lmchat", outcome),
        run_cell(k, CHAT + "Say hi.", outcome),
        run_cell(k, CHAT.replace("%%chat", "%%chat --name café") + "Say hi.", outcome),
        run_cell(k, f"%chat list\nprint('answered', {COUNT_EXPR})\n%unload_ext lmchat", outcome),
    ]
    outcome.told = "\n".join(text)
    answered = re.search(r"^answered (\d+)$", outcome.told, re.MULTILINE)
    if answered is None or int(answered.group(1)) < 1:
        outcome.problems.append(f"the turn was not answered: {outcome.told[-300:]!r}")


def check_told(case: HostileCase, sidecar: Path, outcome: Outcome) -> None:
    if case.expect is None:
        return
    file = sidecar.name if case.file == SIDECAR else case.file
    lines = [line for line in outcome.told.splitlines() if case.expect in line and (file or "") in line]
    if not lines:
        outcome.problems.append(f"not told {case.expect!r} about {file}: {outcome.told[-800:]!r}")


def outside(root: Path, victim: Path) -> dict[str, object]:
    def is_sidecar(path: Path) -> bool:
        return path.name.endswith(".lmchat") and path.is_dir() and not path.is_symlink()

    return {"notebooks": snapshot(root, is_sidecar), "victim": snapshot(victim, lambda _: False)}


def compare(before: dict[str, object], after: dict[str, object]) -> list[str]:
    problems = []
    for part in before:
        old, new = before[part], after[part]
        assert isinstance(old, dict) and isinstance(new, dict)
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                problems.append(f"written outside the sidecar: {part}/{key} {old.get(key)} -> {new.get(key)}")
    return problems


def run_cases(root: Path, victim: Path, cases: list[HostileCase], *, build: bool) -> list[Outcome]:
    """Each case in turn, in as few kernels as hangs and crashes allow."""
    outcomes = []
    k: KernelDriver | None = None
    try:
        for index, case in enumerate(cases):
            notebook = root / f"case{index:03d}.ipynb"
            if build:
                notebook_file(root, notebook.name)
                case.build(sidecar_for(notebook), victim)
            outcome = Outcome(case.name)
            before = outside(root, victim)
            started = time.monotonic()
            if k is None:
                k = KernelDriver(None, root)
            try:
                run_notebook(k, notebook, outcome)
            except Hang as exc:
                outcome.problems.append(f"hang: {exc}")
                k.kill()
                k = None
            if k is not None and not k.km.is_alive():
                outcome.problems.append("the kernel died")
                k = None
            elif k is not None and outcome.problems:
                k.kill()  # a kernel left in a bad state would spoil the cases after it
                k = None
            outcome.seconds = time.monotonic() - started
            outcome.problems += compare(before, outside(root, victim))
            if build:
                check_told(case, sidecar_for(notebook), outcome)
            outcomes.append(outcome)
        if k is not None:
            models = k.value(MODELS_EXPR)
            if models != [str(default_model_path())]:
                outcomes.append(Outcome("models", [f"models loaded other than the default: {models}"]))
    finally:
        if k is not None:
            k.shutdown()
    return outcomes


@pytest.fixture(scope="module")
def session_bytes(model: Model) -> bytes:
    conv = Conversation(model)
    conv.submit("Name a colour.", temperature=0.0, max_tokens=4)
    blob = conv.save()
    assert blob is not None
    gc.collect()
    return blob


def hostile_run(tmp_path: Path, session: bytes, names: tuple[str, ...] | None, passes: int) -> list[Outcome]:
    devices = can_make_devices(tmp_path)
    cases = [c for c in all_cases(session, devices=devices) if names is None or c.name in names]
    if names is not None:
        missing = set(names) - {c.name for c in cases} - ({"lock: character device", "session: character device"})
        assert not missing, missing
    victim, root = tmp_path / "victim", tmp_path / "notebooks"
    make_victim(victim, session)
    root.mkdir()
    outcomes = []
    for round_ in range(passes):
        outcomes += run_cases(root, victim, cases, build=round_ == 0)
    failures = [o for o in outcomes if o.problems]
    slowest = max(outcomes, key=lambda o: o.seconds)
    print(
        f"\n{len(cases)} hostile sidecar folders x {passes} pass(es), devices {'on' if devices else 'off'}: "
        f"{len(failures)} failing; slowest {slowest.case} at {slowest.seconds:.1f} s"
    )
    assert not failures, "\n".join(f"{o.case}: {p}" for o in failures for p in o.problems)
    return outcomes


def test_hostile_sidecar_folders_quick(tmp_path: Path, session_bytes: bytes) -> None:
    hostile_run(tmp_path, session_bytes, QUICK, passes=1)


@pytest.mark.slow
def test_hostile_sidecar_folders_every_case_and_a_restart(tmp_path: Path, session_bytes: bytes) -> None:
    hostile_run(tmp_path, session_bytes, None, passes=2)
