"""Values from the kernel in a ``%%chat`` message: ``{name}``, ``{expression}``, ``{In[3]}``, ``{Out[3]}``, ``{Err[3]}``.

The conventions are IPython's ``{var}`` expansion in magics and jupyter-ai's ``%%ai``: ``{{`` and ``}}``
are literal braces, and a brace that does not hold an expression over the notebook's names is left as
written, so code pasted into a message survives (``{"a": 1}``, ``{1, 2}``, ``if (x) { y(); }``). An
expression is evaluated only when it parses, stays on one line and uses at least one name the
notebook defined; one that names nothing the kernel knows, or raises, is left as written and said so.
Values are cut to a bounded size with a note saying what was left out.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Expansion", "Insert", "LeftAsWritten", "expand", "format_value", "MAX_VALUE_CHARS", "HEAD_ROWS"]

#: The most characters one value may add to a message (a long string keeps its start and its end).
MAX_VALUE_CHARS = 2000
#: The longest expression a ``{…}`` may hold: longer braces are code, left as written.
MAX_FIELD_CHARS = 200
#: Rows of a DataFrame (or Series) shown; its shape says how many there are.
HEAD_ROWS = 5
_CONVERSIONS: dict[str, Callable[[object], str]] = {"r": repr, "s": str, "a": ascii}


@dataclass(frozen=True)
class Insert:
    """One ``{…}`` that was replaced: what was typed, the text that went in, and whether it was cut."""

    source: str
    text: str
    cut: bool = False


@dataclass(frozen=True)
class LeftAsWritten:
    """A ``{…}`` that looked like an expression but was sent as typed, why, and the names it reads."""

    source: str
    reason: str
    names: tuple[str, ...] = ()


@dataclass
class Expansion:
    """A message as the model receives it, and what interpolation did to it."""

    text: str
    inserts: list[Insert] = field(default_factory=list)
    left: list[LeftAsWritten] = field(default_factory=list)
    #: Notebook names the inserted values came from, in order of first use.
    names: list[str] = field(default_factory=list)
    #: Names that braces referred to but the kernel does not have.
    missing: list[str] = field(default_factory=list)


def expand(message: str, namespace: Mapping[str, Any], limit: int = MAX_VALUE_CHARS) -> Expansion:
    """Replace every ``{expression}`` over ``namespace`` in ``message``; see the module's docstring."""
    out: list[str] = []
    result = Expansion(text="")
    i, n = 0, len(message)
    while i < n:
        char = message[i]
        if char in "{}" and message.startswith(char * 2, i):
            out.append(char)
            i += 2
            continue
        if char == "{":
            field_end = _field(message, i, namespace, limit, result)
            if field_end is not None:
                out.append(result.inserts[-1].text)
                i = field_end
                continue
        out.append(char)
        i += 1
    result.text = "".join(out)
    return result


def _field(message: str, start: int, namespace: Mapping[str, Any], limit: int, result: Expansion) -> int | None:
    """Try the braces opening at ``start``: the index after the closing brace if replaced, else None."""
    close = _matching_brace(message, start)
    if close is None:
        return None
    parsed = _parse(message[start + 1 : close])
    if parsed is None or not _evaluate(message[start : close + 1], parsed, namespace, limit, result):
        return None
    return close + 1


def _matching_brace(message: str, start: int) -> int | None:
    """The ``}`` that closes the ``{`` at ``start`` on the same line, within ``MAX_FIELD_CHARS``.

    One candidate per brace keeps a long line of pasted JSON or minified code linear to scan.
    """
    depth = 0
    for i in range(start + 1, min(len(message), start + 2 + MAX_FIELD_CHARS)):
        char = message[i]
        if char == "\n":
            return None
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return i
            depth -= 1
    return None


@dataclass(frozen=True)
class _Parsed:
    expression: ast.Expression
    conversion: str | None
    spec: str


