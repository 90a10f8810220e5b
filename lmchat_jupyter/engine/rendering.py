"""Render chat messages with the model's own chat template and tokenize text, through the backend."""

from __future__ import annotations

from ..backends.interface import Backend

__all__ = ["ChatRenderer"]

_PLACEHOLDER = "\ufff0lmchat-next-message\ufff0"


class ChatRenderer:
    """The model's chat template, rendered the way llama-cpp-python's chat completion does."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.backend.format_chat(messages, generation_prompt)

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
        return self.backend.tokenize(text)
