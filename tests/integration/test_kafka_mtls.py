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
