"""The benchmark command runs end to end (``--smoke``: one short history, one model) and writes its outputs.

Nothing here is about speed: the smoke run's numbers are meaningless on a busy CI machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROWS = (
    "Resume vs re-prefill",
    "Restore I/O, warm cache",
    "Restore I/O, cold cache",
    "Save (vs write + fsync)",
    "Autosave share of a turn",
    "Size (file vs llama_state_seq_get_size)",
    "Size, q8_0 KV + flash attention",
    "Peak RSS above the model, restore",
    "Peak RSS above the model, save",
    "Generation: Conversation.stream vs bare create_chat_completion",
    "Generation: %%chat in a kernel",
    "Re-run: Run-All of 2 %%chat cells",
)


def test_benchmark_smoke_writes_table_plot_and_numbers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, LMCHAT_BENCH_TMP=str(tmp_path))
    env.pop("LMCHAT_CACHE_DIR", None)  # the run keeps its own cache in its scratch folder
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    table = (out / "RESULTS.md").read_text()
    for row in ROWS:
        assert f"| {row}" in table, f"no row {row!r} in RESULTS.md"
    assert "| llama-cpp-python | 0.3.36 |" in table
    assert (out / "resume.png").read_bytes()[:8] == PNG_SIGNATURE

    data = json.loads((out / "results.json").read_text())
    (model,) = data["models"]
    (length,) = model["lengths"]
    assert length["tokens"] > 0
    assert 1.0 <= length["file_bytes"] / length["state_bytes"] < 1.5
    for key in ("resume", "reprefill", "restore", "restore_floor", "save", "save_floor"):
        assert length[key] > 0, key
    assert model["kernel"]["rerun"]["replayed_cells"] == 2
    # The scratch folder (sessions, raw states, kernels' notebooks) is gone.
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_autosave_benchmark_runs_and_keeps_one_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# lmchat benchmarks\n\nother figures\n")
    command = [sys.executable, "-m", "benchmarks.autosave_bench", "--model", "llama-3.2-1b-kv-twin"]
    command += ["--lengths", "400", "--turns", "2", "--gen-tokens", "8", "--reps", "1", "--write", str(results)]
    for _ in range(2):  # a second run replaces the section
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# lmchat benchmarks\n\nother figures\n")
    assert text.count("## Autosave proportional to the turn") == 1
    (run,) = json.loads((tmp_path / "autosave.json").read_text())
    assert [turn["appended"] for turn in run["turns"]] == [True, True]  # each turn's save is a record
    assert all(0.9 < turn["bytes_ratio"] < 1.2 for turn in run["turns"]), run["turns"]
    assert "base + 2 records" in run["restore"]["note"]


def test_kernel_load_test_runs_on_a_real_server_and_writes_its_section(tmp_path: Path) -> None:
    from .servers import llama_server_binary

    llama_server_binary()  # built once per machine; skips where nothing can compile it
    results = tmp_path / "RESULTS.md"
    results.write_text("# lmchat benchmarks\n\nother figures\n")
    command = [sys.executable, "-m", "benchmarks.kernel_load", "--kernels", "2", "--slots", "2", "--rounds", "1"]
    command += ["--filler", "2", "--max-tokens", "4", "--write", str(results), "--reports", str(tmp_path / "r.json")]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# lmchat benchmarks\n\nother figures\n")
    assert "Conversations lost: 0. Problems" in text and "): none." in text
    reports = json.loads((tmp_path / "r.json").read_text())
    # 2 notebooks x (1 planting answer + 2 after the restart) x (slot files kept, removed)
    assert len(reports) == 12 and all(r["error"] is None for r in reports)
    assert [r["restored_whole"] for r in reports if r["kind"] == "resumed"] == [True] * 4
    assert sorted({r["word"] for r in reports}) == ["MANGO", "PAPAYA"]


def test_real_sizes_benchmark_writes_its_section_numbers_and_plot(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# lmchat benchmarks\n\nother figures\n")
    command = [sys.executable, "-m", "benchmarks.real_sizes", "--models", "llama-3.2-1b-kv-twin", "--lengths", "400"]
    command += ["--reps", "1", "--write", "--out", str(tmp_path)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# lmchat benchmarks\n\nother figures\n")
    assert text.count("## Restore, resume and autosave at real sizes") == 1
    (model,) = json.loads((tmp_path / "real_sizes.json").read_text())["models"]
    (row,) = model["lengths"]
    assert 0 < row["record_bytes"] < row["file_bytes"] / 4  # the resumed turn's autosave is a record
    assert row["restore"] > 0 and row["resume"] > row["restore"] and row["live"] > 0
    assert (tmp_path / "cost.png").read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md", "cost.png", "real_sizes.json"]
