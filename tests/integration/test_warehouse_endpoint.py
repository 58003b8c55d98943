"""Hostile input against the embedded warehouse's HTTP endpoint (real chDB, real HTTP).

Every request here is refused with a reason, nothing in the warehouse or on disk
changes, and the endpoint keeps answering during and after the suite.
"""

from __future__ import annotations

import base64
import http.client
import socket
import urllib.parse

import pytest

from shadowline.config import parse_config
from shadowline.errors import WarehouseError
from shadowline.warehouse import Warehouse
from tests.conftest import answered, free_port
from tests.fixtures.rows import comparison

pytestmark = pytest.mark.integration

TABLES_SQL = "SELECT name FROM system.tables WHERE database = 'shadowline' ORDER BY name"


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    config = parse_config(
        {
            "warehouse": {
                "path": str(tmp_path_factory.mktemp("wh-endpoint")),
                "port": free_port(),
                "http_timeout_s": 1,
            }
        },
        env={},
    )
    wh = Warehouse.open_owner(config)
    wh.insert_comparisons([comparison(f"r{i}", experiment="e") for i in range(5)])
    server = wh.serve_http()
    yield wh
    server.shutdown()
    wh.close()


@pytest.fixture(scope="module")
def state(owner):
    """What must not change: tables, row counts, the files around the data directory."""

    def snapshot() -> dict:
        tables = [r["name"] for r in owner.query(TABLES_SQL)]
        return {
            "tables": tables,
            "comparisons": owner.query("SELECT count() AS n FROM comparisons")[0]["n"],
            "served": owner.query("SELECT count() AS n FROM served")[0]["n"],
        }

    before = snapshot()
    yield before
    assert snapshot() == before


