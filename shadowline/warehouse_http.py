"""The embedded warehouse's ClickHouse HTTP endpoint, read-only by the engine.

chDB lets one process own a data directory, so the sink serves the ClickHouse HTTP
interface on loopback for every other reader. Read-only is enforced by ClickHouse
itself, not by looking at the text: reads run on a second chDB session opened with
``readonly = 1`` and the time and size limits as its settings, which no query can
lift (``SETTINGS readonly = 0`` is refused by the engine). Before a query runs:

- ClickHouse's own parser (``formatQuery``) turns it into one canonical statement;
  more than one statement is refused, and the canonical text is what runs, so what
  was vetted is exactly what executes;
- only reading statements pass (``SELECT``, ``WITH``, ``SHOW``, ``DESCRIBE``,
  ``EXISTS``, ``EXPLAIN``); ``INTO OUTFILE`` is refused (chDB would write the file even
  in read-only mode);
- its syntax tree (``EXPLAIN AST``) is searched for functions that reach the file
  system, the network or other servers (``file``, ``url``, ``s3``, ``remote``, …);
  the read-only session refuses most table functions itself, but the scalar
  ``file()`` reads host files even there.

Nothing of the request is matched by a regular expression, so the cost of vetting
is the engine's parse, linear in the query.
"""

from __future__ import annotations

import base64
import hmac
import logging
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from shadowline import native
from shadowline.errors import WarehouseError

if TYPE_CHECKING:
    from shadowline.warehouse import Warehouse

log = logging.getLogger(__name__)

# The largest request body or query accepted (ClickHouse's own max_query_size is
# 256 KiB; the dashboards' queries are a few KiB).
MAX_BODY_BYTES = 1 << 20
# The largest result a read may build (it is held in memory before it is sent).
MAX_RESULT_BYTES = 256 << 20
MAX_CONNECTIONS = 32
MAX_HEADERS = 64
READING_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "EXISTS", "EXPLAIN", "(")
# Functions (scalar or table) that reach the file system, the network or other
# servers. Lower case; any name ending in "cluster" is refused as well.
REACHING_FUNCTIONS = frozenset(
    {
        "file",
        "url",
        "s3",
        "gcs",
        "oss",
        "cosn",
        "hdfs",
        "remote",
        "remotesecure",
        "cluster",
        "clusterallreplicas",
        "mysql",
        "postgresql",
        "sqlite",
        "mongodb",
        "redis",
        "jdbc",
        "odbc",
        "executable",
        "azureblobstorage",
        "deltalake",
        "deltalakeazure",
        "deltalakes3",
        "hudi",
        "iceberg",
        "icebergs3",
        "icebergazure",
        "icebergHDFS".lower(),
        "icebergLocal".lower(),
        "input",
        "catboostevaluate",
        "arrowflight",
        "ytsaurus",
        "paimon",
        "dictionary",
        "loop",
        "fuzzjson",
        "fuzzquery",
        "prometheusquery",
        "prometheusqueryrange",
        "timeseriesdata",
        "timeseriesmetrics",
        "timeseriestags",
        "mergetreeindex",
        "mergetreeprojection",
        "zookeeper",
    }  # fmt: skip
)
_CODE_PREFIX = re.compile(r"Code: \d{1,5}\. DB::\w*Exception: ")
_AST_FUNCTION = re.compile(r"^\s*Function (\S+)")
_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


class Refused(Exception):  # noqa: N818  an answer, not a failure of ours
    """A request the endpoint answers with an error (HTTP status, ClickHouse code)."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Vetted:
    """A query that may run: its canonical text and its output format."""

    sql: str
    fmt: str | None


def escape_param(value: str) -> str:
    """A query-parameter value in ClickHouse's escaped (TSV) form, as chDB takes it."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        .replace("\r", "\\r").replace("\0", "\\0")
    )  # fmt: skip


def _engine_error(exc: BaseException) -> Refused:
    text = str(exc).strip().splitlines()
    message = text[0][:500] if text else type(exc).__name__
    code = re.match(r"Code:\s*(\d{1,5})", message)
    number = int(code.group(1)) if code else 1000
    # chDB nests the engine's message in its own: keep the innermost text
    while (m := _CODE_PREFIX.match(message)) is not None:
        message = message[m.end() :]
    if number == 164:  # READONLY: what the engine refused is a write of some kind
        return Refused(403, 164, f"{message} (the embedded endpoint is read-only)")
    return Refused(400 if number in (62, 36, 47, 46, 60, 81, 456, 457) else 500, number, message)


def _first_keyword(sql: str) -> str:
    head = sql.lstrip()
    if head.startswith("("):
        return "("
    return head.split(None, 1)[0].upper() if head else ""


def _top_level_format(formatted: str) -> str | None:
    # The canonical text puts each clause of the outer statement on its own line with
    # no indentation, and string literals never hold a raw newline.
    fmt = None
    for line in formatted.split("\n"):
        if line.startswith("FORMAT "):
            fmt = line[7:].strip()
    return fmt


