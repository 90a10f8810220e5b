"""A real browser: the chat panel's edges.

Images in a message (Markdown or HTML, from the notebook's history or from an answer) are shown as
their alt text and URL and never fetched; messages saved without a time show none; the message box
has lmchat's own hint; the options of the panel's turns show and can be changed; the panel follows a
streaming %%chat answer while the user is at the bottom, not once they scrolled up, and again once
they are back; the stats line of a cut answer keeps to one line; the jump-to-bottom button and the
edit pencil stay off the text.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .browser import LabServer, chromium_page, chromium_path, wait_for
from .test_browser_panel import PanelPage

pytestmark = pytest.mark.browser

STREAM_CELL = (
    "%%chat --temperature 0 --max-tokens 300\nTell me a very long story about a dragon who learns to bake bread."
)


@contextmanager
def recording_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on localhost that records every path asked of it: no message may make the browser ask."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def notebook_with_history(url: str) -> str:
    messages = [
        {
            "id": "m1",
            "role": "user",
            "cell_id": "cell-of-another-notebook",  # the %%chat cell below is a new turn, not an edit of this one
            "content": f'Look: ![a cat]({url}/md.png) and <img src="{url}/raw.png" alt="raw cat">',
        },
        {"id": "m2", "role": "assistant", "content": f"An answer with ![a dog]({url}/answer.png) in it."},
    ]
    conversations = {"default": {"id": "conv1", "model": {"spec": None}, "messages": messages}}
    cells = [
        {"cell_type": "code", "id": f"cell-{i}", "metadata": {}, "source": s, "outputs": [], "execution_count": None}
        for i, s in enumerate(["%load_ext lmchat", STREAM_CELL])
    ]
    metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "lmchat": {"format": 1, "conversations": conversations},
    }
    return json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": metadata, "cells": cells})


def overlaps(a: dict[str, float] | None, b: dict[str, float] | None) -> bool:
    if not a or not b:
        return False
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


SCROLLER = "document.querySelector('#lmchat-panel [id^=\"jupyter-chat-scroll-container-\"]')"


def scroll_state(page: Any) -> dict[str, float]:
    return dict(
        page.evaluate(
            f"() => {{ const s = {SCROLLER}; return {{top: s.scrollTop, height: s.scrollHeight,"
            " gap: s.scrollHeight - s.scrollTop - s.clientHeight}; }"
        )
    )


def test_panel_edges(tmp_path: Path) -> None:
    executable = chromium_path()
    root = tmp_path / "lab"
    root.mkdir()
    with (
        recording_server() as (url, asked),
        LabServer(root, home=tmp_path / "home") as server,
        chromium_page(executable, height=700) as page,
    ):
        (root / "edges.ipynb").write_text(notebook_with_history(url))
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url) if r.url.startswith(url) else None)
        lab = PanelPage(page, server)
        try:
            lab.open_notebook("edges.ipynb")
            lab.open_panel()
            lab.panel.locator(".lmchat-panel-load").click()
            shown = lab.wait_messages(2, "the notebook's history in the panel", timeout=180)

            # Images: their alt text and URL as text, nothing fetched.
            assert "a cat" in shown[0]["text"] and f"{url}/md.png" in shown[0]["text"]
            assert "raw cat" in shown[0]["text"] and f"{url}/raw.png" in shown[0]["text"]
            assert "a dog" in shown[1]["text"] and f"{url}/answer.png" in shown[1]["text"]
            assert lab.panel.locator(".jp-chat-rendered-message img").count() == 0
            # A message sent now (an answer follows it) with an image in it: nothing fetched either.
            lab.set_option("temperature", 0)
            lab.set_option("max-tokens", 4)
            lab.type_and_send(f'Describe ![a bird]({url}/sent.png) <img src="{url}/sent-raw.png" alt="raw bird">')
            shown = lab.wait_messages(4, "the panel's turn", timeout=180)
            assert "a bird" in shown[2]["text"] and f"{url}/sent.png" in shown[2]["text"]
            tokens = re.search(r"(\d+) tokens", shown[3]["stats"])
            assert tokens and int(tokens.group(1)) <= 4, shown[3]["stats"]  # the panel's option was used
            page.wait_for_timeout(1000)
            assert asked == [] and requested == [], (asked, requested)

            # Saved without a time: no time and no "*".
            times = page.evaluate(
                "() => [...document.querySelectorAll('#lmchat-panel .jp-chat-message')].slice(0, 2).map(m =>"
                " { const t = m.querySelector('.jp-chat-message-time'); return t && t.offsetParent ? t.innerText : ''; })"
            )
            assert times == ["", ""], times
            assert "*" not in lab.panel.locator(".jp-chat-message-header").first.inner_text()
            assert shown[2]["time"]  # a message with a time shows it

            # The message box's hint is lmchat's.
            hint = lab.panel.locator(".jp-chat-input-container textarea").first.get_attribute("placeholder")
            assert hint and "mention" not in hint

            # The options line shows the last %%chat cell's options once one ran.
            lab.run_cell(1, wait=False)
            wait_for(
                "the options of the cell",
                lambda: lab.option("max-tokens") == "300",
                timeout=180,
            )
            assert float(lab.option("temperature")) == 0

            # Following the streaming answer while at the bottom, not once scrolled up, again once back.
            wait_for(
                "the answer to stream",
                lambda: len(lab.messages()) == 6 and len(lab.messages()[5]["text"]) > 20,
                timeout=60,
            )
            wait_for("the messages to overflow", lambda: scroll_state(page)["height"] > 800, timeout=60)
            page.wait_for_timeout(300)
            assert scroll_state(page)["gap"] < 60, scroll_state(page)
            box = lab.panel.locator('[id^="jupyter-chat-scroll-container-"]').bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.wheel(0, -300)
            page.wait_for_timeout(300)
            up = scroll_state(page)
            page.wait_for_timeout(600)
            later = scroll_state(page)
            assert later["height"] > up["height"] or "generating" not in lab.status(), "too short to check"
            assert later["top"] == up["top"] and later["gap"] > 60, (up, later)
            # The jump-to-bottom button stays off the messages' text.
            nav = lab.panel.locator(".jp-chat-navigation-bottom")
            if nav.count():
                for rendered in lab.panel.locator(".jp-chat-rendered-message").all():
                    assert not overlaps(nav.bounding_box(), rendered.bounding_box())
            page.mouse.wheel(0, 100_000)
            page.wait_for_timeout(300)
            grown = scroll_state(page)["height"]
            wait_for(
                "more of the answer", lambda: scroll_state(page)["height"] > grown or "generating" not in lab.status()
            )
            assert scroll_state(page)["gap"] < 60, scroll_state(page)
            lab.wait_cell(1)
            shown = lab.wait_messages(6, "the cell's answer")

            # A cut answer's stats stay on one line in the narrow sidebar.
            stats = lab.message(5).locator(".lmchat-panel-stats")
            assert shown[5]["ending"] == "length"
            line = float(
                page.evaluate("(e) => parseFloat(getComputedStyle(e).lineHeight) || 16", stats.element_handle())
            )
            assert stats.bounding_box()["height"] < 2 * line, stats.bounding_box()

            # The edit pencil stays off the text of its message.
            lab.message(2).scroll_into_view_if_needed()
            lab.message(2).hover()
            pencil = lab.message(2).locator(".jp-chat-toolbar")
            wait_for("the pencil", pencil.is_visible, timeout=10)
            assert not overlaps(
                pencil.bounding_box(), lab.message(2).locator(".jp-chat-rendered-message").bounding_box()
            )
            lab.screenshot(lab.panel, "panel-edges.png")
        except BaseException:
            lab.screenshot(page, "panel-edges-failure.png")
            print(lab.messages())
            print("\n".join(lab.console[-40:]), "\n", server.log())
            raise
