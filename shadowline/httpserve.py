"""The one HTTP server base of every shadowline surface: the warehouse endpoint, the
gate server, the dashboard, the ingest and ``/metrics``.

It stands on aiohttp's server (chosen by measurement: ``bench/http_stack.py``): one
event loop per server in its own thread parses requests (llhttp, linear in the input)
and holds idle or slow connections for the cost of a socket, so clients that send
half a request cannot take the server from everybody else; the surfaces' handlers are
plain blocking code (ClickHouse queries, page rendering) and run on a small pool of
daemon threads, never on the loop.

Each answers with a reason for whatever it refuses and never trusts the client with
its resources: at most ``MAX_CONNECTIONS`` connections, 30 s to send a request (its
head and its body), at most 64 headers, a request line of at most 64 KiB (414) and header
lines of at most 8,190 bytes (431), bodies judged from their ``Content-Length`` before they are read
(chunked bodies read up to the limit), query strings of at most 50 fields of at most
4,096 characters, ``Host`` checked on loopback servers (DNS rebinding), only the
methods a surface serves (405 otherwise), and ``nosniff`` plus a strict
Content-Security-Policy on every page. Requests are never logged: they hold user data.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from shadowline.extras import require

MAX_CONNECTIONS = 512
MAX_HEADERS = 64
MAX_LINE = 65536  # the request line, as the standard library's server allowed
MAX_HEADER_LINE = 8190
MAX_FIELDS = 50
MAX_FIELD_CHARS = 4096
REQUEST_S = 30.0  # to send a whole request; also how long an idle connection is kept
WORKERS = 8  # handler threads per server: the surfaces' work is ClickHouse's, not ours
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_HOST_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'"
_CLOSE_AFTER = (400, 405, 413, 414, 431)


class Refused(Exception):  # noqa: N818  an answer, not a failure of ours
    """A request answered with an error: HTTP status, a code (ClickHouse's on the
    warehouse endpoint) and the reason."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Pool:
    """Daemon threads running the handlers. Not ``concurrent.futures``: the interpreter
    joins its threads at exit, so one query hung in the engine would keep the process
    from ending."""

    def __init__(self, size: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for i in range(size):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn = job
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001  handed to the waiting request
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

    def run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn))
        return future

    def close(self, size: int) -> None:
        for _ in range(size):
            self._jobs.put(None)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _bind(address: tuple[str, int]) -> socket.socket:
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host == "localhost":
        host = "127.0.0.1"
    return socket.create_server((host, port), family=family, backlog=128)


class BoundedServer:
    """An aiohttp server for one surface's ``HardenedHandler``; bound when made (so
    ``server_address`` is known and a taken port fails here), served by
    ``serve_forever()`` in the calling thread until ``shutdown()`` from another."""

    def __init__(self, address: tuple[str, int], handler: type[HardenedHandler]) -> None:
        require("pipeline")
        self.handler = handler
        self.loopback = address[0] in LOOPBACK
        self.on_shutdown: list[Any] = []
        self.socket = _bind(address)
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._done = threading.Event()
        self._closed = False
        self._pool = _Pool(WORKERS, f"http-{self.server_address[1]}")

    def serve_forever(self) -> None:
        """Serve until ``shutdown()``; returns then."""
        try:
            asyncio.run(self._serve())
        finally:
            self._done.set()

    async def _serve(self) -> None:
        from aiohttp import web

        from shadowline import _aioserve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        low = web.Server(self._handle, handler_cancellation=True)
        protocol = _aioserve.protocol_factory(
            low, MAX_CONNECTIONS, self.handler.server_version,
            access_log=None, keepalive_timeout=REQUEST_S, max_line_size=MAX_LINE,
            max_field_size=MAX_HEADER_LINE, max_headers=4 * MAX_HEADERS, lingering_time=1.0,
        )  # fmt: skip
        server = await self._loop.create_server(protocol, sock=self.socket)
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            await low.shutdown(1.0)
            server.close()

    async def _handle(self, request: Any) -> Any:
        from shadowline import _aioserve

        return await _aioserve.handle(self, request)

    def shutdown(self) -> None:
        """Stop serving (from any other thread), close the socket, run ``on_shutdown``."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not self._done.is_set():
            loop.call_soon_threadsafe(stop.set)
            self._done.wait(10)
        self.server_close()

    def server_close(self) -> None:
        """Release the socket and the handler threads; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.socket.close()
        self._pool.close(WORKERS)
        for hook in self.on_shutdown:
            hook()


def serve_in_thread(server: BoundedServer, name: str) -> BoundedServer:
    """Run ``server`` in a daemon thread; returns it (``shutdown()`` stops it)."""
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    server._started.wait(10)
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


class HardenedHandler:
    """One request of a surface: subclasses implement ``route`` (it runs on a handler
    thread and may block) and may override ``refuse``; both answer with ``answer``."""

    methods: tuple[str, ...] = ("GET", "HEAD")
    max_body = 1 << 20
    server_version = "shadowline"

    def __init__(
        self, server: BoundedServer, command: str, path: str, headers: Mapping[str, str],
        body: bytes | Refused,
    ) -> None:  # fmt: skip
        self.server = server
        self.command = command
        self.path = path
        self.headers = headers
        self._body = body
        self.close_connection = False
        self.response: tuple[int, bytes, str, dict[str, str]] | None = None

    def answer(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        """The whole answer (sent without its body to HEAD)."""
        self.response = (status, body, content_type, headers or {})

    def refuse(self, refused: Refused) -> None:
        """Answer a refusal; subclasses choose its body's form."""
        self.answer(refused.status, f"{refused.message}\n".encode(), "text/plain; charset=utf-8")

    def read_body(self) -> bytes:
        """The request body, at most ``max_body`` bytes, judged before it was read."""
        if isinstance(self._body, Refused):
            raise self._body
        return self._body

    def _check(self) -> None:
        if len(self.headers) > MAX_HEADERS:
            raise Refused(431, 1000, f"more than {MAX_HEADERS} headers")
        if self.server.loopback:
            host = (self.headers.get("Host") or "").strip()
            name = host if host.endswith("]") else host.rsplit(":", 1)[0]
            if host and name not in _HOST_NAMES:
                raise Refused(403, 497, f"Host {host[:80]!r} is not this loopback server")

    def route(self) -> None:
        raise NotImplementedError

    def dispatch(self) -> None:
        """Check the request, route it, and turn a refusal into its answer."""
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
            if refused.status in _CLOSE_AFTER:
                self.close_connection = True
            self.refuse(refused)
        if self.response is None:
            self.refuse(Refused(500, 1001, "the handler gave no answer"))
