"""Real-browser tests: JupyterLab on localhost, driven by Playwright with Debian's chromium.

No browser is downloaded: chromium comes from apt (``scripts/test.sh`` installs it). Use::

    with LabServer(root, home=tmp_path / "home") as server, chromium_page(chromium_path()) as page:
        lab = LabPage(page, server)
        lab.open_notebook("example.ipynb")
        lab.run_cell(1)
        lab.screenshot(page.locator(".jp-Notebook"), "example.png")

``LabServer`` runs ``jupyter-lab`` itself (not the ``jupyter`` wrapper, so that the pid held is the
server's) with a random token on a free port, with private Jupyter and IPython folders, and exposes
the frontend as ``window.jupyterapp`` so that tests can run cells and read the kernel's state through
JupyterLab's own commands rather than through fragile clicks.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Screenshots and logs kept after a run (git-ignored).
ARTIFACTS = ROOT / "test-artifacts"
#: The JupyterLab extension as built in this checkout (``jlpm build`` in labextension/).
BUILT_EXTENSION = ROOT / "lmchat_jupyter" / "labextension"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 120, every: float = 0.25) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chromium_path() -> str:
    """Debian's chromium, or a skip that says how to get it."""
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; scripts/test.sh does it)")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (ProcessLookupError, OSError):
        return False
    return state != "Z"  # a zombie is gone for our purposes


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (the kernels a server started), read from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


class LabServer:
    """``jupyter-lab`` from ``venv`` (default: this interpreter's) serving ``root`` on 127.0.0.1.

    ``notebook=True`` runs Notebook 7 (``jupyter-notebook``) instead, which opens notebooks at
    ``/notebooks/PATH``.
    """

    def __init__(
        self,
        root: Path,
        *,
        home: Path | None = None,
        venv: Path | None = None,
        args: Sequence[str] = (),
        notebook: bool = False,
    ) -> None:
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tree = "notebooks" if notebook else "lab/tree"
        self._own_home = home is None
        self.home = Path(tempfile.mkdtemp(prefix="lab-home-")) if home is None else home
        self.home.mkdir(parents=True, exist_ok=True)
        bin_dir = (venv or Path(sys.prefix)) / "bin"
        # Private Jupyter and IPython folders: no user settings, kernelspecs or workspaces leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_", "PYTHON", "VIRTUAL_ENV"))}
        env.update(
            JUPYTER_CONFIG_DIR=str(self.home / "config"),
            JUPYTER_DATA_DIR=str(self.home / "data"),
            JUPYTER_RUNTIME_DIR=str(self.home / "runtime"),
            IPYTHONDIR=str(self.home / "ipython"),
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        )
        if venv is None and (BUILT_EXTENSION / "package.json").is_file():
            # This venv's server loads the extension built in the checkout ahead of the copy `pip install`
            # put in the venv (JUPYTER_PATH comes first): a rebuild is tested without installing again.
            extensions = self.home / "jupyter-path" / "labextensions"
            extensions.mkdir(parents=True, exist_ok=True)
            (extensions / "lmchat-jupyter").symlink_to(BUILT_EXTENSION, target_is_directory=True)
            env["JUPYTER_PATH"] = str(self.home / "jupyter-path")
        command = [
            str(bin_dir / ("jupyter-notebook" if notebook else "jupyter-lab")),
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            f"--ServerApp.token={self.token}",
            f"--ServerApp.root_dir={root}",
            f"--LabServerApp.workspaces_dir={self.home / 'workspaces'}",
            f"--{'JupyterNotebookApp' if notebook else 'LabApp'}.expose_app_in_browser=True",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            *args,
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        # No "get notified about Jupyter news?" toast over the notebook in screenshots.
        labconfig = self.home / "config" / "labconfig"
        labconfig.mkdir(parents=True, exist_ok=True)
        (labconfig / "page_config.json").write_text(
            json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
        )
        self.log_path = self.home / "server.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(command, cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._children: set[int] = set()
        try:
            wait_for("jupyter-lab to answer /api/status", self._up, timeout=120)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> LabServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"jupyter-lab exited with {self.proc.returncode}:\n{self.log()}")
        return self.api("status") is not None

    def api(self, path: str) -> Any:
        """GET ``/api/<path>`` as JSON; None when the server does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/api/{path}?token={self.token}", timeout=5) as r:
                return json.load(r)
        except OSError:
            return None

    def lab_url(self, path: str = "") -> str:
        return f"{self.url}/{self.tree}/{path}?token={self.token}"

    def log(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def note_children(self) -> None:
        """Remember the server's kernels now, so that stop() can make sure they are gone too."""
        if self.proc.poll() is None:
            self._children.update(_descendants(self.proc.pid))

    def kernel_pids(self) -> list[int]:
        """The processes the server runs now (its kernels); stop() makes sure these are gone too."""
        self.note_children()
        return _descendants(self.proc.pid) if self.proc.poll() is None else []

    def stop(self) -> list[int]:
        """Terminate the server by its pid (kill it if it hangs); returns the pids it left behind, now killed."""
        self.note_children()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        stray = [pid for pid in sorted(self._children) if _alive(pid)]
        for pid in stray:
            os.kill(pid, signal.SIGKILL)
        if self._own_home:
            shutil.rmtree(self.home, ignore_errors=True)
        return stray


