"""KServe / Seldon payload logs as mirrored traffic: CloudEvents POSTed to the ingest
endpoint become requests and production predictions, joined with a candidate and
stored; hostile input gets an answer with its reason."""

from __future__ import annotations

import http.client
import uuid
from typing import Any

import orjson
import pytest

from shadowline import ingest
from shadowline.config import parse_config
from tests.conftest import answered, free_port
from tests.integration.helpers import rows, start_pipeline, wait_for
from tests.integration.test_http_surfaces import raw

pytestmark = pytest.mark.integration

REQ, RESP = "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.getheader("Content-Type", "").startswith("text/plain"):
            return resp.status, {"error": data.decode()}  # refused by the HTTP parser
        return resp.status, orjson.loads(data) if data else {}
    finally:
        conn.close()


def binary(port: int, ce_id: str, ce_type: str, payload: Any, ce_time: str, path: str = "/",
           service: str = "sklearn-iris") -> int:  # fmt: skip
    """A CloudEvent in binary mode, as KServe's logger sends it."""
    status, body = post(port, path, orjson.dumps(payload), {
        "Content-Type": "application/json", "Ce-Specversion": "1.0", "Ce-Id": ce_id,
        "Ce-Type": ce_type, "Ce-Source": "http://localhost:9081/", "Ce-Time": ce_time,
        "Ce-Inferenceservicename": service, "Ce-Namespace": "default", "Ce-Endpoint": "",
    })  # fmt: skip
    assert status == 202, body
    return status


def structured(port: int, ce_id: str, ce_type: str, payload: Any, ce_time: str) -> None:
    event = {"specversion": "1.0", "id": ce_id, "type": ce_type, "source": "seldon",
             "time": ce_time, "datacontenttype": "application/json", "data": payload}  # fmt: skip
    status, body = post(port, "/ingest/iris", orjson.dumps(event),
                        {"Content-Type": "application/cloudevents+json"})  # fmt: skip
    assert status == 202, body


def stamp(ms: int) -> str:
    # Go's logger writes nanoseconds
    return f"2026-12-02T10:00:{ms // 1000:02d}.{ms % 1000:03d}123456Z"


