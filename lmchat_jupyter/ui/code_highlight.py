"""Syntax highlighting for code blocks in model answers, in JupyterLab's own editor colours.

JupyterLab colours fenced code in Markdown with CodeMirror, whose styles use the theme's
``--jp-mirror-editor-*`` variables. Answers are rendered to HTML in the kernel, so their code is
lexed here with Pygments and coloured with the same variables: it looks like code in a Markdown
cell, follows light and dark themes, and needs no style sheet. Each variable carries a fallback
colour for pages without JupyterLab's theme (an exported notebook).
"""

from __future__ import annotations

import functools
import html

from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.token import Comment, Keyword, Literal, Name, Operator, Punctuation, String, _TokenType
from pygments.util import ClassNotFound

__all__ = ["highlight_code"]

#: Longer code is shown uncoloured: lexing it again on every redraw of a streaming answer costs too much.
MAX_HIGHLIGHT_CHARS = 100_000


def _style(variable: str, fallback: str, extra: str = "") -> str:
    return f"color: var(--jp-mirror-editor-{variable}-color, {fallback}){extra}"


_BOLD = "; font-weight: bold"
# The pairs CodeMirror's Jupyter highlight style uses (keywords and operators bold, comments italic).
_STYLES: dict[_TokenType, str] = {
    Keyword: _style("keyword", "#008000", _BOLD),
    Keyword.Constant: _style("atom", "#88f"),
    Operator: _style("operator", "#aa22ff", _BOLD),
    Operator.Word: _style("keyword", "#008000", _BOLD),
    Name.Builtin: _style("builtin", "#008000"),
    Name.Builtin.Pseudo: _style("variable-2", "#05a"),
    Name.Function: _style("def", "#00f"),
    Name.Class: _style("def", "#00f"),
    Name.Decorator: _style("meta", "#aa22ff"),
    Name.Tag: _style("tag", "#170"),
    Name.Attribute: _style("attribute", "#00c"),
    Literal.Number: _style("number", "#080"),
    String: _style("string", "#ba2121"),
    Comment: _style("comment", "#408080", "; font-style: italic"),
    Comment.Preproc: _style("meta", "#aa22ff"),
    Punctuation: _style("punctuation", "#05a"),
}


def _style_of(kind: _TokenType) -> str | None:
    while kind not in _STYLES and kind.parent is not None:
        kind = kind.parent
    return _STYLES.get(kind)


@functools.lru_cache(maxsize=64)
def _lexer(language: str) -> Lexer | None:
    try:
        # stripnl off: leading blank lines are part of what the model wrote.
        return get_lexer_by_name(language, stripnl=False)
    except (ClassNotFound, ValueError):
        return None


# A streaming answer is rendered again every few hundred milliseconds; its finished code blocks do not change.
@functools.lru_cache(maxsize=64)
def highlight_code(code: str, language: str) -> str:
    """``code`` as escaped HTML with coloured spans for ``language`` (a Pygments name); "" if unknown."""
    lexer = _lexer(language.lower()) if language and len(code) <= MAX_HIGHLIGHT_CHARS else None
    if lexer is None:
        return ""
    runs: list[tuple[str | None, str]] = []  # (style, text): neighbours of one style share a span
    for kind, value in lexer.get_tokens(code):
        style = _style_of(kind) if value.strip() else None
        if runs and runs[-1][0] == style:
            runs[-1] = (style, runs[-1][1] + value)
        else:
            runs.append((style, value))
    rendered = "".join(
        f'<span style="{style}">{html.escape(text, quote=False)}</span>' if style else html.escape(text, quote=False)
        for style, text in runs
    )
    # Pygments ends the last line with a newline where the code had none.
    return rendered[:-1] if rendered.endswith("\n") and not code.endswith("\n") else rendered
