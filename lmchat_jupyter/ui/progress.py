"""Progress bars for long evaluations (re-reading a history, restoring), shown in the notebook.

A bar is a widget while it runs; once done it is replaced by one line of text (what was evaluated,
in how long, how fast). A widget left in an output would be saved in the .ipynb and show
"Error displaying widget: model not found" after a restart, since its model dies with the kernel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["token_progress", "MIN_TOKENS_FOR_BAR"]

#: Below this many tokens an evaluation is quick enough to need no bar.
MIN_TOKENS_FOR_BAR = 512


def _in_notebook() -> bool:
    """Whether a widget can show: an IPython kernel (not a terminal) with ipywidgets."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


class _Bar:
    """One tqdm bar (a widget in a kernel, text elsewhere) that ends as a line of text."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.started = time.monotonic()
        # smoothing=0: the rate is tokens so far over time so far, and so is the time left.
        options: dict[str, Any] = {"total": total, "desc": label, "unit": "tok", "smoothing": 0}
        self._handle: Any = None
        if _in_notebook():
            from IPython.display import display
            from tqdm.notebook import tqdm as notebook_tqdm

            self.bar: Any = notebook_tqdm(display=False, **options)
            self._handle = display(self.bar.container, display_id=True)
        else:
            from tqdm import tqdm

            self.bar = tqdm(leave=False, **options)

    def update(self, done: int, total: int) -> None:
        if total != self.bar.total:
            self.bar.total = total
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        if done >= total:
            self.finish(done)

    def finish(self, done: int) -> None:
        seconds = time.monotonic() - self.started
        self._end(f"{self.label}: {done:,} tokens in {seconds:.1f} s ({done / max(seconds, 1e-9):,.0f} tok/s)")

    def stop(self) -> None:
        """End a bar whose evaluation failed or was interrupted: a line, with the figures the bar showed."""
        seconds = time.monotonic() - self.started
        done, total = int(self.bar.n), int(self.bar.total or 0)
        self._end(f"{self.label}: stopped at {done:,} of {total:,} tokens ({seconds:.1f} s)")

    def _end(self, line: str) -> None:
        self.bar.close()
        if self._handle is not None:
            # The widget's place in the output becomes the line; its models are closed with it.
            self._handle.update({"text/plain": line}, raw=True)
            for widget in (*self.bar.container.children, self.bar.container):
                widget.close()
        else:
            print(line)


class _TokenProgress:
    """A ``(done, total)`` callback showing one bar; :meth:`stop` ends it early (the engine calls it on failure)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: _Bar | None = None
        self._ended = False

    def __call__(self, done: int, total: int) -> None:
        if self._ended:
            return  # a bar that ended is text now: later evaluations never bring it back
        if self._bar is None:
            if total < MIN_TOKENS_FOR_BAR:
                return
            self._bar = _Bar(self.label, total)
        self._bar.update(done, total)
        self._ended = done >= total

    def stop(self) -> None:
        """The evaluation failed (any exception, Ctrl-C): the bar, if one shows, becomes a line of text."""
        if self._bar is not None and not self._ended:
            self._bar.stop()
        self._ended = True


def token_progress(label: str) -> Callable[[int, int], None]:
    """A ``(done, total)`` callback that shows a bar for evaluations of ``MIN_TOKENS_FOR_BAR`` tokens or more.

    The callback has a ``stop()`` method: called when the evaluation fails, the bar ends as a line.
    """
    return _TokenProgress(label)