def test_payload_logs_are_joined_with_a_candidate(config_factory, child_env, tmp_path):
    config, path = config_factory([{
        "name": "iris", "production_model": "sklearn-iris", "output": "classification",
        "window_s": 3.0, "inference_service": "sklearn-iris",
        "candidates": [{"name": "sign", "model": "tests.fixtures.models:PayloadSignModel"}],
    }], ingest={"port": free_port(), "pending_s": 1.0})  # fmt: skip
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    server = ingest.serve(config)
    port = server.server_address[1]
    try:
        expected: dict[str, dict[str, Any]] = {}
        for i in range(40):
            rid = str(uuid.uuid4())
            row = [float(i % 5 - 2), 1.5, -0.5, 0.25]
            label = int(sum(row) > 0)
            if i % 4 == 0:  # V2 (Open Inference Protocol), structured mode, response first
                request = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                       "data": row}]}  # fmt: skip
                response = {
                    "model_name": "iris",
                    "outputs": [
                        {"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [label]}
                    ],
                }
                structured(port, rid, RESP, response, stamp(1000 + 7 * i + 12))
                structured(port, rid, REQ, request, stamp(1000 + 7 * i))
                expected[rid] = {"latency": 12.0, "status": "matched"}
            elif i % 10 == 3:  # the response never comes
                binary(port, rid, REQ, {"instances": [row]}, stamp(1000 + 7 * i))
                expected[rid] = {"latency": None, "status": "missing_production"}
            else:  # V1, binary mode; routed by ce-inferenceservicename
                binary(port, rid, REQ, {"instances": [row]}, stamp(1000 + 7 * i))
                binary(port, rid, RESP, {"predictions": [label]}, stamp(1000 + 7 * i + 5))
                expected[rid] = {"latency": 5.0, "status": "matched"}
        # a V1 request of two instances, its error response by path
        rid = str(uuid.uuid4())
        binary(port, rid, REQ, {"instances": [[1, 1, 1, 1], [-1, -1, -1, -1]]}, stamp(9000),
               path="/ingest/iris")  # fmt: skip
        binary(port, rid, RESP, {"error": "model crashed"}, stamp(9030), path="/ingest/iris")
        expected[rid] = {"latency": 30.0, "status": "production_error"}
        counters = server.ingest.counters  # type: ignore[attr-defined]
        assert counters.paired == len(expected) - 4, counters
        sql = "SELECT count() AS n FROM comparisons_final WHERE experiment = 'iris'"
        wait_for(lambda: rows(config, sql)[0]["n"] >= len(expected), 90, "a row per event pair",
                 pipeline)  # fmt: skip
        got = rows(config, "SELECT request_id, status, agree, production_latency_ms AS lat, "
                           "production_error, candidate_output FROM comparisons_final "
                           "WHERE experiment = 'iris'")  # fmt: skip
    finally:
        server.shutdown()
        pipeline.stop()
    assert counters.requests_without_response == 4, counters.snapshot()
    by_id = {r["request_id"]: r for r in got}
    assert set(by_id) == set(expected) and len(got) == len(expected)
    for rid, want in expected.items():
        r = by_id[rid]
        assert r["status"] == want["status"], r
        if want["status"] == "matched":
            assert r["agree"] == 1 and r["lat"] == pytest.approx(want["latency"]), r
    err = by_id[rid]
    assert "model crashed" in err["production_error"] and orjson.loads(err["candidate_output"]) == [
        1, 0]  # fmt: skip


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    # Kafka at a closed port: the endpoint answers all the same and counts what it
    # could not mirror.
    config = parse_config({
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},
        "tap": {"close_timeout_s": 0},
        "ingest": {"port": free_port(), "max_body_bytes": 65536, "max_pending": 50},
        "experiments": [{"name": "iris", "production_model": "p", "candidates": [
            {"name": "c", "model": "tests.fixtures.models:EchoModel"}]}],
    }, env={})  # fmt: skip
    server = ingest.serve(config)
    yield server.server_address[1], server
    server.shutdown()


HEADERS = {"Content-Type": "application/json", "Ce-Id": "a", "Ce-Type": REQ}
CE_JSON = {"Content-Type": "application/cloudevents+json"}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "reason"),
    [
        ("/", b'{"instances": [[1]]}', {**HEADERS}, 400, "ce-inferenceservicename"),
        ("/ingest/nope", b'{"instances": [[1]]}', HEADERS, 404, "'nope' is not configured"),
        ("/ingest/iris", b"{not json", HEADERS, 400, "body is not JSON"),
        ("/ingest/iris", b'{"instances": [[1]]}', {**HEADERS, "Ce-Type": "x.y"}, 400,
         "ce-type 'x.y' is not one of"),
        ("/ingest/iris", b'{"instances": [[1]]}', {"Content-Type": "application/json",
                                                    "Ce-Type": REQ}, 400, "ce-id is missing"),
        ("/ingest/iris", b'{"rows": [[1]]}', HEADERS, 400, "none of 'instances' (V1)"),
        ("/ingest/iris", b"[1, 2]", HEADERS, 400, "payload is list"),
        ("/ingest/iris", b'{"inputs": [{"shape": "x"}]}', HEADERS, 400, "inputs[0].shape"),
        # a control character in a header: refused by the HTTP parser itself
        ("/ingest/iris", b'{"instances": [[1]]}', {**HEADERS, "Ce-Id": "a\x01b"}, 400,
         "Invalid header value char"),
        ("/ingest/iris", b'{"instances": [[1]]}', {**HEADERS, "Content-Type": "text/xml"}, 415,
         "send application/json"),
        ("/ingest/iris", b'{"instances": [[1]]}', {**HEADERS, "Ce-Id": "x" * 300}, 400,
         "1 to 256"),
        ("/ingest/iris", b"[]", {"Content-Type": "application/cloudevents+json"}, 400,
         "must be a JSON object"),
        ("/ingest/iris", b'{"id": 5, "type": "t"}', CE_JSON, 400,
         "are strings"),
        ("/ingest/iris/../../etc/passwd", b"{}", HEADERS, 404, "POST /ingest/EXPERIMENT"),
        ("/ingest/%2e%2e/%2e%2e/etc", b"{}", HEADERS, 404, "POST /ingest/EXPERIMENT"),
        ("/etc/passwd", b"{}", HEADERS, 404, "POST /ingest/EXPERIMENT"),
        ("/ingest/iris", b'{"instances": [' + b"1," * 40000 + b"1]}", HEADERS, 413,
         "request body over 65536 bytes"),
    ],
)  # fmt: skip
def test_hostile_events_get_an_answer_with_the_reason(endpoint, path, body, headers, status,
                                                      reason):  # fmt: skip
    port, _ = endpoint
    got, answer = post(port, path, body, headers)
    assert got == status and reason in answer.get("error", ""), answer
    assert post(port, "/ingest/iris", b'{"instances": [[1]]}',
                {**HEADERS, "Ce-Id": str(uuid.uuid4())})[0] == 202  # fmt: skip


