"""scripts/setup.sh: Node.js is checked before anything else, and each step says what runs.

pip is replaced by a script that prints what pip prints when its output is not a terminal, so
these tests take a second; the real install runs in every other test's setup.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SETUP = Path(__file__).resolve().parent.parent / "scripts" / "setup.sh"
BASH = shutil.which("bash") or "/bin/bash"

PIP_OUTPUT = """\
Obtaining file:///checkout
  Installing build dependencies: started
  Installing build dependencies: finished with status 'done'
  Preparing editable metadata (pyproject.toml): started
  Preparing editable metadata (pyproject.toml): finished with status 'done'
Collecting llama-cpp-python==0.3.36 (from lmchat-jupyter==0.1.0)
  Downloading llama_cpp_python-0.3.36.tar.gz (50.1 MB)
  Installing build dependencies: started
  Preparing metadata (pyproject.toml): started
Collecting xxhash>=3.4 (from lmchat-jupyter==0.1.0)
Building wheels for collected packages: llama-cpp-python, lmchat-jupyter
  Building wheel for llama-cpp-python (pyproject.toml): started
  Building wheel for llama-cpp-python (pyproject.toml): still running...
  Building wheel for llama-cpp-python (pyproject.toml): finished with status 'done'
Installing collected packages: xxhash, llama-cpp-python, lmchat-jupyter
Successfully installed llama-cpp-python-0.3.36 lmchat-jupyter-0.1.0 xxhash-3.5.0
"""


def checkout(tmp_path: Path, pip_exit: int = 0) -> Path:
    """A copy of setup.sh in a folder whose .venv has a stand-in for pip."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(SETUP, root / "scripts" / "setup.sh")
    (root / "pip-output.txt").write_text(PIP_OUTPUT)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--upgrade*) exit 0;; esac\n'
        f'cat "{root}/pip-output.txt"\n'
        f"[ {pip_exit} = 0 ] || echo 'ERROR: Failed building wheel for llama-cpp-python'\n"
        f"exit {pip_exit}\n"
    )
    python.chmod(0o755)
    return root


def run_setup(root: Path, path: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path}
    return subprocess.run(
        [BASH, str(root / "scripts" / "setup.sh")], env=env, capture_output=True, text=True, timeout=60
    )


def path_without_node(tmp_path: Path) -> str:
    """PATH with the one command setup.sh runs before its check for Node.js, and no node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    found = shutil.which("dirname")
    assert found is not None
    (bin_dir / "dirname").symlink_to(found)
    return str(bin_dir)


def test_without_node_setup_stops_first_with_one_line(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    shutil.rmtree(root / ".venv")
    done = run_setup(root, path_without_node(tmp_path))
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Node.js 18 or newer is needed" in lines[0] and "apt-get install nodejs" in lines[0]
    assert not (root / ".venv").exists()


def test_an_old_node_is_named(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    path = path_without_node(tmp_path)
    node = tmp_path / "bin" / "node"
    node.write_text('#!/bin/sh\ncase "$1" in -p) echo 16;; *) echo v16.20.2;; esac\n')
    node.chmod(0o755)
    done = run_setup(root, path)
    assert done.returncode == 1
    assert "Node.js v16.20.2 is too old" in done.stderr


def test_each_step_is_announced(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    done = run_setup(root, os.environ["PATH"])
    assert done.returncode == 0, done.stderr
    steps = [line.split("] ", 1)[1] for line in done.stdout.splitlines()]
    assert steps == [
        "updating pip",
        "installing lmchat[default-model] and its dependencies (pip's full output: .venv/setup-default-model.log)",
        "installing the build tools",
        "building lmchat's JupyterLab extension (jlpm: 1-2 minutes when labextension/ changed)",
        "resolving the dependencies (downloads what pip's cache lacks)",
        "compiling llama-cpp-python (once: 5-8 minutes on 2 cores, then pip's cache reuses it)",
        "… still building (0 min so far)",
        "installing the packages into .venv",
        "done: 3 packages installed or updated",
    ]
    assert (root / ".venv" / "setup-default-model.log").read_text() == PIP_OUTPUT


def test_a_failed_install_shows_the_end_of_pips_output(tmp_path: Path) -> None:
    root = checkout(tmp_path, pip_exit=1)
    done = run_setup(root, os.environ["PATH"])
    assert done.returncode == 1
    assert "Failed building wheel for llama-cpp-python" in done.stderr
    assert "setup: pip failed" in done.stderr and ".venv/setup-default-model.log" in done.stderr
