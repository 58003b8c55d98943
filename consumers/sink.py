"""The sink: batch comparisons into ClickHouse, commit offsets only after a flush.

In embedded mode this process owns the chDB directory and serves the ClickHouse
HTTP interface on loopback, so gates, reports and ``shadowline query`` read
through clickhouse-connect as they would from a server.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from consumers.deadletter import DeadLetters
from consumers.loop import commit, flush_all, stop_on_signals, usable
from shadowline import kafka
from shadowline.config import Config
from shadowline.envelopes import Comparison
from shadowline.errors import Backpressure, DecodeError, WarehouseError
from shadowline.warehouse import Warehouse

log = logging.getLogger("shadowline.sink")


@dataclass
class SinkStats:
    """Counters of one sink process."""

    consumed: int = 0
    inserted: int = 0
    flushes: int = 0
    insert_failures: int = 0
    dead_lettered: int = 0


class Sink:
    """Buffer (``add``), flush in batches, then commit."""

    def __init__(self, config: Config, group_id: str | None = None) -> None:
        self.config = config
        self.group_id = group_id or f"{config.kafka.namespace}sink"
        self.stats = SinkStats()
        self._buffer: list[Comparison] = []
        self._offsets: dict[tuple[str, int], int] = {}
        self._oldest: float | None = None
        self.warehouse: Warehouse | None = None
        self.ready = threading.Event()

    def add(self, row: Comparison, msg: Any) -> None:
        """Buffer one comparison and remember its offset for the commit after flush."""
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._buffer.append(row)
        self._remember(msg)

    def _remember(self, msg: Any) -> None:
        self._offsets[(msg.topic(), msg.partition())] = msg.offset() + 1

    def due(self) -> bool:
        """True when the buffer is full or its oldest row waited ``flush_interval_s``."""
        wh = self.config.warehouse
        if len(self._buffer) >= wh.batch_size:
            return True
        return self._oldest is not None and time.monotonic() - self._oldest >= wh.flush_interval_s

    def flush(self, consumer: Any, stop: threading.Event) -> None:
        """Insert the buffer (retrying with backoff), then commit its offsets."""
        assert self.warehouse is not None
        if self._buffer:
            delay = 0.2
            while True:
                try:
                    self.stats.inserted += self.warehouse.insert_comparisons(self._buffer)
                    break
                except WarehouseError as exc:
                    # Keep the batch and its uncommitted offsets; nothing is lost, and
                    # nothing new is consumed until the warehouse takes this batch.
                    self.stats.insert_failures += 1
                    wait = exc.retry_after if isinstance(exc, Backpressure) else delay
                    log.warning("insert failed (retrying in %.1fs): %s", wait, exc)
                    if stop.is_set():
                        raise
                    time.sleep(wait)
                    delay = min(delay * 2, 5.0)
            self.stats.flushes += 1
        if self._offsets:
            offsets = [kafka.TopicPartition(t, p, o) for (t, p), o in self._offsets.items()]
            # On failure the rows are in anyway; whoever owns the partitions next
            # replays them and the ReplacingMergeTree collapses the duplicates.
            commit(consumer, offsets=offsets)
        self._buffer = []
        self._offsets = {}
        self._oldest = None

    def run(self, stop: threading.Event | None = None) -> SinkStats:
        """Run until ``stop`` is set (or SIGINT/SIGTERM)."""
        stop = stop or threading.Event()
        stop_on_signals(stop)
        k = self.config.kafka
        self.warehouse = Warehouse.open_owner(self.config)
        server = None
        if self.config.warehouse.backend == "embedded":
            server = self.warehouse.serve_http()
        consumer = kafka.make_consumer(k, self.group_id)
        producer = kafka.make_producer(k)
        dlq = DeadLetters(producer, k.topic("deadletter"), "sink")
        consumer.subscribe([k.topic("comparisons")])
        self.ready.set()
        try:
            while not stop.is_set():
                msgs = consumer.consume(num_messages=self.config.warehouse.batch_size, timeout=0.1)
                for msg in msgs:
                    if not usable(msg, kafka.PARTITION_EOF):
                        continue
                    self.stats.consumed += 1
                    try:
                        row = Comparison.from_message(
                            msg.key(), msg.value(), kafka.header(msg, "content-type")
                        )
                    except DecodeError as exc:
                        dlq.send(msg, f"{type(exc).__name__}: {exc.reason}")
                        self._remember(msg)
                        continue
                    self.add(row, msg)
                if self.due() or (self._offsets and not self._buffer):
                    flush_all(producer, stop, "sink dead letters")
                    self.flush(consumer, stop)
            flush_all(producer, stop, "sink dead letters")
            self.flush(consumer, stop)
        finally:
            consumer.close()
            if server is not None:
                server.shutdown()
                server.server_close()
            self.warehouse.close()
        self.stats.dead_lettered = dlq.count
        return self.stats
