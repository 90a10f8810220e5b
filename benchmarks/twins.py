"""KV-shape twins: GGUF models whose KV cache has the shape of a real model's, with tiny weights elsewhere.

A session's size, and the time to save, restore and autosave it, depend on the KV cache's shape
(layers x KV heads x head size) and the token count, not on what the weights say. A twin keeps that
shape and shrinks the rest (embedding width, FFN width, vocabulary: SmolLM2's tokenizer and chat
template), so 250 MB-1 GiB sessions can be built and measured on a small CPU machine in minutes.
Its weights are random: its answers are noise, its bytes and times are real.

Twins are written with the ``gguf`` package on first use into a cache folder
(``$LMCHAT_TEST_MODELS/twins``, default ``~/.cache/lmchat-test-models/twins``) under a name that
changes with the twin's shape and this generator's version, so they are built once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TwinSpec", "TWINS", "LLAMA_1B", "LLAMA_8B", "TINY_TWIN", "twin_path", "twins_folder", "twin_table"]

_GENERATOR_VERSION = 1
_F16_BYTES = 2


@dataclass(frozen=True)
class TwinSpec:
    """The KV shape of a real model (``stands_for``) and the tiny widths the twin uses elsewhere.

    The twin has as many query heads as KV heads (the real models have 4x as many query heads:
    grouped-query attention); query heads do not enter the KV cache, only the compute per token.
    """

    key: str
    stands_for: str
    n_layer: int
    n_head_kv: int
    head_dim: int
    n_embd: int = 64  # the real models' 2,048 / 4,096 would only add weight bytes
    n_ff: int = 64
    n_ctx_train: int = 131072

    def kv_bytes_per_token(self, element_bytes: int = _F16_BYTES) -> int:
        """K and V bytes one token occupies in the cache: 2 x layers x KV heads x head size x element size."""
        return 2 * self.n_layer * self.n_head_kv * self.head_dim * element_bytes


#: Llama-3.2-1B(-Instruct): 16 layers, 32 query heads over 8 KV heads of 64 dims: 32 KiB per token in f16.
LLAMA_1B = TwinSpec("llama-3.2-1b-kv-twin", "Llama-3.2-1B-Instruct", n_layer=16, n_head_kv=8, head_dim=64)
#: Llama-3.1-8B(-Instruct): 32 layers, 32 query heads over 8 KV heads of 128 dims: 128 KiB per token in f16.
LLAMA_8B = TwinSpec("llama-3.1-8b-kv-twin", "Llama-3.1-8B-Instruct", n_layer=32, n_head_kv=8, head_dim=128)
#: The twins the benchmark runs, by key.
TWINS = {spec.key: spec for spec in (LLAMA_1B, LLAMA_8B)}
#: A twin for quick checks (no real model): 2 layers x 2 KV heads x 32 dims.
TINY_TWIN = TwinSpec("tiny-kv-twin", "no real model (a quick check of the generator)", 2, 2, 32, n_embd=32, n_ff=32)


def twins_folder() -> Path:
    """Where twins are cached: beside the test models (``LMCHAT_TEST_MODELS``)."""
    base = Path(os.environ.get("LMCHAT_TEST_MODELS", Path.home() / ".cache" / "lmchat-test-models"))
    return base / "twins"


def twin_path(spec: TwinSpec, folder: Path | None = None) -> Path:
    """The twin's GGUF file, written first if this machine has none of this shape and generator version."""
    source = _tokenizer_source()
    identity = {
        "spec": asdict(spec),
        "generator": _GENERATOR_VERSION,
        "tokenizer": [source.name, source.stat().st_size],
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    target = (folder or twins_folder()) / f"{spec.key}-{digest}.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            _write_twin(spec, source, partial)
            os.replace(partial, target)  # another process building the same twin writes the same bytes
        finally:
            partial.unlink(missing_ok=True)
    return target


def _tokenizer_source() -> Path:
    from lmchat_jupyter.backends.specs import resolve_model_path

    return resolve_model_path(None)  # the embedded SmolLM2-135M: a vocabulary and chat template that work


def _tokenizer_fields(source: Path) -> dict[str, Any]:
    import gguf

    reader = gguf.GGUFReader(str(source))
    fields = {name: field.contents() for name, field in reader.fields.items() if name.startswith("tokenizer.")}
    return fields


def _write_twin(spec: TwinSpec, source: Path, target: Path) -> None:
    import gguf

    tokenizer = _tokenizer_fields(source)
    n_vocab = len(tokenizer["tokenizer.ggml.tokens"])
    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_name(f"KV twin of {spec.stands_for}")
    writer.add_context_length(spec.n_ctx_train)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head_kv)
    writer.add_head_count_kv(spec.n_head_kv)
    # Head size apart from n_embd / n_head: this is what lets the KV shape be real and n_embd tiny.
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for name, value in tokenizer.items():
        _add_field(writer, name, value)

    rng = np.random.default_rng(0)

    def weight(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    q_width = spec.n_head_kv * spec.head_dim
    writer.add_tensor("token_embd.weight", weight(n_vocab, spec.n_embd))
    writer.add_tensor("output_norm.weight", np.ones(spec.n_embd, dtype=np.float32))
    for i in range(spec.n_layer):
        block = f"blk.{i}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(spec.n_embd, dtype=np.float32))
        writer.add_tensor(f"{block}.attn_q.weight", weight(q_width, spec.n_embd))
        writer.add_tensor(f"{block}.attn_k.weight", weight(q_width, spec.n_embd))
        writer.add_tensor(f"{block}.attn_v.weight", weight(q_width, spec.n_embd))
        writer.add_tensor(f"{block}.attn_output.weight", weight(spec.n_embd, q_width))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(spec.n_embd, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", weight(spec.n_ff, spec.n_embd))
        writer.add_tensor(f"{block}.ffn_up.weight", weight(spec.n_ff, spec.n_embd))
        writer.add_tensor(f"{block}.ffn_down.weight", weight(spec.n_embd, spec.n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_field(writer: Any, name: str, value: Any) -> None:
    """Copy one tokenizer field with the GGUF type its Python value maps to."""
    import gguf

    if isinstance(value, list):
        if value and isinstance(value[0], str):
            writer.add_array(name, value)
        elif value and isinstance(value[0], float):
            writer.add_key_value(name, value, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.FLOAT32)
        else:
            writer.add_key_value(name, value, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.INT32)
    elif isinstance(value, bool):
        writer.add_bool(name, value)
    elif isinstance(value, int):
        writer.add_uint32(name, value)
    elif isinstance(value, str):
        writer.add_string(name, value)
    else:
        raise TypeError(f"cannot copy GGUF field {name} of type {type(value).__name__}")


def twin_table(specs: list[TwinSpec]) -> list[str]:
    """RESULTS.md lines saying which real model each twin stands for, and what it shares with it."""
    lines = [
        "| Twin | Stands for | Layers | KV heads | Head size | KV per token (f16) | Not like the real model |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for spec in specs:
        lines.append(
            f"| {spec.key} | {spec.stands_for} | {spec.n_layer} | {spec.n_head_kv} | {spec.head_dim} "
            f"| {spec.kv_bytes_per_token() // 1024} KiB | random weights; n_embd {spec.n_embd}, FFN {spec.n_ff}, "
            f"{spec.n_head_kv} query heads (real: 32); SmolLM2's vocabulary and chat template |"
        )
    return lines
