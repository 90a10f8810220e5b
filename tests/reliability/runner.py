"""Run restore cases in worker processes; a worker that dies or hangs names the case it was on."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_cases(
    job: dict[str, Any], ids: list[int], *, case_timeout: float = 120.0
) -> tuple[dict[int, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Results by case id, and the pristine reference restore of each base session.

    A case whose worker died from a signal gets ``outcome: crashed``; one that ran past
    ``case_timeout`` seconds gets ``outcome: hang``. Either way the other cases go on in a new worker.
    """
    results: dict[int, dict[str, Any]] = {}
    references: dict[str, dict[str, Any]] = {}
    remaining = list(ids)
    while remaining:
        with tempfile.TemporaryDirectory(prefix="lmchat-worker-") as tmp:
            job_path = Path(tmp) / "job.json"
            job_path.write_text(json.dumps(dict(job, ids=remaining)))
            err_path = Path(tmp) / "stderr.txt"
            with err_path.open("wb") as err:
                current, rc, hung = _one_worker(job_path, err, results, references, case_timeout)
            stderr_tail = err_path.read_bytes()[-2000:].decode(errors="replace")
        if current is not None:
            outcome = "hang" if hung else "crashed"
            detail = f"signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}"
            results[current] = {"id": current, "outcome": outcome, "message": detail, "stderr": stderr_tail}
        elif rc != 0:
            raise RuntimeError(f"the restore worker failed outside any case (exit {rc}):\n{stderr_tail}")
        before = len(remaining)
        remaining = [i for i in remaining if i not in results]
        if len(remaining) == before:
            raise RuntimeError(f"the restore worker made no progress (exit {rc}):\n{stderr_tail}")
    return results, references


def _one_worker(
    job_path: Path,
    err: Any,
    results: dict[int, dict[str, Any]],
    references: dict[str, dict[str, Any]],
    case_timeout: float,
) -> tuple[int | None, int | None, bool]:
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.restore_worker", str(job_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=err,
        env=env,
    )
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    current: int | None = None
    buffer = b""
    deadline = time.monotonic() + case_timeout + 120  # model loading comes first
    hung = False
    try:
        while True:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                hung = True
                proc.send_signal(signal.SIGKILL)
                break
            if not selector.select(timeout):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.startswith(b"@@ "):
                    continue
                record = json.loads(line[3:])
                if "start" in record:
                    current = record["start"]
                    # A heavy case evaluates a whole context again, minutes on a slow, busy machine.
                    deadline = time.monotonic() + case_timeout * (10 if record.get("heavy") else 1)
                elif "loaded_cases" in record:
                    pass
                elif "reference" in record:
                    references[record["reference"]] = record
                else:
                    results[record["id"]] = record
                    current = None
    finally:
        selector.close()
        rc = proc.wait()
        proc.stdout.close()
    return current, rc, hung
