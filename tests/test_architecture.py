"""The package's layers hold: no import cycles, and the engine imports nothing of the notebook.

The graph counts every import of a package module that runs, wherever it stands (inside functions
too), so a cycle cannot hide behind a late import. Within the engine, imports for type checking
alone (``if TYPE_CHECKING:``) count as well.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lmchat_jupyter"

#: The conversation engine: usable without IPython, ipywidgets, fcntl or any kernel code.
ENGINE = {
    "_llama_env",
    "_version",
    "atomic",
    "autosave",
    "backend",
    "chat_jinja",
    "chat_templates",
    "context",
    "conversation",
    "errors",
    "events",
    "fingerprint",
    "history",
    "interrupts",
    "kvcache",
    "llama_load",
    "llama_local",
    "llama_server_client",
    "model_specs",
    "models",
    "openai_backend",
    "openai_client",
    "rendering",
    "results",
    "safe_files",
    "server_backend",
    "server_http",
    "server_probe",
    "server_slots",
    "server_stream",
    "session",
    "session_format",
    "section_checks",
    "session_records",
    "session_save",
    "signing",
    "text_units",
    "turn",
}
NOTEBOOK_ONLY = {"IPython", "ipywidgets", "ipykernel", "comm", "fcntl"}


def imports_of(module: str, typing_only: bool = True) -> tuple[set[str], set[str]]:
    """The package modules and the outside top-level modules that ``module`` imports (with ``typing_only``:
    those imported for type checking alone too)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    inside: set[str] = set()
    outside: set[str] = set()
    for node in _walk(tree, typing_only):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.module:
                inside.add(node.module.split(".")[0])
            else:
                inside.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            outside.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            outside.update(alias.name.split(".")[0] for alias in node.names)
    return {m for m in inside if (PACKAGE / f"{m}.py").exists()}, outside


def _walk(node: ast.AST, typing_only: bool) -> Iterator[ast.AST]:
    """``ast.walk``, leaving out the bodies of ``if TYPE_CHECKING:`` unless ``typing_only``."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not typing_only and isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING"):
            for other in child.orelse:
                yield from _walk(other, typing_only)
            continue
        yield from _walk(child, typing_only)


def graph(typing_only: bool = True) -> dict[str, set[str]]:
    """Which package modules each module imports."""
    return {
        path.stem: imports_of(path.stem, typing_only)[0] for path in PACKAGE.glob("*.py") if path.stem != "__init__"
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_the_package_has_no_import_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"a"}}), "the cycle finder finds a plain cycle"
    edges = graph(typing_only=False)
    assert not cycles(edges), [" -> ".join(c) for c in cycles(edges)]
    engine = {m: imports for m, imports in graph().items() if m in ENGINE}
    assert not cycles(engine), [" -> ".join(c) for c in cycles(engine)]


def test_the_engine_imports_nothing_of_the_notebook() -> None:
    assert set(graph()) >= ENGINE, ENGINE - set(graph())
    for module in sorted(ENGINE):
        inside, outside = imports_of(module)
        assert inside <= ENGINE, f"{module} imports notebook modules {inside - ENGINE}"
        assert not outside & NOTEBOOK_ONLY, f"{module} imports {outside & NOTEBOOK_ONLY}"


def test_importing_the_package_loads_no_notebook_parts() -> None:
    probe = (
        "import sys, lmchat_jupyter\n"
        "from lmchat_jupyter import Conversation, load_model\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(NOTEBOOK_ONLY)!r}"
        " or m in ('lmchat_jupyter.kernel', 'lmchat_jupyter.store', 'lmchat_jupyter.sidecar'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_only_the_local_backend_imports_llama_cpp() -> None:
    users = {module for module in graph() if "llama_cpp" in imports_of(module)[1]}
    assert users == {"llama_local", "llama_load"}, users
