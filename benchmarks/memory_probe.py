"""Peak memory of restore, whole save and a turn's append, run in its own process: ``python -m benchmarks.memory_probe``.

The peak resident set (VmHWM) is reset to the current one (``/proc/self/clear_refs``) just before
each operation, so the peak minus the resident set at that moment is what the operation added on
top of the loaded model (after one unmeasured restore and save). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "measure"]


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} is not in /proc/self/status")


def _reset_peak() -> None:
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def measure(spec: str | None, n_ctx: int, sessions: list[Path], scratch: Path) -> dict[str, Any]:
    from lmchat_jupyter import Conversation, load_model

    from .workload import NEXT_PROMPT, release

    model = load_model(spec, n_ctx=n_ctx)
    model.sha256  # noqa: B018  hashed before measuring, as a kernel has it from its first restore
    loaded = _status("VmRSS")
    # One unmeasured restore and save first: the first call of each code path maps its code pages
    # and llama.cpp touches its compute buffers once; neither grows with the state.
    warm = Conversation.restore(model, sessions[0])
    warm.save(scratch)
    warm.submit(NEXT_PROMPT, temperature=0.0, max_tokens=1)
    warm.save(scratch)  # a record appended
    scratch.unlink()
    del warm
    rows = []
    for path in sessions:
        release(model)
        _reset_peak()
        before = _status("VmRSS")
        conv = Conversation.restore(model, path)
        restore_extra = _status("VmHWM") - before
        state = model.backend.state_size()
        _reset_peak()
        before = _status("VmRSS")
        conv.save(scratch)
        save_extra = _status("VmHWM") - before
        # A turn, then its autosave: a record appended to the file just written.
        conv.submit(NEXT_PROMPT, temperature=0.0, max_tokens=1)
        size = scratch.stat().st_size
        _reset_peak()
        before = _status("VmRSS")
        conv.save(scratch)
        append_extra = _status("VmHWM") - before
        record = scratch.stat().st_size - size
        scratch.unlink()
        rows.append(
            {
                "session": path.name,
                "tokens": conv.info.token_count,
                "state_bytes": state,
                "restore_extra_bytes": restore_extra,
                "save_extra_bytes": save_extra,
                "append_extra_bytes": append_extra,
                "record_bytes": record,
                "restore_ratio": restore_extra / state,
                "save_ratio": save_extra / state,
                "append_ratio": append_extra / state,
            }
        )
        del conv
    return {"loaded_rss_bytes": loaded, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="model spec (default: the embedded model)")
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--scratch", type=Path, required=True, help="where the probe may write a session")
    parser.add_argument("sessions", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if not os.path.exists("/proc/self/clear_refs"):
        sys.exit("this probe needs Linux /proc (clear_refs and VmHWM)")
    result = measure(args.model, args.n_ctx, args.sessions, args.scratch)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
