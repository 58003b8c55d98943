"""The local broker recipe and topic layout, against the real broker."""

import subprocess
import sys

import pytest
from confluent_kafka.admin import ConfigResource, ResourceType

from shadowline.kafka import admin, create_topics

pytestmark = pytest.mark.integration


def test_topics_have_design_partitions_and_control_is_compacted(config_factory):
    config, _ = config_factory([])
    again = create_topics(config)  # idempotent
    assert set(again.values()) == {"exists"}
    client = admin(config.kafka)
    md = client.list_topics(timeout=10).topics
    ns = config.kafka.namespace
    for name in ("requests", "predictions", "feedback", "comparisons", "deadletter"):
        assert len(md[f"{ns}{name}"].partitions) == config.kafka.partitions
    assert len(md[f"{ns}control"].partitions) == 1
    res = ConfigResource(ResourceType.TOPIC, f"{ns}control")
    conf = client.describe_configs([res])[res].result(timeout=10)
    assert conf["cleanup.policy"].value == "compact"
    res = ConfigResource(ResourceType.TOPIC, f"{ns}requests")
    conf = client.describe_configs([res])[res].result(timeout=10)
    assert int(conf["retention.ms"].value) == int(config.kafka.retention_hours * 3_600_000)


def test_cli_status_topics_and_missing_java(config_factory, tmp_path):
    _, path = config_factory([])
    run = lambda *a, **kw: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "shadowline", *a, "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
        **kw,
    )
    status = run("kafka", "status")
    assert status.returncode == 0 and "kafka running at" in status.stdout
    topics = run("topics", "create")
    assert topics.returncode == 0 and topics.stdout.count("exists") == 7
    # With no java on PATH the local broker explains what to install, in one line.
    other = tmp_path / "other.toml"
    other.write_text(
        f'[kafka]\nbootstrap_servers = "127.0.0.1:1"\nlocal_data_dir = "{tmp_path / "k"}"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "shadowline", "kafka", "up", "-c", str(other)],
        capture_output=True, text=True, check=False, env={"PATH": "/nonexistent"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: java not found on PATH: install a Java 17+ runtime "
        "(Debian: apt-get install openjdk-17-jre-headless)"
    )
    down = subprocess.run(
        [sys.executable, "-m", "shadowline", "kafka", "status", "-c", str(other)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert down.returncode == 1 and "not running" in down.stdout


def test_kafka_up_names_a_taken_controller_port(tmp_path):
    import socket

    from shadowline import broker
    from shadowline.config import parse_config
    from shadowline.errors import BrokerError
    from tests.conftest import free_port

    port = free_port()
    config = parse_config(
        {"kafka": {"bootstrap_servers": f"127.0.0.1:{port}", "local_data_dir": str(tmp_path)}},
        env={},
    )
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port + 1))
        squatter.listen()
        with pytest.raises(BrokerError, match=rf"127.0.0.1:{port + 1}, needed by the broker's"):
            broker.up(config, timeout=30)
