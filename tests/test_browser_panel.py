"""A real browser: the chat panel in JupyterLab's right sidebar, on the kernel's conversation.

JupyterLab runs on localhost; Playwright drives Debian's chromium. The panel offers to load lmchat
into a kernel without it, shows a %%chat cell's turn as it streams, sends, stops, copies, inserts a
code block into a new cell (saying "Copied" on a copy), answers again, edits and resends a message, marks
stopped and cut answers, answers with the last %%chat cell's options until they are changed in the panel,
follows the current notebook, picks among a notebook's conversations and shows the saved
conversation again once lmchat is loaded after a kernel restart. The screenshot of the panel
that the README shows (docs/panel.png) is taken here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from .browser import ROOT, LabPage, LabServer, chromium_page, chromium_path, wait_for

pytestmark = pytest.mark.browser

#: The README's screenshot, written only when LMCHAT_DOCS_SCREENSHOTS=1 (a test run leaves tracked files alone).
SCREENSHOT = ROOT / "docs" / "panel.png"
#: Markup a message may carry: JupyterLab's sanitizer must keep it from running.
INJECTION = '<img src=x onerror="window.lmchatPwned=1"> [link](javascript:window.lmchatPwned=2)'
#: Short, repeatable answers for the conversation's turns (the panel's follow the last %%chat cell's options).
SHORT = (
    "import dataclasses, lmchat_jupyter\n"
    "c = lmchat_jupyter.current()\n"
    "c.options = dataclasses.replace(c.options, temperature=0, max_tokens={})"
)
CELLS = [
    "%load_ext lmchat",
    SHORT.format(48),
    "%%chat --temperature 0 --max-tokens 8\nMy name is Ada. Say hello to me.",
    "%%chat --name other --temperature 0 --max-tokens 8\nHello from the other chat. " + INJECTION,
    SHORT.format(400),
    "%%chat\nList the numbers from 1 to 100, separated by commas.",
]
LOAD, OPTIONS, CHAT, OTHER, LONG_ANSWERS, LONG_CHAT = range(6)
CODE_PROMPT = "Write a Python function that adds two numbers. Reply with one Python code block."


def notebook(sources: list[str]) -> str:
    cells = [
        {"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
        for i, s in enumerate(sources)
    ]
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": kernelspec}, "cells": cells})


class PanelPage(LabPage):
    """The panel as a user sees it, and the kernel's conversation read back through a cell-less request."""

    @property
    def panel(self) -> Any:
        return self.page.locator("#lmchat-panel")

    def open_panel(self) -> None:
        self.page.evaluate("() => window.jupyterapp.shell.activateById('lmchat-panel')")
        self.panel.wait_for(state="visible")

    def status(self) -> str:
        return str(self.panel.locator(".lmchat-panel-status").inner_text())

    def messages(self) -> list[dict[str, Any]]:
        """Each message the panel shows: who, text, time, footer."""
        return list(
            self.page.evaluate(
                """() => [...document.querySelectorAll('#lmchat-panel .jp-chat-message')].map(m => ({
                    user: !m.querySelector('.jp-chat-message-header') ||
                          !m.querySelector('.jp-chat-message-header').innerText.includes('Assistant'),
                    text: m.querySelector('.jp-chat-rendered-message')?.innerText ?? '',
                    time: m.querySelector('.jp-chat-message-time')?.innerText ?? '',
                    stats: m.querySelector('.lmchat-panel-stats')?.innerText ?? '',
                    ending: m.querySelector('.lmchat-panel-ending')?.getAttribute('data-ending') ?? '',
                }))"""
            )
        )

    def wait_messages(
        self, count: int, what: str, timeout: float = 300, first: str | None = None
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` messages show, rendered (the first one reading ``first``), none being generated."""

        def done() -> list[dict[str, Any]] | None:
            shown = self.messages()
            ready = len(shown) == count and all(m["text"].strip() for m in shown)
            ready = ready and (first is None or shown[0]["text"].strip() == first)
            return shown if ready and "generating" not in self.status() else None

        return wait_for(what, done, timeout=timeout)

    def type_and_send(self, text: str) -> None:
        box = self.panel.locator(".jp-chat-input-container textarea").first
        box.click()
        box.fill(text)
        self.panel.locator(".jp-chat-send-button").click()

    def set_option(self, which: str, value: float) -> None:
        """Type ``value`` into the panel's option ``which`` (``temperature`` or ``max-tokens``) and press Enter."""
        box = self.panel.locator(f".lmchat-panel-{which}")
        box.fill(str(value))
        box.press("Enter")

    def option(self, which: str) -> str:
        return str(self.panel.locator(f".lmchat-panel-{which}").input_value())

    def message(self, index: int) -> Any:
        return self.panel.locator(".jp-chat-message").nth(index)


def widen_sidebar(page: Any, width: int) -> None:
    """Drag the handle between the notebook and the right sidebar until the panel is ``width`` wide."""
    box = page.locator("#lmchat-panel").bounding_box()
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle:not(.lm-mod-hidden)").last
    grip = handle.bounding_box()
    x, y = grip["x"] + grip["width"] / 2, grip["y"] + grip["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - (width - box["width"]), y, steps=5)
    page.mouse.up()


def test_panel_in_jupyterlab(tmp_path: Path) -> None:
    executable = chromium_path()
    root = tmp_path / "lab"
    root.mkdir()
    (root / "first.ipynb").write_text(notebook(CELLS))
    (root / "second.ipynb").write_text(notebook(["1 + 1"]))
    with LabServer(root, home=tmp_path / "home") as server, chromium_page(executable, height=1200) as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
        lab = PanelPage(page, server)
        try:
            lab.open_notebook("first.ipynb")
            lab.open_panel()

            # A kernel without lmchat: the panel says so and loads it without a cell.
            unloaded = lab.panel.locator(".lmchat-panel-unloaded")
            unloaded.wait_for(state="visible")
            assert "not loaded" in unloaded.inner_text()
            lab.panel.locator(".lmchat-panel-load").click()
            wait_for("lmchat to answer", lambda: "no messages yet" in lab.status(), timeout=180)
            assert not unloaded.is_visible()
            assert page.evaluate(  # no cell ran
                "() => window.jupyterapp.shell.currentWidget.content.widgets.map(c => c.model.executionCount)"
            ) == [None] * len(CELLS)

            # A %%chat cell's turn shows in the panel as it streams, with time, stats and the cut marker.
            lab.run_cell(OPTIONS)
            lab.run_cell(CHAT, wait=False)
            wait_for("the cell's message in the panel", lambda: len(lab.messages()) >= 1, timeout=300)
            lab.wait_cell(CHAT)
            user, answer = lab.wait_messages(2, "the cell's answer in the panel")
            assert user["user"] and "My name is Ada" in user["text"] and user["time"]
            assert not answer["user"] and answer["text"] and answer["time"]
            assert "8 tokens" in answer["stats"] and "tok/s" in answer["stats"]
            assert answer["ending"] == "length"
            assert "/ 8,192 tokens" in lab.status()

            # The panel's turns answer as the last %%chat cell asked, shown and changeable in the panel.
            assert lab.option("max-tokens") == "8" and float(lab.option("temperature")) == 0
            lab.set_option("max-tokens", 48)

            # Edit and resend the first message: the conversation goes back to it.
            lab.message(0).hover()
            lab.message(0).get_by_role("button", name="Edit").click()
            editor = lab.message(0).locator("textarea").first
            editor.fill("My name is Grace. Say hello to me.")
            editor.press("Enter")
            shown = lab.wait_messages(2, "the edited turn", first="My name is Grace. Say hello to me.")
            assert shown[0]["text"] == "My name is Grace. Say hello to me." and shown[1]["text"]
            assert answer["text"] not in [m["text"] for m in shown]

            # Send from the panel; the answer is the kernel's (and so the next %%chat cell's) too.
            lab.type_and_send(CODE_PROMPT)
            shown = lab.wait_messages(4, "the panel's answer")
            assert shown[2]["text"] == CODE_PROMPT and shown[3]["stats"]

            # Copy a message.
            lab.message(2).hover()
            lab.message(2).locator(".lmchat-panel-copy").click()
            assert lab.message(2).locator(".lmchat-panel-copied").inner_text(timeout=2000) == "Copied"
            wait_for("the clipboard", lambda: page.evaluate("() => navigator.clipboard.readText()") == CODE_PROMPT)

            # Insert the answer's code block into a new cell below the active one.
            code = lab.message(3).locator(".jp-chat-rendered-message pre")
            if code.count():
                before = lab.page.evaluate("() => window.jupyterapp.shell.currentWidget.content.widgets.length")
                page.evaluate("() => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = 0; }")
                lab.message(3).locator(".jp-chat-code-toolbar button").nth(1).click()
                wait_for(
                    "the inserted cell",
                    lambda: (
                        page.evaluate("() => window.jupyterapp.shell.currentWidget.content.widgets.length")
                        == before + 1
                    ),
                )
                inserted = page.evaluate(
                    "() => window.jupyterapp.shell.currentWidget.content.widgets[1].model.sharedModel.getSource()"
                )
                assert inserted.strip() == code.first.inner_text().strip()
                page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.sharedModel.deleteCell(1)")
            else:
                pytest.fail(f"the model answered without a code block: {shown[3]['text']!r}")

            # Answer again: the last answer is replaced.
            page.mouse.move(0, 0)  # away from the insert button, whose tooltip would cover the answer
            lab.message(3).locator(".lmchat-panel-regenerate").click()
            wait_for("the new answer", lambda: "generating" in lab.status(), timeout=60)
            shown = lab.wait_messages(4, "the answer given again")
            assert shown[2]["text"] == CODE_PROMPT  # same message; temperature 0 may give the same answer
            assert lab.message(1).locator(".lmchat-panel-regenerate").count() == 0  # only the last answer

            # Stop: the partial answer stays, marked.
            lab.run_cell(LONG_ANSWERS)
            lab.set_option("max-tokens", 400)
            lab.type_and_send("Tell me a very long story about a dragon who learns to bake bread.")
            wait_for(
                "the answer to stream", lambda: len(lab.messages()) == 6 and lab.messages()[5]["text"] not in ("", "…")
            )
            lab.panel.locator(".lmchat-panel-stop").click()
            shown = lab.wait_messages(6, "the stopped answer")
            assert shown[5]["ending"] == "stopped" and shown[5]["text"]
            assert "stopped" in lab.message(5).locator(".lmchat-panel-ending").inner_text()
            widen_sidebar(page, 420)
            page.evaluate(  # the newest message in view, as after an answer
                "() => { let e = document.querySelector('#lmchat-panel .jp-chat-messages-container');"
                " while (e && e.scrollHeight <= e.clientHeight) e = e.parentElement;"
                " if (e) e.scrollTop = e.scrollHeight; }"
            )
            lab.screenshot(lab.panel, "panel.png")
            if os.environ.get("LMCHAT_DOCS_SCREENSHOTS") == "1":
                lab.panel.screenshot(path=str(SCREENSHOT))

            # A second conversation: the picker appears and switches.
            lab.run_cell(OTHER)
            picker = lab.panel.locator(".lmchat-panel-picker")
            wait_for("the picker", picker.is_visible, timeout=60)
            picker.select_option("other")
            shown = lab.wait_messages(2, "the other conversation")
            assert "Hello from the other chat." in shown[0]["text"]
            # The sanitizer drops the handler and the script link (an image without a handler may stay).
            assert lab.panel.locator("[onerror], a[href^='javascript']").count() == 0
            assert page.evaluate("() => window.lmchatPwned") is None
            picker.select_option("default")
            lab.wait_messages(6, "the default conversation again")

            # Another notebook, another kernel: the panel follows it, and comes back.
            page.evaluate("() => { window.jupyterapp.commands.execute('docmanager:open', {path: 'second.ipynb'}); }")
            unloaded.wait_for(state="visible", timeout=180_000)
            assert "second.ipynb" in lab.panel.locator(".lmchat-panel-notebook").inner_text()
            page.evaluate("() => { window.jupyterapp.commands.execute('docmanager:open', {path: 'first.ipynb'}); }")
            lab.wait_messages(6, "the first notebook's conversation again", timeout=60)
            assert not unloaded.is_visible()

            # Stop while a %%chat cell generates: the panel interrupts the kernel; the partial answer stays.
            lab.run_cell(LONG_CHAT, wait=False)
            wait_for(
                "the cell's answer to stream",
                lambda: len(lab.messages()) == 8 and lab.messages()[7]["text"] not in ("", "…"),
            )
            lab.panel.locator(".lmchat-panel-stop").click()
            lab.wait_cell(LONG_CHAT)
            shown = lab.wait_messages(8, "the interrupted answer")
            assert shown[7]["ending"] == "interrupted" and shown[7]["text"]

            # A kernel restart: lmchat is gone until loaded again, then the saved conversation is back.
            page.evaluate("() => { window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart(); }")
            unloaded.wait_for(state="visible", timeout=120_000)
            lab.wait_idle()
            load = lab.panel.locator(".lmchat-panel-load")  # its whole label shows
            assert load.inner_text() == "Load lmchat (%load_ext lmchat)"
            assert page.evaluate(
                "(b) => b.scrollWidth <= b.clientWidth && b.scrollHeight <= b.clientHeight", load.element_handle()
            ), load.bounding_box()
            lab.panel.locator(".lmchat-panel-load").click()
            wait_for("lmchat again", lambda: not unloaded.is_visible() and "tokens" in lab.status(), timeout=180)
            restored = lab.wait_messages(8, "the restored conversation", timeout=180)
            assert [m["text"].strip() for m in restored] == [m["text"].strip() for m in shown]
            # Every message of the kernel passed the extension's check, and JupyterLab shares what it needs.
            assert not [c for c in lab.console if "lmchat: ignoring" in c], lab.console
            assert not [c for c in lab.console if "Unsatisfied version" in c and "react-components" in c]
        except BaseException:
            lab.screenshot(page, "panel-failure.png")
            print("\n".join(lab.console[-40:]), "\n", server.log())
            raise


def test_panel_in_notebook_7(tmp_path: Path) -> None:
    """Notebook 7 has the same notebook tracker and a right sidebar: the panel loads lmchat and chats there."""
    pytest.importorskip("notebook", minversion="7")
    executable = chromium_path()
    root = tmp_path / "nb"
    root.mkdir()
    (root / "first.ipynb").write_text(notebook(CELLS))
    with LabServer(root, home=tmp_path / "home", notebook=True) as server, chromium_page(executable) as page:
        lab = PanelPage(page, server)
        try:
            lab.open_notebook("first.ipynb")
            lab.open_panel()
            lab.panel.locator(".lmchat-panel-unloaded").wait_for(state="visible")
            lab.panel.locator(".lmchat-panel-load").click()
            wait_for("lmchat to answer", lambda: "no messages yet" in lab.status(), timeout=180)
            lab.run_cell(OPTIONS)
            lab.type_and_send("My name is Ada. Say hello to me.")
            user, answer = lab.wait_messages(2, "the answer in Notebook 7")
            assert user["text"] == "My name is Ada. Say hello to me." and answer["stats"]
            lab.run_cell(CHAT)
            lab.wait_messages(4, "the cell's turn in Notebook 7")
            lab.screenshot(page, "panel-notebook7.png")
        except BaseException:
            lab.screenshot(page, "panel-notebook7-failure.png")
            print("\n".join(lab.console[-40:]), "\n", server.log())
            raise
