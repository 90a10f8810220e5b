"""Interpolation of kernel values into a message, and the notebook context blocks, on a real IPython shell."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from lmchat_jupyter.notebook.cell_message import prepare
from lmchat_jupyter.notebook.context import ErrorLog, context_block, parse_context, record_error, strip_ansi
from lmchat_jupyter.notebook.interpolation import HEAD_ROWS, MAX_VALUE_CHARS, expand, format_value


def test_names_and_expressions() -> None:
    ns: dict[str, Any] = {"city": "Lisbon", "prices": [3, 4, 5], "ratio": 2 / 3}
    e = expand("Trip to {city}: {len(prices)} days, total {sum(prices)}, {ratio:.2f} {city!r} {prices[-1]}", ns)
    assert e.text == "Trip to Lisbon: 3 days, total 12, 0.67 'Lisbon' 5"
    assert e.names == ["city", "prices", "ratio"]
    assert [i.source for i in e.inserts][:2] == ["{city}", "{len(prices)}"]
    assert e.left == [] and e.missing == []


def test_double_braces_are_literal() -> None:
    e = expand("{{city}} is {city}; a set: {{1, 2}}; lone }} and {{", {"city": "Oslo"})
    assert e.text == "{city} is Oslo; a set: {1, 2}; lone } and {"


@pytest.mark.parametrize(
    "code",
    [
        'config = {"a": 1, "b": [1, 2]}',
        "s = {1, 2, 3}",
        "int main() { return x; }",
        "function f() {\n  return {a: b};\n}",
        "d = {k: v for k, v in items}",
        "empty = {}",
        "f'{value}'",
        "{ x }",
        "unclosed { brace",
        "}{",
    ],
)
def test_code_in_a_message_survives(code: str) -> None:
    """Braces that hold no expression over the notebook's names are sent exactly as typed."""
    ns: dict[str, Any] = {"x": 41, "b": 2, "items": {}.items()}
    e = expand(code, ns)
    assert e.text == code
    assert e.inserts == []


def test_missing_names_are_left_as_written_and_reported() -> None:
    e = expand("Explain {df.describe()} and {nothing_here}", {})
    assert e.text == "Explain {df.describe()} and {nothing_here}"
    assert e.missing == ["df", "nothing_here"]
    assert [left.source for left in e.left] == ["{df.describe()}", "{nothing_here}"]
    assert "not defined in this kernel" in e.left[0].reason


def test_an_exception_in_an_expression_is_left_as_written_with_its_reason() -> None:
    ns: dict[str, Any] = {"d": {"a": 1}, "zero": 0}
    e = expand("Value {d['missing']}, ratio {1 / zero}, fine {d['a']}", ns)
    assert e.text == "Value {d['missing']}, ratio {1 / zero}, fine 1"
    assert [left.reason for left in e.left] == ["KeyError: 'missing'", "ZeroDivisionError: division by zero"]


def test_an_object_whose_str_raises() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no text for you")

    e = expand("see {obj}", {"obj": Broken()})
    assert e.text == "see {obj}" and e.left[0].reason == "RuntimeError: no text for you"


def test_expressions_cannot_change_the_namespace() -> None:
    ns: dict[str, Any] = {"x": 1}
    expand("{(y := x + 1)} {globals().update(z=3)}", ns)
    assert set(ns) == {"x"}


def test_huge_values_are_cut_with_a_note() -> None:
    text = "START" + "x" * 100_000 + "END"
    e = expand("Summarise {log}", {"log": text})
    assert len(e.text) < MAX_VALUE_CHARS + 200
    assert e.text.startswith("Summarise START") and e.text.endswith("END")
    assert "characters left out" in e.text and e.inserts[0].cut


def test_bytes_utf8_and_not() -> None:
    assert format_value("café".encode()) == ("café", False)
    assert format_value(b"\xff\xfe\x00ok") == ("b'\\xff\\xfe\\x00ok'", False)
    # A str read with surrogateescape holds lone surrogates, which no tokenizer takes: kept as escapes.
    text, _ = format_value(b"ab\xffcd".decode("utf-8", "surrogateescape"))
    assert text == "ab\\udcffcd"
    text.encode("utf-8")


