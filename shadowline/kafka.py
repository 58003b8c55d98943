"""The one module that imports confluent-kafka: client settings, topics, clients.

Clients are built by functions here and never connect in a constructor of ours;
librdkafka itself connects lazily in the background.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (  # noqa: F401  (re-exported for consumers/)
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka import KafkaError as _RdKafkaError
from confluent_kafka.admin import AdminClient, NewTopic

from shadowline.config import Config, KafkaConfig
from shadowline.errors import KafkaError
from shadowline.partitioning import PARTITIONER

_DIGITS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Lets a librdkafka message through once per ``interval_s``: a broker that is down
    is retried every few milliseconds by every client thread, and each retry logs the
    same line (only its timings differ). A repeat that ends a quiet interval says how
    many were held back."""

    def __init__(
        self,
        interval_s: float = 60.0,
        max_keys: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self.max_keys = max_keys
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = _DIGITS.sub("#", record.getMessage())
        now = self.clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.interval_s:
                self._seen[key] = (last[0], last[1] + 1)
                return False
            if len(self._seen) >= self.max_keys:  # bounded: forget the oldest
                self._seen.pop(next(iter(self._seen)))
            self._seen[key] = (now, 0)
        if last is not None and last[1]:
            record.msg = f"{record.getMessage()} (repeated {last[1]} times before this)"
            record.args = ()
        return True


_RDKAFKA_LOG = logging.getLogger("shadowline.rdkafka")
_RDKAFKA_LOG.addFilter(RepeatFilter())
PARTITION_EOF = _RdKafkaError._PARTITION_EOF
UNKNOWN_TOPIC = _RdKafkaError.UNKNOWN_TOPIC_OR_PART


@dataclass(frozen=True)
class TopicSpec:
    """A logical topic: its name suffix, partitions and topic-level settings."""

    name: str
    partitions: int
    settings: dict[str, str]


def topic_specs(cfg: KafkaConfig) -> list[TopicSpec]:
    """Every topic of the design, sized from the config.

    requests, predictions, feedback and comparisons share the partition count so
    the joiner reads co-partitioned input; control is one compacted partition so
    a router reads the whole routing state; deadletter keeps its evidence longer.
    """
    retention = str(int(cfg.retention_hours * 3_600_000))
    max_bytes = str(cfg.max_message_bytes + 1024)
    data = {"retention.ms": retention, "max.message.bytes": max_bytes}
    return [
        TopicSpec("requests", cfg.partitions, data),
        TopicSpec("predictions", cfg.partitions, data),
        TopicSpec("feedback", cfg.partitions, data),
        TopicSpec("comparisons", cfg.partitions, data),
        TopicSpec(
            "control",
            1,
            {
                "cleanup.policy": "compact",
                "min.cleanable.dirty.ratio": "0.1",
                "segment.ms": "3600000",
            },
        ),
        TopicSpec(
            "deadletter",
            cfg.partitions,
            {"retention.ms": str(30 * 86_400_000), "max.message.bytes": str(4 * 1_048_576)},
        ),
        # Clock ticks for the joiner's window expiry, one per partition.
        TopicSpec("joiner-ticks", cfg.partitions, {"retention.ms": "3600000"}),
    ]


def client_settings(cfg: KafkaConfig) -> dict[str, Any]:
    """librdkafka settings every client gets: bootstrap, security, extras."""
    out: dict[str, Any] = {
        "bootstrap.servers": cfg.bootstrap_servers,
        "security.protocol": cfg.security_protocol,
    }
    secret = {"sasl.password": cfg.sasl_password, "ssl.key.password": cfg.ssl_key_password}
    optional = {
        "sasl.mechanism": cfg.sasl_mechanism, "sasl.username": cfg.sasl_username,
        "ssl.ca.location": cfg.ssl_ca_location,
        "ssl.certificate.location": cfg.ssl_certificate_location,
        "ssl.key.location": cfg.ssl_key_location,
    }  # fmt: skip
    out.update({k: v for k, v in optional.items() if v})
    out.update({k: v.get_secret_value() for k, v in secret.items() if v})
    out.update(cfg.client)
    # librdkafka logs through Python logging, not straight onto the service's stderr.
    out.setdefault("logger", _RDKAFKA_LOG)
    return out


def make_producer(cfg: KafkaConfig, **overrides: Any) -> Producer:
    """An idempotent, lz4-compressed producer that partitions keys like the Java client."""
    settings = client_settings(cfg)
    settings.update(
        {
            "partitioner": PARTITIONER,
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 5,
            "message.max.bytes": cfg.max_message_bytes,
        }
    )
    settings.update(overrides)
    try:
        return Producer(settings)
    except KafkaException as exc:
        raise KafkaError(f"cannot create Kafka producer: {exc}") from exc


def make_consumer(cfg: KafkaConfig, group_id: str, **overrides: Any) -> Consumer:
    """A consumer that commits only when told (after its output is safe)."""
    settings = client_settings(cfg)
    settings.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            # A crashed member's partitions move after 10 s instead of librdkafka's 45 s.
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 3_000,
            "fetch.max.bytes": 8 * 1_048_576,
        }
    )
    settings.update(overrides)
    try:
        return Consumer(settings)
    except KafkaException as exc:
        raise KafkaError(f"cannot create Kafka consumer: {exc}") from exc