def test_kafka_down_the_endpoint_answers_and_counts(endpoint):
    port, server = endpoint
    service = server.ingest
    before = service.mirror.counters.snapshot()
    rid = f"down-{uuid.uuid4()}"
    for ce_type, payload in ((REQ, {"instances": [[1]]}), (RESP, {"predictions": [1]})):
        got, _ = post(port, "/ingest/iris", orjson.dumps(payload),
                      {**HEADERS, "Ce-Id": rid, "Ce-Type": ce_type})  # fmt: skip
        assert got == 202
    assert service.counters.paired >= 1
    after = service.mirror.counters.snapshot()
    assert after["recorded"] == before["recorded"] + 1


def test_the_endpoint_refuses_hostile_http_and_stays_up(endpoint):
    port, server = endpoint
    for method in ("PUT", "DELETE", "PATCH", "TRACE"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(method, "/ingest/iris", body=b"x")
        assert conn.getresponse().status == 405
        conn.close()
    answer = raw(port, b"POST /ingest/iris HTTP/1.1\r\nHost: attacker.example\r\n"
                       b"Connection: close\r\nContent-Length: 2\r\n\r\n{}")  # fmt: skip
    assert answered(answer) == 403 and b"is not this loopback server" in answer
    for length, status in (("abc", 400), ("-1", 400), ("99999999999", 413)):
        answer = raw(port, f"POST /ingest/iris HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Content-Length: {length}\r\n\r\n{{}}".encode())  # fmt: skip
        assert answered(answer) == status, answer[:200]
    many = "".join(f"X-H{i}: v\r\n" for i in range(80))
    answer = raw(port, f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n".encode())
    assert answered(answer) == 431
    answer = raw(port, b"POST /ingest/iris HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: "
                       b"chunked\r\nContent-Type: application/json\r\nCe-Id: c1\r\nCe-Type: "
                       + REQ.encode() + b"\r\n\r\nzz\r\n")  # fmt: skip
    assert answered(answer) == 400 and b"chunk size" in answer
    # bounded: past max_pending inferences waiting for a partner, 503 (the sender retries)
    statuses = [post(port, "/ingest/iris", b'{"instances": [[1]]}',
                     {**HEADERS, "Ce-Id": f"fill-{i}"})[0] for i in range(80)]  # fmt: skip
    assert 503 in statuses and server.ingest.pending() <= 50
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read()
    assert b"shadowline_ingest_refused_total" in text and b"shadowline_ingest_pending 50" in text
