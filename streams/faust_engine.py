"""The joiner as a Faust app (``joiner.engine = "faust"``): ``JoinerCore`` in one agent.

One agent reads ``requests``, ``predictions`` and ``joiner-ticks`` (all
co-partitioned by request ID) so every event about a request is handled by the
same worker in order. Pending state lives in a table backed by a changelog topic,
so it survives restarts. Windows close on ticks: a timer sends one tick per owned
partition every ``joiner.tick_interval_s``, and the tick is handled in that
partition's own event context so table writes land in the right changelog
partition (Faust tables cannot be written from a timer).

This engine runs as one instance only (``streams/joiner.py`` refuses a second):
when a second Faust member joined, upstream Faust committed offsets past messages
fetched while its flow was paused for the rebalance, and those requests ended
``missing_*`` for good (26 of them in one run of six). The confluent-kafka engine
commits exactly what it handled and has no such window.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import faust
from shadowline.streams import pairing
from shadowline.streams.core import JoinerCore, Record, StateWrite, Step
from shadowline.streams.engine import AVRO_HEADERS, CHANGELOG_SETTINGS, Outbox, changelog_topic

from shadowline.config import Config
from shadowline.embeddings import load_model as load_embeddings
from shadowline.embeddings import similarity_for
from shadowline.envelopes import now_ms
from shadowline.metrics import ComponentMetrics

log = logging.getLogger("shadowline.joiner")


async def _drain(outbox: Outbox) -> None:
    """Wait, without blocking Faust's loop, until Kafka acknowledged everything sent."""
    loop = asyncio.get_running_loop()
    while len(outbox.producer) > 0:
        # flush() releases the GIL; in a thread it leaves Faust's loop running.
        await loop.run_in_executor(None, outbox.producer.flush, 0.5)
    outbox.check()


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
    """The joiner's Faust app for ``config``: ``JoinerCore`` in one agent, its state
    in a table, windows closed on ticks."""
    kafka = config.kafka
    jcfg = config.joiner
    if any(similarity_for(e) for e in config.experiments):
        load_embeddings()  # at start: a missing extra stops here with its message
    core = JoinerCore(config, partitions=kafka.partitions)

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
    app.shadowline_core = core  # type: ignore[attr-defined]
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
        extra_topic_configs=CHANGELOG_SETTINGS,
        recovery_buffer_size=10_000,
    )

    outbox = Outbox(config, changelog_topic(config))
    metrics = ComponentMetrics("joiner")
    app.shadowline_metrics = metrics  # type: ignore[attr-defined]
    comparisons_name = kafka.topic("comparisons")
    deadletter_name = kafka.topic("deadletter")
    changelog_name = pending.changelog_topic.get_topic_name()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        # Faust restores the table itself; the core takes each partition's states
        # from it the first time that partition has an event after this.
        for p in core.owned:
            core.revoke(p)

    def take(partition: int) -> None:
        if partition in core.owned:
            return
        entries = []
        for key, raw in pending.data.items():
            if pairing.Pending.loads(raw).partition == partition:
                entries.append((key, raw))
        core.assign(partition, entries)

    def write(writes: list[StateWrite]) -> None:
        # The store and its changelog record are written here, to the partition we
        # know; Faust still restores the table from that changelog.
        for w in writes:
            if w.value is None:
                pending.data.pop(w.key, None)
            else:
                pending.data[w.key] = w.value
            outbox.send(changelog_name, w.key, w.value, partition=w.partition)

    def handle(events: list[Any]) -> Step:
        step = Step()
        now = now_ms()
        for event in events:
            message = event.message
            metrics.consumed(message.topic)
            position[(message.topic, message.partition)] = message.offset + 1
            take(message.partition)
            if message.topic == ticks_name:
                core.sweep(step, now, [message.partition])
                continue
            headers = message.headers
            core.feed(step, Record(
                message.topic, message.partition, message.offset, message.key, message.value,
                list(headers.items()) if isinstance(headers, dict) else list(headers or []),
            ), now)  # fmt: skip
        return core.seal(step)

    @app.agent(source, concurrency=1)
    async def join(stream: Any) -> None:
        async for events in stream.take_events(jcfg.batch_max, within=jcfg.batch_wait_s):
            started = time.perf_counter()
            try:
                step = handle(events)
                for row in step.rows:
                    outbox.send(comparisons_name, row.request_id.encode(), row.encode(),
                                headers=AVRO_HEADERS)  # fmt: skip
                for letter in step.dead:
                    outbox.send(deadletter_name, letter.key or None, letter.encode(),
                                headers=AVRO_HEADERS)  # fmt: skip
                # States that depend on no new row go out with the rows; the rest
                # only once Kafka holds the rows.
                write(step.early)
                await _drain(outbox)
                if step.late:
                    write(step.late)
                    await _drain(outbox)
                metrics.produced(comparisons_name, len(step.rows))
                metrics.dead_lettered(len(step.dead))
                for topic, n in step.decode_errors.items():
                    metrics.decode_error(topic, n)
                for topic, n in step.misplaced_by_topic().items():
                    metrics.misplaced(topic, n)
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


def run(config: Config, loglevel: str = "WARNING") -> None:
    """Run the Faust joiner in the foreground until SIGINT/SIGTERM."""
    from faust.worker import Worker
    from shadowline.streams.joiner import tune_gc

    app = build_app(config)
    tune_gc()
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    finally:
        stats = app.shadowline_core.stats  # type: ignore[attr-defined]
        log.warning(
            "joiner stopped: events=%d emitted=%d dead_lettered=%d duplicates=%d",
            stats.events, stats.emitted, stats.dead_lettered, stats.duplicates,
        )  # fmt: skip
