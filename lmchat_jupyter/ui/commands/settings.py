"""``%chat config`` and ``%chat strip``: the kernel's settings, and the notebook's metadata."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ...notebook.kernel import KernelChats
from ...storage import space as sidecar_space
from ...storage.metadata import EMBED_SETTINGS
from ..report import api_key_note, cap_note, gpu_layers_note
from . import values
from .base import command

#: ``--api-key`` without a value: ask for the key with a password prompt.
ASK = object()

__all__ = ["config", "strip"]


@command(
    "config",
    argument("--autosave", choices=["on", "off"]),
    argument("--notebook", type=values.path, metavar="PATH"),
    argument("--n-ctx", type=values.whole(64, 2**24, "N (the context size in tokens)"), metavar="N"),
    argument(
        "--gpu-layers",
        type=values.whole(-1, 65_536, "N", "N is -1 (every layer), 0 (none) or a layer count"),
        metavar="N",
        help="layers on the GPU: -1 all (default with a GPU build), 0 none",
    ),
    argument(
        "--max-sidecar-mb",
        type=values.number(0, 1e9, "MB", "MB is a size in megabytes, or 0 for no cap"),
        metavar="MB",
        help="remove old KV caches past this size (0: no cap)",
    ),
    argument("--embed", choices=EMBED_SETTINGS, help="what the .ipynb carries of its chats (kept in it)"),
    argument(
        "--api-key",
        nargs="?",
        const=ASK,
        type=values.key,
        metavar="KEY",
        help="the inference server's API key (kept in this kernel's memory only); without KEY: asked for, unechoed",
    ),
    help="show or change the settings",
)
def config(state: KernelChats, args: argparse.Namespace) -> None:
    """Change the settings given, then print them all."""
    store = state.store
    if args.autosave is not None:
        store.autosave = args.autosave == "on"
    if args.notebook is not None:
        state.explicit_notebook = _notebook_path(Path(args.notebook).expanduser())
        state.relocate()
    if args.n_ctx is not None:
        store.settings = replace(store.settings, n_ctx=args.n_ctx)
    if args.gpu_layers is not None:
        store.settings = replace(store.settings, n_gpu_layers=args.gpu_layers)
    if args.max_sidecar_mb is not None:
        store.max_sidecar_bytes = int(args.max_sidecar_mb * 1e6) or None
        sidecar_space.enforce_cap(store)
    if args.api_key is not None:
        store.set_api_key(_ask_api_key() if args.api_key is ASK else args.api_key.strip() or None)
    from .. import frontend

    if args.embed is not None:
        frontend.bridge().set_embed(args.embed)
    print(
        f"autosave: {'on' if store.autosave else 'off'}\n"
        f"sidecar: {store.sidecar.folder}{'' if store.sidecar.writable else ' (read-only here)'}\n"
        f"n_ctx: {store.settings.n_ctx or 'default (8192, capped by the model)'}\n"
        f"gpu layers: {gpu_layers_note(store.settings.n_gpu_layers)}\n"
        f"max sidecar size: {cap_note(store)}\n"
        f"api key: {api_key_note(store.api_key)}\n"
        f"embed: {frontend.bridge().embed} (kept in the notebook's metadata)"
    )


@command("strip", help="remove lmchat's metadata from the notebook (before sharing it)")
def strip(state: KernelChats, args: argparse.Namespace) -> None:
    """Remove lmchat's metadata from the notebook, through the extension where it is there."""
    from .. import frontend

    print(f"lmchat: {frontend.bridge().strip()}")


def _notebook_path(path: Path) -> Path:
    """The notebook ``--notebook`` names: an .ipynb path in a folder that exists (the file itself may not yet)."""
    if path.suffix != ".ipynb":
        raise UsageError(f"%chat config --notebook: {path} is not a notebook; give the path of its .ipynb file")
    if path.exists() and not path.is_file():
        raise UsageError(f"%chat config --notebook: {path} is not a file; give the path of the notebook's .ipynb file")
    if not path.parent.is_dir():
        raise UsageError(f"%chat config --notebook: there is no folder {path.parent}; give the notebook's own path")
    return path.resolve()


def _ask_api_key() -> str:
    """The key typed at a password prompt: never in a cell, so never in IPython's history or the notebook."""
    import getpass

    from IPython.core.error import StdinNotImplementedError

    try:
        key = getpass.getpass("API key of the inference server (not shown, not saved): ").strip()
    except (StdinNotImplementedError, EOFError, OSError):
        raise UsageError(
            "%chat config --api-key: this frontend cannot ask for input; set $LMCHAT_API_KEY before starting "
            "Jupyter instead"
        ) from None
    except KeyboardInterrupt:  # the prompt was stopped
        key = ""
    if not key:
        raise UsageError("%chat config --api-key: no key was typed; the key is unchanged")
    try:
        return values.key(key)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"%chat config --api-key: {exc}; the key is unchanged") from None
