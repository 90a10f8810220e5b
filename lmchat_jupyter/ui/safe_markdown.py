"""Model text (untrusted Markdown) as HTML that holds no script, no raw HTML and no hidden link target.

Notebook frontends show the output of a freshly run cell or of an ``ipywidgets.Output`` as *trusted*:
its HTML is not sanitized and a ``<script>`` in it runs. So the model's Markdown is rendered here,
by markdown-it-py (CommonMark, with tables and strikethrough), with raw HTML off: every ``<`` the
model writes reaches the page as text. On top of CommonMark:

- links go to ``http``, ``https`` and ``mailto`` targets only (``javascript:`` and the rest stay
  text), and a link shows its real target as its text (``[docs](https://evil/x)`` reads
  ``docs (https://evil/x)``), so no answer can make a link that says one thing and goes elsewhere;
- bare URLs stay text (no linkify) and images are not loaded (an image URL can carry data out);
- line breaks show as breaks, as in a chat;
- fenced code is coloured like code in JupyterLab (code_highlight).

Math (``$…$``) stays in the text for the frontend's MathJax, which runs in safe mode.
"""

from __future__ import annotations

import html
import re
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token

from .code_highlight import highlight_code

__all__ = ["markdown_html", "markdown_bundle"]

_LINK_TARGETS = re.compile(r"(?:https?://|mailto:)\S", re.IGNORECASE)
_REL = "noopener noreferrer nofollow"
# JupyterLab gives the blocks of rendered Markdown a 1em margin below: pulled up into it, the note sits
# right under the answer, not a paragraph away.
NOTE_STYLE = "margin-top: -0.75em; font-size: 0.85em; color: var(--jp-ui-font-color2, #616161)"


class _ModelMarkdown(MarkdownIt):  # type: ignore[misc]
    def validateLink(self, url: str) -> bool:  # noqa: N802 (markdown-it's name)
        return bool(_LINK_TARGETS.match(url.strip()))


def _link(href: str) -> list[Token]:
    opening = Token("link_open", "a", 1)
    opening.attrs = {"href": href, "rel": _REL, "target": "_blank"}
    text = Token("text", "", 0)
    text.content = href
    return [opening, text, Token("link_close", "a", -1)]


def _text(content: str) -> Token:
    token = Token("text", "", 0)
    token.content = content
    return token


def _show_link_targets(state: StateCore) -> None:
    """Each link shows its target: ``<url>`` as the link alone, ``[text](url)`` as ``text (url)``."""
    for block in state.tokens:
        if block.type != "inline" or not block.children:
            continue
        children: list[Token] = []
        href: str | None = None
        auto = False
        for token in block.children:
            if token.type == "link_open":
                href, auto = str(token.attrGet("href") or ""), token.markup == "autolink"
            elif token.type == "link_close" and href is not None:
                children += _link(href) if auto else [_text(" ("), *_link(href), _text(")")]
                href = None
            elif href is None or not auto:
                children.append(token)
            # else: an autolink's text, the URL made readable (punycode decoded): the target replaces it.
        block.children = children


def _renderer() -> MarkdownIt:
    def highlight(code: str, language: str, _attrs: Any) -> str:
        return highlight_code(code, language)

    md = _ModelMarkdown("commonmark", {"html": False, "breaks": True, "highlight": highlight})
    md.enable(["table", "strikethrough"]).disable("image")
    md.core.ruler.push("show_link_targets", _show_link_targets)
    return md


_MARKDOWN = _renderer()


def markdown_html(text: str) -> str:
    """``text`` (untrusted Markdown) as HTML with no raw HTML, script, image or disguised link in it."""
    return str(_MARKDOWN.render(text))


def markdown_bundle(text: str, note: str = "") -> dict[str, str]:
    """A display bundle for ``text``: its HTML (``…`` while empty) and a small ``note`` line under it.

    ``text/plain`` is the text as written, for frontends that show no HTML and for reading outputs back.
    """
    body = markdown_html(text) if text else "<p>…</p>"
    plain = text or "…"
    if note:
        body += f'<div class="lmchat-note" style="{NOTE_STYLE}">{html.escape(note)}</div>'
        plain += f"\n\n{note}"
    return {"text/html": body, "text/plain": plain}
