"""Fixtures: the real Kafka broker (session), and factories giving each test its own
topics, consumer groups, warehouse directory and ports."""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from shadowline import broker
from shadowline.config import Config, load_config, parse_config
from shadowline.kafka import create_topics, ping

ROOT = Path(__file__).resolve().parent.parent
TEST_BOOTSTRAP = os.environ.get("SHADOWLINE_TEST_BOOTSTRAP", "127.0.0.1:29092")


def free_port() -> int:
    """A free loopback port whose successor is free too (a local broker's controller
    listens on port + 1)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of loopback ports")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Kafka broker: the one answering at SHADOWLINE_TEST_BOOTSTRAP, or one we start
    with the project's own command (and stop afterwards)."""
    config = parse_config(
        {
            "kafka": {
                "bootstrap_servers": TEST_BOOTSTRAP,
                "local_data_dir": str(tmp_path_factory.mktemp("kafka")),
                "partitions": 3,
            }
        },
        env={},
    )
    started = False
    if not ping(config.kafka, timeout=2.0):
        broker.up(config, timeout=120)
        started = True
    yield TEST_BOOTSTRAP
    if started:
        broker.down(config)


@pytest.fixture
def config_factory(kafka_bootstrap: str, tmp_path: Path) -> Callable[..., tuple[Config, Path]]:
    """A config file for this test: own namespace, app id, warehouse and port; topics created."""

    def make(
        experiments: list[dict[str, Any]],
        _before_topics: Callable[[Config], Any] | None = None,
        **sections: Any,
    ) -> tuple[Config, Path]:
        ns = f"t{uuid.uuid4().hex[:10]}."
        data: dict[str, Any] = {
            "kafka": {"bootstrap_servers": kafka_bootstrap, "namespace": ns, "partitions": 3},
            "warehouse": {
                "path": str(tmp_path / "warehouse"),
                "port": free_port(),
                "flush_interval_s": 0.3,
            },
            "joiner": {
                "app_id": f"{ns}joiner",
                "data_dir": str(tmp_path / "joiner"),
                "tick_interval_s": 0.3,
                "late_grace_s": 30,
            },
            "experiments": experiments,
            "metrics": {
                "worker_port": free_port(),
                "joiner_port": free_port(),
                "sink_port": free_port(),
                "lag_interval_s": 1.0,
            },
        }
        for key, value in sections.items():
            data.setdefault(key, {}).update(value)
        path = tmp_path / "shadowline.toml"
        path.write_text(tomli_w.dumps(data))
        config = load_config(path)
        if _before_topics is not None:
            _before_topics(config)
        create_topics(config)
        return config, path

    return make


@pytest.fixture
def child_env() -> dict[str, str]:
    """Environment for pipeline child processes: test fake models importable."""
    env = {"PYTHONPATH": str(ROOT), "SHADOWLINE_LOG_LEVEL": "INFO"}
    return env


def answered(answer: bytes) -> int:
    """The status code of a raw HTTP answer ("HTTP/1.x NNN ..."); errors found while
    parsing a request are answered as HTTP/1.0, the rest as HTTP/1.1."""
    assert re.match(rb"HTTP/1\.[01] \d{3} ", answer), answer[:200]
    return int(answer[9:12])
