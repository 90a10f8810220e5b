"""The example notebooks run top to bottom (nbval), and a Run-All after a restart replays the stored answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def copy_example(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copy(EXAMPLES / name, target)
    return target


@pytest.mark.parametrize("name", ["restart-and-rerun.ipynb", "ask-about-a-dataframe.ipynb"])  # the quickstart: below
def test_example_runs_under_nbval(name: str, tmp_path: Path) -> None:
    notebook = copy_example(name, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", str(notebook)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def outputs(nb: nbformat.NotebookNode) -> list[str]:
    texts = []
    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.source.startswith("%%chat"):
            continue
        text = ""
        for out in cell.get("outputs", []):  # the answer's display; status lines go to stdout
            data = out.get("data", {})
            text += data.get("text/markdown", "") or data.get("text/plain", "")
        texts.append(text)
    return texts


def test_run_all_after_restart_replays_without_generating(tmp_path: Path) -> None:
    notebook = copy_example("restart-and-rerun.ipynb", tmp_path)
    first = nbformat.read(notebook, as_version=4)
    NotebookClient(first, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    generated = outputs(first)
    assert len(generated) == 3 and all("tok/s" in t for t in generated)

    second = nbformat.read(notebook, as_version=4)  # a new kernel: the restart
    NotebookClient(second, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    replayed = outputs(second)
    assert all("not generated again" in t for t in replayed), replayed
    for before, after in zip(generated, replayed, strict=True):
        assert before.rsplit("\n\n", 1)[0] == after.rsplit("\n\n", 1)[0]  # the answer, without its stats line


def test_dataframe_example_sends_the_table_and_the_traceback(tmp_path: Path) -> None:
    notebook = copy_example("ask-about-a-dataframe.ipynb", tmp_path)
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    question, explained, raw = outputs(nb)
    assert "lmchat added 2 values" in question and "DataFrame (8 rows × 3 columns; the first 5 shown)" in question
    assert "&#x27;North&#x27;: 450" in question and "tok/s" in question
    assert "lmchat added 2 values" in explained
    assert "KeyError: &#x27;revenue&#x27;" in explained and "\x1b" not in explained
    assert "lmchat added" not in raw and "tok/s" in raw


def test_quickstart_shows_the_conversation_remembering(tmp_path: Path) -> None:
    """The first thing a new user runs: its last question is answered from what the first cell said."""
    notebook = copy_example("quickstart.ipynb", tmp_path)
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    first, _project, question = outputs(nb)
    assert "tok/s" in first
    assert "Rex" in question.split("<sub>")[0], question


def test_readme_shows_the_quickstart_cells() -> None:
    """The README's example is the quickstart's, so the test above checks the answer it promises."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    nb = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    cells = [c.source.strip() for c in nb.cells if c.cell_type == "code" and c.source.startswith("%%chat")]
    shown = "\n\n".join(f"```\n{cell}\n```" for cell in cells)
    assert shown in readme
    assert "Your dog is Rex" in readme
