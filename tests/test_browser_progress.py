"""A real browser: what a user sees while lmchat works, and what is left in the notebook afterwards.

One Run All in JupyterLab: a long history is read again (one bar for the whole conversation, from the
first token, its true total and rate, then a line of text instead of the bar), the chat widget opens
and a ``%%chat`` turn streams (JupyterLab says the kernel is busy; the widget says "generating…"
without "saved", names the model readably; the stats line sits right under the answer). Then the
notebook is saved, the kernel restarted and the page reloaded: nothing says "Error displaying widget";
the finished bar's line is there, and the old kernel's widget is replaced by text saying to run its
cell again (the JupyterLab extension asks the kernel which widgets it still has).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from lmchat_jupyter import ChatHistory
from lmchat_jupyter.core.history import Message

from .browser import LabPage, LabServer, chromium_page, chromium_path, wait_for

pytestmark = pytest.mark.browser

NOTEBOOK = "progress.ipynb"
LOAD, READ, WIDGET, CHAT = 0, 1, 2, 3
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_NB = "const nb = window.jupyterapp.shell.currentWidget;"


def notebook(root: Path) -> None:
    # About 1,500 tokens: several batches of evaluation, long enough to watch the bar move.
    paragraph = " ".join(f"Bread recipe step {i}: knead the dough, let it rest, fold it again." for i in range(12))
    messages = []
    for turn in range(4):
        messages += [
            Message("user", f"Question {turn}: {paragraph}"),
            Message("assistant", f"Answer {turn}. {paragraph}"),
        ]
    ChatHistory(messages).save(root / "long.json")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext lmchat", id="load"),
        nbformat.v4.new_code_cell("%chat load long.json", id="read"),
        nbformat.v4.new_code_cell("%chat widget", id="widget"),
        nbformat.v4.new_code_cell(
            "%%chat --temperature 0 --max-tokens 160\nTell me a long story about a dragon.", id="chat"
        ),
    ]
    nbformat.write(nb, root / NOTEBOOK)


def outputs(lab: LabPage, index: int) -> list[dict[str, Any]]:
    return list(lab.page.evaluate(f"(i) => {{ {_NB} return nb.content.widgets[i].model.outputs.toJSON(); }}", index))


def ran(lab: LabPage, index: int) -> bool:
    return bool(
        lab.page.evaluate(
            f"(i) => {{ {_NB} const c = nb.content.widgets[i].model;"
            " return c.executionCount !== null && c.executionState !== 'running'; }",
            index,
        )
    )


def status_bar_kernel(lab: LabPage) -> str:
    """What JupyterLab's status bar says about the kernel ("Python 3 (ipykernel) | Busy")."""
    return str(
        lab.page.evaluate(
            "() => [...document.querySelectorAll('#jp-main-statusbar .jp-StatusBar-TextItem')]"
            ".map(e => e.textContent).find(t => t.includes('|')) ?? ''"
        )
    )


BAR = re.compile(r"(\d+)/(\d+) \[[\d:]+<([\d:?]+), *([\d.]+|\?)tok/s\]")


