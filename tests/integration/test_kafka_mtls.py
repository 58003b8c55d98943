"""Kafka with mutual TLS: a broker (the real one, from Maven Central) with an SSL
listener that asks every client for a certificate signed by its CA. The tap, the
workers, the joiner (either engine) and the sink all connect with the configured certificate and
an encrypted key; a client without a certificate is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowline import Mirror, broker
from shadowline.config import parse_config
from tests import tls
from tests.conftest import free_port
from tests.integration.helpers import rows, start_pipeline, wait_for

pytestmark = pytest.mark.integration
KEY_PASSWORD = "hunter2-key"
EXPERIMENT = {
    "name": "tls",
    "production_model": "prod",
    "window_s": 5,
    "candidates": [{"name": "echo", "model": "tests.fixtures.models:EchoModel"}],
}


def make_certificates(d: Path) -> None:
    """A CA, a broker certificate for 127.0.0.1 and a client certificate with an
    AES-encrypted key, all PEM."""
    tls.make_certificates(d, KEY_PASSWORD)
    # the broker's PEM keystore: its key, then its certificate
    (d / "server.pem").write_text((d / "server.key").read_text() + (d / "server.crt").read_text())


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtls")
    make_certificates(d)
    port, internal = free_port(), free_port()
    kafka = {
        "bootstrap_servers": f"127.0.0.1:{port}",
        "security_protocol": "SSL",
        "ssl_ca_location": str(d / "ca.pem"),
        "ssl_certificate_location": str(d / "client.crt"),
        "ssl_key_location": str(d / "client.key"),
        "ssl_key_password": KEY_PASSWORD,
        "local_data_dir": str(d / "kafka"),
        "partitions": 3,
    }
    config = parse_config({"kafka": kafka}, env={})
    extra = {
        "listeners": f"SSL://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal},"
        f"CONTROLLER://127.0.0.1:{port + 1}",
        "advertised.listeners": f"SSL://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal}",
        "listener.security.protocol.map": "SSL:SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "INTERNAL",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(d / "server.pem"),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(d / "ca.pem"),
        "ssl.client.auth": "required",
    }
    # `up` returns once this config (the client certificate) gets an answer over TLS
    broker.up(config, timeout=120, extra_properties=extra)
    yield kafka, d
    broker.down(config)


def test_a_client_without_a_certificate_is_refused(tls_broker):
    from shadowline.kafka import ping

    kafka, _ = tls_broker
    no_cert = {k: v for k, v in kafka.items() if not k.startswith(("ssl_certificate", "ssl_key"))}
    assert ping(parse_config({"kafka": no_cert}, env={}).kafka, timeout=3.0) is False
    assert ping(parse_config({"kafka": kafka}, env={}).kafka, timeout=5.0) is True


@pytest.mark.parametrize("engine", ["confluent", "faust"])
def test_the_whole_pipeline_runs_over_mutual_tls(
    engine, tls_broker, config_factory, child_env, tmp_path
):
    kafka, _ = tls_broker
    config, path = config_factory([EXPERIMENT], kafka=kafka, joiner={"engine": engine})
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        with Mirror(config) as mirror:
            for i in range(50):
                out = {"label": i % 2, "probabilities": {"0": 0.5, "1": 0.5}}
                mirror.record(experiment="tls", request_id=f"t{i}", inputs=out,
                              output=out, latency_ms=1.0, model="prod")  # fmt: skip
            assert mirror.flush(30) == 0
            assert mirror.counters.delivered == 100
        sql = "SELECT status, count() AS n FROM comparisons_final GROUP BY status"
        wait_for(lambda: rows(config, sql) == [{"status": "matched", "n": 50}], 90,
                 "50 matched rows over mTLS", pipeline)  # fmt: skip
    finally:
        pipeline.stop()


def test_the_go_proxy_mirrors_over_mutual_tls(tls_broker, config_factory, tmp_path):
    """The Go engine's own Kafka client (franz-go) with the configured CA, certificate
    and key: every mirrored request reaches the TLS-only broker."""
    import threading
    from http.server import ThreadingHTTPServer

    from shadowline import proxy_native
    from tests import tls as tls_files
    from tests.integration.helpers import read_topic
    from tests.integration.test_proxy import Upstream, call, experiment, start_proxy, stop

    kafka, d = tls_broker
    plain = tmp_path / "client-plain.key"  # the Go engine reads unencrypted keys only
    tls_files.openssl("pkey", "-in", str(d / "client.key"), "-passin", f"pass:{KEY_PASSWORD}",
                      "-out", str(plain), cwd=tmp_path)  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy_native.binary()
    port = free_port()
    kafka_plain = {**{k: v for k, v in kafka.items() if k != "ssl_key_password"},
                   "ssl_key_location": str(plain)}  # fmt: skip
    config, path = config_factory(
        [experiment(server.server_address[1])], kafka=kafka_plain, proxy={"port": port}
    )
    proc = start_proxy(path, "web", port, tmp_path / "proxy.log", "go")
    try:
        for i in range(20):
            status = call(port, "POST", "/v1/models/m:predict", b'{"instances": [[1, 2]]}',
                          {"X-Request-Id": f"tls-{i}"})[0]  # fmt: skip
            assert status == 200
        got = read_topic(config, "predictions", 20, timeout=60)
        metrics = call(port, "GET", "/-/shadowline/metrics")[2].decode()
    finally:
        stop(proc)
        server.shutdown()
    assert sorted(m.key().decode() for m in got) == sorted(f"tls-{i}" for i in range(20))
    assert "shadowline_proxy_tap_delivered_total 40" in metrics
