"""Cost against context length: restore, resume, save times and autosave bytes per turn, per model.

    python -m benchmarks.cost_plot OUT.png benchmarks/results.json benchmarks/kv-twins/results.json
    python -m benchmarks.cost_plot OUT.png benchmarks/kv-twins/real_sizes.json

Drawn from the ``results.json`` of one or more runs of :mod:`benchmarks.run` (each model from its
own run: compare ratios within a panel, not absolute times across runs taken under other loads), or
from one run of :mod:`benchmarks.real_sizes` (every model in one run, autosave as records).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["write_cost_plot", "write_size_plot", "main", "COST_PLOT_NAME"]

COST_PLOT_NAME = "cost.png"
NEW_TOKENS = 128  # the KV bytes a turn of this many new tokens adds: what a delta autosave would write


def write_cost_plot(path: Path, models: list[dict[str, Any]], dates: list[str]) -> None:
    """Two rows, one column per model: times (top) and bytes written per autosaved turn (bottom), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 8), squeeze=False)
    for col, (model, date) in enumerate(zip(models, dates, strict=True)):
        lengths = model["lengths"]
        x = [lr["tokens"] for lr in lengths]
        top, bottom = axes[0][col], axes[1][col]
        for key, label, style in (
            ("restore", "restore (every check)", "o-"),
            ("restore_floor", "restore floor (mmap + set_data)", "o:"),
            ("save", "save (write + fsync + rename)", "s-"),
            ("resume", "resume to the first token", "^-"),
        ):
            top.plot(x, [lr[key] for lr in lengths], style, label=label)
        top.set_title(f"{model['label']} ({date})", fontsize=10)
        top.set_ylabel("seconds")
        per_token = _kv_bytes_per_new_token(lengths)
        bottom.plot(x, [lr["file_bytes"] / 1e6 for lr in lengths], "s-", label="autosave per turn: the whole file")
        bottom.plot(x, [per_token * NEW_TOKENS / 1e6] * len(x), "d:", label=f"KV of {NEW_TOKENS} new tokens")
        bottom.set_ylabel("MB written per autosaved turn")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(x)
            ax.set_xticklabels([f"{t:,}" for t in x])
            ax.set_xlabel("context length (tokens)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_size_plot(path: Path, result: dict[str, Any]) -> None:
    """One column per model of a :mod:`benchmarks.real_sizes` run: times (top), bytes per autosaved turn (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 8), squeeze=False)
    for col, model in enumerate(models):
        lengths = model["lengths"]
        x = [lr["tokens"] for lr in lengths]
        top, bottom = axes[0][col], axes[1][col]
        for key, label, style in (
            ("restore", "restore (every check, overlapped)", "o-"),
            ("restore_checked_first", "restore, every byte checked first", "o--"),
            ("restore_floor", "restore floor (mmap + set_data)", "o:"),
            ("resume", "resume to the first token", "^-"),
            ("live", "live conversation's first token", "^:"),
            ("save", "whole save (write + fsync + rename)", "s-"),
        ):
            top.plot(x, [lr[key] for lr in lengths], style, label=label)
        top.set_title(f"{model['label']} ({result['date']})", fontsize=10)
        top.set_ylabel("seconds")
        bottom.plot(x, [lr["record_bytes"] / 1e6 for lr in lengths], "s-", label="autosave per turn: a record")
        bottom.plot(
            x, [lr["file_bytes"] / 1e6 for lr in lengths], "d:", label="the whole file (written before records)"
        )
        bottom.set_ylabel("MB written per autosaved turn")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(x)
            ax.set_xticklabels([f"{t:,}" for t in x])
            ax.set_xlabel("context length (tokens)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _kv_bytes_per_new_token(lengths: list[dict[str, Any]]) -> float:
    """The state's growth per token between the two longest histories (a sliding-window model's state
    grows slower than its average size per token); the average where only one length was measured."""
    if len(lengths) < 2:
        return float(lengths[0]["state_bytes"] / lengths[0]["tokens"])
    a, b = lengths[-2], lengths[-1]
    return float((b["state_bytes"] - a["state_bytes"]) / (b["tokens"] - a["tokens"]))


def main(argv: list[str]) -> int:
    out, sources = Path(argv[0]), [Path(a) for a in argv[1:]]
    if len(sources) == 1 and "machine" not in (single := json.loads(sources[0].read_text())):
        write_size_plot(out, single)
        print(f"wrote {out}")
        return 0
    models: list[dict[str, Any]] = []
    dates: list[str] = []
    for source in sources:
        data = json.loads(source.read_text())
        for model in data["models"]:
            models.append(model)
            dates.append(data["machine"]["date"])
    write_cost_plot(out, models, dates)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