def test_progress_widgets_and_status_in_a_run_all(tmp_path: Path) -> None:
    executable = chromium_path()
    root = tmp_path / "lab"
    root.mkdir()
    notebook(root)
    with LabServer(root, home=tmp_path / "home") as server, chromium_page(executable) as page:
        lab = LabPage(page, server)
        try:
            lab.open_notebook(NOTEBOOK)
            # Not awaited: the command's promise settles only once every cell has run.
            page.evaluate("() => { window.__labRun = window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

            # C: one bar for the whole conversation, from its first token, with a true total and rate.
            bars: list[tuple[int, int, str, float]] = []
            seen: set[str] = set()
            read = lab.cell(READ)
            idle_from: float | None = None  # when the status bar turned Idle while the history was read
            longest_idle = 0.0

            def read_done() -> bool:
                nonlocal idle_from, longest_idle
                text = read.inner_text().replace("\u2007", " ")
                seen.add(text)
                if "Idle" in status_bar_kernel(lab) and not ran(lab, READ):
                    idle_from = idle_from or time.monotonic()
                    longest_idle = max(longest_idle, time.monotonic() - idle_from)
                else:
                    idle_from = None
                for m in BAR.finditer(text):
                    done, total, left, rate = m.groups()
                    bars.append((int(done), int(total), left, float(rate) if rate != "?" else 0.0))
                return ran(lab, READ)

            wait_for("the history to be read", read_done, timeout=300, every=0.05)
            assert bars, f"no progress bar was seen in {seen}"
            # E: the bar's comm makes JupyterLab open a subshell: the kernel still shows Busy (a flicker at most).
            assert longest_idle < 0.5, f"the status bar said Idle for {longest_idle:.1f} s while the history was read"
            line = lab.output_text(READ)
            match = re.search(r"Re-reading: ([\d,]+) tokens in [\d.]+ s \(([\d,]+) tok/s\)", line)
            assert match, line
            evaluated, final_rate = int(match[1].replace(",", "")), int(match[2].replace(",", ""))
            assert evaluated > 1000, line
            assert {total for _done, total, _left, _rate in bars} <= {evaluated, *range(evaluated - 8, evaluated + 9)}
            assert bars[0][0] < 600, bars  # seen before the second batch: the bar shows from the start
            assert all(rate < 3 * max(final_rate, 1) for *_rest, rate in bars), (bars, final_rate)
            # B: the finished bar left a line of text, no widget.
            assert all(WIDGET_MIME not in o.get("data", {}) for o in outputs(lab, READ)), outputs(lab, READ)

            # E: while the turn streams in Run All, JupyterLab says Busy and the widget says generating, not saved.
            chat = page.locator(".lmchat-chat")
            chat.wait_for()
            status = chat.locator(".lmchat-status")
            answer = lab.cell(CHAT).locator(".jp-OutputArea-output")
            kernel_states: list[str] = []
            widget_states: list[str] = []

            def streaming() -> bool:
                """The answer has begun and has no stats line yet: the cell is still running."""
                return (
                    bool(answer.count())
                    and len(answer.first.inner_text()) > 20
                    and not answer.locator(".lmchat-note").count()
                )

            def streamed() -> bool:
                if streaming():
                    kernel, widget = status_bar_kernel(lab), status.inner_text()
                    if streaming():  # both read while the turn was under way, not as it ended
                        kernel_states.append(kernel)
                        widget_states.append(widget)
                return ran(lab, CHAT)

            wait_for("the %%chat turn", streamed, timeout=300, every=0.1)
            assert kernel_states and not [s for s in kernel_states if "Busy" not in s], kernel_states
            generating = [s for s in widget_states if "generating" in s]
            assert generating and not any("saved" in s for s in generating), widget_states
            wait_for("the answer's stats", lambda: "tok/s last answer" in status.inner_text())
            assert status.inner_text().startswith("SmolLM2-135M-Instruct"), status.inner_text()
            # The stats line sits under the answer, without a paragraph's gap between them.
            gap = answer.first.evaluate(
                "e => { const note = e.querySelector('.lmchat-note'); const prev = note.previousElementSibling;"
                " return note.getBoundingClientRect().top - prev.getBoundingClientRect().bottom; }"
            )
            assert gap < 10, gap
            lab.screenshot(page, "progress-run-all.png")

            # Saved, restarted, reloaded: nothing says "Error displaying widget"; the old widget says what to do.
            page.evaluate("() => { window.__labSave = window.jupyterapp.commands.execute('docmanager:save'); }")
            wait_for("the save", lambda: "tok/s" in (root / NOTEBOOK).read_text() and not lab_dirty(lab))
            page.evaluate(f"() => {{ {_NB} return nb.sessionContext.session.kernel.restart(); }}")
            lab.wait_idle()
            page.reload()
            lab.open_notebook(NOTEBOOK)
            page.wait_for_timeout(2000)  # widget outputs render once the widget manager has looked for models
            shown = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").inner_text()
            assert "Error displaying widget" not in shown, shown
            assert re.search(r"Re-reading: [\d,]+ tokens in", lab.cell(READ).inner_text()), lab.cell(READ).inner_text()
            # D: the old kernel's widget is replaced by its text, which says what happened and what to do.
            old_widget = wait_for(
                "the old widget's text",
                lambda: [o["data"]["text/plain"] for o in outputs(lab, WIDGET) if WIDGET_MIME not in o.get("data", {})],
            )[0]
            assert "previous kernel" in old_widget and "run this cell again" in old_widget, old_widget
            assert "pip install" not in old_widget, old_widget
            assert "previous kernel" in lab.cell(WIDGET).inner_text()
            lab.screenshot(page, "progress-after-restart.png")
        except BaseException:
            lab.screenshot(page, "progress-failure.png")
            print("\n".join(lab.console[-40:]), "\n", server.log())
            raise


def lab_dirty(lab: LabPage) -> bool:
    return bool(lab.page.evaluate(f"() => {{ {_NB} return nb.context.model.dirty; }}"))