class ReadOnlySession:
    """A chDB session on the owner's directory that can only read, within limits."""

    def __init__(self, path: str, timeout_s: float) -> None:
        import chdb

        settings = (
            f"readonly=1&max_execution_time={max(1, round(timeout_s))}"
            f"&max_result_bytes={MAX_RESULT_BYTES}&max_query_size={MAX_BODY_BYTES}"
            # Native output as plain types: shadowline.native walks the data by type
            "&low_cardinality_allow_in_native_format=0"
        )
        try:
            self._conn = chdb.connect(f"file:{path}?{settings}")
        except Exception as exc:
            raise WarehouseError(f"cannot open a read-only session on {path}: {exc}") from exc
        self._lock = threading.Lock()

    def _run(self, sql: str, fmt: str, params: dict[str, str], database: str | None) -> bytes:
        with self._lock:
            if database is not None:
                self._conn.query(f"USE `{database.replace('`', '``')}`", "TSV")
            return bytes(self._conn.query(sql, fmt, params=params).bytes())

    def vet(self, sql: str, params: dict[str, str]) -> Vetted:
        """The canonical single statement of ``sql`` if it only reads; else ``Refused``."""
        try:
            formatted = self._run(
                "SELECT formatQuery({q:String})", "RawBLOB", {"q": escape_param(sql)}, None
            ).decode()
        except Exception as exc:
            refused = _engine_error(exc)
            if "Multi-statements are not allowed" in refused.message:
                raise Refused(400, 62, "one statement per request: the query holds more") from exc
            raise refused from exc
        keyword = _first_keyword(formatted)
        if keyword not in READING_STATEMENTS:
            raise Refused(
                403, 164,
                f"{keyword or 'an empty statement'} is refused: the embedded endpoint is "
                "read-only (SELECT, WITH, SHOW, DESCRIBE, EXISTS and EXPLAIN run)",
            )  # fmt: skip
        if any(line.lstrip().startswith("INTO OUTFILE") for line in formatted.split("\n")):
            raise Refused(403, 164, "INTO OUTFILE is refused: it writes to the host's disk")
        try:
            tree = self._run(f"EXPLAIN AST {formatted}", "TSVRaw", params, None).decode()
        except Exception as exc:
            raise _engine_error(exc) from exc
        for line in tree.split("\n"):
            m = _AST_FUNCTION.match(line)
            if m is None:
                continue
            name = m.group(1).lower()
            if name in REACHING_FUNCTIONS or name.endswith("cluster"):
                raise Refused(
                    403, 497,
                    f"function {m.group(1)}() is refused: it reaches the file system, the "
                    "network or another server",
                )  # fmt: skip
        return Vetted(formatted, _top_level_format(formatted))

    def query(self, vetted: Vetted, fmt: str, params: dict[str, str], database: str) -> bytes:
        """Run a vetted query (its own ``FORMAT`` clause, if any, wins over ``fmt``)."""
        try:
            return self._run(vetted.sql, fmt, params, database)
        except Exception as exc:
            raise _engine_error(exc) from exc

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:  # noqa: S110  closing is best effort
            pass


