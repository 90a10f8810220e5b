"""A model file's sha256, cached by path, size and mtime so that a multi-GB GGUF is hashed once."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

__all__ = ["file_sha256", "cache_dir"]


def cache_dir() -> Path:
    """lmchat's cache folder: ``$LMCHAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmchat``, else ``~/.cache/lmchat``."""
    explicit = os.environ.get("LMCHAT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmchat"


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, from the cache when the file's size and mtime are unchanged."""
    real = path.resolve()
    stat = real.stat()
    key = str(real)
    stamp = [stat.st_size, stat.st_mtime_ns]
    index_path = cache_dir() / "fingerprints.json"
    index = _read_index(index_path)
    entry = index.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return str(entry["sha256"])
    digest = hashlib.sha256()
    with real.open("rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    sha = digest.hexdigest()
    index[key] = {"stamp": stamp, "sha256": sha}
    from .atomic import atomic_write
    from .errors import StorageError

    with contextlib.suppress(OSError, StorageError):
        # A cache that cannot be written only costs a re-hash next time.
        index_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(index_path, [json.dumps(index).encode()])
    return sha


def _read_index(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
