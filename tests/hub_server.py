"""A local stand-in for the Hugging Face Hub's file endpoints, for ``hf:`` model specs.

It answers what ``hf_hub_download`` asks, the way huggingface.co does:

* ``HEAD /{owner}/{repo}/resolve/{revision}/{path}`` for a stored (LFS) file: ``302`` to a CDN URL on
  another origin (``localhost`` instead of ``127.0.0.1``) with ``X-Repo-Commit``, ``X-Linked-Etag``
  (the file's sha256) and ``X-Linked-Size``; ``GET`` on the same URL redirects the same way;
* an unknown repository: ``401`` with ``X-Error-Code: RepoNotFound`` (what an anonymous client gets);
* an unknown revision: ``404`` with ``X-Error-Code: RevisionNotFound``;
* an unknown file: ``404`` with ``X-Error-Code: EntryNotFound`` and ``X-Repo-Commit``;
* ``GET /cdn/{sha256}`` on the CDN origin: the bytes, with ``Range`` support (``206``), so interrupted
  downloads resume. ``cut_first_download_after`` closes the first transfer after that many bytes.

Every request is logged in ``requests`` as ``(method, path, range header)``.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

_CHUNK = 1 << 20


@dataclass
class HubFile:
    """One file of a repository, served from disk."""

    path: Path
    name: str = ""
    sha256: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.path.name
        if not self.sha256:
            digest = hashlib.sha256()
            with self.path.open("rb") as fh:
                while block := fh.read(_CHUNK):
                    digest.update(block)
            self.sha256 = digest.hexdigest()

    @property
    def size(self) -> int:
        return self.path.stat().st_size


@dataclass
class HubRepo:
    """A model repository: its files on the main branch, at one commit."""

    files: dict[str, HubFile]
    commit: str = ""

    def __post_init__(self) -> None:
        if not self.commit:
            names = "\n".join(f"{name} {f.sha256}" for name, f in sorted(self.files.items()))
            self.commit = hashlib.sha1(names.encode()).hexdigest()


@dataclass
class LocalHub:
    """The server: ``with LocalHub({"owner/repo": HubRepo(...)}) as hub:`` then ``HF_ENDPOINT=hub.endpoint``."""

    repos: dict[str, HubRepo]
    cut_first_download_after: int | None = None
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the hub is not running"
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn(self) -> str:
        # Another origin, as the Hub's CDN is: huggingface_hub then stops at the redirect and reads the
        # file's metadata from it, exactly as it does with huggingface.co.
        return f"http://localhost:{self.port}"

    def start(self) -> LocalHub:
        hub = self

        class Handler(_HubHandler):
            owner = hub

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def blob(self, sha256: str) -> HubFile | None:
        for repo in self.repos.values():
            for f in repo.files.values():
                if f.sha256 == sha256:
                    return f
        return None


class _HubHandler(http.server.BaseHTTPRequestHandler):
    owner: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass  # the request log is LocalHub.requests

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.owner.requests.append((self.command, path, self.headers.get("Range")))
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "cdn":
            self._send_blob(parts[1], send_body)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        else:
            self._empty(404, {"X-Error-Message": "Not Found"})

    def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
        repo = self.owner.repos.get(repo_id)
        if repo is None:
            self._empty(401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            return
        if revision not in ("main", repo.commit):
            self._empty(404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": f"Invalid rev id: {revision}"})
            return
        hub_file = repo.files.get(filename)
        if hub_file is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"}
            self._empty(404, {**headers, "X-Repo-Commit": repo.commit})
            return
        self._empty(
            302,
            {
                "Location": f"{self.owner.cdn}/cdn/{hub_file.sha256}",
                "X-Repo-Commit": repo.commit,
                "X-Linked-Etag": f'"{hub_file.sha256}"',
                "X-Linked-Size": str(hub_file.size),
                "ETag": f'W/"{hashlib.sha1(filename.encode()).hexdigest()}"',
            },
        )

    def _send_blob(self, sha256: str, send_body: bool) -> None:
        hub_file = self.owner.blob(sha256)
        if hub_file is None:
            self._empty(404, {})
            return
        size = hub_file.size
        start = 0
        status = 200
        headers = {
            "ETag": f'"{sha256}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            # The CDN names the file, which huggingface_hub's progress bar shows.
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(hub_file.name)}; filename=\"{hub_file.name}\";",
        }
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            first, _, last = range_header[len("bytes=") :].partition("-")
            start = int(first)
            end = int(last) if last else size - 1
            if start >= size:
                self._empty(416, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            size_to_send = end - start + 1
        else:
            size_to_send = size
        cut = None
        if send_body and self.owner.cut_first_download_after is not None:
            cut, self.owner.cut_first_download_after = self.owner.cut_first_download_after, None
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(size_to_send)}.items():
            self.send_header(name, value)
        self.end_headers()
        if not send_body:
            return
        sent = 0
        with hub_file.path.open("rb") as fh:
            fh.seek(start)
            while sent < size_to_send:
                block = fh.read(min(_CHUNK, size_to_send - sent))
                if not block:
                    break
                if cut is not None and sent + len(block) > cut:
                    # A connection lost mid-transfer: the client sees a body shorter than Content-Length.
                    self.wfile.write(block[: cut - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(block)
                sent += len(block)

    def _empty(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
