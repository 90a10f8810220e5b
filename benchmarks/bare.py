"""The baseline a user could write without lmchat: llama-cpp-python's own chat completion."""

from __future__ import annotations

import time
from typing import Any

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from lmchat_jupyter import Model
from lmchat_jupyter.engine.rendering import ChatRenderer

from .workload import release

__all__ = ["bare_chat_completion"]


def bare_chat_completion(model: Model, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """Stream ``Llama.create_chat_completion`` greedily: its text, tokens, seconds, and seconds after the first token.

    llama-cpp-python is handed the model's own chat template (the one lmchat renders with), so both
    see the same prompt; sampling settings are lmchat's defaults at temperature 0. The KV cache is
    left empty and unowned, as :func:`release` leaves it.
    """
    llm = model.llm
    backend: Any = model.backend  # the local backend: its template and special tokens
    renderer = ChatRenderer(backend)
    with model.lock:
        release(model)
        saved = llm.chat_handler
        llm.chat_handler = Jinja2ChatFormatter(
            backend.chat_template, backend.eos_text, backend.bos_text
        ).to_chat_handler()
        try:
            start = time.perf_counter()
            first: float | None = None
            pieces: list[str] = []
            stream: Any = llm.create_chat_completion(
                messages=messages,  # type: ignore[arg-type]
                temperature=0.0,
                top_k=40,
                top_p=0.95,
                min_p=0.05,
                repeat_penalty=1.0,
                max_tokens=max_tokens,
                stream=True,
            )
            for chunk in stream:
                text = chunk["choices"][0]["delta"].get("content")
                if text:
                    first = first or time.perf_counter()
                    pieces.append(str(text))
            end = time.perf_counter()
        finally:
            llm.chat_handler = saved
            release(model)  # the call moved the cache behind the engine's back
    text = "".join(pieces)
    return {
        "text": text,
        "seconds": end - start,
        "decode_seconds": end - (first or end),
        "tokens": len(renderer.tokenize(text)),
    }
