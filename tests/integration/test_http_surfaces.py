"""Hostile input against the gate server, the dashboard and /metrics: every malformed
request gets an answer with its reason, nothing overflows or hangs, and each server
keeps answering during and after the suite."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import pytest

from shadowline import dashboard, gates
from shadowline.config import parse_config
from shadowline.metrics import ComponentMetrics
from tests.conftest import answered, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def surfaces(tmp_path_factory) -> Iterator[dict[str, tuple[int, str]]]:
    """Each surface's port and a path it answers with 200 without a warehouse."""
    config = parse_config(
        {
            "warehouse": {"path": str(tmp_path_factory.mktemp("none")), "port": free_port()},
            "metrics": {"sink_port": free_port()},
            "experiments": [{"name": "exp", "production_model": "p", "candidates": [
                {"name": "c", "model": "tests.fixtures.models:EchoModel"}]}],
        },
        env={},
    )  # fmt: skip
    gate = gates.make_server(config, "127.0.0.1", free_port())
    dash = dashboard.make_server(config, "127.0.0.1", free_port())
    for server in (gate, dash):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    metrics = ComponentMetrics("sink")
    metrics.serve(config)
    yield {
        "gates": (gate.server_address[1], "/healthz"),
        "dashboard": (dash.server_address[1], "/static-free-404-check"),
        "metrics": (config.metrics.sink_port, "/metrics"),
    }
    gate.shutdown()
    dash.shutdown()
    metrics.close()


def send(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def alive(surfaces) -> None:
    for name, (port, path) in surfaces.items():
        status, _, _ = send(port, "GET", path)
        assert status == (404 if name == "dashboard" else 200), name


BAD_QUERIES = [
    ("window=1" + "+" * 40_000, 400, b"over 4096 characters"),
    ("window=" + "9" * 400, 400, b"is not a positive duration"),
    ("window=99999999999d", 400, b"is not a positive duration"),
    ("window=1e309", 400, b"is not a positive duration"),
    ("window=-5m", 400, b"is not a positive duration"),
    ("window=%00", 400, b"is not a positive duration"),
    ("since=99999999999999999999", 400, b"neither ISO 8601 nor epoch"),
    ("until=9999-12-31T00:00:00", 400, b"neither ISO 8601 nor epoch"),
    ("since=" + "1" * 70, 400, b"neither ISO 8601 nor epoch"),
    ("&".join(f"a{i}=1" for i in range(60)), 400, b"more than 50 query parameters"),
    ("evil=1", 400, b"unknown parameter 'evil'"),
]


@pytest.mark.parametrize(("query", "status", "reason"), BAD_QUERIES)
def test_the_gate_server_refuses_bad_parameters_with_a_reason(surfaces, query, status, reason):
    port, _ = surfaces["gates"]
    got, body, headers = send(port, "GET", f"/gates/exp?{query}")
    assert got == status and reason in body, body[:300]
    assert headers["Content-Type"] == "application/json"
    got, body, _ = send(port, "GET", f"/gates/exp/verdict?{query}")
    assert got == status and reason in body, body[:300]


@pytest.mark.parametrize(("query", "status", "reason"), BAD_QUERIES[:6] + BAD_QUERIES[9:10])
def test_the_dashboard_refuses_bad_parameters_with_a_reason(surfaces, query, status, reason):
    port, _ = surfaces["dashboard"]
    got, body, headers = send(port, "GET", f"/experiments/exp?{query}")
    assert got == status and reason in body, body[:300]
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("surface", "path", "status", "reason"),
    [
        ("dashboard", "/experiments/nope%40backtest%3Ax", 404, b"no experiment"),
        ("dashboard", "/experiments/exp%40backtest%3A", 404, b"no experiment"),
        ("dashboard", "/experiments/%40backtest%3Ax", 404, b"no experiment"),
        ("gates", "/gates/nope@backtest:x", 400, b"is not in"),
        ("gates", "/gates/exp%40backtest%3A", 400, b"is not in"),
    ],
)
def test_backtest_run_names_in_paths_are_checked(surfaces, surface, path, status, reason):
    port, _ = surfaces[surface]
    got, body, _ = send(port, "GET", path)
    assert got == status and reason in body, body[:300]
    alive(surfaces)


@pytest.mark.parametrize("surface", ["gates", "dashboard", "metrics"])
def test_every_surface_refuses_hostile_http(surfaces, surface):
    port, path = surfaces[surface]
    for method in ("PUT", "DELETE", "PATCH", "TRACE") + (("POST",) if surface != "gates" else ()):
        status, body, _ = send(port, method, path, b"x")
        assert status == 405 and b"is not allowed here" in body, (surface, method)
    status, body, _ = send(port, "GET", path, headers={"Host": "attacker.example"})
    assert status == 403 and b"is not this loopback server" in body
    many = "".join(f"X-H{i}: v\r\n" for i in range(80))
    answer = raw(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n".encode())
    assert answered(answer) == 431 and b"more than 64 headers" in answer
    answer = raw(port, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answered(answer) == 414
    answer = raw(port, b"GARBAGE\r\n\r\n")
    assert answered(answer) == 400
    for traversal in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd"):
        status, body, _ = send(port, "GET", traversal)
        assert status == 404 and b"root:" not in body, (surface, traversal)
    alive(surfaces)


@pytest.mark.parametrize(
    ("length", "status", "reason"),
    [("abc", 400, b"Content-Length"), ("-1", 400, b"Content-Length"),
     ("99999999999", 413, b"request body over"), ("9" * 400, 400, b"Content-Length")],
)  # fmt: skip
def test_flaggers_post_with_a_bad_length_gets_an_answer(surfaces, length, status, reason):
    port, _ = surfaces["gates"]
    answer = raw(
        port,
        f"POST /gates/exp/verdict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}"
        "\r\n\r\n{}".encode(),
    )
    assert answered(answer) == status and reason in answer, answer[:300]
    alive(surfaces)


def test_metrics_still_serve_prometheus_text(surfaces):
    port, _ = surfaces["metrics"]
    status, body, headers = send(port, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"# TYPE shadowline_events_in_total counter" in body


def test_half_sent_requests_do_not_take_the_server(surfaces):
    """Slowloris: clients that send half a request and stay silent cost a socket each,
    not a server thread; everyone else is still answered."""
    held = []
    for _ in range(150):
        s = socket.create_connection(("127.0.0.1", surfaces["gates"][0]), timeout=10)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        held.append(s)
    try:
        alive(surfaces)
        for _ in range(5):
            status, body, _ = send(surfaces["gates"][0], "GET", "/healthz")
            assert status == 200, body
    finally:
        for s in held:
            s.close()


def test_a_request_not_sent_in_time_loses_its_connection(monkeypatch):
    from shadowline import httpserve

    class Answer(httpserve.HardenedHandler):
        def route(self) -> None:
            self.answer(200, b"ok", "text/plain")

    monkeypatch.setattr(httpserve, "REQUEST_S", 1.0)
    server = httpserve.serve_in_thread(
        httpserve.BoundedServer(("127.0.0.1", 0), Answer), "slow-test"
    )
    try:
        with socket.create_connection(server.server_address, timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end
            assert s.recv(100) == b""  # closed by the server, long before our 10 s
    finally:
        server.shutdown()
