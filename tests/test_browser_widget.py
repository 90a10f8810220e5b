"""A real browser: the chat widget in JupyterLab, beside %%chat cells of the example notebook.

JupyterLab runs on localhost with a token; Playwright drives Debian's chromium. The widget is typed
into and sent, its answer streams and is stopped, Enter sends and Shift+Enter breaks a line, a %%chat
cell streams into the widget, and model-looking markup in a message stays text. A screenshot of the
widget is kept in test-artifacts/.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from .browser import ROOT, LabPage, LabServer, chromium_page, chromium_path, wait_for

pytestmark = pytest.mark.browser

NOTEBOOK = "widget-and-magic.ipynb"
LOAD_CELL, WIDGET_CELL, FIRST_CHAT_CELL = 1, 3, 5
INJECTION = '<img src=x onerror="window.lmchatPwned=1"> [link](javascript:window.lmchatPwned=2)'


def texts(chat: Any, role: str) -> list[str]:
    return [t.strip() for t in chat.locator(f".lmchat-{role} .jp-OutputArea-output").all_inner_texts()]


def letters(text: str) -> str:
    """Letters and digits only: rendered Markdown and its source compare equal."""
    return "".join(c for c in text if c.isalnum())


def watch_answer(chat: Any, count: int, min_states: int = 3) -> list[str]:
    """The texts answer number ``count`` showed while it streamed, until ``min_states`` distinct ones were seen."""
    states: list[str] = []

    def grew() -> bool:
        answers = texts(chat, "assistant")
        if len(answers) >= count and answers[count - 1] not in ("…", "") and answers[count - 1] not in states:
            states.append(answers[count - 1])
        return len(states) >= min_states

    wait_for(f"answer {count} to stream", grew, timeout=300, every=0.05)
    return states


def test_widget_in_jupyterlab(tmp_path: Path) -> None:
    executable = chromium_path()
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(ROOT / "examples" / NOTEBOOK, root / NOTEBOOK)
    with LabServer(root, home=tmp_path / "home") as server, chromium_page(executable) as page:
        lab = LabPage(page, server)
        try:
            lab.open_notebook(NOTEBOOK)
            lab.run_cell(LOAD_CELL)
            lab.run_cell(WIDGET_CELL)
            chat = page.locator(".lmchat-chat")
            chat.wait_for()
            status = chat.locator(".lmchat-status")
            wait_for("the status line", lambda: "nothing to save yet" in status.inner_text())

            # Type, Shift+Enter for a second line, click Send: the answer streams in; Stop ends it.
            box = chat.locator(".lmchat-input textarea")
            box.click()
            page.keyboard.type(f"Hello! I am Ada. {INJECTION}")
            page.keyboard.press("Shift+Enter")
            page.keyboard.type("Tell me a long story about a dragon.")
            chat.locator(".lmchat-send").click()
            states = watch_answer(chat, 1)
            assert all(
                later.startswith(earlier.rstrip("▌ ")) for earlier, later in zip(states, states[1:], strict=False)
            ), states
            chat.get_by_role("button", name="Stop").click()  # the kernel answers clicks while the widget generates
            wait_for("the stopped answer", lambda: "tok/s last answer · stopped" in status.inner_text())
            (user,) = texts(chat, "user")
            assert user.startswith(f"Hello! I am Ada. {INJECTION}") and user.endswith(
                "\nTell me a long story about a dragon."
            )
            assert box.input_value() == ""

            # Enter alone sends.
            box.click()
            page.keyboard.type("What is my name?")
            page.keyboard.press("Enter")
            watch_answer(chat, 2, min_states=2)
            wait_for("the second answer", lambda: "tok/s last answer" in status.inner_text(), timeout=300)
            assert texts(chat, "user")[1] == "What is my name?"

            # A %%chat cell streams into the widget, after the widget's turns.
            lab.run_cell(FIRST_CHAT_CELL, wait=False)
            wait_for("the cell's message in the widget", lambda: len(texts(chat, "user")) == 3, timeout=300)
            assert texts(chat, "user")[2] == "My name is Ada and I am learning to bake bread."
            watch_answer(chat, 3, min_states=2)
            lab.wait_cell(FIRST_CHAT_CELL)
            wait_for("the cell's answer to be complete", lambda: "generating" not in status.inner_text())
            answer = texts(chat, "assistant")[2]
            assert answer and letters(answer) in letters(lab.output_text(FIRST_CHAT_CELL))
            assert "saved" in status.inner_text() and "/ 8,192 tokens" in status.inner_text()

            # User and assistant look different; markup in a message stays text.
            colours = {
                r: chat.locator(f".lmchat-{r}").first.evaluate("e => getComputedStyle(e).borderLeftColor")
                for r in ("user", "assistant")
            }
            assert colours["user"] != colours["assistant"], colours
            assert page.evaluate("() => window.lmchatPwned") is None
            assert chat.locator("img").count() == 0 and chat.locator("a[href^='javascript']").count() == 0
            lab.screenshot(chat, "chat-widget.png")
            chat.locator(".lmchat-user").first.scroll_into_view_if_needed()
            lab.screenshot(chat, "chat-widget-first-message.png")
            lab.screenshot(page, "chat-widget-page.png")
        except BaseException:
            lab.screenshot(page, "chat-widget-failure.png")
            print("\n".join(lab.console[-40:]), "\n", server.log())
            raise
