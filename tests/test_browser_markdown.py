"""A real browser: hostile model answers in JupyterLab, in a %%chat cell, in the chat widget and in %chat history.

The conversation is loaded from a history file (``%chat load``) whose answer carries script, raw HTML,
disguised and bare links, and code inside a list item. A ``%%chat`` cell with the stored message
replays that answer, so every surface renders the same untrusted text: no dialog may open and no
script run, every link must show its own target, bare URLs stay text, and the code reads exactly as
written, coloured as JupyterLab colours code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest

from lmchat_jupyter import ChatHistory
from lmchat_jupyter.core.history import Message

from .browser import LabPage, LabServer, chromium_page, chromium_path, wait_for

pytestmark = pytest.mark.browser

NOTEBOOK = "hostile.ipynb"
CHAT_CELL_ID = "hostile-chat-cell"
QUESTION = 'How do I compare? <img src=x onerror="alert(1)">'
ANSWER = """Here is the plan <img src=x onerror="alert(2)"> <script>window.lmchatPwned = 1</script>

1. Compare with `a < b` and index `c[0]`:
   ```python
   if a < b and c[0] > 1:
       print("<b>done</b>")
   ```
2. Read [the docs](javascript:alert(3)) or [docs](https://evil.example/x) or <https://evil.example/auto>
3. Bare: https://evil.example/bare and www.evil.example

<details open ontoggle="alert(4)">x</details> <svg onload="alert(5)"></svg> ![t](https://evil.example/t.png)
"""
CODE = 'if a < b and c[0] > 1:\n    print("<b>done</b>")'


def notebook(root: Path) -> None:
    history = ChatHistory(
        [Message("user", QUESTION, cell_id=CHAT_CELL_ID), Message("assistant", ANSWER, cell_id=CHAT_CELL_ID)]
    )
    history.save(root / "hostile.json")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext lmchat\n%chat load hostile.json", id="load"),
        nbformat.v4.new_code_cell("%chat widget", id="widget"),
        nbformat.v4.new_code_cell(f"%%chat\n{QUESTION}", id=CHAT_CELL_ID),
        nbformat.v4.new_code_cell("%chat history", id="history"),
    ]
    nbformat.write(nb, root / NOTEBOOK)


def check_rendered(area: Any, where: str) -> None:
    """``area`` (a locator) shows the answer safely and legibly."""
    text = area.inner_text()
    for line in ("Compare with a < b and index c[0]:", CODE, "onerror", "<script>window.lmchatPwned = 1</script>"):
        assert line in text, (where, line, text)
    assert "&lt;" not in text and "&#91;" not in text and "&#60;" not in text, (where, text)
    # Nothing active: no element the model's HTML would have made.
    for selector in ("img", "script", "svg", "details", "iframe", "a[href^='javascript']"):
        assert area.locator(selector).count() == 0, (where, selector)
    # Every link shows exactly where it goes; bare URLs are no links at all.
    links = area.locator("a").evaluate_all("links => links.map(a => [a.getAttribute('href'), a.textContent])")
    # An image is not loaded: its target shows as a link.
    targets = ["https://evil.example/x", "https://evil.example/auto", "https://evil.example/t.png"]
    assert sorted(links) == sorted([[target, target] for target in targets]), (where, links)
    assert "https://evil.example/bare and www.evil.example" in text, (where, text)
    # The code is coloured with the theme's editor colours, as in a Markdown cell.
    keyword = area.locator("pre code span").filter(has_text="if").first
    colour = keyword.evaluate("e => getComputedStyle(e).color")
    plain = area.locator("pre code").first.evaluate("e => getComputedStyle(e).color")
    assert colour != plain, (where, colour, plain)


def test_hostile_answers_render_safely_everywhere(tmp_path: Path) -> None:
    executable = chromium_path()
    root = tmp_path / "lab"
    root.mkdir()
    notebook(root)
    with LabServer(root, home=tmp_path / "home") as server, chromium_page(executable) as page:
        lab = LabPage(page, server)
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        try:
            lab.open_notebook(NOTEBOOK)
            lab.run_cell(0)
            assert "loaded 2 messages" in lab.output_text(0), lab.output_text(0)
            lab.run_cell(1)
            chat = page.locator(".lmchat-chat")
            chat.wait_for()
            lab.run_cell(2)
            assert "not generated again" in lab.output_text(2), lab.output_text(2)
            lab.run_cell(3)
            answer = lab.cell(2).locator(".jp-OutputArea-output")
            check_rendered(answer, "%%chat output")
            bubble = chat.locator(".lmchat-assistant .jp-OutputArea-output")
            wait_for("the answer in the widget", lambda: "Compare with" in bubble.inner_text())
            check_rendered(bubble, "widget")
            check_rendered(lab.cell(3).locator(".jp-OutputArea-output"), "%chat history")
            user = chat.locator(".lmchat-user .jp-OutputArea-output").inner_text()
            assert QUESTION in user and chat.locator(".lmchat-user img").count() == 0, user
            page.wait_for_timeout(500)  # an image that failed to load would have fired by now
            assert dialogs == [] and page.evaluate("() => window.lmchatPwned") is None, dialogs
            lab.screenshot(lab.cell(2), "hostile-answer.png")
        except BaseException:
            lab.screenshot(page, "hostile-answer-failure.png")
            print("\n".join(lab.console[-40:]), "\n", server.log())
            raise
