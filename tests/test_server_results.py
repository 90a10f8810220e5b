"""The shared-server sections of benchmarks/RESULTS.md: written in place, and kept when the main run rewrites it."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from benchmarks.report import write_markdown
from benchmarks.server_bench import write_block

# Every machine field the report asks for reads "x"; only the two it formats as numbers are real.
MACHINE: defaultdict[str, object] = defaultdict(lambda: "x", date="today", wall_seconds=1.0)


def test_server_sections_are_replaced_in_place_and_survive_the_main_run(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    write_markdown(results, [], [], MACHINE, ["a note"], "python -m benchmarks.run")
    write_block(results, "bench", "## Shared server\n\nfirst")
    write_block(results, "load", "## Under load\n\nfirst")
    write_block(results, "bench", "## Shared server\n\nsecond")
    text = results.read_text()
    assert text.count("## Shared server") == 1 and "second" in text and "first" in text  # load's "first"
    write_markdown(results, [], [], MACHINE, ["another note"], "python -m benchmarks.run")
    rewritten = results.read_text()
    assert "another note" in rewritten and "a note\n" not in rewritten
    assert "## Shared server\n\nsecond" in rewritten and "## Under load\n\nfirst" in rewritten
    assert rewritten.count("<!-- begin server-") == 2 and rewritten.count("<!-- end server-") == 2
