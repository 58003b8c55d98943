"""The Faust app that joins predictions by request ID (``shadowline run joiner``).

One agent reads ``requests``, ``predictions`` and ``joiner-ticks`` (all
co-partitioned by request ID) so every event about a request is handled by the
same worker in order. Pending state lives in a table backed by a changelog
topic, so it survives restarts. Windows close on ticks: a timer sends one tick
per owned partition every ``joiner.tick_interval_s``, and the tick is handled in
that partition's own event context so table writes land in the right changelog
partition (Faust tables cannot be written from a timer). Faust's ``Stream.join``
is not implemented upstream, hence this shape.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import faust
from shadowline.streams import pairing

from shadowline import kafka as kafka_clients
from shadowline.config import SERVED_MODES, Config, ExperimentConfig
from shadowline.embeddings import load_model as load_embeddings
from shadowline.embeddings import similarity_for
from shadowline.envelopes import Comparison, DeadLetter, Prediction, Request, now_ms
from shadowline.errors import DecodeError, KafkaError
from shadowline.metrics import ComponentMetrics

log = logging.getLogger("shadowline.joiner")

AVRO_HEADERS = [("content-type", b"avro/binary")]


@dataclass
class JoinerStats:
    """Counters the joiner keeps (logged on shutdown; metrics later)."""

    events: int = 0
    emitted: int = 0
    dead_lettered: int = 0
    skipped: int = 0  # invalid requests, dead-lettered by the workers
    duplicates: int = 0
    expired: int = 0
    purged: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _content_type(headers: Any) -> str | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if str(key).lower() == "content-type" and value is not None:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


class Outbox:
    """The joiner's output producer (comparisons, dead letters, table changelog).

    librdkafka rather than Faust's aiokafka send path: a Faust ``send`` cost about
    60 µs of the joiner's one core per record, ``produce()`` a few µs, and a batch
    then waits once for all its acknowledgements instead of tracking each.
    """

    def __init__(self, config: Config) -> None:
        self.producer = kafka_clients.make_producer(
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

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.failures.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one record (never waits unless the local queue is full)."""
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

    async def drain(self) -> None:
        """Wait until Kafka acknowledged everything sent; raise if anything failed."""
        loop = asyncio.get_running_loop()
        while len(self.producer) > 0:
            # flush() releases the GIL; in a thread it leaves Faust's loop running.
            await loop.run_in_executor(None, self.producer.flush, 0.5)
        if self.failures:
            failed, self.failures = self.failures, []
            raise KafkaError(f"{len(failed)} records not delivered: " + "; ".join(failed[:3]))


def _broker_url(config: Config) -> list[str]:
    return [f"kafka://{hp.strip()}" for hp in config.kafka.bootstrap_servers.split(",")]


def _ssl_context(config: Config) -> Any:
    import ssl

    k = config.kafka
    ctx = ssl.create_default_context(cafile=k.ssl_ca_location)
    if k.ssl_certificate_location:  # mTLS: the same client certificate librdkafka uses
        ctx.load_cert_chain(
            k.ssl_certificate_location,
            k.ssl_key_location,
            k.ssl_key_password.get_secret_value() if k.ssl_key_password else None,
        )
    return ctx


def _credentials(config: Config) -> Any:
    k = config.kafka
    if k.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password.get_secret_value() if k.sasl_password else None,
            mechanism=k.sasl_mechanism or "PLAIN",
            ssl_context=_ssl_context(config) if k.security_protocol == "SASL_SSL" else None,
        )
    if k.security_protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(config))
    return None


