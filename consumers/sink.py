"""The sink: batch rows into ClickHouse, commit offsets only after a flush.

Tables fed: ``comparisons`` (from the joiner), ``rollout_events`` (every control
decision), ``feedback``, and ``served`` (what A/B and canary arms served, from the
``arm`` predictions; the predictions topic is read only when such an experiment is
configured).

In embedded mode this process owns the chDB directory and serves the ClickHouse
HTTP interface on loopback, so gates, reports and ``shadowline query`` read
through clickhouse-connect as they would from a server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from shadowline.consumers.deadletter import DeadLetters
from shadowline.consumers.loop import commit, flush_all, stop_on_signals, usable

from shadowline import kafka
from shadowline.config import SERVED_MODES, Config
from shadowline.envelopes import Control, Feedback, Prediction, Request
from shadowline.errors import Backpressure, DecodeError, WarehouseError
from shadowline.metrics import ComponentMetrics
from shadowline.warehouse import (
    COMPARISON_COLUMNS,
    FEEDBACK_COLUMNS,
    INTERLEAVED_COLUMNS,
    MODEL_COLUMNS,
    REQUEST_COLUMNS,
    ROLLOUT_COLUMNS,
    SERVED_COLUMNS,
    Warehouse,
    comparison_row_from_message,
    feedback_row,
    interleaved_row,
    model_rows,
    request_row,
    rollout_row,
    served_row,
)

COLUMNS = {
    "served": SERVED_COLUMNS,
    "rollout_events": ROLLOUT_COLUMNS,
    "feedback": FEEDBACK_COLUMNS,
    "requests": REQUEST_COLUMNS,
    "interleaved": INTERLEAVED_COLUMNS,
}

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
        self._buffer: list[list[Any]] = []  # comparison rows, in COMPARISON_COLUMNS order
        # Rows for the other tables, by table.
        self._extra: dict[str, list[list[Any]]] = defaultdict(list)
        self._production = {e.name: e.production_model for e in config.experiments}
        self._served = {e.name for e in config.experiments if e.mode in SERVED_MODES}
        self._interleaved = {
            e.name for e in config.experiments if e.mode == "interleave" and e.output == "ranking"
        }
        # Requests are stored only where asked (store_requests) or feature drift is
        # gated: they double the rows.
        self.metrics = ComponentMetrics("sink")
        self._keep_requests = {e.name for e in config.experiments if e.stores_requests}
        # With the requests, production's answers (into `served`): a backtest replays both.
        self._keep_production = {
            e.name for e in config.experiments
            if e.stores_requests and e.mode not in SERVED_MODES
        }  # fmt: skip
        self._offsets: dict[tuple[str, int], int] = {}
        self._oldest: float | None = None
        self.warehouse: Warehouse | None = None
        self.ready = threading.Event()

    def add(self, row: list[Any], msg: Any) -> None:
        """Buffer one comparison row and remember its offset for the commit after flush."""
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._buffer.append(row)
        self._remember(msg)

    def add_row(self, table: str, row: list[Any], msg: Any) -> None:
        """Buffer one row for ``table`` (served, rollout_events, feedback)."""
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._extra[table].append(row)
        self._remember(msg)

    def _pending(self) -> int:
        return len(self._buffer) + sum(len(rows) for rows in self._extra.values())

    def _remember(self, msg: Any) -> None:
        self._offsets[(msg.topic(), msg.partition())] = msg.offset() + 1

    def due(self) -> bool:
        """True when the buffer is full or its oldest row waited ``flush_interval_s``."""
        wh = self.config.warehouse
        if self._pending() >= wh.batch_size:
            return True
        return self._oldest is not None and time.monotonic() - self._oldest >= wh.flush_interval_s

    def flush(self, consumer: Any, stop: threading.Event) -> None:
        """Insert the buffer (retrying with backoff), then commit its offsets."""
        assert self.warehouse is not None
        started = time.perf_counter()
        if self._buffer or self._extra:
            delay = 0.2
            while True:
                try:
                    n = self.warehouse.insert("comparisons", COMPARISON_COLUMNS, self._buffer)
                    self.stats.inserted += n
                    self.metrics.produced("comparisons", n)
                    self._buffer = []
                    for table in list(self._extra):
                        rows = self._extra[table]
                        n = self.warehouse.insert(table, COLUMNS[table], rows)
                        self.stats.inserted += n
                        self.metrics.produced(table, n)
                        del self._extra[table]
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
            self.metrics.batch(time.perf_counter() - started)
        if self._offsets:
            offsets = [kafka.TopicPartition(t, p, o) for (t, p), o in self._offsets.items()]
            # On failure the rows are in anyway; whoever owns the partitions next
            # replays them and the ReplacingMergeTree collapses the duplicates.
            commit(consumer, offsets=offsets)
        self._buffer = []
        self._extra.clear()
        self._offsets = {}
        self._oldest = None

    def _take(self, msg: Any, dlq: DeadLetters) -> None:
        """Decode one message into the buffer of its table (or dead-letter it)."""
        k = self.config.kafka
        topic = msg.topic()
        ctype = kafka.header(msg, "content-type")
        try:
            if topic == k.topic("comparisons"):
                self.add(comparison_row_from_message(msg.key(), msg.value(), ctype), msg)
            elif topic == k.topic("control"):
                control = Control.from_message(msg.key(), msg.value(), ctype)
                production = self._production.get(control.experiment)
                self.add_row("rollout_events", rollout_row(control, production), msg)
            elif topic == k.topic("feedback"):
                fb = Feedback.from_message(msg.key(), msg.value(), ctype)
                self.add_row("feedback", feedback_row(fb), msg)
            elif topic == k.topic("requests"):
                req = Request.from_message(msg.key(), msg.value(), ctype)
                if req.experiment in self._keep_requests:
                    self.add_row("requests", request_row(req), msg)
                else:
                    self._remember(msg)
            else:
                self._take_prediction(msg, ctype, dlq)
        except DecodeError as exc:
            self.metrics.decode_error(topic)
            if topic in (k.topic("predictions"), k.topic("requests")):
                self._remember(msg)  # the joiner and the workers dead-letter these
            else:
                dlq.send(msg, f"{type(exc).__name__}: {exc.reason}")
                self._remember(msg)

    def _take_prediction(self, msg: Any, ctype: str | None, dlq: DeadLetters) -> None:
        pred = Prediction.from_message(msg.key(), msg.value(), ctype)
        if pred.role == "arm" and pred.experiment in self._served:
            self.add_row("served", served_row(pred), msg)
        elif pred.role == "production" and pred.experiment in self._keep_production:
            self.add_row("served", served_row(pred), msg)
        elif pred.role == "interleaved" and pred.experiment in self._interleaved:
            try:
                row = interleaved_row(pred)
            except ValueError as exc:
                # The joiner passes interleaved records by, so the sink dead-letters them.
                self.metrics.decode_error(msg.topic())
                dlq.send(msg, f"ValueDecodeError: {exc}")
                self._remember(msg)
                return
            self.add_row("interleaved", row, msg)
        else:
            self._remember(msg)

    def run(self, stop: threading.Event | None = None) -> SinkStats:
        """Run until ``stop`` is set (or SIGINT/SIGTERM)."""
        stop = stop or threading.Event()
        stop_on_signals(stop)
        k = self.config.kafka
        self.warehouse = Warehouse.open_owner(self.config)
        # Which model is which, for the views (the secondary's baseline above all).
        self.warehouse.insert("experiment_models", MODEL_COLUMNS, model_rows(self.config))
        server = None
        if self.config.warehouse.backend == "embedded":
            server = self.warehouse.serve_http()
        consumer = kafka.make_consumer(k, self.group_id)
        producer = kafka.make_producer(k)
        dlq = DeadLetters(producer, k.topic("deadletter"), "sink")
        topics = [k.topic("comparisons"), k.topic("control"), k.topic("feedback")]
        if self._served or self._interleaved or self._keep_production:
            topics.append(k.topic("predictions"))
        if self._keep_requests:
            topics.append(k.topic("requests"))
        consumer.subscribe(topics)
        m = self.metrics
        m.serve(self.config)
        self.ready.set()
        try:
            while not stop.is_set():
                if m.lag_due(self.config.metrics.lag_interval_s):
                    m.measure_lag(consumer)
                msgs = consumer.consume(num_messages=self.config.warehouse.batch_size, timeout=0.1)
                dead = dlq.count
                for msg in msgs:
                    if not usable(msg, kafka.PARTITION_EOF):
                        continue
                    self.stats.consumed += 1
                    m.consumed(msg.topic() or "")
                    self._take(msg, dlq)
                m.dead_lettered(dlq.count - dead)
                if self.due() or (self._offsets and not self._pending()):
                    flush_all(producer, stop, "sink dead letters")
                    self.flush(consumer, stop)
            flush_all(producer, stop, "sink dead letters")
            self.flush(consumer, stop)
        finally:
            m.close()
            consumer.close()
            if server is not None:
                server.shutdown()
                server.server_close()
            self.warehouse.close()
        self.stats.dead_lettered = dlq.count
        return self.stats
