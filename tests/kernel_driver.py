"""Drive a real IPython kernel through jupyter_client, the way a notebook frontend does."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.manager import KernelManager


@dataclass
class CellRun:
    """What one execution printed and displayed."""

    stdout: str = ""
    stderr: str = ""
    displays: list[str] = field(default_factory=list)
    error: str | None = None
    #: The data of each comm message the kernel sent while running (to the JupyterLab extension, a widget).
    comms: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join([self.stdout, *self.displays, self.stderr])


def notebook_file(folder: Path, name: str, metadata: dict[str, Any] | None = None) -> Path:
    """An empty but valid .ipynb, as JupyterLab would create it."""
    path = folder / name
    path.write_text(
        json.dumps({"cells": [], "metadata": metadata or {}, "nbformat": 4, "nbformat_minor": 5}),
        encoding="utf-8",
    )
    return path


class KernelDriver:
    """A kernel started in the notebook's folder with JPY_SESSION_NAME set, as jupyter_server does."""

    def __init__(
        self, notebook: Path | None, cwd: Path, extra_env: dict[str, str] | None = None, ipc: Path | None = None
    ) -> None:
        """``ipc``: talk over Unix sockets named from this path instead of TCP ports (kernels started at once
        in several processes can otherwise pick the same free port)."""
        env = {k: v for k, v in os.environ.items() if k != "JPY_SESSION_NAME"}
        if notebook is not None:
            env["JPY_SESSION_NAME"] = str(notebook)
        env.update(extra_env or {})
        if ipc is None:
            self.km = KernelManager(kernel_name="python3")
        else:
            self.km = KernelManager(kernel_name="python3", transport="ipc", ip=str(ipc))
        self.km.start_kernel(cwd=str(cwd), env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    @property
    def pid(self) -> int:
        return int(self.km.provisioner.process.pid)  # type: ignore[union-attr]

    def send(self, code: str, cell_id: str | None = None) -> str:
        """Start executing ``code`` as a notebook cell (with its cell id), without waiting; the request's id."""
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        msg = self.kc.session.msg("execute_request", content, metadata={"cellId": cell_id} if cell_id else {})
        self.kc.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def run(self, code: str, cell_id: str | None = None, timeout: float = 300) -> CellRun:
        msg_id = self.send(code, cell_id)
        out = CellRun()
        displays: dict[str, str] = {}
        order: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            reply = self.kc.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
            if reply["parent_header"].get("msg_id") != msg_id:
                continue
            kind, body = reply["msg_type"], reply["content"]
            if kind == "stream":
                if body["name"] == "stdout":
                    out.stdout += body["text"]
                else:
                    out.stderr += body["text"]
            elif kind in ("display_data", "update_display_data", "execute_result"):
                data = body.get("data", {})
                text = data.get("text/markdown") or data.get("text/plain") or ""
                key = (body.get("transient") or {}).get("display_id") or f"anon-{len(order)}"
                if key not in displays:
                    order.append(key)
                displays[key] = text
            elif kind == "comm_msg":
                out.comms.append(body.get("data") or {})
            elif kind == "error":
                out.error = f"{body['ename']}: {body['evalue']}"
            elif kind == "status" and body["execution_state"] == "idle":
                break
        while True:  # skip replies to earlier requests (e.g. the kernel_info of wait_for_ready)
            reply = self.kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        out.displays = [displays[k] for k in order]
        for payload in reply["content"].get("payload", []):  # the pager (``%magic?``)
            out.displays.append(str(payload.get("data", {}).get("text/plain", "")))
        return out

    def value(self, expression: str) -> Any:
        """A JSON-able value computed in the kernel."""
        run = self.run(f"import json as _j; print(_j.dumps({expression}))")
        assert run.error is None, run.error
        return json.loads(run.stdout.strip().splitlines()[-1])

    def shutdown(self) -> None:
        """A clean shutdown (shutdown_request), as JupyterLab's 'Shut Down Kernel' does."""
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)

    def kill(self) -> None:
        """kill -9."""
        self.kc.stop_channels()
        process = self.km.provisioner.process  # type: ignore[union-attr]
        os.kill(self.pid, signal.SIGKILL)
        process.wait(timeout=30)
        self.km.cleanup_resources()

    def terminate(self, timeout: float = 30) -> None:
        """SIGTERM alone, and wait for the process to end."""
        self.kc.stop_channels()
        process = self.km.provisioner.process  # type: ignore[union-attr]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=timeout)
        self.km.cleanup_resources()
