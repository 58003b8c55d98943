"""The joiner on confluent-kafka (``joiner.engine = "confluent"``, the default).

One consumer-group member reads ``requests`` and ``predictions`` in batches and
hands them to ``JoinerCore``. The group uses the range assignor: with topics of
equal partition counts it gives every member the same partition numbers of both
topics, which the join needs (the cooperative assignors do not promise it).

State is per partition, in memory, and durable in a compacted changelog topic
(``<joiner.app_id>-pending-changelog``, the name Faust gives its table's changelog,
so either engine restores the other's state) written once per key per batch. On
assignment a partition's state is read back from its changelog before any of its
events is handled; a partition this member held until the rebalance keeps its
memory when the changelog's end is where this member's last write left it.

Each batch: rows, dead letters and the state writes that depend on no row are
produced; once Kafka acknowledged them, the states that say "emitted" follow;
once those are acknowledged, exactly the offsets handled are committed. A crash
anywhere replays from the last commit (at-least-once; the warehouse keeps one row
per request and candidate).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

from shadowline.consumers.loop import commit, flush_all, stop_on_signals, usable
from shadowline.streams.core import JoinerCore, JoinerStats, Record, Step

from shadowline import kafka
from shadowline.config import Config
from shadowline.embeddings import load_model as load_embeddings
from shadowline.embeddings import similarity_for
from shadowline.envelopes import now_ms
from shadowline.errors import KafkaError
from shadowline.metrics import ComponentMetrics

log = logging.getLogger("shadowline.joiner")

AVRO_HEADERS = [("content-type", b"avro/binary")]
# Compact often, so a restore reads live states rather than all history.
CHANGELOG_SETTINGS = {
    "cleanup.policy": "compact",
    "segment.ms": "600000",
    "min.cleanable.dirty.ratio": "0.1",
    "delete.retention.ms": "600000",
}
# A restore that takes longer than this is a fault (the process exits and restarts).
RESTORE_TIMEOUT_S = 240.0
MISPLACED_LOG_INTERVAL_S = 60.0


def changelog_topic(config: Config) -> str:
    """The pending-state changelog's topic name."""
    return f"{config.joiner.app_id}-pending-changelog"


def ensure_changelog(config: Config, partitions: int) -> str:
    """Create the changelog topic if it is missing; refuse one of another size."""
    name = changelog_topic(config)
    remedy = ("the changelog must match the input topics; delete it (its state is lost) "
              "or give the joiner another joiner.app_id")  # fmt: skip
    kafka.ensure_topic(config.kafka, name, partitions, CHANGELOG_SETTINGS, remedy)
    return name