def test_a_dataframe_shows_its_shape_and_first_rows() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"city": [f"c{i}" for i in range(1000)], "sales": range(1000)})
    text, cut = format_value(frame)
    assert cut and text.startswith(f"DataFrame (1,000 rows × 2 columns; the first {HEAD_ROWS} shown)")
    assert "c4" in text and "c5" not in text
    small, cut = format_value(frame.head(2))
    assert not cut and small.startswith("DataFrame (2 rows × 2 columns)")
    series, _ = format_value(frame["sales"])
    assert series.startswith("Series (1,000 values; the first 5 shown)")


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.user_ns["Err"] = ErrorLog()
    ip.events.register("post_run_cell", _record)
    try:
        yield ip
    finally:
        ip.events.unregister("post_run_cell", _record)
        ip.user_ns.pop("Err", None)


def _record(result: Any) -> None:
    ip = InteractiveShell.instance()
    record_error(ip, result.execution_count, result.error_in_exec or result.error_before_exec)


def test_in_out_err_from_real_cells(shell: InteractiveShell) -> None:
    shell.run_cell("numbers = [1, 2, 3]", store_history=True)
    n_out = shell.execution_count
    shell.run_cell("sum(numbers) * 10", store_history=True)
    n_err = shell.execution_count
    shell.run_cell("def f():\n    return 1 / 0\nf()", store_history=True)
    e = expand(f"code {{In[{n_out}]}} gave {{Out[{n_out}]}}; the error:\n{{Err[{n_err}]}}", shell.user_ns)
    assert "code sum(numbers) * 10 gave 60; the error:\n" in e.text
    assert "ZeroDivisionError" in e.text and "return 1 / 0" in e.text
    assert "\x1b" not in e.text


def test_strip_ansi() -> None:
    assert strip_ansi("\x1b[0;31mError\x1b[0m \x1b]8;;http://x\x07link\x1b]8;;\x07") == "Error link"


def test_context_blocks(shell: InteractiveShell) -> None:
    with pytest.raises(ValueError, match="no cell has raised an error"):
        context_block(parse_context("error"), shell)
    shell.run_cell("rows = 3\nrows * 2", store_history=True)
    shell.run_cell("%%chat\nnot code", store_history=True)  # a chat cell is never context (no magic here: it fails)
    shell.run_cell("undefined_name + 1", store_history=True)
    failed = shell.execution_count - 1
    cell = context_block(parse_context("cell"), shell)
    assert cell.text.startswith(f"--- notebook context: the code cell run before this one (In [{failed}]) ---")
    assert "undefined_name + 1" in cell.text and "NameError" in cell.text
    assert cell.text.endswith("--- end of notebook context ---")
    cells = context_block(parse_context("cells:2"), shell).text
    assert "rows = 3" in cells and "Out [" in cells and "6" in cells and "not code" not in cells
    error = context_block(parse_context("error"), shell)
    assert error.label == f"the last error (In [{failed}])" and "NameError" in error.text


@pytest.mark.parametrize("bad", ["cells", "cells:0", "cells:99", "cell:2", "errors", ""])
def test_bad_context_values(bad: str) -> None:
    with pytest.raises(ValueError, match="write cell"):
        parse_context(bad)


def test_prepare_records_what_the_message_used(shell: InteractiveShell) -> None:
    shell.user_ns["total"] = 42
    msg = prepare("Is {total} a lot? {gone}", shell)
    assert msg.text == "Is 42 a lot? {gone}" and msg.added
    assert msg.meta() == {"uses": "total"}
    assert msg.notes() == ["{gone} was sent as written (gone: not defined in this kernel)"]
    raw = prepare("Is {total} a lot?", shell, raw=True)
    assert raw.text == "Is {total} a lot?" and not raw.added and raw.meta() == {}
    assert "1 value · 5 tokens" in msg.added_markdown(5)


def test_a_long_line_of_json_is_scanned_once_and_left_as_written() -> None:
    """One candidate closing brace per opening one: a 300 kB line of minified JSON goes through unchanged."""
    import json

    blob = json.dumps([{"id": i, "tags": {"a": [i, {"b": i}]}, "x": "{y}"} for i in range(5000)])
    e = expand(f"Why is this slow? {blob}", {"y": 1, "i": 2})
    assert e.text == f"Why is this slow? {blob.replace('{y}', '1')}"
    assert len(e.inserts) == 5000


def test_nested_braces_in_an_expression() -> None:
    e = expand("{len({1, 2} | s)} and {sorted({k for k in d})}", {"d": {"a": 1, "b": 0}, "s": {3}})
    assert e.text == "3 and ['a', 'b']"
