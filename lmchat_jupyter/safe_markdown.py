"""Model text as Markdown that cannot carry HTML, scripts or links.

Notebook frontends render Markdown from a freshly run cell or an ``ipywidgets.Output`` as *trusted*:
raw HTML in it is not sanitized and ``<script>`` runs. Model text is untrusted, so before it reaches
the Markdown renderer every ``<`` and ``[`` outside code becomes an entity: no tag, autolink, link
or image can form, while emphasis, lists, headings and tables still render, and line breaks show. Code spans and fenced
blocks become ``<code>``/``<pre>`` elements whose text is fully escaped, so they show exactly what
the model wrote. Math (``$…$``) is left to the frontend, whose MathJax runs in safe mode.
"""

from __future__ import annotations

import re

__all__ = ["safe_markdown"]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def _entities(text: str) -> str:
    """Every character but letters, digits and spaces as a numeric entity: no Markdown or HTML meaning left."""
    return "".join(c if c.isalnum() or c in " \n" else f"&#{ord(c)};" for c in text)


def _prose(line: str) -> str:
    parts = []
    last = 0
    for m in _CODE_SPAN.finditer(line):
        parts.append(line[last : m.start()].replace("<", "&lt;").replace("[", "&#91;"))
        parts.append(f"<code>{_entities(m.group(2))}</code>")
        last = m.end()
    parts.append(line[last:].replace("<", "&lt;").replace("[", "&#91;"))
    return "".join(parts)


def _closes(line: str, fence: str) -> bool:
    stripped = line.strip()
    return len(line) - len(line.lstrip(" ")) <= 3 and stripped.startswith(fence) and set(stripped) == {fence[0]}


def safe_markdown(text: str) -> str:
    """``text`` (untrusted) as Markdown whose rendering holds no HTML but the code elements made here."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None or (m.group(1)[0] == "`" and "`" in m.group(2)):
            # Two trailing spaces: a line break shows as one, as in a chat (a paragraph's end ignores them).
            out.append(_prose(lines[i]) + ("  " if lines[i].strip() else ""))
            i += 1
            continue
        fence, body = m.group(1), []
        i += 1
        while i < len(lines) and not _closes(lines[i], fence):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence (or the end of the text, which closes an open block)
        # An HTML <pre> block ends only at its closing tag, blank lines inside included.
        out.append(f"<pre><code>{_entities(chr(10).join(body))}</code></pre>")
    return "\n".join(out)
