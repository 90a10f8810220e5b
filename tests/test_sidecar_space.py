"""What a sidecar folder takes: sizes in %chat info / list, %chat forget, the size cap, .gitignore, export paths.

Through ``run_line_magic`` / ``run_cell_magic`` on the real model; ``unload_ext`` + ``load_ext``
stands for a kernel restart (it saves and releases the folder as a shutdown does).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from lmchat_jupyter.storage.space import GITIGNORE

CHAT = "--temperature 0 --max-tokens 8"


@pytest.fixture(autouse=True)
def _no_size_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMCHAT_MAX_SIDECAR_MB", raising=False)


def sidecar(tmp_path: Path) -> Path:
    return tmp_path / "notes.lmchat"


def line(ip: InteractiveShell, command: str) -> str:
    with capture_output() as out:
        ip.run_line_magic("chat", command)
    return out.stdout


def chat(ip: InteractiveShell, message: str, name: str = "default") -> str:
    with capture_output() as out:
        ip.run_cell_magic("chat", f"--name {name} {CHAT}", message)
    return out.stdout


def restart(ip: InteractiveShell) -> None:
    ip.run_line_magic("unload_ext", "lmchat")
    ip.run_line_magic("load_ext", "lmchat")


def flush() -> None:
    import lmchat_jupyter

    lmchat_jupyter.notebook.kernel.chats().store.flush()


def test_the_sidecar_stays_out_of_git_unless_its_gitignore_is_changed(shell: InteractiveShell, tmp_path: Path) -> None:
    chat(shell, "Hello.")
    flush()
    folder = sidecar(tmp_path)
    assert (folder / ".gitignore").read_bytes() == GITIGNORE
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        status = subprocess.run(
            ["git", "-C", str(tmp_path), "status", "--porcelain", "--untracked-files=all"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert "notes.lmchat" not in status
    # A .gitignore the user emptied (to keep the folder in git) is never written again.
    (folder / ".gitignore").write_text("")
    restart(shell)
    chat(shell, "Hello again.")
    flush()
    assert (folder / ".gitignore").read_text() == ""


def test_info_and_list_show_what_the_sidecar_takes(shell: InteractiveShell, tmp_path: Path) -> None:
    chat(shell, "Hello.")
    flush()
    info = line(shell, "info")
    assert f"sidecar: {sidecar(tmp_path)} (" in info and ("KB) — saved" in info or "MB) — saved" in info), info
    listing = line(shell, "list").splitlines()
    assert listing[0].startswith("* default") and "KV cache" in listing[0], listing
    assert listing[-1].startswith(f"sidecar: {sidecar(tmp_path)} (") and "in all; cap: no cap" in listing[-1]


def test_forget_removes_the_kv_cache_never_the_history(shell: InteractiveShell, tmp_path: Path) -> None:
    chat(shell, "My name is Ada.", name="old")
    chat(shell, "Hello.")
    flush()
    folder = sidecar(tmp_path)
    history = (folder / "old.history.json").read_bytes()
    said = line(shell, "forget old")
    assert "removed the KV cache of 'old' (" in said and "its history stays" in said
    assert not (folder / "old.lmsession").exists()
    assert (folder / "old.history.json").read_bytes() == history
    assert "old" in line(shell, "list") and "(history only)" in line(shell, "list")
    # A shutdown does not write it back, nor does the next kernel, which restores it from its history.
    restart(shell)
    restart(shell)
    assert not (folder / "old.lmsession").exists()
    assert (folder / "default.lmsession").exists()
    assert "KV cache: not on disk" in line(shell, "use old") + line(shell, "info")
    # Used again, it is saved again.
    chat(shell, "What is my name?", name="old")
    flush()
    assert (folder / "old.lmsession").exists()
    assert "no conversation called 'nothing'" in _usage_error(shell, "forget nothing")


def _usage_error(ip: InteractiveShell, command: str) -> str:
    from IPython.core.error import UsageError

    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("chat", command)
    return str(caught.value)


def test_the_size_cap_removes_the_oldest_kv_caches_first(shell: InteractiveShell, tmp_path: Path) -> None:
    folder = sidecar(tmp_path)
    for name in ("first", "second", "third"):
        chat(shell, f"Hello, this is the {name} conversation.", name=name)
        flush()
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    # Room for everything but the two oldest KV caches.
    cap = sum(sizes.values()) - sizes["first.lmsession"] - sizes["second.lmsession"] + 1000
    said = line(shell, f"config --max-sidecar-mb {cap / 1e6}")
    assert "is over its cap of" in said and "'first' (" in said and "'second' (" in said, said
    assert not (folder / "first.lmsession").exists() and not (folder / "second.lmsession").exists()
    assert (folder / "third.lmsession").exists()
    assert all((folder / f"{n}.history.json").exists() for n in ("first", "second", "third"))
    assert "max sidecar size:" in said
    # The next save of 'first' brings it back and removes the now oldest one instead.
    chat(shell, "Hello again.", name="first")
    flush()
    assert (folder / "first.lmsession").exists() and not (folder / "third.lmsession").exists()
    assert "or 0 for no cap" in _usage_error(shell, "config --max-sidecar-mb -1")


def test_export_says_the_full_path(shell: InteractiveShell, tmp_path: Path) -> None:
    chat(shell, "Hello.")
    said = line(shell, "export transcript.md")
    assert f"to {(tmp_path / 'transcript.md').resolve()}" in said, said
    assert (tmp_path / "transcript.md").is_file()


def test_config_sets_the_gpu_layers_of_models_loaded_from_now_on(shell: InteractiveShell) -> None:
    import lmchat_jupyter

    said = line(shell, "config --gpu-layers 4")
    assert "gpu layers: 4 (" in said, said
    assert lmchat_jupyter.notebook.kernel.chats().store.settings.n_gpu_layers == 4
    assert "-1 (every layer), 0 (none)" in _usage_error(shell, "config --gpu-layers -2")
    assert lmchat_jupyter.notebook.kernel.chats().store.settings.n_gpu_layers == 4
