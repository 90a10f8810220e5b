"""``python -m tests.resolve_specs SPEC...``: resolve model specs in a fresh process, one JSON line each.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so the Hub tests
resolve ``hf:`` specs in a process started with those variables, as a kernel would be. Each answer
also says how many seconds resolving took.
"""

from __future__ import annotations

import json
import sys
import time

from lmchat_jupyter.backends.specs import resolve_model_path
from lmchat_jupyter.core.errors import LmchatError


def main(specs: list[str]) -> None:
    for spec in specs:
        started = time.monotonic()
        answer: dict[str, object]
        try:
            answer = {"spec": spec, "path": str(resolve_model_path(spec))}
        except LmchatError as exc:
            answer = {"spec": spec, "error": type(exc).__name__, "message": str(exc)}
        answer["seconds"] = time.monotonic() - started
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