def watermarks(consumer: Any, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
    """(low, high) offsets of each of ``topic``'s ``partitions``, asked of the broker."""
    return {
        p: consumer.get_watermark_offsets(kafka.TopicPartition(topic, p), timeout=10.0,
                                          cached=False)
        for p in partitions
    }  # fmt: skip


def read_changelog(
    consumer: Any, topic: str, bounds: dict[int, tuple[int, int]],
    timeout_s: float = RESTORE_TIMEOUT_S,
) -> dict[int, list[tuple[bytes, bytes | None]]]:  # fmt: skip
    """Every record of the changelog's partitions up to the high watermarks in
    ``bounds`` (from ``watermarks``). ``consumer`` is assigned, not subscribed, and
    reports partition EOF."""
    entries: dict[int, list[tuple[bytes, bytes | None]]] = {p: [] for p in bounds}
    ends = {p: high for p, (_, high) in bounds.items()}
    todo = {p for p, (low, high) in bounds.items() if high > low}
    if not todo:
        return entries
    consumer.assign([kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in todo])
    deadline = time.monotonic() + timeout_s
    try:
        while todo:
            if time.monotonic() > deadline:
                raise KafkaError(f"restoring {topic} partitions {sorted(todo)} took > {timeout_s}s")
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                p = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() == kafka.PARTITION_EOF:
                        if msg.offset() >= ends[p]:
                            todo.discard(p)
                        continue
                    if err.fatal():
                        raise KafkaError(f"fatal Kafka error while restoring {topic}: {err}")
                    log.warning("transient Kafka error while restoring %s: %s", topic, err)
                    continue
                entries[p].append((msg.key(), msg.value()))
                if msg.offset() >= ends[p] - 1:
                    todo.discard(p)
    finally:
        consumer.unassign()
    return entries


class Outbox:
    """The joiner's producer: rows, dead letters and changelog records, each batch
    waited for once. Remembers where its changelog writes ended, per partition."""

    def __init__(self, config: Config, changelog: str) -> None:
        self.changelog = changelog
        self.producer = kafka.make_producer(
            config.kafka,
            **{
                "linger.ms": 2,
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 1_000_000,
                # Ride out a broker outage; the joiner cannot move on without its
                # output anyway.
                "message.timeout.ms": 600_000,
            },
        )
        self.failures: list[str] = []
        self.changelog_end: dict[int, int] = {}

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")
        elif msg.topic() == self.changelog:
            p = msg.partition()
            self.changelog_end[p] = max(self.changelog_end.get(p, 0), msg.offset() + 1)

    def send(
        self, topic: str, key: bytes | None, value: bytes | None,
        partition: int | None = None, headers: list[tuple[str, bytes]] | None = None,
    ) -> None:  # fmt: skip
        """Queue one record (waits only while the local queue is full)."""
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": self._delivered}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        while True:
            try:
                self.producer.produce(topic, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)

    def drain(self, stop: threading.Event) -> None:
        """Wait until Kafka acknowledged everything sent; raise if anything failed."""
        flush_all(self.producer, stop, "joiner")
        self.check()

    def check(self) -> None:
        """Raise if a record sent so far was not delivered."""
        if self.failures:
            failed, self.failures = self.failures, []
            raise KafkaError(f"{len(failed)} records not delivered: " + "; ".join(failed[:3]))


class Joiner:
    """The joiner process on confluent-kafka."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.group_id = config.joiner.app_id
        self.metrics = ComponentMetrics("joiner")
        self.core: JoinerCore | None = None
        # Partitions given up at the last rebalance: their state, and the changelog
        # end it matches (reused if nobody wrote after us).
        self._standby: dict[int, tuple[object, int]] = {}
        self._restore_consumer: Any = None
        self._outbox: Outbox | None = None
        self._misplaced_logged = 0.0
        # Next offset to read per (topic, partition), as last committed.
        self._committed: dict[tuple[str, int], int] = {}
        if any(similarity_for(e) for e in config.experiments):
            load_embeddings()  # at start: a missing extra stops here with its message

    @property
    def stats(self) -> JoinerStats:
        return self.core.stats if self.core is not None else JoinerStats()

    # -- rebalances (called from inside consume()) -----------------------------------

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        assert self.core is not None and self._outbox is not None
        wanted = sorted({tp.partition for tp in partitions})
        changelog = self._outbox.changelog
        bounds = watermarks(self._restore_consumer, changelog, wanted)
        ends = {p: high for p, (_, high) in bounds.items()}
        kept = {p: s for p, (s, end) in self._standby.items() if p in ends and end == ends[p]}
        self._standby.clear()
        to_read = [p for p in wanted if p not in kept]
        started = time.perf_counter()
        entries = read_changelog(self._restore_consumer, changelog, {p: bounds[p] for p in to_read})
        before = self.core.stats.restored
        for p in wanted:
            if p in kept:
                self.core.assign(p, kept=kept[p])
            else:
                self.core.assign(p, entries.get(p, ()))
            self._outbox.changelog_end[p] = ends[p]
        restored = self.core.stats.restored - before
        self.metrics.restored(restored)
        log.info(
            "assigned partitions %s: %d kept in memory, %d restored (%d states) in %.2fs",
            wanted, len(kept), len(to_read), restored, time.perf_counter() - started,
        )  # fmt: skip

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        # Every batch was produced and acknowledged before consume() was called again,
        # so nothing is in flight; commit its offsets once more, synchronously, so the
        # next owner starts exactly where this member stopped.
        assert self.core is not None and self._outbox is not None
        gone = {(tp.topic, tp.partition) for tp in partitions}
        offsets = [kafka.TopicPartition(t, p, o) for (t, p), o in self._committed.items()
                   if (t, p) in gone]  # fmt: skip
        if offsets:
            commit(consumer, offsets=offsets)
        for key in gone:
            self._committed.pop(key, None)
        for p in sorted({tp.partition for tp in partitions}):
            state = self.core.revoke(p)
            if state is not None:
                self._standby[p] = (state, self._outbox.changelog_end.get(p, -1))
        log.info("revoked partitions %s", sorted({tp.partition for tp in partitions}))

    def _lost(self, consumer: Any, partitions: list[Any]) -> None:
        # Another member may own them already: what we hold may be stale.
        assert self.core is not None
        for p in {tp.partition for tp in partitions}:
            self.core.revoke(p)
            self._standby.pop(p, None)
        for tp in partitions:
            self._committed.pop((tp.topic, tp.partition), None)
        log.warning("lost partitions %s", sorted({tp.partition for tp in partitions}))

    # -- the loop --------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> JoinerStats:
        """Run until ``stop`` is set (or SIGINT/SIGTERM); returns the counters."""
        stop = stop or threading.Event()
        stop_on_signals(stop)
        cfg, k = self.config.joiner, self.config.kafka
        partitions = kafka.copartitioned(k, ["requests", "predictions"])
        changelog = ensure_changelog(self.config, partitions)
        self.core = JoinerCore(self.config, partitions=partitions)
        outbox = self._outbox = Outbox(self.config, changelog)
        self._restore_consumer = kafka.make_consumer(
            k, f"{self.group_id}-restore", **{"enable.partition.eof": True}
        )
        consumer = kafka.make_consumer(
            k, self.group_id, **{"partition.assignment.strategy": "range"}
        )
        inputs = [k.topic("requests"), k.topic("predictions")]
        consumer.subscribe(
            inputs, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
        )
        m = self.metrics
        m.serve(self.config)
        tick_ms = int(cfg.tick_interval_s * 1000)
        last_sweep = 0
        try:
            while not stop.is_set():
                if m.lag_due(self.config.metrics.lag_interval_s):
                    m.measure_lag(consumer)
                msgs = consumer.consume(num_messages=cfg.batch_max, timeout=cfg.batch_wait_s)
                started = time.perf_counter()
                now = now_ms()
                records: list[Record] = []
                handled: dict[tuple[str, int], int] = {}
                counts: dict[str, int] = defaultdict(int)
                for msg in msgs:
                    if not usable(msg, kafka.PARTITION_EOF):
                        continue
                    topic, p, offset = msg.topic(), msg.partition(), msg.offset()
                    assert topic is not None and p is not None and offset is not None
                    records.append(Record(topic, p, offset, msg.key(), msg.value(), msg.headers()))
                    handled[(topic, p)] = offset + 1
                    counts[topic] += 1
                sweep = now - last_sweep >= tick_ms
                if not records and not sweep:
                    continue
                if sweep:
                    last_sweep = now
                step = self.core.handle(records, now, sweep=sweep)
                self._write(step, outbox, stop)
                if handled:
                    # Rows and states are acknowledged: a lost commit only replays.
                    offsets = [kafka.TopicPartition(t, p, o) for (t, p), o in handled.items()]
                    commit(consumer, asynchronous=True, offsets=offsets)
                    self._committed.update(handled)
                for topic, n in counts.items():
                    m.consumed(topic, n)
                self._observe(step)
                if records:
                    m.batch(time.perf_counter() - started)
        finally:
            m.close()
            consumer.close()
            self._restore_consumer.close()
            s = self.stats
            log.warning(
                "joiner stopped: events=%d emitted=%d dead_lettered=%d duplicates=%d "
                "misplaced=%d", s.events, s.emitted, s.dead_lettered, s.duplicates, s.misplaced,
            )  # fmt: skip
        return self.stats

    def _write(self, step: Step, outbox: Outbox, stop: threading.Event) -> None:
        k = self.config.kafka
        comparisons, deadletter = k.topic("comparisons"), k.topic("deadletter")
        for row in step.rows:
            outbox.send(comparisons, row.request_id.encode(), row.encode(), headers=AVRO_HEADERS)
        for letter in step.dead:
            outbox.send(deadletter, letter.key or None, letter.encode(), headers=AVRO_HEADERS)
        for w in step.early:
            outbox.send(outbox.changelog, w.key, w.value, partition=w.partition)
        outbox.drain(stop)
        if step.late:
            for w in step.late:
                outbox.send(outbox.changelog, w.key, w.value, partition=w.partition)
            outbox.drain(stop)

    def _observe(self, step: Step) -> None:
        m = self.metrics
        k = self.config.kafka
        if step.rows:
            m.produced(k.topic("comparisons"), len(step.rows))
        if step.dead:
            m.dead_lettered(len(step.dead))
        for topic, n in step.decode_errors.items():
            m.decode_error(topic, n)
        if step.misplaced:
            for topic, n in step.misplaced_by_topic().items():
                m.misplaced(topic, n)
            now = time.monotonic()
            if now - self._misplaced_logged >= MISPLACED_LOG_INTERVAL_S:
                self._misplaced_logged = now
                topic, rid, got, home = step.misplaced[0]
                log.warning(
                    "%d requests so far arrived on a partition other than their key's: "
                    "%r came on %s partition %d, its key hashes (murmur2, as the Java "
                    "client's default partitioner) to %d. Partners produced by a "
                    "Java-compatible client cannot meet it; produce with a murmur2 "
                    "partitioner (see docs/contracts.md, partitioning)",
                    self.stats.misplaced, rid, topic, got, home,
                )  # fmt: skip


def run(config: Config) -> None:
    """Run the confluent-kafka joiner in the foreground until SIGINT/SIGTERM."""
    from shadowline.streams.joiner import tune_gc

    joiner = Joiner(config)
    tune_gc()
    joiner.run()
