"""Prometheus metrics of the long-running components, and collectors for the SDK.

Each of worker, joiner and sink serves ``/metrics`` on ``metrics.host`` and its own
``metrics.<component>_port`` (0 turns it off). The tap and the router live in the
user's service: ``register_tap(mirror)`` / ``register_router(router)`` add their
counters to the service's own Prometheus registry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from shadowline.config import Config

log = logging.getLogger("shadowline.metrics")

BATCH_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ComponentMetrics:
    """The metrics one component exports (labelled with its name)."""

    def __init__(self, component: str) -> None:
        self.component = component
        self.registry = CollectorRegistry()
        r = self.registry
        self._in = Counter("shadowline_events_in", "Messages consumed, by topic.",
                           ["component", "topic"], registry=r)  # fmt: skip
        self._out = Counter("shadowline_events_out", "Messages produced or rows inserted.",
                            ["component", "destination"], registry=r)  # fmt: skip
        self._decode = Counter("shadowline_decode_errors", "Undecodable messages, by topic.",
                               ["component", "topic"], registry=r)  # fmt: skip
        self._dead = Counter("shadowline_dead_lettered", "Messages sent to the dead-letter topic.",
                             ["component"], registry=r)  # fmt: skip
        self._batch = Histogram("shadowline_batch_seconds", "Time to handle one batch, end to end.",
                                ["component"], buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        self._lag = Gauge("shadowline_consumer_lag", "Messages not yet consumed, by partition.",
                          ["component", "topic", "partition"], registry=r)  # fmt: skip
        self._misplaced = Counter(
            "shadowline_misplaced_events",
            "Requests first seen on a partition other than their key's murmur2 partition "
            "(their partners cannot meet them there).",
            ["component", "topic"], registry=r,
        )  # fmt: skip
        self._restored = Counter(
            "shadowline_state_restored", "Pending states read back from the changelog.",
            ["component"], registry=r,
        )  # fmt: skip
        self._last_lag = 0.0
        self.server: Any = None

    def consumed(self, topic: str, n: int = 1) -> None:
        self._in.labels(self.component, topic).inc(n)

    def produced(self, destination: str, n: int = 1) -> None:
        self._out.labels(self.component, destination).inc(n)

    def decode_error(self, topic: str, n: int = 1) -> None:
        self._decode.labels(self.component, topic).inc(n)

    def dead_lettered(self, n: int = 1) -> None:
        self._dead.labels(self.component).inc(n)

    def misplaced(self, topic: str, n: int = 1) -> None:
        self._misplaced.labels(self.component, topic).inc(n)

    def restored(self, n: int) -> None:
        self._restored.labels(self.component).inc(n)

    def batch(self, seconds: float) -> None:
        self._batch.labels(self.component).observe(seconds)

    def lag(self, topic: str, partition: int, value: int) -> None:
        self._lag.labels(self.component, topic, str(partition)).set(max(0, value))

    def lag_due(self, interval_s: float) -> bool:
        """True at most once per ``interval_s`` (lag is measured from the consumer's thread)."""
        now = time.monotonic()
        if now - self._last_lag >= interval_s:
            self._last_lag = now
            return True
        return False

    def measure_lag(self, consumer: Any) -> None:
        """Lag of every assigned partition of a confluent-kafka consumer: high
        watermark minus position (the client's cached watermarks where it has them)."""
        try:
            assigned = consumer.assignment()
            if not assigned:
                return
            for tp in consumer.position(assigned):
                if tp.offset < 0:
                    continue  # nothing consumed from it yet
                try:
                    _, high = consumer.get_watermark_offsets(tp, cached=True)
                except Exception:  # not in the client's cache yet: ask, briefly
                    high = -1
                if high < 0:
                    _, high = consumer.get_watermark_offsets(tp, timeout=0.5, cached=False)
                if high >= 0:
                    self.lag(tp.topic, tp.partition, high - tp.offset)
        except Exception as exc:  # metrics must never stop the component
            log.debug("lag not measured: %s", exc)

    def serve(self, config: Config) -> None:
        """Serve ``/metrics`` on this component's configured port (0: do nothing)."""
        port = int(getattr(config.metrics, f"{self.component}_port"))
        if port == 0:
            return
        try:
            self.server = _metrics_server(config.metrics.host, port, self.registry)
        except OSError as exc:
            # Metrics are for operators; a taken port must not stop the pipeline.
            log.error("metrics not served on %s:%d: %s", config.metrics.host, port, exc)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


class _CountersCollector(Collector):
    def __init__(self, prefix: str, what: str, source: Any) -> None:
        self.prefix, self.what, self.source = prefix, what, source

    def collect(self) -> Iterator[Any]:
        counters = self.source.counters
        for name, value in vars(counters).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            metric = f"{self.prefix}_{name}"
            yield CounterMetricFamily(metric, f"{self.what}: {name.replace('_', ' ')}", value=value)
        readable = getattr(self.source, "readable", None)
        if readable is not None:
            yield GaugeMetricFamily(
                f"{self.prefix}_control_readable", "1 while the control topic is being read",
                value=1.0 if readable else 0.0,
            )  # fmt: skip


def register_tap(mirror: Any, registry: CollectorRegistry | None = None) -> Collector:
    """Export a ``Mirror``'s counters (``shadowline_tap_*``, e.g. drops) to a registry."""
    collector = _CountersCollector("shadowline_tap", "tap", mirror)
    (registry or REGISTRY).register(collector)
    return collector


def register_router(router: Any, registry: CollectorRegistry | None = None) -> Collector:
    """Export a ``Router``'s counters (``shadowline_router_*``) to a registry."""
    collector = _CountersCollector("shadowline_router", "router", router)
    (registry or REGISTRY).register(collector)
    return collector


def register_interleave(interleave: Any, registry: CollectorRegistry | None = None) -> Collector:
    """Export an ``Interleave``'s counters (``shadowline_interleave_*``: candidate runs,
    errors, timeouts, skipped as overloaded, merges) to a registry."""
    collector = _CountersCollector("shadowline_interleave", "interleave", interleave)
    (registry or REGISTRY).register(collector)
    return collector


def counters_registry(*sources: tuple[str, str, Any]) -> CollectorRegistry:
    """A registry exporting each ``(prefix, what, source)``'s ``source.counters`` as
    ``<prefix>_<name>_total`` (the ingest's and the proxy's ``/metrics``)."""
    registry = CollectorRegistry()
    for prefix, what, source in sources:
        registry.register(_CountersCollector(prefix, what, source))
    return registry


def _metrics_server(host: str, port: int, registry: CollectorRegistry) -> Any:
    """``/metrics`` on the shared hardened server (Prometheus' text format)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from shadowline.httpserve import BoundedServer, HardenedHandler, Refused, serve_in_thread

    class Handler(HardenedHandler):
        def route(self) -> None:
            path = self.path.split("?", 1)[0]
            if path not in ("/metrics", "/"):
                raise Refused(404, 0, f"no such path {path[:80]!r}: use /metrics")
            self.answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    return serve_in_thread(BoundedServer((host, port), Handler), "metrics-http")
