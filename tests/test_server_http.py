"""The HTTP under the server clients, against small servers in this process: proxies and server-sent events."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lmchat_jupyter.backends.server.http import HttpEndpoint, sse_data
from lmchat_jupyter.core.errors import ServerError

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class Recorder(ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that answers every request with ``body`` and keeps the request lines."""

    daemon_threads = True

    def __init__(self, body: bytes, content_type: str = "application/json") -> None:
        self.body = body
        self.content_type = content_type
        self.seen: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:
        self.server.seen.append(f"{self.command} {self.path}")
        self.send_response(200)
        self.send_header("Content-Type", self.server.content_type)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """A proxy named by the environment, as a user behind one has it (no NO_PROXY)."""
    running = Recorder(b'{"via": "proxy"}')
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", running.url)
    monkeypatch.setenv("HTTPS_PROXY", running.url)
    yield running
    running.shutdown()


def test_a_remote_server_is_reached_through_the_proxy_the_environment_names(proxy: Recorder) -> None:
    answer = HttpEndpoint("http://inference.example:8080").get_json("/v1/models")
    assert answer == {"via": "proxy"}
    assert proxy.seen == ["GET http://inference.example:8080/v1/models"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_server_on_this_machine_is_never_reached_through_a_proxy(proxy: Recorder, host: str) -> None:
    server = Recorder(b'{"via": "direct"}')
    try:
        endpoint = HttpEndpoint(server.url.replace("127.0.0.1", host))
        assert endpoint.get_json("/v1/models") == {"via": "direct"}
        assert endpoint.post_json("/tokenize", {"content": "hi"}) == {"via": "direct"}
    finally:
        server.shutdown()
    assert proxy.seen == [] and server.seen == ["GET /v1/models", "POST /tokenize"]


def test_a_data_field_over_several_lines_is_one_event() -> None:
    # Lines end with LF, CRLF or CR, split anywhere between chunks; a comment and an event name are skipped;
    # U+2028 and U+0085 inside the data are text, not line ends; an event the stream ends in is dropped.
    stream = [
        b': ping\n\nevent: message\ndata: {"content":\r',
        b'\ndata:  "a\xe2\x80\xa8b\xc2\x85c"}\r',
        b'\r\ndata: [DONE]\n\ndata: {"unfinished"',
    ]
    events = list(sse_data(stream))
    assert events == [b'{"content":\n "a\xe2\x80\xa8b\xc2\x85c"}', b"[DONE]"]
    assert json.loads(events[0]) == {"content": "a\u2028b\x85c"}


def test_a_stream_of_multi_line_events_reaches_the_client_whole() -> None:
    body = (
        b'data: {"content": "a",\ndata:  "stop": false}\n\ndata: {"content": "\xe2\x80\xa8",\ndata: "stop": true}\n\n'
    )
    server = Recorder(body, "text/event-stream")
    try:
        events = list(HttpEndpoint(server.url).stream_events("/completion", {"prompt": [1]}))
    finally:
        server.shutdown()
    assert events == [{"content": "a", "stop": False}, {"content": "\u2028", "stop": True}]


def test_an_event_that_is_not_json_is_a_server_error() -> None:
    server = Recorder(b"data: {not json\n\n", "text/event-stream")
    try:
        with pytest.raises(ServerError, match="not JSON"):
            list(HttpEndpoint(server.url).stream_events("/completion", {}))
    finally:
        server.shutdown()
