"""Helpers for integration tests: real producers and consumers, polling with deadlines."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from shadowline import kafka
from shadowline.config import Config
from shadowline.errors import WarehouseError
from shadowline.supervisor import COMPONENTS, Pipeline
from shadowline.warehouse import Warehouse, embedded_server_answers

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None], timeout: float, what: str, pipeline: Pipeline | None = None
) -> T:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if pipeline is not None:
            pipeline.check()
        try:
            last = check()
        except WarehouseError as exc:
            # a sink restarting (killed by a fault test) holds its directory before its
            # endpoint answers: not yet, not a failure
            last = exc
        else:
            if last:
                return last
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def produce(
    config: Config, topic: str, messages: list[tuple[bytes | None, bytes, str | None]]
) -> None:
    """Produce (key, value, content-type) messages to a logical topic and wait for acks."""
    producer = kafka.make_producer(config.kafka)
    for key, value, content_type in messages:
        headers = [("content-type", content_type.encode())] if content_type else None
        producer.produce(config.kafka.topic(topic), key=key, value=value, headers=headers)
    assert producer.flush(30) == 0


def read_topic(config: Config, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
    """Read at least ``expected`` messages of a logical topic from the beginning."""
    consumer = kafka.make_consumer(config.kafka, f"test-reader-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([config.kafka.topic(topic)])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() is None:
                    out.append(msg)
    finally:
        consumer.close()
    return out


def start_pipeline(
    config: Config, path: Any, env: dict[str, str], log_dir: Any,
    components: tuple[str, ...] = COMPONENTS,
) -> Pipeline:  # fmt: skip
    """Start worker, joiner and sink (or ``components``: process names such as
    ``joiner-2``) as child processes and wait until all consumer groups hold their
    partitions and the warehouse answers."""
    pipeline = Pipeline(path, components=components, log_dir=log_dir, env=env)
    pipeline.start()
    groups = [
        f"{config.kafka.namespace}workers",
        config.joiner.app_id,
        f"{config.kafka.namespace}sink",
    ]
    try:
        wait_for(
            lambda: embedded_server_answers(config), 90, "the warehouse HTTP endpoint", pipeline
        )
        wait_for(lambda: kafka.groups_ready(config.kafka, groups), 90, f"groups {groups}", pipeline)
    except BaseException:
        pipeline.stop()
        raise
    return pipeline


def members(config: Config, group: str, n: int) -> bool:
    """True when ``group`` is stable with exactly ``n`` members, all holding partitions."""
    got = kafka.group_members(config.kafka, group)
    return len(got) == n and kafka.groups_ready(config.kafka, [group])


def rows(config: Config, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Query the warehouse the way every reader does (HTTP when the sink runs)."""
    wh = Warehouse.open_reader(config)
    try:
        return wh.query(sql, params)
    finally:
        wh.close()
