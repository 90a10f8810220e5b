"""KV-shape twins: llama.cpp loads each one, and a token occupies as many KV bytes as in the real model.

The twins are written once per machine into the test models' cache (``LMCHAT_TEST_MODELS``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import llama_cpp
import pytest

from benchmarks.twins import TINY_TWIN, TWINS, TwinSpec, twin_path
from lmchat_jupyter import Conversation, load_model

# Real models' figures, written out rather than computed from the twin specs, so that a wrong spec fails.
REAL_KV_BYTES_PER_TOKEN = {
    "Llama-3.2-1B-Instruct": 2 * 16 * 8 * 64 * 2,  # 32 KiB
    "Llama-3.1-8B-Instruct": 2 * 32 * 8 * 128 * 2,  # 128 KiB
}


def _state_bytes_per_token(path: Path) -> float:
    """KV state bytes one more token adds, read from llama.cpp's own state size after 16 and 48 tokens."""
    model = load_model(path, n_ctx=128, reuse=False)
    llm = model.llm
    sizes = []
    for n in (16, 48):
        llama_cpp.llama_memory_clear(llm._ctx.memory, True)
        llm.reset()
        llm.eval(list(range(10, 10 + n)))
        sizes.append(llama_cpp.llama_state_seq_get_size(llm._ctx.ctx, 0))
    del model, llm
    return (sizes[1] - sizes[0]) / 32


@pytest.mark.parametrize("spec", list(TWINS.values()), ids=list(TWINS))
def test_twin_loads_and_holds_the_real_models_kv_per_token(spec: TwinSpec, tmp_path: Path) -> None:
    path = twin_path(spec)
    assert spec.kv_bytes_per_token() == REAL_KV_BYTES_PER_TOKEN[spec.stands_for]
    per_token = _state_bytes_per_token(path)
    # llama.cpp's state also records each cell's position and sequence count (8 bytes).
    assert spec.kv_bytes_per_token() <= per_token <= spec.kv_bytes_per_token() + 16, per_token
    assert path.stat().st_size < 64 * 2**20  # tiny weights: the point of a twin


def test_tiny_twin_chats_saves_and_restores(tmp_path: Path) -> None:
    path = twin_path(TINY_TWIN, tmp_path)
    assert twin_path(TINY_TWIN, tmp_path) == path  # built once, then found
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no partial file left behind
    model = load_model(path, n_ctx=256, reuse=False)
    conv = Conversation(model, system="You are a twin.")
    answer = conv.submit("Hello there", max_tokens=4, temperature=0.0)
    assert answer.generated_tokens >= 1
    conv.save(tmp_path / "twin.lmsession")
    restored = Conversation.restore(model, tmp_path / "twin.lmsession")
    assert restored.info.token_count == conv.info.token_count


def test_a_turns_kv_alone_rebuilds_the_whole_state_byte_for_byte(tmp_path: Path) -> None:
    """The llama.cpp calls an autosave of only a turn's KV would rest on (benchmarks/delta_probe.py)."""
    path = twin_path(TINY_TWIN, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.delta_probe", str(path), "200", "40"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rebuilt_identical"]
    assert 1.0 <= result["delta_over_new_kv"] <= 1.2  # the turn's KV and a small header, not the whole state
