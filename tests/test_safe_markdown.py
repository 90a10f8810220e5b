"""Model text rendered to HTML: hostile strings make no script, raw HTML, image or disguised link, and read right."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from lmchat_jupyter.ui.code_highlight import highlight_code
from lmchat_jupyter.ui.safe_markdown import markdown_bundle, markdown_html

#: Every element the renderer may produce, and the attributes each may carry.
ALLOWED = {
    "p": set(),
    "br": set(),
    "em": set(),
    "strong": set(),
    "s": set(),
    "code": {"class"},
    "pre": set(),
    "span": {"style"},
    "a": {"href", "rel", "target"},
    "h1": set(),
    "h2": set(),
    "h3": set(),
    "h4": set(),
    "h5": set(),
    "h6": set(),
    "ul": set(),
    "ol": {"start"},
    "li": set(),
    "blockquote": set(),
    "hr": set(),
    "table": set(),
    "thead": set(),
    "tbody": set(),
    "tr": set(),
    "th": {"style"},
    "td": {"style"},
    "div": {"class", "style"},
}


class Page(HTMLParser):
    """The elements of a rendered answer, its links as (href, visible text), and the text a reader sees."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.links: list[tuple[str, str]] = []
        self.text = ""
        self._link: list[str] | None = None
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag == "a":
            self._link = [str(dict(attrs).get("href"))]

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._link is not None:
            self.links.append((self._link[0], "".join(self._link[1:])))
            self._link = None

    def handle_data(self, data: str) -> None:
        self.text += data
        if self._link is not None:
            self._link.append(data)


HOSTILE = [
    '<img src=x onerror="alert(1)"> and <script>alert(2)</script>',
    "[click](javascript:alert(1)) ![x](http://example.com/t.png) [ref]: javascript:alert(1)",
    "<http://example.com> <!-- c --> <a href='javascript:x'>a</a>",
    "[a](JaVaScRiPt:alert(1)) [b](vbscript:x) [c](data:text/html,<script>alert(1)</script>) [d](file:///etc/passwd)",
    "[x](java&#115;cript:alert(1)) [y](&#106;avascript:alert(1)) [z](%6Aavascript:alert(1))",
    '[docs](https://evil.example/x "https://good.example") and [https://good.example](https://evil.example)',
    "Visit https://evil.example/steal?c=1 or www.evil.example today <https://xn--80ak6aa92e.com/login>",
    "`a < b` and ``x `<b>` y`` then <b>",
    "```python\nif a < b and c[0]:\n\n    print('<script>')\n```\nafter <i>",
    "~~~\n<unclosed fence\n",
    "``` info`with`ticks\n<b>not a fence</b>\n```",
    '```"><script>alert(1)</script>\ncode\n```',
    "- item\n  ```\n<img src=x onerror=alert(1)>\n  ```",
    "    indented <b>code</b>",
    "| a | <b>b</b> |\n|---|---|\n| [x](javascript:y) | <svg onload=alert(1)> |",
    "> quote <iframe src=javascript:alert(1)>\n> > deeper <style>*{display:none}</style>",
    "<details open ontoggle=alert(1)>x</details>",
    "[![img](http://x/y.png)](http://example.com)",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_model_text_makes_no_html_of_its_own(text: str) -> None:
    page = Page(markdown_html(text))
    for tag, attrs in page.elements:
        assert tag in ALLOWED, (tag, text)
        assert set(attrs) <= ALLOWED[tag], (tag, attrs, text)
        for name, value in attrs.items():
            assert "javascript" not in str(value).lower() and "on" + "error" not in str(value), (name, value)
            if name == "style":  # only the highlighter's colours and the table's alignment
                assert str(value).startswith(("color: var(--jp-mirror-editor-", "text-align:")), value
    # A link shows exactly where it goes and goes only to the web or to mail.
    for href, visible in page.links:
        assert href == visible, (href, visible)
        assert href.startswith(("http://", "https://", "mailto:")), href
    # The hostile markup is still there to read, as text.
    if "onerror" in text:
        assert "onerror" in page.text


def test_bare_urls_stay_text_and_links_show_their_target() -> None:
    page = Page(markdown_html(HOSTILE[6]))
    assert page.links == [("https://xn--80ak6aa92e.com/login", "https://xn--80ak6aa92e.com/login")]
    assert "https://evil.example/steal?c=1" in page.text and "www.evil.example" in page.text
    page = Page(markdown_html(HOSTILE[5]))
    assert page.links == [("https://evil.example/x",) * 2, ("https://evil.example",) * 2]
    assert page.text.strip() == "docs (https://evil.example/x) and https://good.example (https://evil.example)"


def test_code_in_list_items_reads_as_written() -> None:
    text = "1. Compare with `a < b` and index `c[0]`:\n   ```python\n   if a < b and c[0] > 1:\n       x = '<tag>'\n   ```\n2. `&lt;` stays five characters"
    page = Page(markdown_html(text))
    assert "a < b" in page.text and "c[0]" in page.text
    assert "if a < b and c[0] > 1:\n    x = '<tag>'" in page.text
    assert "&lt; stays" in page.text
    assert "&#91;" not in page.text and "&#60;" not in page.text


def test_markdown_still_renders() -> None:
    text = (
        "# Title\n\n- **bold** and *it* ~~old~~\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nline one\nline two $x^2$"
    )
    page = Page(markdown_html(text))
    tags = [tag for tag, _ in page.elements]
    for tag in ("h1", "ul", "li", "strong", "em", "s", "table", "th", "td", "br"):
        assert tag in tags, (tag, tags)
    assert "line one<br />\nline two $x^2$</p>" in markdown_html(text)  # a line break shows; math is left to MathJax


def test_fenced_code_is_highlighted_with_the_theme_colours() -> None:
    markup = markdown_html("```python\ndef f(a):\n    return a < 2  # small\n```")
    assert '<code class="language-python">' in markup
    assert 'style="color: var(--jp-mirror-editor-keyword-color, #008000); font-weight: bold">def</span>' in markup
    assert "var(--jp-mirror-editor-comment-color" in markup
    assert Page(markup).text.rstrip("\n") == "def f(a):\n    return a < 2  # small"
    # An unknown language, or none, is shown plain and escaped.
    assert highlight_code("a < b", "no-such-language") == ""
    assert Page(markdown_html("```no-such-language\na < b\n```")).text.rstrip("\n") == "a < b"


def test_bundle_has_the_text_as_written_and_a_note() -> None:
    bundle = markdown_bundle("Hi <b>there</b>", "12 tokens · 3.0 tok/s <x>")
    assert bundle["text/plain"] == "Hi <b>there</b>\n\n12 tokens · 3.0 tok/s <x>"
    assert Page(bundle["text/html"]).text == "Hi <b>there</b>\n12 tokens · 3.0 tok/s <x>"
    assert markdown_bundle("")["text/plain"] == "…"
