"""A real, threaded HTTP server on 127.0.0.1 (random port) for download tests.

It serves in-memory resources and can misbehave on request: honour or ignore Range
and If-Range, cut a response after N body bytes, answer late, stall mid-body, or
answer with an error status. Every request is recorded. Use it as a context
manager; leaving it releases stalled handlers and joins every thread.
"""

from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = "127.0.0.1"
CHUNK = 64 * 1024


@dataclass
class Resource:
    body: bytes
    etag: str | None = '"v1"'
    last_modified: str | None = "Mon, 01 Jan 2024 00:00:00 GMT"
    status: int = 200  # anything else is sent as an error with no body
    ranges: bool = True  # honour Range requests
    if_range: bool = True  # honour If-Range (a changed validator gets the whole file)
    cuts: list[int] = field(default_factory=list)  # per response: close after N body bytes
    delay: float = 0.0  # seconds to wait before the status line
    stall_at: int | None = None  # stall (up to `stall`) after this many body bytes
    stall: float = 0.0


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]


class HTTPTestServer:
    """``with HTTPTestServer() as server: server.add("/a.qcow2", data)``."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.requests: list[SeenRequest] = []
        self.release = threading.Event()  # set on exit: stalled handlers return at once
        self._lock = threading.Lock()
        self._httpd = _Server((HOST, 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def add(self, path: str, body: bytes, **options: object) -> str:
        """Serve ``body`` at ``path``; returns its URL."""
        self.resources[path] = Resource(body, **options)  # type: ignore[arg-type]
        return self.url(path)

    def seen(self, path: str | None = None) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def ranges_seen(self, path: str) -> list[str | None]:
        return [r.headers.get("Range") for r in self.seen(path)]

    def record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def __enter__(self) -> HTTPTestServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()  # joins the handler threads (block_on_close)
        self._thread.join(timeout=10)


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    owner: HTTPTestServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # socket timeout: no handler outlives a vanished client for long

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.record(SeenRequest("GET", self.path, dict(self.headers.items())))
        res = owner.resources.get(self.path)
        if res is None:
            self.send_error(404)
            return
        if res.delay:
            owner.release.wait(res.delay)
        if res.status != 200:
            self.send_error(res.status)
            return
        try:
            self._send(res)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up; that is what some tests do

    def _send(self, res: Resource) -> None:
        start, end = self._range(res)
        if start is not None and start >= len(res.body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(res.body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = res.body if start is None else res.body[start : end + 1]
        self.send_response(200 if start is None else 206)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes" if res.ranges else "none")
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(res.body)}")
        if res.etag:
            self.send_header("ETag", res.etag)
        if res.last_modified:
            self.send_header("Last-Modified", res.last_modified)
        self.end_headers()
        self._write_body(res, body)

    def _range(self, res: Resource) -> tuple[int | None, int]:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not match or not res.ranges:
            return None, 0
        validator = self.headers.get("If-Range")
        if validator and res.if_range and validator not in (res.etag, res.last_modified):
            return None, 0
        return int(match[1]), int(match[2]) if match[2] else len(res.body) - 1

    def _write_body(self, res: Resource, body: bytes) -> None:
        cut = res.cuts.pop(0) if res.cuts else None
        stall_at, res.stall_at = res.stall_at, None  # one stall, in the first response
        limit = len(body) if cut is None else min(cut, len(body))
        sent = 0
        while sent < limit:
            if stall_at is not None and sent >= stall_at:
                self.wfile.flush()
                self.server.owner.release.wait(res.stall)
                stall_at = None
            piece = body[sent : min(limit, sent + CHUNK, stall_at if stall_at is not None else limit)]
            self.wfile.write(piece)
            sent += len(piece)
        self.wfile.flush()
        if cut is not None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
