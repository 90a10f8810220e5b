"""Progress bars for long evaluations (re-reading a history, restoring), shown in the notebook."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["token_progress"]

#: Below this many tokens an evaluation is quick enough to need no bar.
MIN_TOKENS_FOR_BAR = 512


def token_progress(label: str) -> Callable[[int, int], None]:
    """A ``(done, total)`` callback that draws a tqdm bar (notebook widget or text) for long evaluations."""
    bar: list[Any] = []

    def update(done: int, total: int) -> None:
        if total < MIN_TOKENS_FOR_BAR:
            return
        if not bar:
            from tqdm.auto import tqdm

            bar.append(tqdm(total=total, desc=label, unit="tok", leave=False))
        bar[0].n = done
        bar[0].refresh()
        if done >= total:
            bar[0].close()

    return update
