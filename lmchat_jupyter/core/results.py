"""Plain result and option records returned by a Conversation."""

from __future__ import annotations

from dataclasses import dataclass

from .history import Message

__all__ = ["TurnResult", "ConversationInfo", "GenerationOptions"]


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings for one answer. ``temperature=0`` is greedy; ``seed=None`` is random."""

    temperature: float = 0.7
    max_tokens: int = 512
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class TurnResult:
    """A finished answer and what it cost.

    ``prompt_tokens`` counts only the tokens evaluated for this turn; ``cached_tokens`` those reused
    from the KV cache. ``finish_reason`` is "stop", "length", "stopped" (stop flag) or "interrupted".
    """

    text: str
    message: Message
    generated_tokens: int
    prompt_tokens: int
    cached_tokens: int
    time_to_first_token: float
    tokens_per_second: float
    total_seconds: float
    finish_reason: str


@dataclass(frozen=True)
class ConversationInfo:
    """A summary of a conversation's size."""

    conversation_id: str
    message_count: int
    user_message_count: int
    token_count: int
    n_ctx: int
    model_name: str