def send(
    owner: Warehouse,
    method: str,
    path: str = "/",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", owner.config.warehouse.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def post(owner: Warehouse, sql: str, **params: str) -> tuple[int, bytes]:
    query = urllib.parse.urlencode(params)
    return send(owner, "POST", f"/?{query}" if query else "/", sql.encode())


def raw(owner: Warehouse, data: bytes) -> bytes:
    """Bytes on the wire, the answer's bytes back (for what http.client cannot send)."""
    with socket.create_connection(("127.0.0.1", owner.config.warehouse.port), timeout=30) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def alive(owner: Warehouse) -> None:
    assert send(owner, "GET", "/ping") == (200, b"Ok.\n")
    assert post(owner, "SELECT count() FROM comparisons") == (200, b"5\n")


MULTI = [
    "SELECT 1; DROP TABLE comparisons",
    "SELECT 1;DROP TABLE comparisons;",
    "sElEcT 1; dRoP tAbLe comparisons",
    "SELECT 1 /* ; */ ; DROP TABLE comparisons",
    "SELECT 1 -- comment\n; DROP TABLE comparisons",
    "SELECT ';' ; DROP TABLE comparisons",
    "SELECT `a;b` FROM (SELECT 1 AS `a;b`); TRUNCATE TABLE comparisons",
    "WITH 1 AS a SELECT a; INSERT INTO served (request_id) VALUES ('evil')",
    "SELECT 1; INSERT INTO served (request_id) VALUES ('evil')",
    "SELECT $$;$$; DROP TABLE served",
]


@pytest.mark.parametrize("sql", MULTI)
def test_more_than_one_statement_is_refused(owner, state, sql):
    status, body = post(owner, sql)
    assert status == 400 and b"one statement per request" in body, body


WRITES = [
    ("DROP TABLE comparisons", b"DROP is refused"),
    ("drop table comparisons", b"DROP is refused"),
    ("/* SELECT */ DROP TABLE comparisons", b"DROP is refused"),
    ("INSERT INTO served (request_id) VALUES ('evil')", b"INSERT is refused"),
    ("TRUNCATE TABLE comparisons", b"TRUNCATE is refused"),
    ("ALTER TABLE comparisons DELETE WHERE 1", b"ALTER is refused"),
    ("CREATE TABLE x (a Int32) ENGINE = Memory", b"CREATE is refused"),
    ("RENAME TABLE comparisons TO gone", b"RENAME is refused"),
    ("OPTIMIZE TABLE comparisons FINAL", b"OPTIMIZE is refused"),
    ("SYSTEM STOP MERGES comparisons", b"SYSTEM is refused"),
    ("SYSTEM SHUTDOWN", b"SYSTEM is refused"),
    ("DETACH TABLE comparisons", b"DETACH is refused"),
    ("ATTACH TABLE comparisons", b"ATTACH is refused"),
    ("KILL QUERY WHERE 1", b"KILL is refused"),
    ("SET readonly = 0", b"SET is refused"),
    ("USE system", b"USE is refused"),
    ("GRANT ALL ON *.* TO default", b"GRANT is refused"),
    ("BACKUP TABLE comparisons TO File('b.zip')", b"BACKUP is refused"),
    ("SELECT 1 SETTINGS readonly = 0", b"Cannot modify 'readonly'"),
    ("SELECT 1 SETTINGS max_execution_time = 0", b"Cannot modify 'max_execution_time'"),
    ("SELECT 1 SETTINGS max_result_bytes = 0", b"Cannot modify 'max_result_bytes'"),
]


@pytest.mark.parametrize(("sql", "reason"), WRITES)
def test_statements_that_write_or_lift_limits_are_refused(owner, state, sql, reason):
    status, body = post(owner, sql)
    assert status == 403 and reason in body, body
    assert b"read-only" in body


REACHING = [
    "SELECT * FROM file('/etc/hostname', 'LineAsString')",
    "SELECT file('/etc/hostname')",
    "SELECT `file`('/etc/hostname')",
    "SELECT length(file('/etc/passwd')) > 0",
    "SELECT * FROM (SELECT * FROM file('/etc/hostname', 'LineAsString'))",
    "SELECT 1 WHERE 1 IN (SELECT 1 FROM file('/etc/hostname', 'LineAsString'))",
    "SELECT * FROM fileCluster('default', '/etc/hostname', 'LineAsString')",
    "SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')",
    "SELECT * FROM s3('http://127.0.0.1:1/bucket/x.csv')",
    "SELECT * FROM remote('127.0.0.1:1', system.one)",
    "SELECT * FROM remoteSecure('127.0.0.1:1', system.one)",
    "SELECT * FROM cluster('default', system.one)",
    "SELECT * FROM mysql('127.0.0.1:1', 'd', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:1', 'd', 't', 'u', 'p')",
    "SELECT * FROM sqlite('/etc/x.db', 't')",
    "SELECT * FROM hdfs('hdfs://127.0.0.1:1/x', 'CSV')",
    "SELECT * FROM executable('x.sh', 'CSV', 'a Int32')",
    "SELECT * FROM jdbc('a', 'b')",
    "SELECT * FROM odbc('a', 'b')",
    "SELECT * FROM azureBlobStorage('http://127.0.0.1:1', 'c', 'x')",
]


@pytest.mark.parametrize("sql", REACHING)
def test_functions_that_reach_files_network_or_servers_are_refused(owner, state, sql):
    status, body = post(owner, sql)
    assert status == 403 and b"reaches the file system, the network" in body, body
    assert b"localhost" not in body and b"root:" not in body


def test_into_outfile_is_refused_and_writes_nothing(owner, state, tmp_path):
    target = tmp_path / "out.txt"
    for sql in (
        f"SELECT * FROM comparisons INTO OUTFILE '{target}'",
        f"select 1 into outfile '{target}' TRUNCATE FORMAT CSV",
        f"SELECT 1 INTO /* x */ OUTFILE '{target}'",
        f"EXPLAIN SELECT 1 INTO OUTFILE '{target}'",
    ):
        status, body = post(owner, sql)
        assert status == 403 and b"INTO OUTFILE is refused" in body, (sql, body)
    assert not target.exists()


def test_reads_still_work_with_formats_parameters_and_comments(owner, state):
    assert post(owner, "SELECT count() FROM comparisons FORMAT JSONEachRow") == (
        200, b'{"count()":5}\n',
    )  # fmt: skip
    assert post(owner, "/* hello */ select {n:UInt8} + 1 -- bye", param_n="41") == (200, b"42\n")
    assert post(owner, "SELECT 'a;b', 'INTO OUTFILE', 'file(x)'") == (
        200, b"a;b\tINTO OUTFILE\tfile(x)\n",
    )  # fmt: skip
    assert post(owner, "SELECT 1;") == (200, b"1\n")
    status, body = post(owner, "SHOW TABLES")
    assert status == 200 and b"comparisons_final" in body
    assert post(owner, "EXISTS TABLE comparisons") == (200, b"1\n")
    status, body = post(owner, "DESCRIBE TABLE comparisons")
    assert status == 200 and b"candidate_timing" in body
    status, _ = post(owner, "SELECT 1", default_format="JSONCompact")
    assert status == 200
    # a quadratic pattern for a regex, nothing for the engine's parser
    assert post(owner, "SELECT 1" + " " * 40_000 + "x FORMAT TSV") == (200, b"1\n")


def test_native_for_a_client_revision(owner, state):
    status, body = post(
        owner, "SELECT 1 AS x", default_format="Native", client_protocol_version="abc"
    )
    assert status == 400 and b"client_protocol_version 'abc' is not a number" in body
    status, body = post(
        owner, "SELECT 1 AS x", default_format="Native", client_protocol_version="54460"
    )
    assert (status, body) == (
        200,
        b"\x01\x00\x02\xff\xff\xff\xff\x00\x01\x01\x01x\x05UInt8\x00\x01",
    )
    assert post(owner, "SELECT 1 AS x", default_format="Native") == (
        200,
        b"\x01\x01\x01x\x05UInt8\x01",
    )


def test_a_long_query_is_stopped_by_the_timeout(owner, state):
    status, body = post(owner, "SELECT count() FROM system.numbers")
    assert status == 500 and b"Code: 159" in body and b"Timeout exceeded" in body
    alive(owner)


def test_an_oversized_query_is_refused(owner, state):
    # refused from its Content-Length, before the 10 MB are read
    head = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000010\r\n\r\n"
    answer = raw(owner, head + b"SELECT '" + b"x" * 60_000)
    assert answered(answer) == 413 and b"request body over" in answer
    big_url = "/?query=" + "SELECT%201%20" + "%20" * 70_000
    status, _ = send(owner, "GET", big_url)
    assert status == 414
    alive(owner)


@pytest.mark.parametrize(
    ("length", "status", "reason"),
    [
        ("abc", 400, b"Content-Length"),
        ("-1", 400, b"Content-Length"),
        ("1e3", 400, b"Content-Length"),
        ("99999999999", 413, b"request body over"),
        ("9" * 400, 400, b"Content-Length"),
    ],
)
def test_bad_content_length_gets_an_answer(owner, state, length, status, reason):
    answer = raw(
        owner,
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n\r\nSELECT 1".encode(),
    )
    assert answered(answer) == status and reason in answer, answer[:300]
    alive(owner)


def test_chunked_bodies_are_read_and_malformed_ones_refused(owner, state):
    good = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
    good += b"Connection: close\r\n\r\n7\r\nSELECT \r\n2\r\n42\r\n0\r\n\r\n"
    answer = raw(owner, good)
    assert answered(answer) == 200 and answer.endswith(b"\r\n\r\n42\n"), answer
    bad = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n"
    answer = raw(owner, bad)
    assert answered(answer) == 400 and b"chunk size" in answer
    # chunks past the limit: refused once the limit is passed, the rest never read
    huge = b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b"-" * 0x10000 + b"\r\n"
    answer = raw(owner, huge + chunk * 200)
    assert answered(answer) == 413 and b"request body over" in answer
    alive(owner)


def test_binary_bodies_methods_paths_and_hosts(owner, state):
    status, body = send(owner, "POST", "/", b"\xff\xfe\x00binary")
    assert status == 400 and b"not UTF-8" in body
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
        status, body = send(owner, method, "/", b"SELECT 1")
        assert status == 405 and b"GET or HEAD or POST" in body, method
    for path in ("/../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/play"):
        status, body = send(owner, "GET", path + "?query=SELECT%201")
        assert status == 404 and b"no such path" in body, path
    status, body = send(owner, "POST", "/", b"SELECT 1", {"Host": "evil.example:8124"})
    assert status == 403 and b"is not this loopback server" in body
    status, _ = send(owner, "POST", "/", b"SELECT 1", {"Host": "localhost:1"})
    assert status == 200
    many = "".join(f"X-H{i}: v\r\n" for i in range(80))
    answer = raw(owner, f"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n".encode())
    assert answered(answer) == 431 and b"more than 64 headers" in answer
    alive(owner)


def test_credentials_when_configured(owner, tmp_path):
    config = parse_config(
        {
            "warehouse": {
                "path": owner.config.warehouse.path,
                "port": free_port(),
                "http_user": "grafana",
                "http_password": "s3cret",
            }
        },
        env={},
    )
    guarded = Warehouse(config, owner._client, owner=True)
    server = guarded.serve_http()
    try:
        assert send(guarded, "POST", "/", b"SELECT 1")[0] == 401
        wrong = base64.b64encode(b"grafana:nope").decode()
        status, body = send(guarded, "POST", "/", b"SELECT 1", {"Authorization": f"Basic {wrong}"})
        assert status == 401 and b"authentication failed" in body and b"nope" not in body
        right = base64.b64encode(b"grafana:s3cret").decode()
        assert send(guarded, "POST", "/", b"SELECT 1", {"Authorization": f"Basic {right}"}) == (
            200, b"1\n",
        )  # fmt: skip
        assert send(
            guarded, "POST", "/", b"SELECT 2",
            {"X-ClickHouse-User": "grafana", "X-ClickHouse-Key": "s3cret"},
        ) == (200, b"2\n")  # fmt: skip
        reader = Warehouse.open_reader(config)  # clickhouse-connect with the credentials
        try:
            assert reader.query("SELECT count() AS n FROM comparisons") == [{"n": 5}]
        finally:
            reader.close()
        with pytest.raises(WarehouseError, match="authentication failed"):
            Warehouse.open_reader(
                parse_config(
                    {
                        "warehouse": {
                            "path": owner.config.warehouse.path,
                            "port": config.warehouse.port,
                            "http_user": "grafana",
                            "http_password": "wrong",
                        }
                    },
                    env={},
                )
            ).query("SELECT 1")
    finally:
        server.shutdown()


def test_clickhouse_connect_reads_and_is_refused_writes(owner, state):
    reader = Warehouse.open_reader(owner.config)
    try:
        assert reader.owner is False
        assert reader.query("SELECT count() AS n FROM comparisons") == [{"n": 5}]
        with pytest.raises(WarehouseError, match="INSERT is refused"):
            reader.insert("served", ["request_id"], [["evil"]])
        with pytest.raises(WarehouseError, match="DROP is refused"):
            reader.command("DROP TABLE comparisons")
    finally:
        reader.close()
