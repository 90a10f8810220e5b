"""The pieces a ChatWidget is made of: message bubbles of safely rendered Markdown, the Enter-sends script, and
the marker by which the JupyterLab extension knows its output."""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from ..protocol import CHAT_WIDGET_MIME, FORMAT
from .safe_markdown import markdown_bundle

__all__ = ["ROLES", "show", "bubble", "enter_sends", "widget_marker"]

#: role: (label, colour of the left border, margin that sets the two sides apart)
ROLES = {"user": ("You", "#1976d2", "6px 0 6px 12%"), "assistant": ("Assistant", "#2e7d32", "6px 12% 6px 0")}

# ipywidgets' Textarea sends no key events, so Enter-sends is a page-wide listener, installed once.
# It commits the text (a 'change' event syncs the value) before clicking Send; Shift+Enter types a newline.
ENTER_SENDS = """
if (!window.__lmchatEnterSends) {
  window.__lmchatEnterSends = true;
  document.addEventListener('keydown', function (e) {
    if (e.key !== 'Enter' || e.shiftKey || e.isComposing || !e.target.closest) return;
    var chat = e.target.closest('.lmchat-input') && e.target.closest('.lmchat-chat');
    if (!chat) return;
    e.preventDefault();
    e.stopPropagation();
    e.target.dispatchEvent(new Event('change', {bubbles: true}));
    var send = chat.querySelector('.lmchat-send');
    if (send && !send.disabled) send.click();
  }, true);
}
"""


def show(out: W.Output, text: str) -> None:
    """Put ``text`` (untrusted Markdown) in ``out`` rendered with no raw HTML, script or hidden link (safe_markdown)."""
    out.outputs = ({"output_type": "display_data", "data": markdown_bundle(text), "metadata": {}},)


def bubble(role: str, text: str) -> tuple[W.Output, W.VBox]:
    """A message: its role's label and colour, its text in an Output; returns (output, box)."""
    label, colour, margin = ROLES[role]
    out = W.Output()
    show(out, text)
    title = W.Label(label, style={"font_weight": "bold", "text_color": colour})
    # flex 0 0 auto: never squeezed to fit; the transcript scrolls instead.
    layout = W.Layout(border_left=f"4px solid {colour}", padding="0 0 0 10px", margin=margin, flex="0 0 auto")
    box = W.VBox([title, out], layout=layout)
    box.add_class(f"lmchat-{role}")
    return out, box


def enter_sends() -> W.Output:
    """A hidden output whose script makes Enter send in every chat widget of the page (trusted output only)."""
    script = W.Output(layout=W.Layout(display="none"))
    script.outputs = ({"output_type": "display_data", "data": {"application/javascript": ENTER_SENDS}, "metadata": {}},)
    return script


def widget_marker(name: str) -> dict[str, Any]:
    """The entry a chat widget adds to its output's mime bundle (on conversation ``name``).

    Saved with the notebook, it tells the extension which widget outputs are chats: one whose widget died
    with a previous kernel is replaced by its text, which says to run the cell again. No frontend renders
    this mime type, so the widget (or its text, without ipywidgets) shows as before.
    """
    return {CHAT_WIDGET_MIME: {"format": FORMAT, "name": name}}
