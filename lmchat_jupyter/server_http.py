"""HTTP to an inference server: JSON requests, server-sent event streams, and errors a user can act on.

Standard library only (http.client), so a kernel that talks to a shared server needs nothing beyond lmchat's
own dependencies. One connection per request: a stream that is abandoned (Ctrl-C, an error in the consumer)
closes its connection, which is what tells llama-server to stop generating.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from .errors import ServerAuthError, ServerContextTooSmallError, ServerError, ServerUnreachableError

__all__ = ["HttpEndpoint", "API_KEY_ENV_VAR", "api_key_from_env", "ended_early"]

API_KEY_ENV_VAR = "LMCHAT_API_KEY"
_KEY_HELP = f"set ${API_KEY_ENV_VAR} to the server's key (or `%chat config --api-key`) and run the cell again"


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
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        try:
            self._port = parts.port or (443 if self._https else 80)
        except ValueError:
            raise ServerError(f"{url!r} has no valid port number; write http://HOST:PORT") from None
        self._base_path = parts.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        self.url = f"{parts.scheme}://{host}:{self._port}{self._base_path}"
        self.api_key = api_key if api_key is not None else api_key_from_env()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

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
        connection, response = self._open("POST", path, body)
        try:
            while True:
                try:
                    line = response.readline()
                except (OSError, http.client.HTTPException) as exc:
                    raise self._broken(exc) from None
                if not line:
                    return
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments (": ping"), event names
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    return
                event = _decode(payload, self.url + path)
                if isinstance(event, dict) and isinstance(event.get("error"), dict):
                    raise _error_from(event["error"].get("code") or 500, event, self.url + path)
                if isinstance(event, dict):
                    yield event
        finally:
            connection.close()

    def _request_json(
        self, method: str, path: str, body: Mapping[str, Any] | None, read_timeout: float | None = None
    ) -> Any:
        connection, response = self._open(method, path, body, read_timeout)
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._broken(exc) from None
        finally:
            connection.close()
        return _decode(data, self.url + path)

    def _open(
        self, method: str, path: str, body: Mapping[str, Any] | None, read_timeout: float | None = None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.connect_timeout, context=ssl.create_default_context()
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.connect_timeout)
        headers = {"Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            connection.connect()
            if connection.sock is not None:
                connection.sock.settimeout(read_timeout or self.read_timeout)
            connection.request(method, self._base_path + path, body=data, headers=headers)
            response = connection.getresponse()
        except ssl.SSLError as exc:
            connection.close()
            raise ServerUnreachableError(
                f"TLS to {self.url} failed: {exc.reason or exc}. Check the https address"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise ServerUnreachableError(
                f"cannot reach the server at {self.url} ({_reason(exc)}). Start it or check the address; "
                "the conversation is kept and the next cell tries again"
            ) from None
        if response.status >= 400:
            try:
                text = response.read()
            except (OSError, http.client.HTTPException):
                text = b""
            connection.close()
            raise _error_from(response.status, _decode_lenient(text), self.url + path)
        return connection, response

    def _broken(self, exc: BaseException) -> ServerUnreachableError:
        return ServerUnreachableError(
            f"the server at {self.url} stopped answering ({_reason(exc)}). "
            "The conversation is kept without the unfinished answer; the next cell tries again"
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens there"
    if isinstance(exc, socket.gaierror):
        return f"unknown host: {exc.strerror or exc}"
    if isinstance(exc, http.client.IncompleteRead | http.client.RemoteDisconnected | ConnectionResetError):
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


def _error_from(status: int, body: Any, where: str) -> ServerError:
    """The typed error for an HTTP error status and its body (llama-server's and OpenAI's ``{"error": {...}}``)."""
    detail = body.get("error", body) if isinstance(body, dict) else body
    message = detail.get("message") if isinstance(detail, dict) else None
    kind = detail.get("type") if isinstance(detail, dict) else None
    text = str(message if message is not None else detail or "").strip() or "no details"
    if status in (401, 403):
        return ServerAuthError(f"{where} refused the API key (HTTP {status}: {text}); {_KEY_HELP}", status)
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
