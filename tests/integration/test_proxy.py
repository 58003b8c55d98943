"""The mirroring proxy (`shadowline proxy`, a child process as users run it) in front of
a real upstream HTTP server: answers identical to calling the upstream directly,
every mirrored request one row per candidate, and the upstream's failures, slowness
and Kafka's absence handled without touching what the client gets."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
import tomli_w

from shadowline import proxy_native
from tests.conftest import ROOT, free_port
from tests.integration.helpers import read_topic, rows, start_pipeline, wait_for

pytestmark = pytest.mark.integration

BIG = bytes(range(256)) * 20_000  # 5 MB, not JSON


class Upstream(BaseHTTPRequestHandler):
    """A model endpoint with the habits of real ones."""

    protocol_version = "HTTP/1.1"
    seen_ids: list[str | None] = []

    def log_message(self, *args):  # noqa: D401
        return

    def _send(self, status: int, body: bytes, ctype: str = "application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Model-Version", "7")
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        if self.path == "/big":
            self._send(200, BIG, "application/octet-stream")
        elif self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                part = f"part-{i}\n".encode()
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
        elif self.path.startswith("/status/"):
            self._send(int(self.path.rsplit("/", 1)[1]), b'{"status": "as asked"}')
        else:
            self._send(200, orjson.dumps({"path": self.path}))

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        Upstream.seen_ids.append(self.headers.get("X-Request-Id"))
        if self.path == "/slow":
            time.sleep(3)
            try:
                self._send(200, b"{}")
            except BrokenPipeError:
                pass  # the proxy gave up on us, as it should
            return
        if self.path == "/fail":
            self._send(503, b'{"error": "overloaded"}')
            return
        try:
            doc = orjson.loads(body)
            rows_ = doc["instances"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._send(400, b'{"error": "expected {\\"instances\\": [...]}"}')
            return
        preds = [int(sum(r) > 0) for r in rows_]
        self._send(200, orjson.dumps({"predictions": preds, "model": "prod"}),
                   extra=[("X-Echo-Length", str(length))])  # fmt: skip


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def call(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        # each field's values in order (repeated fields such as Set-Cookie keep theirs);
        # the order of different fields means nothing in HTTP
        kept: dict[str, list[str]] = {}
        for k, v in resp.getheaders():
            if k.lower() not in ("date", "connection", "keep-alive", "transfer-encoding"):
                kept.setdefault(k.lower(), []).append(v)
        return resp.status, kept, data
    finally:
        conn.close()


@pytest.fixture(params=["python", "go"])
def engine(request) -> str:
    """Every test runs against both data paths: they must behave alike."""
    if request.param == "go":
        proxy_native.binary()  # built once, before a test's start-up deadline runs
    return request.param


def start_proxy(path: Path, experiment: str, port: int, log: Path, engine: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowline", "proxy", "-c", str(path), "-e", experiment,
         "--engine", engine],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if call(port, "GET", "/-/shadowline/healthz")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"proxy did not start: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def experiment(upstream: int, **proxy) -> dict:
    return {
        "name": "web", "production_model": "prod", "output": "classification", "window_s": 3.0,
        "proxy": {"upstream": f"http://127.0.0.1:{upstream}", "routes": ["/v1/models"],
                  "outputs_path": "predictions.0", **proxy},
        "candidates": [{"name": "sign", "model": "tests.fixtures.models:PayloadSignModel"}],
    }  # fmt: skip


def test_proxied_traffic_ends_as_rows_and_answers_are_unchanged(
    upstream, config_factory, child_env, tmp_path, engine
):
    port = free_port()
    exp = experiment(upstream)
    exp["proxy"]["routes"] = ["/v1/models", "/fail"]
    config, path = config_factory([exp], proxy={"port": port})
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    proc = start_proxy(path, "web", port, tmp_path / "proxy.log", engine)
    route = "/v1/models/m:predict"
    Upstream.seen_ids.clear()  # the upstream serves every engine's run of this test
    try:
        ids = []
        for i in range(120):
            body = orjson.dumps({"instances": [[i % 7 - 3, 1, -1]]})
            headers = {"Content-Type": "application/json"}
            if i % 3:
                headers["X-Request-Id"] = f"web-{i}"
                ids.append(f"web-{i}")
            direct = call(upstream, "POST", route, body, headers)
            proxied = call(port, "POST", route, body, headers)
            assert proxied == direct, (i, proxied, direct)
        # the 40 ID-less requests got one from the proxy, and the upstream saw it (called
        # directly, they reached it without one)
        generated = [x for x in Upstream.seen_ids if x and not x.startswith("web-")]
        assert len(generated) == 40 and Upstream.seen_ids.count(None) == 40
        for i in range(5):  # production errors, mirrored as such
            assert call(port, "POST", "/fail", b'{"instances": [[1]]}',
                        {"X-Request-Id": f"fail-{i}"})[0] == 503  # fmt: skip
        assert call(port, "GET", "/healthz-of-upstream")[0] == 200  # outside routes
        expected = 125
        sql = "SELECT count() AS n FROM comparisons_final WHERE experiment = 'web'"
        wait_for(lambda: rows(config, sql)[0]["n"] >= expected, 90, "a row per request", pipeline)
        got = rows(
            config,
            "SELECT request_id, status, agree, production_latency_ms AS lat, "
            "production_error FROM comparisons_final WHERE experiment = 'web'",
        )
        metrics = call(port, "GET", "/-/shadowline/metrics")[2].decode()
    finally:
        stop(proc)
        pipeline.stop()
    assert len(got) == expected == len({r["request_id"] for r in got}), len(got)
    assert set(ids) <= {r["request_id"] for r in got}
    for r in got:
        if r["request_id"].startswith("fail-"):
            assert r["status"] == "production_error" and "HTTP 503" in r["production_error"], r
        else:
            assert r["status"] == "matched" and r["agree"] == 1 and r["lat"] > 0, r
    assert "shadowline_proxy_forwarded_total 126" in metrics
    assert "shadowline_proxy_mirrored_total 125" in metrics
    assert "shadowline_proxy_not_mirrored_route_total 1" in metrics


def test_upstream_failures_slowness_and_kafka_down(upstream, tmp_path, engine):
    port = free_port()
    data = {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},  # nobody there
        "tap": {"close_timeout_s": 0},
        "proxy": {"port": port, "max_body_bytes": 2_000_000},
        "experiments": [experiment(upstream, routes=["/"], timeout_s=1.0)],
    }
    path = tmp_path / "shadowline.toml"
    path.write_text(tomli_w.dumps(data))
    proc = start_proxy(path, "web", port, tmp_path / "proxy.log", engine)
    try:
        for code in (201, 202, 301, 404, 418, 500):
            assert call(port, "GET", f"/status/{code}") == call(upstream, "GET", f"/status/{code}")
        assert call(port, "GET", "/big") == call(upstream, "GET", "/big")
        assert call(port, "GET", "/stream")[2] == b"".join(f"part-{i}\n".encode()
                                                          for i in range(5))  # fmt: skip
        bad = b'{"instances": [[1, 2'  # malformed JSON, forwarded as it is
        assert call(port, "POST", "/v1/models/m:predict", bad) == call(
            upstream, "POST", "/v1/models/m:predict", bad)  # fmt: skip
        started = time.monotonic()
        status, _, body = call(port, "POST", "/slow", b"{}")
        assert status == 504 and b"timed out" in body and time.monotonic() - started < 2.9
        assert call(port, "POST", "/x", b"x" * 2_100_000)[0] == 413
        for trick in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd"):
            status, _, body = call(port, "GET", trick)
            assert status == 200 and b"root:" not in body, (trick, body[:200])
            assert orjson.loads(body)["path"].endswith("etc/passwd")  # the upstream's answer
        many = {f"X-H{i}": "v" for i in range(200)}
        assert call(port, "GET", "/status/200", headers=many)[0] in (200, 400, 431)
        assert call(port, "GET", "/status/200", headers={"X-Big": "v" * 20_000})[0] in (400, 431)
        assert call(port, "GET", "/-/shadowline/healthz")[0] == 200
        metrics = call(port, "GET", "/-/shadowline/metrics")[2].decode()
    finally:
        stop(proc)
    assert "shadowline_proxy_upstream_timeouts_total 1" in metrics
    assert "shadowline_proxy_upstream_errors_total 1" in metrics  # the 500
    # Kafka down: everything was served, and the tap counts what it holds or lost
    assert "shadowline_proxy_tap_delivered_total 0" in metrics
    assert "shadowline_proxy_tap_recorded_total" in metrics


def test_an_unreachable_upstream_is_a_502_and_the_proxy_stays_up(tmp_path, engine):
    port = free_port()
    data = {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},
        "tap": {"close_timeout_s": 0},
        "proxy": {"port": port},
        "experiments": [experiment(free_port())],
    }
    path = tmp_path / "shadowline.toml"
    path.write_text(tomli_w.dumps(data))
    proc = start_proxy(path, "web", port, tmp_path / "proxy.log", engine)
    try:
        for _ in range(3):
            status, _, body = call(port, "POST", "/v1/models/m:predict", b'{"instances": [[1]]}')
            assert status == 502 and b"unreachable" in body
        assert call(port, "GET", "/-/shadowline/healthz")[0] == 200
        answer = call(port, "GET", "/" + "a" * 20_000)
        assert answer[0] in (400, 414, 431)
        metrics = call(port, "GET", "/-/shadowline/metrics")[2].decode()
    finally:
        stop(proc)
    assert "shadowline_proxy_upstream_unreachable_total 3" in metrics


def test_both_engines_mirror_the_same_messages(upstream, config_factory, tmp_path):
    """The Go engine writes the JSON contract, the Python one Avro: decoded, the
    messages are the same (sampling, redaction hashes, unit, output, error), and each
    sits on its key's Java-client partition."""
    from shadowline.envelopes import Prediction, Request
    from shadowline.partitioning import partition_for
    from shadowline.tap import sampled

    exp = experiment(upstream, routes=["/v1/models", "/fail"], unit_id_header="X-User")
    exp["sampling"] = 0.6
    exp["redact"] = {"drop": ["secret"], "hash": ["user.email", "amount", "user.tags"],
                     "salt": "pepper"}  # fmt: skip
    bodies = {}
    for i in range(60):
        bodies[f"r-{i}"] = orjson.dumps({
            "instances": [[i % 5 - 2, 1]], "amount": i / 7, "secret": f"s{i}",
            "user": {"email": f"u{i}@example.com", "tags": ["a", i, None, 1e-7], "age": i},
        })  # fmt: skip
    seen = {}
    for engine in ("python", "go"):
        if engine == "go":
            proxy_native.binary()
        port = free_port()
        config, path = config_factory([exp], proxy={"port": port})
        path = path.rename(tmp_path / f"{engine}.toml")
        proc = start_proxy(path, "web", port, tmp_path / f"{engine}.log", engine)
        try:
            for rid, body in bodies.items():
                status = call(port, "POST", "/v1/models/m:predict", body,
                              {"X-Request-Id": rid, "X-User": f"user-{rid}"})[0]  # fmt: skip
                assert status == 200
            assert call(port, "POST", "/fail", b'{"instances": [[1]]}',
                        {"X-Request-Id": "f-2"})[0] == 503  # fmt: skip
            assert call(port, "POST", "/v1/models/m:predict", b"not json",
                        {"X-Request-Id": "bad-1"})[0] == 400  # fmt: skip
        finally:
            stop(proc)
        expected = sum(sampled(rid, 0.6) for rid in [*bodies, "f-2"])
        assert sampled("f-2", 0.6) and 30 < expected < 50  # a sample, not all or none
        msgs = {}
        for topic, kind in (("requests", Request), ("predictions", Prediction)):
            got = read_topic(config, topic, expected)
            assert len(got) == expected, (engine, topic, len(got), expected)
            for m in got:
                assert m.partition() == partition_for(m.key(), 3), (engine, m.key())
                ctype = dict(m.headers() or [])["content-type"].decode()
                env = kind.from_message(m.key(), m.value(), ctype)
                msgs[(topic, env.request_id)] = env
        seen[engine] = msgs
    py, go = seen["python"], seen["go"]
    assert py.keys() == go.keys() and len(py) > 40
    for key, a in py.items():
        b = go[key]
        if isinstance(a, Request):
            assert (a.inputs, a.unit_id, a.experiment) == (b.inputs, b.unit_id, b.experiment)
            assert "secret" not in a.inputs
            if a.request_id.startswith("r-"):
                assert a.inputs["user"]["email"].startswith("sha256:"), a.inputs
        else:
            assert (a.output, a.error, a.role, a.model, a.unit_id) == (
                b.output, b.error, b.role, b.model, b.unit_id)  # fmt: skip
            assert b.latency_ms > 0
    assert py[("predictions", "f-2")].error == "HTTP 503 from upstream"
    assert py[("predictions", "f-2")].output is None


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes as they are; what came back before the proxy closed or went quiet."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def test_hostile_requests_are_refused_and_nothing_is_smuggled(upstream, tmp_path, engine):
    port = free_port()
    data = {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},
        "tap": {"close_timeout_s": 0},
        "proxy": {"port": port},
        "experiments": [experiment(upstream, routes=["/"])],
    }
    path = tmp_path / "shadowline.toml"
    path.write_text(tomli_w.dumps(data))
    proc = start_proxy(path, "web", port, tmp_path / "proxy.log", engine)
    hostile = {
        "garbage request line": b"\x00\x01\x02 nonsense\r\n\r\n",
        "no HTTP version": b"GET /\r\n\r\n",
        "unknown HTTP version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        "header without a colon": b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        "space before the colon": b"GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
        "two different lengths": b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 3\r\nContent-Length: 30\r\n\r\n{}\n",
        "bad chunk size": b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        "a negative length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        "a length past the limit": b"POST / HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 99999999999999\r\n\r\n{}",
    }
    # smuggling: a chunked body hiding a second request, framed by Content-Length too
    smuggle = (
        b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /status/418 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    try:
        for name, request in hostile.items():
            answer = raw(port, request)
            status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b""
            assert status == b"" or status.startswith(b"4") or status == b"505", (name, answer)
            assert call(port, "GET", "/-/shadowline/healthz")[0] == 200, name
        answer = raw(port, smuggle)
        # Refused (aiohttp closes), or read as chunked (RFC 9112 6.1: Transfer-Encoding
        # wins), so the body is empty and the upstream answers 400, and the bytes after
        # it are the client's own next request. Either way the upstream only ever gets
        # requests the proxy framed anew: one with the hidden request inside its body
        # would have been answered 200 by this upstream (it reads any JSON body).
        first = answer.split(b"\r\n", 1)[0]
        assert answer == b"" or first.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), answer
        assert b"HTTP/1.1 200" not in answer, answer
        assert call(port, "GET", "/-/shadowline/healthz")[0] == 200
    finally:
        stop(proc)
