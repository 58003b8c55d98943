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
import heapq
import logging
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import faust

from shadowline.config import Config, ExperimentConfig
from shadowline.envelopes import Comparison, DeadLetter, Prediction, Request, now_ms
from shadowline.errors import DecodeError
from streams import pairing

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


def _broker_url(config: Config) -> list[str]:
    return [f"kafka://{hp.strip()}" for hp in config.kafka.bootstrap_servers.split(",")]


def _credentials(config: Config) -> Any:
    k = config.kafka
    if k.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        import ssl

        ctx = None
        if k.security_protocol == "SASL_SSL":
            ctx = ssl.create_default_context(cafile=k.ssl_ca_location)
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password.get_secret_value() if k.sasl_password else None,
            mechanism=k.sasl_mechanism or "PLAIN",
            ssl_context=ctx,
        )
    if k.security_protocol == "SSL":
        import ssl

        return faust.SSLCredentials(ssl.create_default_context(cafile=k.ssl_ca_location))
    return None


def build_app(config: Config) -> faust.App:
    """The joiner's Faust app for ``config``, with its agent, table and timer."""
    kafka = config.kafka
    jcfg = config.joiner
    experiments: dict[str, ExperimentConfig] = {e.name: e for e in config.experiments}
    grace_ms = int(jcfg.late_grace_s * 1000)
    stats = JoinerStats()

    app = faust.App(
        jcfg.app_id,
        broker=_broker_url(config),
        broker_credentials=_credentials(config),
        store="memory://",
        datadir=str(config.resolve_path(jcfg.data_dir)),
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        topic_allow_declare=True,
        web_enabled=False,
        processing_guarantee="at_least_once",
        broker_commit_interval=1.0,
        # A crashed member is noticed after 10 s, not Faust's default 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        stream_buffer_maxsize=8192,
        producer_linger_ms=5,
        # Large batches: changelog and comparison records share one producer, and with
        # 16 KiB batches it waited on broker round trips instead of working.
        producer_max_batch_size=1_048_576,
        producer_max_request_size=kafka.max_message_bytes + 1024,
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
    comparisons = app.topic(
        kafka.topic("comparisons"), key_serializer="raw", value_serializer="raw"
    )
    deadletter = app.topic(kafka.topic("deadletter"), key_serializer="raw", value_serializer="raw")
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

    # Per-partition heaps of (when, request_id): deadlines and purge times. In
    # memory only; rebuilt from the table the first time a partition ticks
    # after (re)assignment.
    due: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
    indexed: set[int] = set()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        indexed.clear()
        live.clear()

    async def emit(rows: list[Comparison]) -> list[Awaitable[Any]]:
        """Publish rows; returns futures that resolve when Kafka acknowledged them."""
        acks = []
        for row in rows:
            ack = await comparisons.send(
                key=row.request_id.encode(), value=row.encode(), headers=AVRO_HEADERS, force=True
            )
            acks.append(ack)
            stats.emitted += 1
            stats.by_status[row.status] += 1
        return acks

    async def dead(message: Any, reason: str) -> None:
        letter = DeadLetter.of(
            topic=message.topic, partition=message.partition, offset=message.offset,
            reason=reason, component="joiner", key=message.key, value=message.value,
            headers=list(message.headers.items()) if isinstance(message.headers, dict)
            else list(message.headers or []),
        )  # fmt: skip
        await deadletter.send(
            key=letter.key or None, value=letter.encode(), headers=AVRO_HEADERS, force=True
        )
        stats.dead_lettered += 1

    # Decoded states by key, so an event does not re-parse what the table holds as
    # bytes. The table (and its changelog) stays the source of truth after a restart.
    live: dict[bytes, pairing.Pending] = {}

    def load(key: bytes) -> pairing.Pending | None:
        state = live.get(key)
        if state is None:
            raw = pending.get(key)
            if raw is not None:
                state = live[key] = pairing.Pending.loads(raw)
        return state

    # Keys whose emitted rows Kafka has not acknowledged yet, with those acks. Their
    # state is persisted only once the rows are safe: a state that says "emitted"
    # must never survive a crash that lost the rows (a replay would then skip them).
    unacked: dict[bytes, list[Awaitable[Any]]] = {}

    async def store(
        key: bytes,
        state: pairing.Pending,
        exp: ExperimentConfig,
        acks: list[Awaitable[Any]] | None = None,
    ) -> None:
        if pairing.complete(state, exp) and state.purge_at is None:
            # Nothing can change any more: keep only what recognises duplicates.
            pairing.compact(state)
            state.purge_at = now_ms() + grace_ms
            heapq.heappush(due[state.partition], (state.purge_at, key))
        live[key] = state
        waiting = unacked.get(key)
        if waiting is not None:
            waiting.extend(acks or ())
        elif acks:
            unacked[key] = list(acks)
            asyncio.ensure_future(persist_when_acked(key, state.partition))
        else:
            await put(state.partition, key, state.dumps())

    async def persist_when_acked(key: bytes, partition: int) -> None:
        waiting = unacked[key]
        try:
            while waiting:
                batch = list(waiting)
                waiting.clear()
                await asyncio.gather(*batch)
        except Exception as exc:  # not acknowledged: leave the state unwritten, replay heals
            log.warning("comparison not acknowledged, state kept unpersisted: %s", exc)
            return
        finally:
            del unacked[key]
        state = live.get(key)
        await put(partition, key, state.dumps() if state is not None else None)

    async def forget(key: bytes, partition: int) -> None:
        live.pop(key, None)
        await put(partition, key, None)

    async def put(partition: int, key: bytes, raw: bytes | None) -> None:
        # Write the store and its changelog record ourselves, to the partition we
        # know. Faust's `table[key] = value` queues changelog records behind a
        # one-at-a-time buffer that throttled the joiner to a few hundred events/s;
        # this publishes like any other send and Faust still flushes the producer
        # before it commits offsets.
        if raw is None:
            pending.data.pop(key, None)
        else:
            pending.data[key] = raw
        await pending.changelog_topic.send(key=key, value=raw, partition=partition, force=True)

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

    async def on_tick(partition: int) -> None:
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
                await forget(key, partition)
                continue
            if not state.closed and state.deadline <= now and not pairing.complete(state, exp):
                rows = pairing.on_deadline(state, exp, now, grace_ms)
                stats.expired += 1
                await store(key, state, exp, await emit(rows))
                heapq.heappush(heap, (state.purge_at or now, key))
            elif state.purge_at is not None and state.purge_at <= now:
                await forget(key, partition)
                stats.purged += 1
            elif state.purge_at is not None:
                heapq.heappush(heap, (state.purge_at, key))

    async def reject(message: Any, reason: str, owner: bool) -> None:
        if owner:
            await dead(message, reason)
        else:
            stats.skipped += 1

    async def on_event(message: Any) -> None:
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
            await reject(message, f"{type(exc).__name__}: {exc.reason}", owner)
            return
        exp = experiments.get(env.experiment)
        if exp is None:
            await reject(message, f"experiment {env.experiment!r} is not configured", owner)
            return
        if (
            isinstance(env, Prediction)
            and env.role == "candidate"
            and not any(c.name == env.model for c in exp.candidates)
        ):
            await dead(message, f"candidate {env.model!r} is not configured for {exp.name!r}")
            return
        key = message.key
        now = now_ms()
        state = load(key)
        if state is None:
            state = pairing.new_state(env.request_id, exp, env.event_time, message.partition, now)
            heapq.heappush(due[message.partition], (state.deadline, key))
        elif state.experiment != env.experiment:
            await dead(message, f"request_id already belongs to experiment {state.experiment!r}")
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
        await store(key, state, exp, await emit(rows))

    @app.agent(source, concurrency=1)
    async def join(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            stats.events += 1
            if message.topic == ticks_name:
                await on_tick(message.partition)
            else:
                await on_event(message)

    @app.task
    async def quiet_libraries() -> None:
        # Faust's worker leaves aiokafka and faust at DEBUG; building a debug record
        # for every message sent cost a third of the joiner's time.
        level = max(logging.INFO, logging.getLogger().getEffectiveLevel())
        for name in ("aiokafka", "faust", "mode"):
            logging.getLogger(name).setLevel(level)

    @app.timer(interval=jcfg.tick_interval_s)
    async def tick() -> None:
        owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == ticks_name}
        for partition in sorted(owned):
            await ticks.send(key=None, value=b"", partition=partition, force=True)

    return app


def run(config: Config, loglevel: str = "WARNING") -> None:
    """Run the joiner in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker

    app = build_app(config)
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    finally:
        stats: JoinerStats = app.shadowline_stats  # type: ignore[attr-defined]
        log.warning(
            "joiner stopped: events=%d emitted=%d dead_lettered=%d duplicates=%d",
            stats.events, stats.emitted, stats.dead_lettered, stats.duplicates,
        )  # fmt: skip