def _data_dir(config: Config) -> Any:
    # Faust makes its data directory but not the folders above it
    path = config.resolve_path(config.joiner.data_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_app(config: Config) -> faust.App:
    """The joiner's Faust app for ``config``, with its agent, table and timer."""
    kafka = config.kafka
    jcfg = config.joiner
    experiments: dict[str, ExperimentConfig] = {e.name: e for e in config.experiments}
    grace_ms = int(jcfg.late_grace_s * 1000)
    stats = JoinerStats()
    if any(similarity_for(e) for e in config.experiments):
        load_embeddings()  # at start: a missing extra stops here with its message

    app = faust.App(
        jcfg.app_id,
        broker=_broker_url(config),
        broker_credentials=_credentials(config),
        store="memory://",
        datadir=str(_data_dir(config)),
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        topic_allow_declare=True,
        web_enabled=False,
        processing_guarantee="at_least_once",
        broker_commit_interval=1.0,
        # A crashed member is noticed after 10 s, not Faust's default 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        stream_buffer_maxsize=max(8192, 2 * jcfg.batch_max),
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
    )
    app.shadowline_stats = stats  # type: ignore[attr-defined]
    requests_name = kafka.topic("requests")
    predictions_name = kafka.topic("predictions")
    ticks_name = kafka.topic("joiner-ticks")
    source = app.topic(
        requests_name, predictions_name, ticks_name,
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
    )  # fmt: skip
    ticks = app.topic(ticks_name, key_serializer="raw", value_serializer="raw")
    pending = app.Table(
        "pending",
        partitions=kafka.partitions,
        key_type=bytes,
        value_type=bytes,
        # Compact often, so a restart replays live states rather than all history.
        extra_topic_configs={
            "segment.ms": "600000",
            "min.cleanable.dirty.ratio": "0.1",
            "delete.retention.ms": "600000",
        },
        recovery_buffer_size=10_000,
    )

    outbox = Outbox(config)
    metrics = ComponentMetrics("joiner")
    app.shadowline_metrics = metrics  # type: ignore[attr-defined]
    comparisons_name = kafka.topic("comparisons")
    deadletter_name = kafka.topic("deadletter")
    changelog_name = pending.changelog_topic.get_topic_name()

    # Per-partition heaps of (when, request_id): deadlines and purge times. In
    # memory only; rebuilt from the table the first time a partition ticks
    # after (re)assignment.
    due: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    indexed: set[int] = set()
    # Decoded states by key, so an event does not re-parse what the table holds as
    # bytes. The table (and its changelog) stays the source of truth after a restart.
    live: dict[bytes, pairing.Pending] = {}

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        indexed.clear()
        live.clear()

    def load(key: bytes) -> pairing.Pending | None:
        state = live.get(key)
        if state is None:
            raw = pending.get(key)
            if raw is not None:
                state = live[key] = pairing.Pending.loads(raw)
        return state

    class Batch:
        """What one batch of events changed: rows to publish, and states to persist
        once those rows are acknowledged (a state that says "emitted" must never
        survive a crash that lost the rows, or a replay would skip them)."""

        def __init__(self) -> None:
            self.rows = 0
            # key -> partition; the state to write is read from `live` at the end,
            # so a key touched by several events in the batch is written once.
            self.after_rows: dict[bytes, int] = {}
            self.now: dict[bytes, int] = {}

        def emit(self, rows: list[Comparison]) -> None:
            for row in rows:
                outbox.send(
                    comparisons_name, row.request_id.encode(), row.encode(), headers=AVRO_HEADERS
                )
                stats.emitted += 1
                stats.by_status[row.status] += 1
            self.rows += len(rows)

        def store(
            self, key: bytes, state: pairing.Pending, exp: ExperimentConfig, emitted: bool
        ) -> None:
            if pairing.complete(state, exp) and state.purge_at is None:
                # Nothing can change any more: keep only what recognises duplicates.
                pairing.compact(state)
                state.purge_at = now_ms() + grace_ms
                heapq.heappush(due[state.partition], (state.purge_at, key))
            live[key] = state
            if emitted:
                self.after_rows[key] = state.partition
                self.now.pop(key, None)
            elif key not in self.after_rows:
                self.now[key] = state.partition

        def forget(self, key: bytes, partition: int) -> None:
            live.pop(key, None)
            self.after_rows.pop(key, None)
            self.now[key] = partition

        def persist(self, keys: dict[bytes, int]) -> None:
            # The store and its changelog record are written here, to the partition
            # we know; Faust still restores the table from that changelog.
            for key, partition in keys.items():
                state = live.get(key)
                if state is None:
                    pending.data.pop(key, None)
                    raw = None
                else:
                    raw = pending.data[key] = state.dumps()
                    if state.purge_at is not None:
                        # Settled until purged (late_grace_s): keep only its bytes;
                        # a rare late duplicate re-reads them.
                        live.pop(key, None)
                outbox.send(changelog_name, key, raw, partition=partition)

    def dead(batch: Batch, message: Any, reason: str) -> None:
        letter = DeadLetter.of(
            topic=message.topic, partition=message.partition, offset=message.offset,
            reason=reason, component="joiner", key=message.key, value=message.value,
            headers=list(message.headers.items()) if isinstance(message.headers, dict)
            else list(message.headers or []),
        )  # fmt: skip
        outbox.send(deadletter_name, letter.key or None, letter.encode(), headers=AVRO_HEADERS)
        stats.dead_lettered += 1

    def rebuild(partition: int) -> None:
        heap = due[partition] = []
        for key, raw in list(pending.items()):
            state = pairing.Pending.loads(raw)
            if state.partition == partition:
                heap.append(
                    (state.purge_at if state.closed and state.purge_at else state.deadline, key)
                )
        heapq.heapify(heap)
        indexed.add(partition)

    def on_tick(batch: Batch, partition: int) -> None:
        if partition not in indexed:
            rebuild(partition)
        heap = due[partition]
        now = now_ms()
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            state = load(key)
            if state is None:
                continue
            exp = experiments.get(state.experiment)
            if exp is None:
                batch.forget(key, partition)
                continue
            if not state.closed and state.deadline <= now and not pairing.complete(state, exp):
                rows = pairing.on_deadline(state, exp, now, grace_ms)
                stats.expired += 1
                batch.emit(rows)
                batch.store(key, state, exp, emitted=bool(rows))
                heapq.heappush(heap, (state.purge_at or now, key))
            elif state.purge_at is not None and state.purge_at <= now:
                batch.forget(key, partition)
                stats.purged += 1
            elif state.purge_at is not None:
                heapq.heappush(heap, (state.purge_at, key))

    def reject(batch: Batch, message: Any, reason: str, owner: bool) -> None:
        if owner:
            dead(batch, message, reason)
        else:
            stats.skipped += 1

    def on_event(batch: Batch, message: Any) -> None:
        topic = message.topic
        # The workers own `requests` and dead-letter what they cannot use there;
        # the joiner skips such messages so each one is dead-lettered once.
        owner = topic != requests_name
        try:
            if topic == requests_name:
                env: Request | Prediction = Request.from_message(
                    message.key, message.value, _content_type(message.headers)
                )
            else:
                env = Prediction.from_message(
                    message.key, message.value, _content_type(message.headers)
                )
        except DecodeError as exc:
            metrics.decode_error(topic)
            reject(batch, message, f"{type(exc).__name__}: {exc.reason}", owner)
            return
        exp = experiments.get(env.experiment)
        if exp is None:
            reject(batch, message, f"experiment {env.experiment!r} is not configured", owner)
            return
        if exp.mode in SERVED_MODES or (
            isinstance(env, Prediction) and env.role in ("arm", "interleaved")
        ):
            # Served arms (A/B, canary) are judged per arm from the warehouse, and
            # interleaved lists by their clicks there: neither is paired.
            stats.skipped += 1
            return
        if isinstance(env, Prediction) and env.role in ("candidate", "secondary"):
            expected = (
                [c.name for c in exp.candidates]
                if env.role == "candidate"
                else [exp.secondary.name]
                if exp.secondary
                else []
            )
            if env.model not in expected:
                dead(batch, message, f"{env.role} {env.model!r} is not configured for {exp.name!r}")
                return
        key = message.key
        now = now_ms()
        state = load(key)
        if state is None:
            state = pairing.new_state(env.request_id, exp, env.event_time, message.partition, now)
            heapq.heappush(due[message.partition], (state.deadline, key))
        elif state.experiment != env.experiment:
            dead(batch, message, f"request_id already belongs to experiment {state.experiment!r}")
            return
        before = state.duplicates
        if isinstance(env, Request):
            pairing.on_request(state, env)
            rows: list[Comparison] = []
        else:
            rows = pairing.on_prediction(state, env, exp, now)
        if state.duplicates != before:
            stats.duplicates += 1
            return  # a duplicate changes nothing worth a changelog write
        batch.emit(rows)
        batch.store(key, state, exp, emitted=bool(rows))

    def handle(events: list[Any]) -> Batch:
        batch = Batch()
        for event in events:
            message = event.message
            stats.events += 1
            metrics.consumed(message.topic)
            position[(message.topic, message.partition)] = message.offset + 1
            try:
                if message.topic == ticks_name:
                    on_tick(batch, message.partition)
                else:
                    on_event(batch, message)
            except Exception as exc:  # a bug must not lose the message: keep it, move on
                log.exception("joiner failed on %s[%d]@%d", message.topic,
                              message.partition, message.offset)  # fmt: skip
                dead(batch, message, f"joiner error: {type(exc).__name__}: {exc}")
        return batch

    @app.agent(source, concurrency=1)
    async def join(stream: Any) -> None:
        async for events in stream.take_events(jcfg.batch_max, within=jcfg.batch_wait_s):
            started = time.perf_counter()
            dead = stats.dead_lettered
            try:
                batch = handle(events)
                # States that depend on no new row go out with the rows; the rest
                # only once Kafka holds the rows.
                batch.persist(batch.now)
                await outbox.drain()
                if batch.after_rows:
                    batch.persist(batch.after_rows)
                    await outbox.drain()
                metrics.produced(comparisons_name, batch.rows)
                metrics.dead_lettered(stats.dead_lettered - dead)
                metrics.batch(time.perf_counter() - started)
            except BaseException as exc:
                # Nothing of this batch may be committed now: Faust acks the events
                # when the loop moves on, so mark them handled-but-not-acked. Then
                # stop the process (a crash-only restart replays from the last
                # commit) unless Faust is stopping us anyway.
                for event in events:
                    event.message.acked = True
                if isinstance(exc, asyncio.CancelledError):
                    raise
                log.critical("joiner output not acknowledged by Kafka, exiting: %s", exc)
                logging.shutdown()
                os._exit(75)

    @app.task
    async def quiet_libraries() -> None:
        # Faust's worker leaves aiokafka and faust at DEBUG; building a debug record
        # for every message sent cost a third of the joiner's time.
        level = max(logging.INFO, logging.getLogger().getEffectiveLevel())
        for name in ("aiokafka", "faust", "mode"):
            logging.getLogger(name).setLevel(level)

    @app.task
    async def serve_metrics() -> None:
        metrics.serve(config)

    # Next offset to handle per partition, so lag means "not handled yet" as it does
    # for the other components (high watermark minus position).
    position: dict[tuple[str, int], int] = {}

    @app.timer(interval=config.metrics.lag_interval_s)
    async def measure_lag() -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            try:
                high = consumer.highwater(tp)
            except Exception:  # noqa: S112  not fetched yet
                continue
            done = position.get((tp.topic, tp.partition))
            if high is not None and done is not None:
                metrics.lag(tp.topic, tp.partition, high - done)

    @app.timer(interval=jcfg.tick_interval_s)
    async def tick() -> None:
        owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == ticks_name}
        for partition in sorted(owned):
            await ticks.send(key=None, value=b"", partition=partition, force=True)

    return app


def tune_gc() -> None:
    """Collect cycles less often: the joiner allocates a few objects per event and
    holds every pending state, so CPython's default thresholds ran full collections
    over all of them many times a second (a quarter of the joiner's time)."""
    gc.collect()
    gc.freeze()  # start-up objects (modules, Faust's graph) are never scanned again
    gc.set_threshold(100_000, 50, 1000)


def run(config: Config, loglevel: str = "WARNING") -> None:
    """Run the joiner in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker

    app = build_app(config)
    tune_gc()
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    finally:
        stats: JoinerStats = app.shadowline_stats  # type: ignore[attr-defined]
        log.warning(
            "joiner stopped: events=%d emitted=%d dead_lettered=%d duplicates=%d",
            stats.events, stats.emitted, stats.dead_lettered, stats.duplicates,
        )  # fmt: skip
