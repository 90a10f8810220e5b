"""Restore damaged session files in a process of its own, so that a crash in native code is caught.

``python -m tests.reliability.restore_worker JOB.json`` loads the models once, rebuilds the case
list (see :mod:`.mutations`), and for each requested id prints ``@@ {"start": id}`` before it
touches the file and ``@@ {result}`` after. If the process dies, the last started case is the
culprit; :mod:`.runner` starts a new worker for the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import llama_cpp

from lmchat_jupyter import (
    ChatHistory,
    Conversation,
    LmchatError,
    Model,
    SessionCorruptError,
    SessionMismatchError,
    SessionNotFoundError,
    load_model,
)

from .forge import split
from .mutations import Case, all_cases

NEXT = "Continue."
NEXT_OPTS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 4}


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write("@@ " + json.dumps(record) + "\n")
    sys.stdout.flush()


def kv_agrees(conv: Conversation) -> str | None:
    """None when the model's KV cache holds exactly the conversation's tokens; else what is off."""
    model = conv.model
    llm = model.llm
    n = len(conv.cache.tokens)
    memory = llama_cpp.llama_get_memory(llm.ctx)
    lo = int(llama_cpp.llama_memory_seq_pos_min(memory, 0))
    hi = int(llama_cpp.llama_memory_seq_pos_max(memory, 0))
    if model.owner is not conv.cache:
        return "the conversation does not own the model's cache"
    if llm.n_tokens != n:
        return f"llama-cpp-python counts {llm.n_tokens} tokens, the conversation {n}"
    if hi != n - 1:
        return f"the cache ends at position {hi}, the conversation holds {n} tokens"
    if n and (lo < 0 or (lo != 0 and model.n_swa == 0)):
        return f"the cache starts at position {lo}"
    return None


def history_key(history: object) -> list[tuple[str, str, str]] | None:
    if not isinstance(history, ChatHistory):
        return None
    return [(m.id, m.role, m.content) for m in history]


def restore_one(model: Model, source: Path | bytes, verify: str) -> dict[str, Any]:
    try:
        conv = Conversation.restore(model, source, verify=verify)
    except SessionCorruptError as exc:
        return {"outcome": "corrupt", "message": str(exc), "history": history_key(getattr(exc, "history", None))}
    except SessionMismatchError as exc:
        return {"outcome": "mismatch", "message": str(exc), "history": history_key(exc.history),
                "differences": sorted(exc.differences)}  # fmt: skip
    except SessionNotFoundError as exc:
        return {"outcome": "not-found", "message": str(exc)}
    except LmchatError as exc:
        return {"outcome": "other-typed", "type": type(exc).__name__, "message": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - anything else is what the harness looks for
        return {"outcome": "untyped", "type": type(exc).__name__, "message": str(exc),
                "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
    result: dict[str, Any] = {
        "outcome": "restored",
        "note": conv.restored_from,
        "history": history_key(conv.history),
        "tokens": len(conv.cache.tokens),
        "agrees": kv_agrees(conv),
    }
    try:
        result["next"] = conv.submit(NEXT, **NEXT_OPTS).text
        result["agrees_after"] = kv_agrees(conv)
    except LmchatError as exc:
        result["next_error"] = f"{type(exc).__name__}: {exc}"
    except BaseException as exc:  # noqa: BLE001
        result["next_untyped"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-3000:]
    return result


def place(case: Case, data: bytes | str, folder: Path) -> Path | bytes:
    """Put the case's file where the restore will look (or return the bytes for an in-memory restore)."""
    path = folder / f"case-{case['id']}.lmsession"
    if data == "empty":
        path.write_bytes(b"")
    elif data == "directory":
        path.mkdir()
    elif data == "fifo":
        os.mkfifo(path)
    elif data == "symlink-loop":
        path.symlink_to(path)
    elif data == "dangling-symlink":
        path.symlink_to(folder / "nowhere.lmsession")
    elif isinstance(data, bytes):
        if case["id"] % 4 == 3:
            return data  # a quarter of the cases restore from bytes instead of a path
        path.write_bytes(data)
    return path


def main() -> None:
    started = time.perf_counter()
    job = json.loads(Path(sys.argv[1]).read_text())
    layouts = {name: split(Path(base["path"]).read_bytes()) for name, base in job["bases"].items()}
    wanted = set(job["ids"])
    cases = [c for c in all_cases(layouts, {k: tuple(v) for k, v in job["limits"].items()}) if c["id"] in wanted]
    emit({"loaded_cases": round(time.perf_counter() - started, 3)})
    models: dict[str, Model] = {}
    for name, base in job["bases"].items():
        if any(c["base"] == name for c in cases):
            spec = base["model"]
            models[name] = load_model(spec["path"], **spec["settings"])
            pristine = restore_one(models[name], Path(base["path"]), "auto")
            emit({"reference": name, **pristine})
    with tempfile.TemporaryDirectory(prefix="lmchat-corrupt-") as tmp:
        folder = Path(tmp)
        for case in cases:
            emit({"start": case["id"], "heavy": bool(case.get("heavy"))})
            began = time.perf_counter()
            data = case["build"]()
            source = place(case, data, folder)
            result = restore_one(models[case["base"]], source, case["verify"])
            emit({"id": case["id"], "seconds": round(time.perf_counter() - began, 3), **result})
            if isinstance(source, Path):
                with contextlib.suppress(OSError):
                    source.rmdir() if source.is_dir() and not source.is_symlink() else source.unlink()


if __name__ == "__main__":
    main()
