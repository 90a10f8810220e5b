"""A real browser: each ``%chat config --embed`` setting and ``%chat strip`` round-tripped through a saved .ipynb.

JupyterLab from this environment (with the extension built from this tree) and Debian's chromium. A chat
turn with an interpolated value is embedded in full; each setting is chosen in a cell, the notebook saved,
the .ipynb on disk checked, the page opened again from disk and the kernel restarted: the new kernel
learns the setting from the notebook itself. Last, ``%chat strip`` and a save leave no lmchat metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .browser import LabPage, LabServer, chromium_page, chromium_path, wait_for

pytestmark = pytest.mark.browser

NOTEBOOK = "share.ipynb"
CELLS = [
    "%load_ext lmchat",
    'secret = "4321"',
    "%%chat --temperature 0 --max-tokens 8\nRemember the number {secret}.",
    "%chat config --embed metadata-only",
    "%chat config --embed off",
    "%chat config --embed full",
    "%chat config",
    "%chat strip",
]
LOAD, SECRET, CHAT, CONFIG, STRIP = 0, 1, 2, 6, 7
SETTING_CELL = {"metadata-only": 3, "off": 4, "full": 5}
SENT = "Remember the number 4321."


def write_notebook(path: Path) -> None:
    cells = [
        {"cell_type": "code", "id": f"cell{i}", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
        for i, s in enumerate(CELLS)
    ]
    kernelspec = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    notebook = {"cells": cells, "metadata": {"kernelspec": kernelspec}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(notebook), encoding="utf-8")


def on_disk(path: Path) -> Any:
    """``metadata.lmchat`` of the saved .ipynb (``"absent"`` when it has none)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))["metadata"].get("lmchat", "absent")
    except (OSError, ValueError):
        return None


def in_page(lab: LabPage) -> Any:
    return lab.page.evaluate(
        "() => window.jupyterapp.shell.currentWidget?.context?.model?.getMetadata('lmchat') ?? 'absent'"
    )


def save(lab: LabPage) -> None:
    lab.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")


def expected(setting: str) -> Any:
    """A check of the embedded value for ``setting``."""

    def check(value: Any) -> bool:
        if not isinstance(value, dict):
            return False
        if setting == "off":
            return bool(value == {"format": 1, "embed": "off"})
        messages = value.get("conversations", {}).get("default", {}).get("messages", [])
        if len(messages) != 2:
            return False
        if setting == "full":
            return "embed" not in value and messages[0]["content"] == SENT and messages[0]["cell_id"] == "cell2"
        return (
            value.get("embed") == "metadata-only"
            and "4321" not in json.dumps(value)
            and messages[0] == {"id": messages[0]["id"], "role": "user", "cell_id": "cell2", "length": len(SENT)}
        )

    return check


def test_each_embed_setting_round_trips_through_the_saved_notebook(tmp_path: Path) -> None:
    executable = chromium_path()
    root = tmp_path / "lab"
    root.mkdir()
    notebook = root / NOTEBOOK
    write_notebook(notebook)
    with LabServer(root, home=tmp_path / "home") as server, chromium_page(executable) as page:
        lab = LabPage(page, server)
        try:
            lab.open_notebook(NOTEBOOK)
            for cell in (LOAD, SECRET, CHAT):
                lab.run_cell(cell)
            assert "tok/s" in lab.output_text(CHAT), lab.output_text(CHAT)
            wait_for("the full history in the page", lambda: expected("full")(in_page(lab)), timeout=60)
            save(lab)
            wait_for("the full history on disk", lambda: expected("full")(on_disk(notebook)), timeout=60)

            for setting in ("metadata-only", "off", "full"):
                check = expected(setting)
                lab.run_cell(SETTING_CELL[setting])
                wait_for(f"{setting} in the page", lambda check=check: check(in_page(lab)), timeout=60)
                save(lab)
                wait_for(f"{setting} on disk", lambda check=check: check(on_disk(notebook)), timeout=60)
                # The notebook opened again from disk, and a new kernel: the setting comes from the .ipynb.
                lab.open_notebook(NOTEBOOK)
                page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()")
                lab.wait_idle()
                lab.run_cell(LOAD)
                lab.run_cell(CONFIG)
                shown = lab.output_text(CONFIG)
                assert f"embed: {setting} (kept in the notebook's metadata)" in shown, shown
                assert check(in_page(lab)), in_page(lab)
                lab.screenshot(page, f"browser-embed-{setting}.png")

            lab.run_cell(STRIP)
            assert "removed lmchat's metadata from the notebook" in lab.output_text(STRIP)
            wait_for("no lmchat metadata in the page", lambda: in_page(lab) == "absent", timeout=60)
            save(lab)
            wait_for("no lmchat metadata on disk", lambda: on_disk(notebook) == "absent", timeout=60)
            assert not [c for c in lab.console if c.startswith("pageerror")], lab.console
        except BaseException:
            lab.screenshot(page, "browser-embed-failure.png")
            raise
