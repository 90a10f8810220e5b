"""The package's layers hold: the import contracts pass (and fail on a forbidden import), no import cycles,
small modules, and importing the package loads no notebook parts and no llama.cpp.

The cycle graph counts every import of a package module that runs, wherever it stands (inside functions
too), and imports for type checking alone (``if TYPE_CHECKING:``) as well: a cycle cannot hide behind a
late import or a type annotation.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lmchat_jupyter"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
#: Bottom to top: each layer imports only the layers below it.
LAYERS = ["core", "backends", "engine", "storage", "notebook", "ui"]
NOTEBOOK_ONLY = {"IPython", "ipywidgets", "ipykernel", "comm", "fcntl"}
MAX_LINES = 350


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path) -> set[str]:
    """The package modules (or subpackages) that the file at ``path`` imports, anywhere in it."""
    name = module_name(path)
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
            found.update(_existing(c) for c in candidates)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmchat_jupyter"):
            found.add(_existing(node.module))
    return found - {name}


def _existing(dotted: str) -> str:
    """``dotted`` cut back to a module or package that exists (``pkg.mod.Name`` → ``pkg.mod``)."""
    parts = dotted.split(".")
    while parts:
        path = ROOT.joinpath(*parts)
        if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
            return ".".join(parts)
        parts.pop()
    return dotted


def graph() -> dict[str, set[str]]:
    """Which package modules each module imports (a package's ``__init__`` as the package itself)."""
    return {module_name(path): package_imports(path) for path in PACKAGE.rglob("*.py")}


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


def test_no_import_cycles_counting_type_checking_imports() -> None:
    assert cycles({"a": {"b"}, "b": {"a"}}), "the cycle finder finds a plain cycle"
    # A package imports what its modules need; its modules importing the package's names back is no cycle.
    edges = {module: {t for t in targets if not module.startswith(t + ".")} for module, targets in graph().items()}
    assert not cycles(edges), [" -> ".join(c) for c in cycles(edges)]


def test_every_module_is_small_and_every_subpackage_says_what_lives_there() -> None:
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "TODO" not in doc, f"{module_name(init)} says nothing of what lives there"
    assert not sorted(p.name for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "_version")), (
        "every module lives in a layer's folder"
    )


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package and its contracts, to break on purpose."""
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(PACKAGE, root / "lmchat_jupyter", ignore=shutil.ignore_patterns("labextension", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_import_contracts_hold(package_copy: Path) -> None:
    run = _lint_imports(package_copy)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout, run.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("core/errors.py", "from ..engine import models", "Layers"),
        ("backends/specs.py", "from ..storage import sidecar", "Layers"),
        ("engine/turn.py", "from ..notebook import kernel", "Layers"),
        ("storage/metadata.py", "from ..ui import output", "Layers"),
        ("notebook/replay.py", "import IPython", "IPython"),
        ("engine/context.py", "import llama_cpp", "llama_cpp"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(package_copy: Path, module: str, line: str, broken: str) -> None:
    path = package_copy / "lmchat_jupyter" / module
    original = path.read_text(encoding="utf-8")
    try:
        path.write_text(original + f"\n{line}  # noqa\n", encoding="utf-8")
        run = _lint_imports(package_copy)
    finally:
        path.write_text(original, encoding="utf-8")
    assert run.returncode != 0, run.stdout
    assert "BROKEN" in run.stdout and broken in run.stdout, run.stdout


def test_importing_the_package_loads_no_notebook_parts_and_no_llama_cpp() -> None:
    probe = (
        "import sys, lmchat_jupyter\n"
        "from lmchat_jupyter import Conversation, load_model\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(NOTEBOOK_ONLY | {'llama_cpp'})!r}"
        " or m.startswith(('lmchat_jupyter.notebook', 'lmchat_jupyter.storage', 'lmchat_jupyter.ui')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
