"""The one HTTP server base of every shadowline surface: the warehouse endpoint, the
gate server, the dashboard and ``/metrics``.

Each answers with a reason for whatever it refuses and never trusts the client with
its resources: a bounded number of connections (a thread each), 30 s to send a
request, at most 64 headers, bodies judged from their ``Content-Length`` before they
are read (chunked bodies read up to the limit), query strings of at most 50 fields of
at most 4,096 characters, ``Host`` checked on loopback servers (DNS rebinding), only
the methods a surface serves (405 otherwise), and ``nosniff`` plus a strict
Content-Security-Policy on every page. Requests are never logged: they hold user data.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

MAX_CONNECTIONS = 32
MAX_HEADERS = 64
MAX_FIELDS = 50
MAX_FIELD_CHARS = 4096
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_HOST_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'"


class Refused(Exception):  # noqa: N818  an answer, not a failure of ours
    """A request answered with an error: HTTP status, a code (ClickHouse's on the
    warehouse endpoint) and the reason."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class BoundedServer(ThreadingHTTPServer):
    """A thread per connection, but never more than ``MAX_CONNECTIONS`` of them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.loopback = address[0] in LOOPBACK
        self.on_shutdown: list[Any] = []

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up before its answer is its own business, not a traceback.
        if isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            return
        super().handle_error(request, client_address)

    def shutdown(self) -> None:
        super().shutdown()
        self.server_close()
        for hook in self.on_shutdown:
            hook()


def serve_in_thread(server: BoundedServer, name: str) -> BoundedServer:
    """Run ``server`` in a daemon thread; returns it (``shutdown()`` stops it)."""
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def query_fields(query: str) -> dict[str, str]:
    """A query string's fields (the last of repeated ones), within the limits."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except ValueError:
        raise Refused(400, 1000, f"more than {MAX_FIELDS} query parameters") from None
    out = {}
    for key, value in pairs:
        if len(value) > MAX_FIELD_CHARS or len(key) > 200:
            raise Refused(
                400, 1000, f"query parameter {key[:40]!r} is over {MAX_FIELD_CHARS} characters"
            )
        out[key] = value
    return out


def _read_chunked(rfile: Any, limit: int) -> bytes:
    out = bytearray()
    while True:
        line = rfile.readline(66)
        size_text = line.split(b";", 1)[0].strip()
        hex_digits = b"0123456789abcdefABCDEF"
        if not size_text or len(size_text) > 8 or any(c not in hex_digits for c in size_text):
            raise Refused(400, 27, "malformed chunked body: bad chunk size line")
        size = int(size_text, 16)
        if size == 0:
            while rfile.readline(1026) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(out)
        if len(out) + size > limit:
            raise Refused(413, 1001, f"request body over {limit} bytes")
        chunk = rfile.read(size)
        if len(chunk) != size:
            raise Refused(400, 27, "malformed chunked body: ended inside a chunk")
        out += chunk
        rfile.readline(3)  # the chunk's CRLF


class HardenedHandler(BaseHTTPRequestHandler):
    """The request handling every surface shares; subclasses implement ``route``."""

    protocol_version = "HTTP/1.1"
    # a request line without a version gets an answer with a status line, not HTTP/0.9
    default_request_version = "HTTP/1.0"
    timeout = 30  # a client that stops sending mid-request loses its connection
    server_version = "shadowline"
    sys_version = ""
    methods: tuple[str, ...] = ("GET", "HEAD")
    max_body = 1 << 20

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None  # requests hold user data and credentials: never logged

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (414, a malformed request line): the rest of the
        # connection cannot be trusted
        self.close_connection = True
        super().send_error(code, message, explain)
        self.close_connection = True

    def answer(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        """Send a whole answer (no body for HEAD)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", PAGE_POLICY)
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def refuse(self, refused: Refused) -> None:
        """Answer a refusal; subclasses choose its body's form."""
        self.answer(refused.status, f"{refused.message}\n".encode(), "text/plain; charset=utf-8")

    def read_body(self) -> bytes:
        """The request body, at most ``max_body`` bytes, judged before it is read."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return _read_chunked(self.rfile, self.max_body)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        text = raw.strip()
        if not text.isdigit() or not text.isascii() or len(text) > 12:
            raise Refused(400, 27, f"Content-Length {raw[:40]!r} is not a byte count")
        length = int(text)
        if length > self.max_body:
            raise Refused(413, 1001, f"request body over {self.max_body} bytes")
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise Refused(400, 27, "request body shorter than its Content-Length")
        return body

    def _check(self) -> None:
        if len(self.headers) > MAX_HEADERS:
            raise Refused(431, 1000, f"more than {MAX_HEADERS} headers")
        if getattr(self.server, "loopback", False):
            host = (self.headers.get("Host") or "").strip()
            name = host if host.endswith("]") else host.rsplit(":", 1)[0]
            if host and name not in _HOST_NAMES:
                raise Refused(403, 497, f"Host {host[:80]!r} is not this loopback server")

    def route(self) -> None:
        raise NotImplementedError

    def _dispatch(self) -> None:
        try:
            if self.command not in self.methods:
                self.close_connection = True
                raise Refused(
                    405, 1000,
                    f"method {self.command} is not allowed here: {' or '.join(self.methods)}",
                )  # fmt: skip
            self._check()
            self.route()
        except Refused as refused:
            if refused.status in (400, 405, 413, 431):
                self.close_connection = True
            self.refuse(refused)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = (  # noqa: N815
        _dispatch
    )
    do_CONNECT = _dispatch  # noqa: N815
