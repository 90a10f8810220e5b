"""The re-prefill baseline as a user would run it without lmchat, in a process that never imports lmchat.

    python benchmarks/bare_process.py MODEL.gguf N_CTX MESSAGES.json

Loads the model with llama-cpp-python's defaults (only ``n_ctx`` is given: its default of 512 holds
no long history) and its own chat template handling, sends the messages (the whole history and the
next question) to ``create_chat_completion`` once, streaming, and prints one JSON line: the load
time and the time from the call to the first token (``max_tokens=1``: the end of the stream).
Run it as a file, not as ``-m benchmarks.…``: importing the benchmarks package would import lmchat.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

__all__ = ["main"]


def main(argv: list[str]) -> int:
    model_path, n_ctx, messages_path = argv[0], int(argv[1]), argv[2]
    with open(messages_path) as fh:
        messages: list[dict[str, str]] = json.load(fh)
    import llama_cpp

    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=n_ctx, verbose=False)
    loaded = time.perf_counter()
    stream: Any = llm.create_chat_completion(messages=messages, max_tokens=1, stream=True)  # type: ignore[arg-type]
    for _ in stream:
        pass
    first_token = time.perf_counter()
    prompt_tokens = llm.n_tokens
    leaked = sorted(name for name in sys.modules if name.split(".")[0] in ("lmchat", "lmchat_jupyter"))
    print(
        json.dumps(
            {
                "load_seconds": loaded - start,
                "first_token_seconds": first_token - loaded,
                "tokens": prompt_tokens,
                "n_threads": llm.n_threads,
                "n_threads_batch": llm.context_params.n_threads_batch,
                "lmchat_modules": leaked,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
