"""Sessions saved under another model or other settings: refused before llama.cpp sees them, history kept.

Each case saves a real session with one configuration and restores it on another. The restore
must raise SessionMismatchError naming every field that differs with both values, must leave the
target model's KV cache exactly as it was (a live conversation there keeps its cached tokens), and
must hand back the history, which ``Conversation.from_history`` continues on the target model.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from lmchat_jupyter import ChatHistory, Conversation, Model, ModelSettings, SessionMismatchError, load_model
from lmchat_jupyter.backends.local.llama import positions

from .forge import reseal, split

GREEDY = {"temperature": 0.0, "max_tokens": 8}
BASE = {"n_ctx": 4096, "n_threads": 1}

#: name -> (model: "smol" or "gemma", settings). Each differs from "smol" or "gemma" in one respect.
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "smol": ("smol", {}),
    "smol n_ctx=2048": ("smol", {"n_ctx": 2048}),
    "smol n_ctx=8192": ("smol", {"n_ctx": 8192}),
    "smol q8_0 KV": ("smol", {"type_k": "q8_0", "type_v": "q8_0", "flash_attn": True}),
    "smol q8_0 K": ("smol", {"type_k": "q8_0"}),
    "smol flash-attn": ("smol", {"flash_attn": True}),
    "gemma": ("gemma", {}),
    "gemma window": ("gemma", {"swa_full": False}),
}

#: (saved with, restored on, fields that must be named as different)
QUICK = [
    ("smol", "gemma", {"model_sha256", "architecture", "n_layer"}),
    ("gemma", "smol", {"model_sha256", "n_vocab", "n_swa"}),
    ("smol n_ctx=2048", "smol", {"n_ctx"}),
    ("smol n_ctx=8192", "smol", {"n_ctx"}),
    ("smol q8_0 KV", "smol", {"type_k", "type_v", "flash_attn"}),
    ("smol flash-attn", "smol", {"flash_attn"}),
    ("gemma window", "gemma", {"swa_full"}),
]


class Lab:
    """Models per configuration, and one saved session per configuration, made on first use."""

    def __init__(self, gemma_file: Path) -> None:
        self.gemma_file = gemma_file
        self.models: dict[str, Model] = {}
        self.saved: dict[str, tuple[bytes, ChatHistory]] = {}

    def model(self, name: str) -> Model:
        if name not in self.models:
            kind, settings = CONFIGS[name]
            spec = None if kind == "smol" else self.gemma_file
            self.models[name] = load_model(spec, **{**BASE, **settings})
        return self.models[name]

    def session(self, name: str) -> tuple[bytes, ChatHistory]:
        if name not in self.saved:
            conv = Conversation(self.model(name), system="You are terse.")
            conv.submit("My name is Ada.", **GREEDY)
            blob = conv.save()
            assert blob is not None
            self.saved[name] = (blob, conv.history.copy())
        return self.saved[name]


@pytest.fixture(scope="module")
def lab(gemma_file: Path) -> Lab:
    return Lab(gemma_file)


def refused_and_continued(lab: Lab, blob: bytes, history: ChatHistory, target_name: str, fields: set[str]) -> None:
    """The checks every foreign session must pass on ``target_name``."""
    target = lab.model(target_name)
    bystander = Conversation(target, system="You are a bystander.")
    bystander.submit("Say yes.", **GREEDY)
    before = (positions(target.llm), list(bystander.cache.tokens))

    with pytest.raises(SessionMismatchError) as info:
        Conversation.restore(target, blob)
    error = info.value
    assert fields <= set(error.differences), (fields, error.differences)
    message = str(error)
    for field in fields:
        saved, now = error.differences[field]
        assert field in message
        assert str(saved)[:12] in message and str(now)[:12] in message, (field, message)
    assert "from_history" in message

    # Nothing reached llama.cpp: the live conversation's cache is as it was, and it goes on from it.
    assert target.owner is bystander.cache
    assert (positions(target.llm), bystander.cache.tokens) == before
    assert bystander.submit("Say no.", **GREEDY).cached_tokens >= len(before[1])

    assert isinstance(error.history, ChatHistory)
    assert [(m.id, m.role, m.content) for m in error.history] == [(m.id, m.role, m.content) for m in history]
    moved = Conversation.from_history(target, error.history)
    assert moved.info.token_count > 0
    assert moved.submit("What is my name?", **GREEDY).generated_tokens > 0


def test_quantized_v_cache_needs_flash_attention() -> None:
    with pytest.raises(ValueError, match="flash_attn=True"):
        ModelSettings(type_v="q8_0")
    assert ModelSettings(type_k="q8_0").type_k == "q8_0"  # a quantized K cache alone needs nothing


@pytest.mark.parametrize(("saved_with", "restored_on", "fields"), QUICK, ids=[f"{a} -> {b}" for a, b, _ in QUICK])
def test_foreign_session_is_refused_and_its_history_continues(
    lab: Lab, saved_with: str, restored_on: str, fields: set[str]
) -> None:
    blob, history = lab.session(saved_with)
    refused_and_continued(lab, blob, history, restored_on, fields)


@pytest.mark.parametrize(
    ("field", "value"),
    [("llama_cpp_python", "0.3.35"), ("chat_template_sha256", "0" * 64), ("model_name", "Another model")],
)
def test_a_header_from_another_version_or_template_is_refused(lab: Lab, field: str, value: str) -> None:
    """A file written by another llama-cpp-python (whose KV layout may differ) or under another template."""
    blob, history = lab.session("smol")
    layout = split(blob)
    forged = reseal(layout, {}, {"compat": dict(layout.header["compat"], **{field: value})})
    refused_and_continued(lab, forged, history, "smol", {field})


@pytest.mark.slow
def test_every_pair_of_configurations(lab: Lab) -> None:
    for saved_with, restored_on in itertools.permutations(CONFIGS, 2):
        blob, history = lab.session(saved_with)
        saved = split(blob).header["compat"]
        current = lab.model(restored_on).fingerprint()
        fields = {k for k in current if saved.get(k) != current[k]}
        assert fields, (saved_with, restored_on)
        refused_and_continued(lab, blob, history, restored_on, fields)
