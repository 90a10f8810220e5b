"""A real browser: JupyterLab's status bar says the kernel is busy while lmchat works, idle after.

Two cases where the kernel itself would report idle while work goes on: ``%load_ext lmchat`` in a
cell that then runs on (the comm it opens makes JupyterLab create a subshell, whose request the
kernel answers with ``idle``), and the chat widget's answer (generated on a thread, started by a
comm message). JupyterLab runs on localhost; Playwright drives Debian's chromium.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .browser import LabPage, LabServer, chromium_page, chromium_path, wait_for

pytestmark = pytest.mark.browser

NOTEBOOK = "status.ipynb"
GATE = "release-the-cell"
CELLS = [
    # Runs until the test creates the gate file: long enough to look at the status bar, no longer.
    f"%load_ext lmchat\nimport pathlib, time\nwhile not pathlib.Path({GATE!r}).exists():\n    time.sleep(0.05)",
    "from lmchat_jupyter import ChatWidget\nChatWidget(max_tokens=2000)",
]
LOAD, WIDGET = range(2)
LONG = "Write a long story about a dragon who learns to bake bread, with many details."
_KERNEL = "const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;"


def notebook(root: Path) -> None:
    cells = [
        {"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
        for i, s in enumerate(CELLS)
    ]
    kernelspec = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": kernelspec}, "cells": cells}
    (root / NOTEBOOK).write_text(json.dumps(nb))


def status_bar(lab: LabPage) -> str:
    """What the page says of the kernel: "Busy" or "Idle".

    JupyterLab: its status bar. Notebook 7: its execution indicator ("Kernel status: Busy", which
    also counts the cells it ran) and the kernel's status (its favicon and kernel indicator), when both agree.
    """
    return str(
        lab.page.evaluate(
            f"() => {{ {_KERNEL}"
            " const bar = [...document.querySelectorAll('#jp-main-statusbar .jp-StatusBar-TextItem')]"
            ".map(e => e.textContent).find(t => t.includes('|'));"
            " if (bar) return bar.split('|').pop().trim();"
            " const text = document.querySelector('.jp-Notebook-ExecutionIndicator')?.textContent ?? '';"
            " const shown = (text.match(/Kernel status: (\\w+)/) ?? ['', ''])[1];"
            " return shown.toLowerCase() === k.status ? shown : `${shown} (the kernel: ${k.status})`; }"
        )
    )


def record_messages(lab: LabPage) -> None:
    """Keep every message between the page and the kernel in ``window.__lmchatMessages``."""
    lab.page.evaluate(
        f"() => {{ {_KERNEL} window.__lmchatMessages = [];"
        " k.anyMessage.connect((_, a) => window.__lmchatMessages.push({direction: a.direction,"
        " type: a.msg.header.msg_type, parent: a.msg.parent_header?.msg_type ?? '',"
        " state: a.msg.content?.execution_state ?? '', at: performance.now()})); }"
    )


def messages(lab: LabPage) -> list[dict[str, Any]]:
    return list(lab.page.evaluate("() => window.__lmchatMessages"))


def idle_gap(seen: list[dict[str, Any]]) -> float:
    """Milliseconds between the kernel's idle for the subshell request and the next busy the page received."""
    at = next(i for i, m in enumerate(seen) if m["state"] == "idle" and m["parent"] == "create_subshell_request")
    busy = [m for m in seen[at:] if m["type"] == "status" and m["state"] == "busy" and m["parent"] != "debug_request"]
    return float(busy[0]["at"] - seen[at]["at"]) if busy else float("nan")


def samples(lab: LabPage, count: int = 8) -> list[str]:
    """The status bar read ``count`` times, a tenth of a second apart."""
    seen = []
    for _ in range(count):
        seen.append(status_bar(lab))
        lab.page.wait_for_timeout(100)
    return seen


@pytest.mark.parametrize("app", ["jupyterlab", "notebook7"])
def test_status_bar_says_busy_while_lmchat_works(tmp_path: Path, app: str) -> None:
    executable = chromium_path()
    root = tmp_path / "lab"
    root.mkdir()
    notebook(root)
    notebook7 = app == "notebook7"
    with LabServer(root, home=tmp_path / "home", notebook=notebook7) as server, chromium_page(executable) as page:
        lab = LabPage(page, server)
        try:
            lab.open_notebook(NOTEBOOK)
            wait_for("the status bar to say Idle", lambda: status_bar(lab) == "Idle")
            record_messages(lab)

            # %load_ext lmchat in a cell that goes on: JupyterLab opens a subshell for the comm meanwhile.
            lab.run_cell(LOAD, wait=False)
            wait_for(
                "the kernel's idle for JupyterLab's subshell request",
                lambda: any(m["state"] == "idle" and m["parent"] == "create_subshell_request" for m in messages(lab)),
                timeout=120,
            )
            # The kernel's "idle" is answered with "busy" as it is read back: Busy again a moment later.
            wait_for("the status bar to say Busy again", lambda: status_bar(lab) == "Busy", timeout=5)
            print(f"Idle shown for {idle_gap(messages(lab)):.0f} ms after the subshell request")
            during_cell = samples(lab)
            assert all(s == "Busy" for s in during_cell), (during_cell, messages(lab)[-12:])
            (root / GATE).touch()
            lab.wait_cell(LOAD)
            wait_for("Idle after the cell", lambda: status_bar(lab) == "Idle", timeout=30)

            # The widget's answer streams on a thread: Busy until it is stopped, then Idle.
            lab.run_cell(WIDGET)
            chat = page.locator(".lmchat-chat")
            chat.wait_for()
            status = chat.locator(".lmchat-status")
            chat.locator(".lmchat-input textarea").fill(LONG)
            chat.locator(".lmchat-send").click()
            answer = chat.locator(".lmchat-assistant .jp-OutputArea-output")
            wait_for("the answer to stream", lambda: answer.count() and len(answer.first.inner_text()) > 20)
            streaming = []
            for state in samples(lab):
                if "generating" in status.inner_text():  # read while the answer was still under way
                    streaming.append(state)
            assert streaming and all(s == "Busy" for s in streaming), (streaming, messages(lab)[-12:])
            lab.screenshot(page, f"status-busy-while-generating-{app}.png")
            chat.get_by_role("button", name="Stop").click()
            wait_for("the stopped answer", lambda: "stopped" in status.inner_text(), timeout=60)
            wait_for("Idle after the answer", lambda: status_bar(lab) == "Idle", timeout=30)
            assert lab.kernel_status() == "idle"
        except BaseException:
            lab.screenshot(page, f"status-failure-{app}.png")
            print("\n".join(lab.console[-40:]), "\n", server.log())
            raise
