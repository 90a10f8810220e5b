"""Which sidecar files this user's kernels wrote: a keyed signature, the way Jupyter trusts notebooks.

A sidecar folder travels with its notebook (git, zip files, shared drives), so its files are
untrusted input. Files that lmchat writes carry an HMAC-SHA256 made with a per-user secret; only a
file whose signature checks may choose the model that a restore loads, or put a KV state (tokens
the user cannot see) into the model's context. Everything else is used for its visible history.

The secret is 32 random bytes, created once with mode 0600 as ``lmchat/secret`` under the user's
Jupyter data folder (``jupyter --data-dir``), or at ``$LMCHAT_SECRET_FILE``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "SECRET_ENV_VAR",
    "SIGNATURE_KEY",
    "secret_path",
    "sign",
    "signature_matches",
    "sign_header",
    "header_is_signed",
    "history_document",
    "history_is_signed",
]

SECRET_ENV_VAR = "LMCHAT_SECRET_FILE"
SIGNATURE_KEY = "signature"
_SECRET_BYTES = 32
_cache: dict[Path, bytes] = {}
_lock = threading.Lock()


def secret_path() -> Path:
    """Where this user's secret is kept."""
    explicit = os.environ.get(SECRET_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    try:
        from jupyter_core.paths import jupyter_data_dir

        return Path(jupyter_data_dir()) / "lmchat" / "secret"
    except ImportError:  # pragma: no cover - jupyter_core is a dependency
        return Path.home() / ".local" / "share" / "jupyter" / "lmchat" / "secret"


def _secret() -> bytes | None:
    """The user's secret, created on first use; None where it can be neither read nor created."""
    path = secret_path()
    with _lock:
        if path in _cache:
            return _cache[path]
        key = _read_secret(path)
        if key is None:
            key = _create_secret(path)
        if key is not None:
            _cache[path] = key
        return key


def _read_secret(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4 * _SECRET_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    key = data.strip()
    return key if len(key) >= _SECRET_BYTES else None


def _create_secret(path: Path) -> bytes | None:
    """Write a new secret whole, then link it into place: a kernel killed meanwhile leaves no empty secret."""
    key = secrets.token_hex(_SECRET_BYTES).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    except FileExistsError:
        return _read_secret(path)  # another kernel created it first
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return key


def sign(data: bytes) -> str | None:
    """The hex HMAC-SHA256 of ``data`` under this user's secret (None where there is no secret)."""
    key = _secret()
    return None if key is None else hmac.new(key, data, hashlib.sha256).hexdigest()


def signature_matches(data: bytes, signature: object) -> bool:
    """Whether ``signature`` is this user's signature of ``data``."""
    if not isinstance(signature, str):
        return False
    expected = sign(data)
    return expected is not None and hmac.compare_digest(expected, signature)


def _header_bytes(header: dict[str, Any]) -> bytes:
    return json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign_header(header: dict[str, Any]) -> dict[str, Any]:
    """``header`` with its signature added last (the header lists the sections' checksums, so it covers them)."""
    unsigned = {k: v for k, v in header.items() if k != SIGNATURE_KEY}
    signature = sign(_header_bytes(unsigned))
    return unsigned if signature is None else dict(unsigned, **{SIGNATURE_KEY: signature})


def header_is_signed(header: dict[str, Any]) -> bool:
    """Whether a session header (as parsed) carries this user's signature."""
    unsigned = {k: v for k, v in header.items() if k != SIGNATURE_KEY}
    return signature_matches(_header_bytes(unsigned), header.get(SIGNATURE_KEY))


def _document_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")


def history_document(data: dict[str, Any]) -> bytes:
    """The bytes of a history file holding ``data``, signed."""
    unsigned = {k: v for k, v in data.items() if k != SIGNATURE_KEY}
    signature = sign(_document_bytes(unsigned))
    return _document_bytes(unsigned if signature is None else dict(unsigned, **{SIGNATURE_KEY: signature}))


def history_is_signed(data: object) -> bool:
    """Whether a parsed history file carries this user's signature."""
    if not isinstance(data, dict):
        return False
    unsigned = {k: v for k, v in data.items() if k != SIGNATURE_KEY}
    return signature_matches(_document_bytes(unsigned), data.get(SIGNATURE_KEY))
