"""Worker agents: run every candidate of an experiment on each mirrored request.

A consumer-group member on ``requests``. Each poll returns a batch; requests are
grouped by experiment and each candidate is called on chunks of up to its
``batch_size`` inputs in a thread with a timeout. An exception or a timeout
becomes an error prediction for the affected requests (a failing batch is
retried one input at a time so one bad input does not fail its neighbours).
Offsets are committed only after every prediction of the batch is acknowledged
by Kafka, so a crash replays rather than loses (at-least-once; the joiner
ignores duplicates).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumers.deadletter import DeadLetters
from consumers.loop import commit, flush_all, stop_on_signals, usable
from shadowline import kafka
from shadowline.config import IN_PROCESS_MODES, SERVED_MODES, CandidateConfig, Config
from shadowline.envelopes import Prediction, Request
from shadowline.errors import DecodeError, KafkaError, describe
from shadowline.metrics import ComponentMetrics
from shadowline.models import Model, load_model

log = logging.getLogger("shadowline.worker")

AVRO_HEADERS = [("content-type", b"avro/binary")]


@dataclass
class WorkerStats:
    """Counters of one worker process."""

    consumed: int = 0
    predictions: int = 0
    errors: int = 0
    timeouts: int = 0
    dead_lettered: int = 0
    batches: int = 0
    served_skipped: int = 0  # requests of A/B and canary experiments


class CandidateRunner:
    """One candidate (or the secondary): its model, its thread and its timeout."""

    def __init__(self, cfg: CandidateConfig, model: Model, role: str = "candidate") -> None:
        self.cfg = cfg
        self.model = model
        self.role = role
        # One thread per candidate: a hung model blocks only itself, and the
        # calls queued behind it are cancelled when they time out.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"cand-{cfg.name}")

    def _call(self, inputs: Sequence[dict[str, Any]]) -> tuple[list[Any], float]:
        start = time.perf_counter()
        outputs = self.model.predict_batch(inputs)
        return outputs, (time.perf_counter() - start) * 1000.0

    def run(
        self, inputs: Sequence[dict[str, Any]], stats: WorkerStats
    ) -> list[tuple[Any, float, str | None]]:
        """(output, latency_ms, error) per input, in order. Never raises."""
        timeout_s = self.cfg.timeout_ms / 1000.0
        fut: Future[tuple[list[Any], float]] = self._pool.submit(self._call, inputs)
        try:
            outputs, elapsed = fut.result(timeout=timeout_s)
        except FutureTimeout:
            fut.cancel()
            stats.timeouts += len(inputs)
            error = (
                f"TimeoutError: candidate {self.cfg.name!r} took longer than "
                f"{self.cfg.timeout_ms:g} ms"
            )
            return [(None, self.cfg.timeout_ms, error)] * len(inputs)
        except Exception as exc:
            if len(inputs) > 1:
                # Find out which inputs fail rather than blaming the whole batch.
                out: list[tuple[Any, float, str | None]] = []
                for item in inputs:
                    out.extend(self.run([item], stats))
                return out
            return [(None, 0.0, describe(exc))]
        # A batch call's time is shared by its inputs (amortised per request).
        per = elapsed / len(inputs)
        return [(o, per, None) for o in outputs]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Worker:
    """The worker process: consume requests, run candidates, produce predictions."""

    def __init__(self, config: Config, group_id: str | None = None) -> None:
        self.config = config
        self.group_id = group_id or f"{config.kafka.namespace}workers"
        self.stats = WorkerStats()
        base = Path(config.source).resolve().parent if not config.source.startswith("<") else None
        self.runners: dict[str, list[CandidateRunner]] = {}
        # A/B and canary candidates serve real users through the router; their
        # requests are judged from what was served, not scored again here. Interleave
        # candidates run inside the serving process (shadowline.Interleave).
        self.served = {
            e.name for e in config.experiments if e.mode in SERVED_MODES + IN_PROCESS_MODES
        }
        for exp in config.experiments:
            if exp.name in self.served:
                continue
            self.runners[exp.name] = [
                CandidateRunner(c, load_model(c.model, base)) for c in exp.candidates
            ]
            if exp.secondary is not None:
                model = load_model(exp.secondary.model, base)
                self.runners[exp.name].append(CandidateRunner(exp.secondary, model, "secondary"))
        self._delivery_failed: str | None = None
        # Candidates score a batch side by side, so a slow one delays only itself.
        n = max(1, sum(len(r) for r in self.runners.values()))
        self._fanout = ThreadPoolExecutor(max_workers=n, thread_name_prefix="score")
        self._stats_lock = threading.Lock()
        self.metrics = ComponentMetrics("worker")

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._delivery_failed = f"{msg.topic()}: {err}"

    def run(self, stop: threading.Event | None = None, batch_size: int = 500) -> WorkerStats:
        """Run until ``stop`` is set (or SIGINT/SIGTERM); returns the counters."""
        stop = stop or threading.Event()
        stop_on_signals(stop)
        k = self.config.kafka
        consumer = kafka.make_consumer(k, self.group_id)
        producer = kafka.make_producer(k, on_delivery=self._on_delivery, **{"linger.ms": 2})
        dlq = DeadLetters(producer, k.topic("deadletter"), "worker")
        consumer.subscribe([k.topic("requests")])
        m = self.metrics
        m.serve(self.config)
        try:
            while not stop.is_set():
                if m.lag_due(self.config.metrics.lag_interval_s):
                    m.measure_lag(consumer)
                msgs = consumer.consume(num_messages=batch_size, timeout=0.2)
                if not msgs:
                    continue
                started = time.perf_counter()
                predictions, dead = self.stats.predictions, dlq.count
                m.consumed(k.topic("requests"), len(msgs))
                self.process(msgs, producer, dlq)
                flush_all(producer, stop, "worker")
                if self._delivery_failed:
                    raise KafkaError(f"prediction not delivered: {self._delivery_failed}")
                commit(consumer)
                m.produced(k.topic("predictions"), self.stats.predictions - predictions)
                m.dead_lettered(dlq.count - dead)
                m.batch(time.perf_counter() - started)
        finally:
            m.close()
            consumer.close()
            self._fanout.shutdown(wait=False, cancel_futures=True)
            for runners in self.runners.values():
                for r in runners:
                    r.close()
        self.stats.dead_lettered = dlq.count
        return self.stats

    def process(self, msgs: list[Any], producer: Any, dlq: DeadLetters) -> None:
        """Decode a batch, run the candidates, produce their predictions."""
        by_exp: dict[str, list[Request]] = defaultdict(list)
        topic = self.config.kafka.topic("predictions")
        for msg in msgs:
            if not usable(msg, kafka.PARTITION_EOF):
                continue
            self.stats.consumed += 1
            try:
                req = Request.from_message(
                    msg.key(), msg.value(), kafka.header(msg, "content-type")
                )
            except DecodeError as exc:
                self.metrics.decode_error(msg.topic())
                dlq.send(msg, f"{type(exc).__name__}: {exc.reason}")
                continue
            if req.experiment in self.served:
                self.stats.served_skipped += 1
                continue
            if req.experiment not in self.runners:
                dlq.send(msg, f"experiment {req.experiment!r} is not configured")
                continue
            by_exp[req.experiment].append(req)
        self.stats.batches += 1
        tasks = [
            self._fanout.submit(self._score, runner, reqs, producer, topic)
            for exp_name, reqs in by_exp.items()
            for runner in self.runners[exp_name]
        ]
        for task in tasks:
            task.result()

    def _score(
        self, runner: CandidateRunner, reqs: list[Request], producer: Any, topic: str
    ) -> None:
        size = runner.cfg.batch_size
        stats = WorkerStats()
        for start in range(0, len(reqs), size):
            chunk = reqs[start : start + size]
            results = runner.run([r.inputs for r in chunk], stats)
            for req, (output, latency, error) in zip(chunk, results, strict=True):
                self._produce(producer, topic, req, runner, output, latency, error, stats)
        with self._stats_lock:
            self.stats.timeouts += stats.timeouts
            self.stats.errors += stats.errors
            self.stats.predictions += stats.predictions

    def _produce(
        self, producer: Any, topic: str, req: Request, runner: CandidateRunner, output: Any,
        latency: float, error: str | None, stats: WorkerStats,
    ) -> None:  # fmt: skip
        model, role = runner.cfg.name, runner.role
        pred = Prediction(
            request_id=req.request_id, experiment=req.experiment, role=role, model=model,
            output=output, latency_ms=latency, event_time=req.event_time, error=error,
        )  # fmt: skip
        try:
            value = pred.encode()
        except Exception as exc:  # an output that is not JSON-serialisable is a model error
            pred = Prediction(
                request_id=req.request_id, experiment=req.experiment, role=role,
                model=model, output=None, latency_ms=latency, event_time=req.event_time,
                error=f"{describe(exc)} (output could not be encoded)",
            )  # fmt: skip
            value = pred.encode()
        if pred.error:
            stats.errors += 1
        while True:
            try:
                producer.produce(topic, key=pred.key, value=value, headers=AVRO_HEADERS)
                break
            except BufferError:
                producer.poll(0.05)  # the worker may wait; it is not the serving path
        stats.predictions += 1
        producer.poll(0)
