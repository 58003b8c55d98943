"""The aiohttp side of ``shadowline.httpserve``: reading a request within its limits,
handing it to the surface's handler thread, and answering what aiohttp's own parser
refuses in the same plain form (with a reason, never a traceback in a log)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from shadowline.httpserve import (
    _CLOSE_AFTER,
    MAX_HEADER_LINE,
    MAX_LINE,
    PAGE_POLICY,
    REQUEST_S,
    HardenedHandler,
    Refused,
)  # fmt: skip

if TYPE_CHECKING:
    from shadowline.httpserve import BoundedServer

_SAFE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _plain(status: int, text: str, server_version: str) -> web.Response:
    resp = web.Response(
        status=status,
        body=f"{text}\n".encode(),
        headers={**_SAFE_HEADERS, "Content-Type": "text/plain; charset=utf-8",
                 "Server": server_version},
    )  # fmt: skip
    resp.force_close()
    return resp


class _Protocol(RequestHandler):
    """aiohttp's connection handler with the parser's refusals answered our way: an
    over-long request line is 414, an over-long header 431, everything else 400, each
    with the parser's reason; none is logged (they are the client's, not ours)."""

    server_version = "shadowline"

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:  # fmt: skip
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already under way")
        reason = str(message or (exc.message if isinstance(exc, HttpProcessingError) else ""))
        if isinstance(exc, LineTooLong):
            # llhttp's parser reports the request line as a bytearray, a header as
            # bytes; the pure-Python parser names the status line in words
            line = exc.args[0] if exc.args else ""
            if isinstance(line, bytearray) or "status line" in str(line).lower():
                status, reason = 414, f"the request line is over {MAX_LINE} bytes"
            else:
                status, reason = 431, f"a header line is over {MAX_HEADER_LINE} bytes"
        elif status == 500:
            reason = "the server could not answer this request"
        # llhttp points at the fault with a caret under the line: one line is enough
        reason = " ".join(reason.split()).rstrip("^ ")[:300] or "malformed request"
        return _plain(status, reason, self.server_version)


class _Busy(asyncio.Protocol):
    """The answer to a connection over the limit: 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 24\r\n"
            b"Connection: close\r\n\r\ntoo many connections now"
        )
        transport.close()


def protocol_factory(low: web.Server, limit: int, server_version: str, **kwargs: Any) -> Any:
    """The connection factory: aiohttp's handler, with ``kwargs`` (its limits), for
    each connection up to ``limit``."""

    def make() -> asyncio.BaseProtocol:
        if len(low.connections) >= limit:
            return _Busy()
        proto = _Protocol(low, loop=asyncio.get_running_loop(), **kwargs)
        proto.server_version = server_version
        return proto

    return make


async def _read_body(request: web.BaseRequest, limit: int) -> bytes | Refused:
    length = request.content_length
    if length is not None and length > limit:
        return Refused(413, 1001, f"request body over {limit} bytes")
    if not request.body_exists:
        return b""
    out = bytearray()
    try:
        async with asyncio.timeout(REQUEST_S):
            async for chunk in request.content.iter_any():
                out += chunk
                if len(out) > limit:
                    return Refused(413, 1001, f"request body over {limit} bytes")
    except TimeoutError:
        return Refused(408, 1000, f"the request body took over {REQUEST_S:.0f} s to arrive")
    except HttpProcessingError as exc:
        return Refused(400, 27, f"malformed request body: {exc.message}")
    return bytes(out)


async def handle(server: BoundedServer, request: web.BaseRequest) -> web.StreamResponse:
    """Read ``request`` within the limits, run the surface's handler on a handler thread,
    and send its answer."""
    cls = server.handler
    if request.version.major < 1:
        return _plain(400, "the request line has no HTTP version", cls.server_version)
    body: bytes | Refused = b""
    if request.method in cls.methods and request.method not in ("GET", "HEAD"):
        body = await _read_body(request, cls.max_body)
    handler: HardenedHandler = cls(server, request.method, request.raw_path, request.headers, body)
    await server._pool.run(handler.dispatch)
    assert handler.response is not None
    status, payload, content_type, extra = handler.response
    headers = {
        "Content-Type": content_type, **_SAFE_HEADERS, "Server": cls.server_version,
    }  # fmt: skip
    if content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = PAGE_POLICY
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "no-referrer"
    headers.update(extra)
    resp = web.Response(status=status, body=payload, headers=headers)
    if request.content.is_eof() and (handler.close_connection or status in _CLOSE_AFTER):
        resp.force_close()
    # else a body is left unread: aiohttp reads and drops it for up to lingering_time
    # before it closes, so the client reads this answer instead of a reset connection
    return resp
