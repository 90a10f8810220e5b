"""Measures through a real Jupyter kernel: ``%%chat`` generation speed, and a notebook's Run-All re-run.

Both start kernels with jupyter_client (``python3``, this interpreter) in a scratch folder, with
``JPY_SESSION_NAME`` naming the notebook as jupyter_server does, and ``%load_ext lmchat``.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .engine_bench import GEN_PROMPT, Config

__all__ = ["kernel_measures", "bare_in_kernel", "available"]

ROOT = Path(__file__).resolve().parent.parent
CHAT_PROMPTS = [
    "I am planning the database for a small online shop. Which tables do I need?",
    "How should I store the prices so that rounding never goes wrong?",
    "Customers can have several addresses. How do I model that?",
    "What indexes would you add for the order history page?",
    "How do I keep the stock count right when two orders arrive at once?",
    "Should order lines copy the product name and price, or point to the product?",
    "How would you plan backups for this database?",
    "What is a sensible way to run schema migrations without downtime?",
    "Which queries should I watch as the shop grows?",
    "Summarise the design we discussed as a short checklist.",
]


def available() -> bool:
    """Whether this lmchat has the ``%%chat`` magic."""
    return any((ROOT / "lmchat_jupyter" / path).is_file() for path in ("ui/magics.py", "magics.py"))


def _env(notebook: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JPY_SESSION_NAME"}
    env["JPY_SESSION_NAME"] = str(notebook)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


class _Kernel:
    """A kernel started the way jupyter_server starts one for ``notebook``."""

    def __init__(self, notebook: Path) -> None:
        from jupyter_client.manager import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(notebook.parent), env=_env(notebook))
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    def run(self, code: str, timeout: float = 600) -> dict[str, Any]:
        """Execute ``code``; its stdout, the last text of each display, and any error."""
        out: dict[str, Any] = {"stdout": "", "displays": {}, "error": None}

        def hook(msg: dict[str, Any]) -> None:
            kind, body = msg["msg_type"], msg["content"]
            if kind == "stream" and body.get("name") == "stdout":
                out["stdout"] += body["text"]
            elif kind in ("display_data", "update_display_data", "execute_result"):
                data = body.get("data", {})
                key = (body.get("transient") or {}).get("display_id") or f"anon-{len(out['displays'])}"
                out["displays"][key] = data.get("text/markdown") or data.get("text/plain") or ""
            elif kind == "error":
                out["error"] = f"{body['ename']}: {body['evalue']}"

        self.kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        if out["error"]:
            raise RuntimeError(f"the kernel failed on {code.splitlines()[0]!r}: {out['error']}")
        return out

    def value(self, expression: str) -> Any:
        run = self.run(f"import json as _json\nprint(_json.dumps({expression}))")
        return json.loads(run["stdout"].strip().splitlines()[-1])

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def bare_in_kernel(max_tokens: int) -> dict[str, Any]:
    """Run in the kernel: bare ``create_chat_completion`` on the %%chat conversation's model and messages.

    The messages are the conversation's (after ``%chat clear``) plus the benchmark question.
    """
    from lmchat_jupyter import current

    from .bare import bare_chat_completion

    conv = current()
    messages = [*conv.history.as_chat_messages(), {"role": "user", "content": GEN_PROMPT}]
    return bare_chat_completion(conv.model, messages, max_tokens)


def _generation(cfg: Config, folder: Path, log: Any) -> dict[str, Any]:
    """Decode tokens/s shown by ``%%chat`` (its stats line) vs bare create_chat_completion, same kernel."""
    folder.mkdir(parents=True, exist_ok=True)
    kernel = _Kernel(folder / "generation.ipynb")
    chat_runs, bare_runs = [], []
    try:
        kernel.run("%load_ext lmchat")
        cell = f"%%chat --temperature 0 --max-tokens {cfg.gen_tokens}\n{GEN_PROMPT}"
        flush = "import lmchat_jupyter.notebook.kernel as _k\n_k.chats().store.flush()"
        for _ in range(max(1, cfg.gen_reps)):
            kernel.run("%chat clear")
            kernel.run(flush)
            bare_runs.append(
                kernel.value(f"__import__('benchmarks.kernel_bench').kernel_bench.bare_in_kernel({cfg.gen_tokens})")
            )
            shown = kernel.run(cell)["displays"]
            last = kernel.value(
                "(lambda r: {'text': r.text, 'tokens': r.generated_tokens, 'tps': r.tokens_per_second})"
                "(__import__('lmchat_jupyter').current().last_result)"
            )
            stats = re.search(r"([\d.]+) tok/s", " ".join(shown.values()))
            last["shown_tps"] = float(stats.group(1)) if stats else None
            chat_runs.append(last)
            kernel.run(flush)
    finally:
        kernel.shutdown()
    n = chat_runs[0]["tokens"]
    same = all(b["text"].strip() == c["text"].strip() for b, c in zip(bare_runs, chat_runs, strict=True))

    def bare_rate(run: dict[str, Any]) -> float:
        count = n if same else run["tokens"]
        return (count - 1) / run["decode_seconds"] if run["decode_seconds"] > 0 else 0.0

    chat_tps = statistics.median(r["tps"] for r in chat_runs)
    bare_tps = statistics.median(bare_rate(r) for r in bare_runs)
    out = {
        "tokens": n,
        "same_text": same,
        "chat_tps": chat_tps,
        "bare_tps": bare_tps,
        "ratio": chat_tps / bare_tps if bare_tps else 0.0,
        "stats_line_tps": [r["shown_tps"] for r in chat_runs],
    }
    log(f"  %%chat in a kernel: {chat_tps:.1f} tok/s vs bare {bare_tps:.1f} tok/s")
    return out


def _notebook(folder: Path, turns: int, max_tokens: int) -> Path:
    import nbformat

    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%load_ext lmchat")] + [
        nbformat.v4.new_code_cell(f"%%chat --temperature 0 --max-tokens {max_tokens}\n{prompt}")
        for prompt in (CHAT_PROMPTS * 2)[:turns]
    ]
    path = folder / "chat.ipynb"
    nbformat.write(nb, path)
    return path


def _run_all(path: Path) -> tuple[float, float, Any]:
    """Execute every cell in a fresh kernel; (cells' span from first start to last reply, wall time, notebook)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute(env=_env(path))
    wall = time.perf_counter() - start
    begin = [c.metadata.execution["iopub.status.busy"] for c in nb.cells]
    end = [c.metadata.execution["shell.execute_reply"] for c in nb.cells]
    span = (_when(max(end)) - _when(min(begin))).total_seconds()
    return span, wall, nb


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _rerun(turns: int, max_tokens: int, folder: Path, log: Any) -> dict[str, Any]:
    """Run-All that generates every answer, then Run-All in a fresh kernel, which replays them."""
    path = _notebook(folder, turns, max_tokens)
    generate, generate_wall, _ = _run_all(path)
    replay, replay_wall, nb = _run_all(path)
    outputs = [" ".join(str(o.get("data", {}).get("text/plain", "")) for o in c.outputs) for c in nb.cells[1:]]
    replayed = sum("not generated again" in text for text in outputs)
    restored = " ".join(o.get("text", "") for o in nb.cells[0].outputs)
    out = {
        "turns": turns,
        "max_tokens": max_tokens,
        "generate_seconds": generate,
        "replay_seconds": replay,
        "generate_wall_seconds": generate_wall,
        "replay_wall_seconds": replay_wall,
        "replayed_cells": replayed,
        "restore_note": restored.strip(),
    }
    log(
        f"  Run-All of {turns} %%chat cells: generating {generate:.1f} s, after a restart {replay:.2f} s "
        f"({replayed} of {turns} replayed)"
    )
    return out


def kernel_measures(cfg: Config, smoke: bool, log: Any = print) -> dict[str, Any]:
    """Both kernel measures on the default model, or ``{}`` where this lmchat has no magic yet."""
    if not available():
        log("  (no %%chat magic in this lmchat: kernel measures skipped)")
        return {}
    folder = cfg.workdir / "kernel"
    return {
        "generation": _generation(cfg, folder / "generation", log),
        "rerun": _rerun(2 if smoke else 10, 8 if smoke else 256, folder / "rerun", log),
    }
