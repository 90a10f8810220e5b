"""A model's Jinja chat template rendered in this process, for runtimes that only hand out the template.

The environment is the one llama-cpp-python (and Hugging Face's transformers) render chat templates in: a
sandbox, ``trim_blocks`` and ``lstrip_blocks``, ``{% generation %}`` passed through, ``loopcontrols``,
``tojson`` without ASCII escapes, and ``raise_exception`` / ``strftime_now`` as functions; so a conversation
renders the same whether its model runs in the kernel or on a server.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["render_chat"]


def render_chat(
    template: str, messages: list[dict[str, str]], *, bos_token: str, eos_token: str, generation_prompt: bool
) -> str:
    """``messages`` rendered with ``template``; ValueError when the template refuses them."""
    try:
        return _compiled(template).render(
            messages=messages,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=generation_prompt,
            raise_exception=_raise,
            strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt),
        )
    except jinja2.TemplateError as exc:
        raise ValueError(str(exc)) from None


def _raise(message: str) -> None:
    raise ValueError(message)


class _PassGenerationTags(jinja2.ext.Extension):
    """Hugging Face's ``{% generation %}…{% endgeneration %}`` marks: their body is rendered as it is."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def _compiled(template: str) -> jinja2.Template:
    # Compiling takes tens of milliseconds; every conversation on the same model shares one.
    environment = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_PassGenerationTags, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = _tojson
    try:
        return environment.from_string(template)
    except jinja2.TemplateError as exc:
        raise ValueError(f"the chat template does not compile: {exc}") from None
