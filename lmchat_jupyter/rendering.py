"""Render chat messages with the model's own chat template (from the GGUF) and tokenize text."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from .errors import LmchatError

if TYPE_CHECKING:
    from .models import Model

__all__ = ["ChatRenderer"]

_PLACEHOLDER = "\ufff0lmchat-next-message\ufff0"


class ChatRenderer:
    """The model's Jinja chat template, rendered the way llama-cpp-python's chat completion does."""

    def __init__(self, model: Model) -> None:
        self.model = model
        llm = model.llm
        self._eos = _token_text(model, llm.token_eos())
        self._bos = _token_text(model, llm.token_bos())
        self._with_prompt = _formatter(model.chat_template, self._eos, self._bos, True)
        self._without_prompt = _formatter(model.chat_template, self._eos, self._bos, False)

    def render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        formatter = self._with_prompt if generation_prompt else self._without_prompt
        try:
            return formatter(messages=messages).prompt  # type: ignore[arg-type]
        except Exception as exc:
            raise LmchatError(f"the chat template of {self.model.name} refused these messages: {exc}") from None

    def next_user_opening(self, messages: list[dict[str, str]]) -> str:
        """The rendered text up to where the next user message's own words would start.

        Whatever the user writes next, the template puts the same text before it (the end of the
        answer's turn, then the user header): it can be evaluated before the message exists.
        """
        rendered = self.render([*messages, {"role": "user", "content": _PLACEHOLDER}], True)
        at = rendered.find(_PLACEHOLDER)
        return rendered[:at] if at >= 0 else ""

    def tokenize(self, text: str) -> list[int]:
        """Tokens of ``text`` with special tokens parsed and no BOS added (the template writes its own)."""
        if not text:
            return []
        return list(self.model.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))


@functools.lru_cache(maxsize=32)
def _formatter(template: str, eos: str, bos: str, generation_prompt: bool) -> Jinja2ChatFormatter:
    # Compiling a template takes tens of milliseconds, more than restoring a session; a compiled
    # template only renders, so every conversation on the same model shares one.
    return Jinja2ChatFormatter(template, eos, bos, generation_prompt)


def _token_text(model: Model, token: int) -> str:
    if token < 0:
        return ""
    return model.llm.detokenize([token], special=True).decode("utf-8", errors="ignore")
