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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shadowline import native
from shadowline.errors import WarehouseError
from shadowline.httpserve import (
    BoundedServer,
    HardenedHandler,
    Refused,
    query_fields,
    serve_in_thread,
)

if TYPE_CHECKING:
    from shadowline.warehouse import Warehouse

log = logging.getLogger(__name__)

# The largest request body or query accepted (ClickHouse's own max_query_size is
# 256 KiB; the dashboards' queries are a few KiB).
MAX_BODY_BYTES = 1 << 20
# The largest result a read may build (it is held in memory before it is sent).
MAX_RESULT_BYTES = 256 << 20
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


def serve(warehouse: Warehouse, host: str, port: int) -> BoundedServer:
    """Serve ``warehouse`` (the embedded owner) on ``host:port`` in a daemon thread."""
    wh = warehouse.config.warehouse
    session = None
    if not wh.http_writable:
        session = ReadOnlySession(warehouse.data_path(), wh.http_timeout_s)
    server = BoundedServer((host, port), _handler(warehouse, session))
    if session is not None:
        server.on_shutdown.append(session.close)
    return serve_in_thread(server, "warehouse-http")


def _handler(warehouse: Warehouse, session: ReadOnlySession | None) -> type[HardenedHandler]:
    wh = warehouse.config.warehouse
    user = wh.http_user
    password = wh.http_password.get_secret_value() if wh.http_password else ""

    class Handler(HardenedHandler):
        server_version = "shadowline-embedded"
        methods = ("GET", "HEAD", "POST")
        max_body = MAX_BODY_BYTES

        def refuse(self, refused: Refused) -> None:
            self.answer(
                refused.status,
                f"Code: {refused.code}. DB::Exception: {refused.message}\n".encode(),
                "text/plain; charset=UTF-8",
                {"X-ClickHouse-Exception-Code": str(refused.code)},
            )

        def route(self) -> None:
            body = self.read_body() if self.command == "POST" else b""
            url = urlsplit(self.path)
            if url.path in ("/ping", "/ping/"):
                self.answer(200, b"Ok.\n", "text/plain; charset=UTF-8")
                return
            if url.path not in ("/", ""):
                raise Refused(404, 1000, f"no such path {url.path[:80]!r}: use / or /ping")
            params = query_fields(url.query)
            if user and not credentials_ok(self.headers, params, user, password):
                raise Refused(401, 516, f"{user}: authentication failed")
            self._query(params, body)

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
                self.answer(200, b"Ok.\n", "text/plain; charset=UTF-8")
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
            self.answer(
                200, data, "application/octet-stream",
                {
                    "X-ClickHouse-Format": out_fmt,
                    "X-ClickHouse-Timezone": "UTC",
                    "X-ClickHouse-Query-Id": params.get("query_id", "")[:100],
                },
            )  # fmt: skip

    return Handler