def admin(cfg: KafkaConfig, quiet: bool = False) -> AdminClient:
    """An admin client for topic management; ``quiet`` silences connection-refused noise."""
    settings = client_settings(cfg)
    if quiet:
        settings["log_level"] = 0
    return AdminClient(settings)


def ping(cfg: KafkaConfig, timeout: float = 2.0) -> bool:
    """True if a broker answers a metadata request within ``timeout`` seconds."""
    try:
        md = admin(cfg, quiet=True).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(md.brokers)


def create_topics(config: Config, timeout: float = 30.0) -> dict[str, str]:
    """Create every topic that does not exist yet; returns name -> 'created' | 'exists'."""
    cfg = config.kafka
    client = admin(cfg)
    try:
        existing = set(client.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise KafkaError(f"cannot reach Kafka at {cfg.bootstrap_servers}: {exc}") from exc
    result: dict[str, str] = {}
    new: list[NewTopic] = []
    for spec in topic_specs(cfg):
        name = cfg.topic(spec.name)
        if name in existing:
            result[name] = "exists"
            continue
        new.append(
            NewTopic(
                name,
                num_partitions=spec.partitions,
                replication_factor=cfg.replication_factor,
                config=spec.settings,
            )
        )
    result.update(_create(client, new, timeout))
    return result


def _create(client: AdminClient, new: list[NewTopic], timeout: float) -> dict[str, str]:
    """Create ``new`` topics; one another client made meanwhile counts as existing."""
    result: dict[str, str] = {}
    if not new:
        return result
    for name, future in client.create_topics(new, request_timeout=timeout).items():
        try:
            future.result(timeout=timeout)
            result[name] = "created"
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == _RdKafkaError.TOPIC_ALREADY_EXISTS:
                result[name] = "exists"
            else:
                raise KafkaError(f"cannot create topic {name}: {exc}") from exc
    return result


def ensure_topic(
    cfg: KafkaConfig, name: str, partitions: int, settings: dict[str, str], remedy: str = "",
    timeout: float = 30.0,
) -> str:  # fmt: skip
    """Create topic ``name`` if it is missing; returns 'created' or 'exists'. An existing
    topic of another partition count is refused (its keys would be split differently),
    with ``remedy`` appended to the message."""
    client = admin(cfg)
    try:
        topic = client.list_topics(timeout=timeout).topics.get(name)
    except KafkaException as exc:
        raise KafkaError(f"cannot reach Kafka at {cfg.bootstrap_servers}: {exc}") from exc
    if topic is not None and topic.error is None and topic.partitions:
        if len(topic.partitions) != partitions:
            raise KafkaError(
                f"topic {name} has {len(topic.partitions)} partitions, expected {partitions}"
                + (f": {remedy}" if remedy else "")
            )
        return "exists"
    new = NewTopic(name, num_partitions=partitions, replication_factor=cfg.replication_factor,
                   config=settings)  # fmt: skip
    return _create(client, [new], timeout)[name]


def copartitioned(cfg: KafkaConfig, logical: list[str], timeout: float = 30.0) -> int:
    """The partition count the logical topics share; an error names the topics if one
    is missing or their counts differ (partners could not meet by partition)."""
    try:
        md = admin(cfg).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaError(f"cannot reach Kafka at {cfg.bootstrap_servers}: {exc}") from exc
    counts = {}
    for name in (cfg.topic(t) for t in logical):
        topic = md.topics.get(name)
        if topic is None or topic.error is not None or not topic.partitions:
            raise KafkaError(f"topic {name} does not exist: run `shadowline topics create`")
        counts[name] = len(topic.partitions)
    if len(set(counts.values())) != 1:
        shown = ", ".join(f"{n} has {c}" for n, c in counts.items())
        raise KafkaError(f"these topics must have equal partition counts: {shown}")
    return next(iter(counts.values()))


def header(msg: Message, name: str) -> str | None:
    """The first header called ``name`` (case-insensitive) as text, or None."""
    headers: list[tuple[str, Any]] = msg.headers() or []  # type: ignore[assignment]
    for key, value in headers:
        if key.lower() == name and value is not None:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


def groups_ready(cfg: KafkaConfig, group_ids: list[str], timeout: float = 5.0) -> bool:
    """True when every consumer group is Stable with at least one member holding partitions."""
    from confluent_kafka import ConsumerGroupState

    try:
        client = admin(cfg, quiet=True)  # must outlive its futures
        futures = client.describe_consumer_groups(group_ids)
        for future in futures.values():
            desc = future.result(timeout=timeout)
            if desc.state != ConsumerGroupState.STABLE or not desc.members:
                return False
            if not any(m.assignment and m.assignment.topic_partitions for m in desc.members):
                return False
    except (KafkaException, TimeoutError):
        return False
    return True


def group_members(cfg: KafkaConfig, group_id: str, timeout: float = 5.0) -> set[str]:
    """Member IDs of a consumer group (empty if it cannot be described)."""
    client = admin(cfg, quiet=True)
    try:
        desc = client.describe_consumer_groups([group_id])[group_id].result(timeout=timeout)
    except (KafkaException, TimeoutError):
        return set()
    return {m.member_id for m in desc.members}