def _parse(content: str) -> _Parsed | None:
    """``expr``, ``expr!r`` or ``expr:spec`` (as in ``str.format``), if ``content`` is one."""
    if not content.strip() or content != content.strip():
        return None  # "{ x }" and "{}" read as code, not as a field
    candidates: list[tuple[str, str | None, str]] = [(content, None, "")]
    colons = [i for i in range(len(content) - 1, 0, -1) if content[i] == ":"]
    for cut in colons[:4]:  # a format spec follows the last colons, never many of them
        candidates.append((content[:cut], None, content[cut + 1 :]))
    for text, _conv, spec in list(candidates):
        if len(text) > 2 and text[-2] == "!" and text[-1] in _CONVERSIONS:
            candidates.append((text[:-2], text[-1], spec))
    for text, conversion, spec in candidates:
        try:
            tree = ast.parse(text, mode="eval")
        except (SyntaxError, ValueError):
            continue
        return _Parsed(tree, conversion, spec)
    return None


def _free_names(tree: ast.AST) -> list[str]:
    """Names an expression reads that it does not bind itself (comprehension targets, lambda arguments)."""
    bound = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    bound |= {arg.arg for node in ast.walk(tree) if isinstance(node, ast.Lambda) for arg in node.args.args}
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound | set(names):
            names.append(node.id)
    return names


def _evaluate(source: str, parsed: _Parsed, namespace: Mapping[str, Any], limit: int, result: Expansion) -> bool:
    names = _free_names(parsed.expression)
    unknown = [name for name in names if name not in namespace and not hasattr(builtins, name)]
    if unknown:
        result.missing.extend(name for name in unknown if name not in result.missing)
        result.left.append(LeftAsWritten(source, f"{', '.join(unknown)}: not defined in this kernel", tuple(names)))
        return False
    used = [name for name in names if name in namespace]
    if not used:
        return False  # {1, 2}, {len("x")}: code, not a question about the notebook
    try:
        value = eval(compile(parsed.expression, "<%%chat>", "eval"), dict(namespace))  # noqa: S307 - the user's own kernel
        if parsed.conversion is not None:
            value = _CONVERSIONS[parsed.conversion](value)
        if parsed.spec:
            value = format(value, parsed.spec)
        text, cut = format_value(value, limit)
    except Exception as exc:  # noqa: BLE001 - any error in the user's expression is reported, not raised
        result.left.append(LeftAsWritten(source, f"{type(exc).__name__}: {_one_line(str(exc))}", tuple(names)))
        return False
    result.inserts.append(Insert(source, text, cut))
    result.names.extend(name for name in used if name not in result.names)
    return True


def format_value(value: object, limit: int = MAX_VALUE_CHARS) -> tuple[str, bool]:
    """``value`` as message text of at most about ``limit`` characters, and whether it was cut.

    A DataFrame or Series shows its shape and first rows; bytes that are not UTF-8 show as Python
    writes them (``b'\\xff'``); text that cannot be encoded (lone surrogates) keeps them as escapes.
    """
    cut = False
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = repr(raw)
    elif _is_table(value):
        text, cut = _table(value)
    else:
        text = str(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text, cut = shorten(text, limit), True
    return text, cut


def shorten(text: str, limit: int) -> str:
    """The start and the end of ``text`` with a note of how much was left out between them."""
    head = limit * 2 // 3
    tail = limit - head
    left_out = len(text) - head - tail
    return f"{text[:head]}\n[… {left_out:,} of {len(text):,} characters left out …]\n{text[-tail:]}"


def _is_table(value: object) -> bool:
    shape = getattr(value, "shape", None)
    return (
        isinstance(shape, tuple)
        and 1 <= len(shape) <= 2
        and callable(getattr(value, "head", None))
        and callable(getattr(value, "to_string", None))
    )


def _table(value: Any) -> tuple[str, bool]:
    shape = value.shape
    kind = type(value).__name__
    rows = shape[0]
    size = f"{rows:,} rows × {shape[1]:,} columns" if len(shape) == 2 else f"{rows:,} values"
    body = str(value.head(HEAD_ROWS).to_string())
    if rows <= HEAD_ROWS:
        return f"{kind} ({size})\n{body}", False
    return f"{kind} ({size}; the first {HEAD_ROWS} shown)\n{body}", True


def _one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= 200 else first[:200] + "…"
