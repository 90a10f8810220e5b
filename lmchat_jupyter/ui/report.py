"""What ``%chat info``, ``%chat list`` and ``%chat config`` print about a notebook's conversations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..engine.conversation import Conversation
from ..engine.models import ServerModel
from ..notebook import forks, kernel
from ..storage import space as sidecar_space

if TYPE_CHECKING:
    from ..storage.store import ChatStore

__all__ = ["describe", "list_conversations", "gpu_layers_note", "cap_note", "api_key_note"]


def describe(conv: Conversation, name: str, state: kernel.KernelChats) -> str:
    info = conv.info
    store = state.store
    saved = store.where_saved(name)
    if store.last_save_error:
        saved = f"last save failed: {store.last_save_error}"
    lines = [
        f"conversation: {name} ({info.conversation_id})",
        f"model: {conv.model.describe()}",
        f"messages: {info.message_count} ({info.user_message_count} turns), {_tokens(conv)}",
        f"sidecar: {store.sidecar.folder} ({_folder_size(store)}) — {saved}",
    ]
    if name in store.kv_cache_off:
        lines.append("KV cache: not on disk (removed); written again after the next change")
    if conv.restored_from:
        lines.append(f"restored: {conv.restored_from}")
    if isinstance(conv.model, ServerModel) and conv.model.notice:
        lines.append(f"server: {conv.model.notice}")
    return "\n".join(lines)


def _tokens(conv: Conversation) -> str:
    info = conv.info
    if not conv.model.backend.capabilities.model_tokens:
        size = f" / {info.n_ctx:,}" if conv.model.context_known else ""
        return f"size: {info.token_count:,}{size} units of up to 3 bytes (the server counts its own tokens)"
    return f"tokens: {info.token_count:,} / {info.n_ctx:,}"


def _folder_size(store: ChatStore) -> str:
    return sidecar_space.format_size(sidecar_space.folder_size(store.sidecar.folder))


def gpu_layers_note(n_gpu_layers: int) -> str:
    from ..engine.models import default_gpu_layers

    if default_gpu_layers() == 0:
        return f"{n_gpu_layers} (this llama-cpp-python has no GPU backend: every layer runs on the CPU)"
    return {-1: "all", 0: "none (CPU only)"}.get(n_gpu_layers, str(n_gpu_layers)) + " (for models loaded from now on)"


def cap_note(store: ChatStore) -> str:
    cap = store.max_sidecar_bytes
    return "no cap" if cap is None else f"{sidecar_space.format_size(cap)} (older KV caches are removed past it)"


def api_key_note(api_key: str | None) -> str:
    """Where an inference server's API key comes from; never the key itself."""
    from ..backends.server.http import API_KEY_ENV_VAR, api_key_from_env

    if api_key is not None:
        return "set with %chat config --api-key (kept in this kernel's memory only)"
    if api_key_from_env() is not None:
        return f"from ${API_KEY_ENV_VAR}"
    return f"none (for a server that asks for one: ${API_KEY_ENV_VAR}, or %chat config --api-key, which asks for it)"


def list_conversations(state: kernel.KernelChats) -> str:
    """The notebook's conversations, the active one starred, with what each takes on disk."""
    store = state.store
    on_disk = {files.name: files for files in sidecar_space.conversation_files(store.sidecar)}
    rows = []
    for name in store.names() or [store.active]:
        files = on_disk.get(name)
        if files is None:
            size = "in the notebook's metadata, evaluated at first use" if name in store.embedded else "not saved yet"
        elif files.kv_cache_bytes:
            size = (
                f"{sidecar_space.format_size(files.total)} (KV cache {sidecar_space.format_size(files.kv_cache_bytes)})"
            )
        else:
            size = f"{sidecar_space.format_size(files.total)} (history only)"
        origin = forks.origin_of(store, name)
        rows.append(f"{'*' if name == store.active else ' '} {name:<20} {size}{f' · {origin}' if origin else ''}")
    rows.append(f"sidecar: {store.sidecar.folder} ({_folder_size(store)} in all; cap: {cap_note(store)})")
    return "\n".join(rows)
