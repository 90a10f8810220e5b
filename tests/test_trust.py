"""Sidecar files from someone else never choose the model; this user's own files restore instantly."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from lmchat_jupyter.backends.specs import default_model_path
from lmchat_jupyter.core import signing
from lmchat_jupyter.engine.session.container import read_header

from .kernel_driver import KernelDriver, notebook_file

CHAT = "%%chat --temperature 0 --max-tokens 6\n"
CURRENT = "__import__('lmchat_jupyter').current()"
STORE = "__import__('lmchat_jupyter.notebook.kernel').notebook.kernel.chats().store"


def maps_of(k: KernelDriver, file_name: str) -> int:
    """How many mappings of ``file_name`` the kernel process has (llama.cpp maps the GGUF it loads)."""
    return int(k.value(f"open('/proc/self/maps').read().count({file_name!r})"))


def test_a_foreign_sidecar_never_chooses_the_model(tmp_path: Path, gemma_file: Path) -> None:
    notebook = notebook_file(tmp_path, "cloned.ipynb")
    # Someone else chats on Gemma; their sidecar folder travels with the notebook (git, zip, shared drive).
    other = KernelDriver(notebook, tmp_path, extra_env={signing.SECRET_ENV_VAR: str(tmp_path / "their secret")})
    try:
        assert other.run("%load_ext lmchat").error is None
        run = other.run(f"%%chat --model {shlex.quote(str(gemma_file))} --temperature 0 --max-tokens 6\nHi.", "c1")
        assert run.error is None, run.text
    finally:
        other.shutdown()
    folder = tmp_path / "cloned.lmchat"
    assert read_header(folder / "default.lmsession")["model_spec"] == str(gemma_file)
    assert json.loads((folder / "default.history.json").read_text())["model"]["spec"] == str(gemma_file)

    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert loaded.error is None, loaded.text
        # Told which model the session was saved with, and the exact line that continues on it.
        assert "did not sign" in loaded.stdout, loaded.text
        assert f"`%chat model {shlex.quote(str(gemma_file))}`" in loaded.stdout, loaded.text
        # Nothing evaluated at %load_ext: a cloned repository may hold many conversations.
        assert "default: 2 messages, " in loaded.stdout and "when the conversation is first used" in loaded.stdout
        assert k.value(f"sorted({STORE}.conversations)") == []
        # Waiting, it still goes into the notebook's metadata.
        built = f"__import__('lmchat_jupyter.storage.metadata').storage.metadata.build_metadata({STORE}.conversations, {STORE}.embedded)"
        assert k.value(f"sorted({built}['conversations'])") == ["default"]
        assert k.value(f"{CURRENT}.model.path.name") == default_model_path().name
        assert k.value(f"{CURRENT}.info.message_count") == 2
        assert "KV state was not used" in k.value(f"{STORE}.statuses['default']")
        assert maps_of(k, gemma_file.name) == 0  # Gemma was never loaded
        assert k.run(CHAT + "My name is Ada.", cell_id="c2").error is None
    finally:
        k.shutdown()

    # This user's own files now: the next restart restores the full session at once, on the model it used.
    header = read_header(folder / "default.lmsession")
    assert signing.header_is_signed(header)
    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "restored default: 4 messages" in loaded.stdout and "full session" in loaded.stdout, loaded.text
        assert "did not sign" not in loaded.stdout
    finally:
        k.shutdown()


def test_this_users_signed_model_choice_is_followed(tmp_path: Path, gemma_file: Path) -> None:
    notebook = notebook_file(tmp_path, "mine.ipynb")
    k = KernelDriver(notebook, tmp_path)
    try:
        k.run("%load_ext lmchat")
        run = k.run(f"%%chat --model {shlex.quote(str(gemma_file))} --temperature 0 --max-tokens 6\nHi.", "c1")
        assert run.error is None, run.text
    finally:
        k.shutdown()
    k = KernelDriver(notebook, tmp_path)
    try:
        loaded = k.run("%load_ext lmchat")
        assert "full session" in loaded.stdout and "did not sign" not in loaded.stdout, loaded.text
        assert k.value(f"{CURRENT}.model.path.name") == gemma_file.name
    finally:
        k.shutdown()


def test_signatures() -> None:
    header = {"model_spec": "hf:a/b/c.gguf", "sections": [{"name": "kv", "xxh3": "00"}]}
    signed = signing.sign_header(header)
    assert signing.header_is_signed(json.loads(json.dumps(signed)))
    for tampered in ({**signed, "model_spec": "hf:evil/x/y.gguf"}, {**signed, "signature": "0" * 64}, header):
        assert not signing.header_is_signed(tampered)
    secret = signing.secret_path()
    assert secret.stat().st_mode & 0o777 == 0o600


def test_the_saved_model_is_named_only_where_it_can_be_a_spec() -> None:
    from lmchat_jupyter.storage.saved import SavedChat, untrusted_model_note

    def note(spec: str, active: str = "default") -> str | None:
        saved = SavedChat(has_session=True, header={"model_spec": spec, "compat": {"model_name": "Gemma"}})
        return untrusted_model_note("default", saved, None, "SmolLM2", active)

    told = note("/models/my model.gguf")
    assert told is not None and "`%chat model '/models/my model.gguf'`" in told and "Gemma" in told
    # Not the active conversation: switch to it first.
    assert "`%chat use default` then `%chat model hf:a/b/c.gguf`" in (note("hf:a/b/c.gguf", active="other") or "")
    for hostile in ("hf:a/b\n%chat model evil", "\x1b[31mred", "x" * 1001, ""):
        assert note(hostile) is None
    signed = SavedChat(has_session=True, header={"model_spec": "hf:a/b/c.gguf"}, session_signed=True)
    assert untrusted_model_note("default", signed, None, "SmolLM2", "default") is None


def test_a_copied_sidecar_whose_session_is_damaged_waits_for_first_use(tmp_path: Path) -> None:
    from lmchat_jupyter import ChatHistory
    from lmchat_jupyter.core.history import Message
    from lmchat_jupyter.storage.sidecar import Sidecar
    from lmchat_jupyter.storage.store import ChatStore

    folder = tmp_path / "cloned.lmchat"
    folder.mkdir()
    ChatHistory([Message("user", "My name is Ada."), Message("assistant", "Hello Ada.")]).save(
        folder / "default.history.json"  # unsigned: someone else's
    )
    (folder / "default.lmsession").write_bytes(b"LMCHATSESSION\x00" + bytes(40))  # cut short in its header
    told: list[str] = []
    store = ChatStore(Sidecar(folder), notify=told.append)
    try:
        store.restore_all()
        text = "\n".join(told)
        assert "session file is not used" in text and "when the conversation is first used" in text, text
        assert store.conversations == {}  # nothing evaluated at %load_ext
        waiting = store.waiting("default")
        assert waiting is not None and waiting.message_count == 2
        assert store.get("default").info.message_count == 2  # the first use evaluates it
    finally:
        store.close()
