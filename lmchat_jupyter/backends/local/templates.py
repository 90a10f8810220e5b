"""The chat template of a GGUF: its own, or the family's turn format for base models that carry none."""

from __future__ import annotations

__all__ = ["template_for"]

# Used only when a GGUF carries no chat template (base models): the family's own turn format where
# known, else ChatML. Contents are not trimmed, so earlier turns render exactly as they were cached.
_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_GEMMA = (
    "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] + "
    "'<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def template_for(metadata: dict[str, str]) -> str:
    """The Jinja chat template of a model with this GGUF ``metadata``."""
    own = metadata.get("tokenizer.chat_template")
    if own:
        return own
    return _GEMMA if metadata.get("general.architecture", "").startswith("gemma") else _CHATML
