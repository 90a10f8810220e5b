"""RESULTS.md and the resume plot, from the measured numbers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine_bench import LengthResult, ModelResult
from .twins import TWINS, twin_table

__all__ = ["Row", "rows_for", "write_markdown", "write_plot", "PLOT_NAME"]

PLOT_NAME = "resume.png"


@dataclass
class Row:
    """One line of the results table."""

    measure: str
    model: str
    history: str
    lmchat: str
    baseline: str
    ratio: float | None
    ratio_text: str
    target: str
    met: bool | None  # None: no target at this point
    why: str = ""  # where the time goes, for rows whose target is missed

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "**no**", None: "—"}[self.met]


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _tokens(n: int) -> str:
    return f"{n:,}"


def _near(lr: LengthResult, nominal: int) -> bool:
    return abs(lr.tokens - nominal) <= max(64, nominal // 20)


def rows_for(res: ModelResult, targets_at: dict[str, int]) -> list[Row]:
    """The table rows of one model; ``targets_at`` maps "2k"/"8k" to the token counts they mean."""
    rows: list[Row] = []
    m = res.label

    def add(
        measure: str,
        history: str,
        lmchat: str,
        baseline: str,
        ratio: float | None,
        fmt: str,
        target: str = "",
        check: Callable[[float], bool] | None = None,
        why: str = "",
    ) -> None:
        met = None if (check is None or ratio is None) else check(ratio)
        text = "—" if ratio is None else fmt.format(ratio)
        rows.append(Row(measure, m, history, lmchat, baseline, ratio, text, target or "—", met, why))

    for lr in res.lengths:
        h = _tokens(lr.tokens)
        target, check = "", None
        if _near(lr, targets_at["2k"]):
            target, check = "≥ 50×", lambda r: r >= 50
        elif _near(lr, targets_at["8k"]):
            target, check = "≥ 200×", lambda r: r >= 200
        add(
            "Resume vs re-prefill",
            h,
            _ms(lr.resume),
            _ms(lr.reprefill),
            lr.reprefill / lr.resume,
            "{:.0f}× faster",
            target,
            check,
            f"{_ms(lr.resume_next)} of the {_ms(lr.resume)} is evaluating the next message ({lr.next_tokens} tokens) "
            f"against {lr.tokens:,} tokens of context and decoding its first token, which a re-prefill does as well; "
            f"the restore part ({_ms(lr.resume_restore)}) is {lr.reprefill / lr.resume_restore:.0f}× faster "
            "than the re-prefill, while the next message alone caps the ratio at "
            f"{lr.reprefill / lr.resume_next:.0f}× (evaluating k new tokens at context n costs at least k/n "
            "of a re-prefill of n tokens, up to 2k/n where attention dominates)",
        )
        if lr.reprefill_process:
            add(
                "Resume vs re-prefill in a bare llama-cpp-python process (no lmchat)",
                h,
                _ms(lr.resume),
                f"{_ms(lr.reprefill_process)} ({lr.reprefill_process_tokens:,} prompt tokens)",
                lr.reprefill_process / lr.resume,
                "{:.0f}× faster",
            )
        add(
            "Resume breakdown: restore part vs re-prefill",
            h,
            f"{_ms(lr.resume_restore)} + {_ms(lr.resume_next)} for the next message ({lr.next_tokens} tokens)",
            _ms(lr.reprefill),
            lr.reprefill / lr.resume_restore,
            "{:.0f}× faster",
        )
        add(
            "Resume vs cold start (no history)",
            h,
            _ms(lr.resume),
            _ms(res.cold_start),
            lr.resume / res.cold_start,
            "{:.2f}×",
        )
        add(
            "Resume, cold page cache",
            h,
            _ms(lr.resume_cold),
            _ms(lr.reprefill),
            lr.reprefill / lr.resume_cold,
            "{:.0f}× faster",
        )
    for lr in res.lengths:
        h = _tokens(lr.tokens)
        add(
            "Restore I/O, warm cache (vs mmap + set_data)",
            h,
            _ms(lr.restore),
            _ms(lr.restore_floor),
            lr.restore_ratio,
            "{:.2f}×",
            "≤ 1.5×",
            lambda r: r <= 1.5,
            f"beyond the floor's work, a restore checks the file's xxh3 checksums, the KV state's 4 MiB blocks on every core "
            f"({_ms(lr.checksum)} with the header), "
            "parses the history and checks the tokens, the fingerprint and the positions the cache holds",
        )
        add(
            "Restore I/O, cold cache (file evicted)",
            h,
            _ms(lr.restore_cold),
            _ms(lr.restore_floor_cold),
            lr.restore_cold / lr.restore_floor_cold,
            "{:.2f}×",
        )
    for lr in res.lengths:
        h = _tokens(lr.tokens)
        add(
            "Save (vs write + fsync)",
            h,
            _ms(lr.save),
            _ms(lr.save_floor),
            lr.save_ratio,
            "{:.2f}×",
            "≤ 1.5×",
            lambda r: r <= 1.5,
            f"beyond writing the bytes, a save copies the KV state out of llama.cpp ({_ms(lr.copy_out)}), "
            f"checksums it ({_ms(lr.checksum)}), and renames the file and fsyncs its folder",
        )
    if res.autosave:
        a = res.autosave
        add(
            "Autosave share of a turn",
            _tokens(a["tokens"]),
            _ms(a["save_seconds"]),
            f"{_ms(a['turn_seconds'])} turn ({a['generated_tokens']} tokens)",
            a["share"] * 100,
            "{:.1f}%",
            "≤ 5%",
            lambda r: r <= 5,
            "the turn does not wait for its autosave: the saver's thread copies the KV state out and writes "
            "and fsyncs the file once the turn is over",
        )
        if "written_seconds" in a:
            add(
                "Autosave: the file written in the background, after the turn",
                _tokens(a["tokens"]),
                _ms(a["written_seconds"]),
                f"{_ms(a['turn_seconds'])} turn",
                a["written_seconds"] / a["turn_seconds"] * 100,
                "{:.1f}%",
            )
    for lr in res.lengths:
        add(
            "Size (file vs llama_state_seq_get_size)",
            _tokens(lr.tokens),
            _mb(lr.file_bytes),
            _mb(lr.state_bytes),
            lr.file_bytes / lr.state_bytes,
            "{:.4f}×",
            "≤ 1.02×",
            lambda r: r <= 1.02,
        )
    if res.small:
        s = res.small
        add(
            "Size, q8_0 KV + flash attention (optional)",
            _tokens(s["tokens"]),
            _mb(s["file_bytes"]),
            f"{_mb(s['f16_file_bytes'])} (f16)",
            s["size_ratio"],
            "{:.2f}×",
        )
    for row in res.memory:
        h = _tokens(row["tokens"])
        state = _mb(row["state_bytes"]) + " state"
        add(
            "Peak RSS above the model, restore",
            h,
            _mb(row["restore_extra_bytes"]),
            state,
            row["restore_ratio"],
            "{:.2f}×",
            "≤ 1.1×",
            lambda r: r <= 1.1,
        )
        add(
            "Peak RSS above the model, save",
            h,
            _mb(row["save_extra_bytes"]),
            state,
            row["save_ratio"],
            "{:.2f}×",
            "≤ 1.1×",
            lambda r: r <= 1.1,
        )
    g = res.generation
    if g:
        add(
            "Generation: Conversation.stream vs bare create_chat_completion",
            f"{g['tokens']} generated",
            f"{g['conversation_tps']:.1f} tok/s",
            f"{g['bare_tps']:.1f} tok/s",
            g["ratio"],
            "{:.3f}×",
            "≥ 0.95×",
            lambda r: r >= 0.95,
        )
    k = res.kernel
    if k.get("generation"):
        kg = k["generation"]
        add(
            "Generation: %%chat in a kernel vs bare create_chat_completion",
            f"{kg['tokens']} generated",
            f"{kg['chat_tps']:.1f} tok/s",
            f"{kg['bare_tps']:.1f} tok/s",
            kg["ratio"],
            "{:.3f}×",
            "≥ 0.95×",
            lambda r: r >= 0.95,
        )
    if k.get("rerun"):
        kr = k["rerun"]
        add(
            f"Re-run: Run-All of {kr['turns']} %%chat cells after a restart vs generating",
            f"{kr['turns']} turns",
            _ms(kr["replay_seconds"]),
            _ms(kr["generate_seconds"]),
            kr["generate_seconds"] / kr["replay_seconds"],
            "{:.0f}× faster",
            "≥ 50×",
            lambda r: r >= 50,
        )
    return rows


def _table(rows: list[Row]) -> list[str]:
    out = [
        "| Measure | Model | History (tokens) | lmchat | Baseline | Ratio | Target | Met |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.measure} | {r.model} | {r.history} | {r.lmchat} | {r.baseline} | {r.ratio_text} | {r.target} | {r.verdict} |"
        )
    return out


def write_markdown(
    path: Path,
    results: list[ModelResult],
    rows: list[Row],
    machine: dict[str, Any],
    notes: list[str],
    command: str,
) -> None:
    """Write RESULTS.md: the machine, the summary of targets, every measured row, and the notes."""
    targeted = [r for r in rows if r.met is not None]
    missed = [r for r in targeted if r.met is False]
    lines = [
        "# lmchat benchmarks",
        "",
        f"Command: `{command}` — {machine['date']}, {machine['wall_seconds']:.0f} s in all.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    for key in ("cpu", "cores", "memory", "gpu", "os", "python", "llama_cpp_python", "lmchat", "commit", "load"):
        lines.append(f"| {key.replace('_', '-')} | {machine[key]} |")
    lines += [
        "",
        "## Models",
        "",
        "| Model | File | Load | n_ctx | Sliding window | Zeroing the KV buffer (after a loaded state) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for res in results:
        lines.append(
            f"| {res.label} ({res.name}) | `{Path(res.path).name}` | {_ms(res.load_seconds)} | {res.n_ctx:,} "
            f"| {res.n_swa or '—'} | {_ms(res.zero_seconds)} |"
        )
    twins = [TWINS[Path(res.path).name.rsplit("-", 1)[0]] for res in results if res.name.startswith("KV twin of")]
    if twins:
        lines += ["", "KV-shape twins (`benchmarks/twins.py`): the real model's KV cache shape, tiny weights.", ""]
        lines += twin_table(twins)
    lines += [
        "",
        "## Summary",
        "",
        f"{len(targeted) - len(missed)} of {len(targeted)} targeted measurements meet their target."
        + (
            " Missed: " + "; ".join(f"{r.measure} ({r.model}, {r.history}): {r.ratio_text}" for r in missed) + "."
            if missed
            else ""
        ),
        "",
        f"![Resume time vs history length]({PLOT_NAME})",
        "",
        *(
            ["## Missed targets: where the time goes", ""]
            + [
                f"- **{r.measure}** ({r.model}, {r.history}): {r.ratio_text}" + (f" — {r.why}." if r.why else ".")
                for r in missed
            ]
            + [""]
            if missed
            else []
        ),
        "## All measurements",
        "",
        *_table(rows),
        "",
        "## How it is measured",
        "",
        *[f"- {n}" for n in notes],
        "",
    ]
    # The sections between markers come from their own commands (benchmarks.server_bench, server_load,
    # autosave_bench): carried over as they are.
    previous = path.read_text() if path.exists() else ""
    begin, end = previous.find("<!-- begin "), previous.rfind("<!-- end ")
    if 0 <= begin < end:
        lines += [previous[begin : previous.index("-->", end) + 3], ""]
    path.write_text("\n".join(lines))


def write_block(path: Path, name: str, section: str) -> None:
    """Put ``section`` into RESULTS.md between ``<!-- begin NAME -->`` markers, in place of the last one.

    benchmarks.run rewrites the rest of the file and carries these blocks over.
    """
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{section}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def write_plot(path: Path, results: list[ModelResult]) -> None:
    """Resume time vs history length for each strategy, log scale, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        x = [lr.tokens for lr in res.lengths]
        series = [
            ("re-prefill (from_history)", [lr.reprefill for lr in res.lengths], "tab:red", "s--"),
            (
                "re-prefill, bare llama-cpp-python process",
                [lr.reprefill_process or float("nan") for lr in res.lengths],
                "tab:orange",
                "d--",
            ),
            ("lmchat resume, cold page cache", [lr.resume_cold for lr in res.lengths], "tab:cyan", "v--"),
            ("lmchat resume", [lr.resume for lr in res.lengths], "tab:blue", "o-"),
            (
                "lmchat restore alone (its part of the resume)",
                [lr.resume_restore for lr in res.lengths],
                "tab:green",
                "^:",
            ),
            ("cold start, no history", [res.cold_start] * len(x), "tab:gray", "x:"),
        ]
        for label, y, color, style in series:
            ax.plot(x, y, style, color=color, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{t:,}" for t in x])
        ax.set_xlabel("history length (tokens)")
        ax.set_ylabel("restore start → first token of the next answer (s)")
        ax.set_title(f"{res.label}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