def credentials_ok(headers: Any, params: dict[str, str], user: str, password: str) -> bool:
    """Whether a request carries the configured user and password, the ways ClickHouse
    clients send them (HTTP basic, ``X-ClickHouse-User``/``-Key``, ``user``/``password``
    parameters). Compared in constant time."""
    got_user, got_key = headers.get("X-ClickHouse-User"), headers.get("X-ClickHouse-Key")
    auth = headers.get("Authorization") or ""
    if auth[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        got_user, _, got_key = decoded.partition(":")
    if got_user is None and "user" in params:
        got_user, got_key = params.get("user"), params.get("password", "")
    if got_user is None:
        return False
    return hmac.compare_digest(got_user.encode(), user.encode()) & hmac.compare_digest(
        (got_key or "").encode(), password.encode()
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        session: ReadOnlySession | None,
    ) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.session = session

    def shutdown(self) -> None:
        super().shutdown()
        self.server_close()
        if self.session is not None:
            self.session.close()

    def process_request(self, request: Any, client_address: Any) -> None:
        # A thread per connection, but never more than MAX_CONNECTIONS of them.
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


def serve(warehouse: Warehouse, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``warehouse`` (the embedded owner) on ``host:port`` in a daemon thread."""
    wh = warehouse.config.warehouse
    session = None
    if not wh.http_writable:
        session = ReadOnlySession(warehouse.data_path(), wh.http_timeout_s)
    server = _Server((host, port), _handler(warehouse, session), session)
    thread = threading.Thread(target=server.serve_forever, name="warehouse-http", daemon=True)
    thread.start()
    return server


def _read_chunked(rfile: Any, limit: int) -> bytes:
    out = bytearray()
    while True:
        line = rfile.readline(66)
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 8 or not all(c in b"0123456789abcdefABCDEF"
                                                          for c in size_text):  # fmt: skip
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


def _handler(warehouse: Warehouse, session: ReadOnlySession | None) -> type[BaseHTTPRequestHandler]:
    wh = warehouse.config.warehouse
    user = wh.http_user
    password = wh.http_password.get_secret_value() if wh.http_password else ""

    class Handler(BaseHTTPRequestHandler):
        server_version = "shadowline-embedded"
        protocol_version = "HTTP/1.1"
        timeout = 30  # a client that stops sending mid-request loses its connection

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return None  # requests hold user data and credentials: never logged

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            # http.server's own refusals (414, 431, a malformed request line): the rest of
            # the connection cannot be trusted
            self.close_connection = True
            super().send_error(code, message, explain)
            self.close_connection = True

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _fail(self, refused: Refused) -> None:
            self._answer(
                refused.status,
                f"Code: {refused.code}. DB::Exception: {refused.message}\n".encode(),
                {
                    "X-ClickHouse-Exception-Code": str(refused.code),
                    "Content-Type": "text/plain; charset=UTF-8",
                },
            )

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                return _read_chunked(self.rfile, MAX_BODY_BYTES)
            raw = self.headers.get("Content-Length")
            if raw is None:
                return b""
            if not raw.strip().isdigit() or len(raw.strip()) > 12:
                raise Refused(400, 27, f"Content-Length {raw[:40]!r} is not a byte count")
            length = int(raw)
            if length > MAX_BODY_BYTES:
                raise Refused(413, 1001, f"request body over {MAX_BODY_BYTES} bytes")
            body = self.rfile.read(length) if length else b""
            if len(body) != length:
                raise Refused(400, 27, "request body shorter than its Content-Length")
            return body

        def _check_host(self) -> None:
            host = (self.headers.get("Host") or "").strip()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if host and name not in _HOSTS:
                raise Refused(403, 497, f"Host {host[:80]!r} is not this loopback endpoint")

        def _handle(self, with_body: bool) -> None:
            try:
                if len(self.headers) > MAX_HEADERS:
                    raise Refused(431, 1000, f"more than {MAX_HEADERS} headers")
                self._check_host()
                body = self._body() if with_body else b""
                url = urlsplit(self.path)
                if url.path in ("/ping", "/ping/"):
                    self._answer(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
                    return
                if url.path not in ("/", ""):
                    raise Refused(404, 1000, f"no such path {url.path[:80]!r}: use / or /ping")
                params = dict(parse_qsl(url.query, keep_blank_values=True))
                if user and not credentials_ok(self.headers, params, user, password):
                    raise Refused(401, 516, f"{user}: authentication failed")
                self._query(params, body)
            except Refused as refused:
                self._fail(refused)
                if refused.status in (400, 413, 431):
                    self.close_connection = True

        def _query(self, params: dict[str, str], body: bytes) -> None:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise Refused(
                    400, 27,
                    "the body is not UTF-8 SQL text: binary inserts are not taken here "
                    "(rows reach the warehouse through the pipeline)",
                ) from None  # fmt: skip
            sql = params.get("query", "")
            sql = f"{sql}\n{text}" if sql and text else (sql or text)
            if not sql.strip():
                self._answer(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
                return
            bind = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
            fmt = params.get("default_format") or "TabSeparated"
            database = params.get("database") or warehouse.database
            if session is None:  # writable: the owner's own session runs anything
                try:
                    canonical = warehouse._raw_query(
                        "SELECT formatQuery({q:String})", "RawBLOB", {"q": escape_param(sql)}
                    ).decode()
                except Exception as exc:
                    # INSERT ... VALUES data is not part of the statement's syntax tree
                    if "Multi-statements are not allowed" in str(exc):
                        raise Refused(400, 62, "one statement per request") from exc
                    canonical = ""
                try:
                    data = warehouse._raw_query(sql, fmt, bind)
                except Exception as exc:
                    raise _engine_error(exc) from exc
                out_fmt = _top_level_format(canonical) or fmt
            else:
                vetted = session.vet(sql, bind)
                data = session.query(vetted, fmt, bind, database)
                out_fmt = vetted.fmt or fmt
            revision = params.get("client_protocol_version")
            if out_fmt == "Native" and revision:
                if not revision.isdigit() or len(revision) > 9:
                    raise Refused(
                        400, 27, f"client_protocol_version {revision[:20]!r} is not a number"
                    )
                try:
                    data = native.reframe(data, int(revision))
                except native.NativeError as exc:
                    raise Refused(500, 48, str(exc)) from exc
            self._answer(
                200, data,
                {
                    "Content-Type": "application/octet-stream",
                    "X-ClickHouse-Format": out_fmt,
                    "X-ClickHouse-Timezone": "UTC",
                    "X-ClickHouse-Query-Id": params.get("query_id", "")[:100],
                },
            )  # fmt: skip

        def do_GET(self) -> None:  # noqa: N802
            self._handle(with_body=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._handle(with_body=False)

        def do_POST(self) -> None:  # noqa: N802
            self._handle(with_body=True)

        def _not_allowed(self) -> None:
            self._fail(Refused(405, 1000, f"method {self.command} is not allowed: GET or POST"))
            self.close_connection = True

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed  # noqa: N815

    return Handler
