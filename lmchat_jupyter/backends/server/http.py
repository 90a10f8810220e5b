"""HTTP to an inference server, on httpx2 (the client huggingface-hub installs): JSON requests, server-sent
event streams, and errors a user can act on.

Proxies come from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), except for a
server on this machine (``localhost``, 127.0.0.0/8, ``::1``), which is always reached directly. No connection
is kept for a later request: a stream that is abandoned (Ctrl-C, an error in the consumer) closes its
connection, which is what tells llama-server to stop generating, and no request goes out on a connection the
server may have closed meanwhile.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx2

from ...core.errors import ServerAuthError, ServerContextTooSmallError, ServerError, ServerUnreachableError

__all__ = ["HttpEndpoint", "API_KEY_ENV_VAR", "api_key_from_env", "ended_early", "sse_data", "DIRECT"]

API_KEY_ENV_VAR = "LMCHAT_API_KEY"
# Not `--api-key KEY`: a key typed into a cell stays in the notebook and in IPython's history database.
_KEY_HELP = (
    f"set ${API_KEY_ENV_VAR} to the server's key before starting Jupyter, or run `%chat config --api-key` "
    "(it asks for the key at a password prompt and keeps it in this kernel's memory only), then run the cell again"
)
#: Addresses reached without a proxy whatever the environment says (httpx2 mounts: None is no proxy).
DIRECT: dict[str, None] = dict.fromkeys(("all://localhost", "all://*.localhost", "all://127.0.0.0/8", "all://[::1]"))
# Only these end a line of an event stream (not every character str.splitlines takes: llama-server writes
# U+2028 and U+0085 unescaped inside its JSON strings).
_EOL = re.compile(rb"\r\n|\r|\n")


def api_key_from_env() -> str | None:
    """The API key in ``$LMCHAT_API_KEY``, or None when it is unset or empty."""
    return os.environ.get(API_KEY_ENV_VAR, "").strip() or None


def ended_early(where: str) -> ServerUnreachableError:
    """The error for a stream that stopped before its last event: the server went away mid-answer."""
    return ServerUnreachableError(
        f"the stream from {where} ended before the answer did. "
        "The conversation is kept without the unfinished answer; the next cell tries again"
    )


class HttpEndpoint:
    """One server's base URL, API key and timeouts; every request method raises a ServerError subclass.

    ``connect_timeout`` bounds reaching the server; ``read_timeout`` bounds each wait for bytes, which for a
    stream includes the server reading a long prompt before its first token.
    """

    def __init__(
        self, url: str, api_key: str | None = None, *, connect_timeout: float = 10.0, read_timeout: float = 600.0
    ) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerError(f"{url!r} is not a server address; write http://HOST:PORT or https://HOST[:PORT]")
        host = parts.hostname
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ServerError(f"{url!r} has no valid port number; write http://HOST:PORT") from None
        host = f"[{host}]" if ":" in host else host
        self.url = f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"
        self.api_key = api_key if api_key is not None else api_key_from_env()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._client: httpx2.Client | None = None

    @property
    def client(self) -> httpx2.Client:
        """The HTTP client, made at the first request (an address only normalized needs none)."""
        if self._client is None:
            self._client = httpx2.Client(
                timeout=httpx2.Timeout(self.read_timeout, connect=self.connect_timeout),
                limits=httpx2.Limits(max_keepalive_connections=0),
                mounts=DIRECT,
                trust_env=True,
            )
        return self._client

    def get_json(self, path: str) -> Any:
        """GET ``path`` and decode its JSON answer."""
        return self._request_json("GET", path, None)

    def post_json(self, path: str, body: Mapping[str, Any], *, read_timeout: float | None = None) -> Any:
        """POST ``body`` as JSON to ``path`` and decode the JSON answer (``read_timeout`` for this call only)."""
        return self._request_json("POST", path, body, read_timeout)

    def stream_events(self, path: str, body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """POST ``body`` and yield each server-sent event's JSON ``data`` until the stream ends (or ``[DONE]``).

        An event that carries an ``error`` object (a failure after the stream began) raises it as a ServerError;
        a connection that breaks before the end raises ServerUnreachableError.
        """
        response = self._open("POST", path, body)
        try:
            for data in sse_data(self._body(response)):
                if data == b"[DONE]":
                    return
                event = _decode(data, self.url + path)
                if isinstance(event, dict) and isinstance(event.get("error"), dict):
                    raise _error_from(event["error"].get("code") or 500, event, self.url + path, bool(self.api_key))
                if isinstance(event, dict):
                    yield event
        finally:
            response.close()

    def _body(self, response: httpx2.Response) -> Iterator[bytes]:
        """The response's bytes as they come; a broken connection is ServerUnreachableError."""
        try:
            yield from response.iter_bytes()
        except (httpx2.HTTPError, OSError) as exc:
            raise self._broken(exc) from None

    def _request_json(
        self, method: str, path: str, body: Mapping[str, Any] | None, read_timeout: float | None = None
    ) -> Any:
        response = self._open(method, path, body, read_timeout)
        try:
            data = b"".join(self._body(response))
        finally:
            response.close()
        return _decode(data, self.url + path)

    def _open(
        self, method: str, path: str, body: Mapping[str, Any] | None, read_timeout: float | None = None
    ) -> httpx2.Response:
        headers = {"Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        content = None
        if body is not None:
            content = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        timeout = httpx2.Timeout(read_timeout or self.read_timeout, connect=self.connect_timeout)
        try:
            request = self.client.build_request(
                method, self.url + path, content=content, headers=headers, timeout=timeout
            )
            response = self.client.send(request, stream=True)
        except (httpx2.HTTPError, OSError) as exc:
            tls = _cause(exc, ssl.SSLError)
            if tls is not None:
                raise ServerUnreachableError(
                    f"TLS to {self.url} failed: {getattr(tls, 'reason', None) or tls}. Check the https address"
                ) from None
            raise ServerUnreachableError(
                f"cannot reach the server at {self.url} ({_reason(exc)}). Start it or check the address; "
                "the conversation is kept and the next cell tries again"
            ) from None
        if response.status_code >= 400:
            try:
                text = response.read()
            except (httpx2.HTTPError, OSError):
                text = b""
            finally:
                response.close()
            raise _error_from(response.status_code, _decode_lenient(text), self.url + path, bool(self.api_key))
        return response

    def _broken(self, exc: BaseException) -> ServerUnreachableError:
        return ServerUnreachableError(
            f"the server at {self.url} stopped answering ({_reason(exc)}). "
            "The conversation is kept without the unfinished answer; the next cell tries again"
        )


def sse_data(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The ``data`` of each server-sent event in a stream's bytes, as the SSE spec reads it: lines end with
    CRLF, LF or CR; an event's ``data:`` lines are joined with newlines and the event ends at a blank line;
    comments and other fields are skipped, and an event the stream ends in the middle of is dropped."""
    data: list[bytes] = []
    for line in _lines(chunks):
        if not line:
            if data:
                yield b"\n".join(data)
            data = []
            continue
        name, _, value = line.partition(b":")
        if name == b"data":
            data.append(value[1:] if value.startswith(b" ") else value)


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        text = pending + chunk
        # A CR at the end may be the first half of a CRLF: it waits for the next chunk.
        held = b"\r" if text.endswith(b"\r") else b""
        *lines, rest = _EOL.split(text[: len(text) - len(held)])
        pending = rest + held
        yield from lines
    if pending.endswith(b"\r"):
        yield pending[:-1]


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``exc`` or the first exception of type ``kind`` among those it was raised from."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _reason(exc: BaseException) -> str:
    if _cause(exc, httpx2.TimeoutException) or _cause(exc, TimeoutError):
        return "no answer in time"
    if _cause(exc, ConnectionRefusedError):
        return "connection refused: nothing listens there"
    unknown = _cause(exc, socket.gaierror)
    if isinstance(unknown, socket.gaierror):
        return f"unknown host: {unknown.strerror or unknown}"
    if _cause(exc, httpx2.ProxyError):
        return f"the proxy refused: {exc}"
    if _cause(exc, httpx2.RemoteProtocolError) or _cause(exc, ConnectionResetError):
        return "connection closed by the server"
    return f"{type(exc).__name__}: {exc}"


def _decode(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise ServerError(
            f"{where} answered something that is not JSON ({data[:80]!r}); is it an inference server?"
        ) from None


def _decode_lenient(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return data.decode("utf-8", "replace")[:300]


def _error_from(status: int, body: Any, where: str, key_sent: bool = True) -> ServerError:
    """The typed error for an HTTP error status and its body (llama-server's and OpenAI's ``{"error": {...}}``)."""
    detail = body.get("error", body) if isinstance(body, dict) else body
    message = detail.get("message") if isinstance(detail, dict) else None
    kind = detail.get("type") if isinstance(detail, dict) else None
    text = str(message if message is not None else detail or "").strip() or "no details"
    if status in (401, 403):
        said = "refused the API key" if key_sent else "asked for an API key and none was sent"
        return ServerAuthError(f"{where} {said} (HTTP {status}: {text}); {_KEY_HELP}", status)
    if kind == "exceed_context_size_error" or "context size" in text or "context length" in text:
        n_ctx = detail.get("n_ctx") if isinstance(detail, dict) else None
        size = f" ({n_ctx} tokens per conversation)" if isinstance(n_ctx, int) else ""
        return ServerContextTooSmallError(
            f"the conversation does not fit in the server's context{size}: {text}. "
            "Start a new conversation, drop turns with `%chat rewind N`, or give the server a larger context "
            "(llama-server: a larger -c, or fewer --parallel slots)",
            status,
        )
    if status == 503:
        return ServerUnreachableError(f"{where} is not ready (HTTP 503: {text}); try again in a moment", status)
    return ServerError(f"{where} answered HTTP {status}: {text}", status)