def wait_gone(what: str, pids: Sequence[int], timeout: float = 60) -> None:
    """Wait until none of ``pids`` runs any more (a zombie counts as gone)."""
    wait_for(what, lambda: not any(_alive(pid) for pid in pids), timeout=timeout)


@contextmanager
def chromium_page(executable: str, *, width: int = 1280, height: int = 900, timeout_s: float = 120) -> Iterator[Any]:
    """A Playwright page in a headless chromium started from ``executable``; closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(timeout_s * 1000)
            yield page
        finally:
            browser.close()


# JavaScript run in the page; ``nb`` is the notebook panel in the main area.
_NB = "const nb = window.jupyterapp.shell.currentWidget;"


class LabPage:
    """A JupyterLab tab: open a notebook, run its cells through JupyterLab's commands, take screenshots."""

    def __init__(self, page: Any, server: LabServer) -> None:
        self.page = page
        self.server = server
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def open_notebook(self, path: str, timeout: float = 180) -> None:
        """Open ``path`` (relative to the server's root) and wait until its kernel is idle."""
        self.page.goto(self.server.lab_url(path))
        self.page.wait_for_function(
            "(p) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            " return !!(w && w.context && w.context.isReady && w.context.path === p); }",
            arg=path,
            timeout=timeout * 1000,
        )
        self.wait_idle(timeout)

    def kernel_status(self) -> str:
        return str(
            self.page.evaluate(
                f"() => {{ {_NB} const k = nb.sessionContext.session?.kernel; return k ? k.status : 'none'; }}"
            )
        )

    def wait_idle(self, timeout: float = 180) -> None:
        wait_for("the kernel to be idle", lambda: self.kernel_status() == "idle", timeout=timeout)

    def run_cell(self, index: int, *, wait: bool = True, timeout: float = 300) -> None:
        """Run cell ``index`` as Shift+Enter would (without moving on); with ``wait``, until it has finished."""
        self.page.evaluate(
            f"(i) => {{ {_NB} nb.content.activeCellIndex = i; nb.content.deselectAll();"
            " window.__labRun = window.jupyterapp.commands.execute('notebook:run-cell'); }",
            index,
        )
        if wait:
            self.wait_cell(index, timeout)

    def wait_cell(self, index: int, timeout: float = 300) -> None:
        """Wait until cell ``index`` has run: it has an execution count and the kernel is idle again."""
        check = (
            f"(i) => {{ {_NB} const c = nb.content.widgets[i].model;"
            " return c.executionCount !== null && c.executionState !== 'running'; }"
        )
        self.page.wait_for_function(check, arg=index, timeout=timeout * 1000)
        self.wait_idle(timeout)

    def cell(self, index: int) -> Any:
        """The cell's DOM node (a Playwright locator)."""
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(index)

    def output_text(self, index: int) -> str:
        """The text of cell ``index``'s outputs (Markdown source, plain text, streams), read from its model."""
        return str(
            self.page.evaluate(
                f"(i) => {{ {_NB} return nb.content.widgets[i].model.outputs.toJSON().map(o =>"
                " o.text || (o.data && (o.data['text/markdown'] || o.data['text/plain'])) || '')"
                ".map(t => Array.isArray(t) ? t.join('') : t).join('\\n'); }",
                index,
            )
        )

    def screenshot(self, target: Any, name: str) -> Path:
        """Save a screenshot of ``target`` (the page or a locator) in test-artifacts/ and print its path."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        target.screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path
