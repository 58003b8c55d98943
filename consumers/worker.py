"""Worker agents: run every candidate of an experiment on each mirrored request.

A consumer-group member on ``requests``. Each poll returns a batch; requests are
grouped by experiment and each candidate is called on chunks of up to its
``batch_size`` inputs, on call slots of its own with a timeout. What is recorded
for a request is what calling the model with that request alone would give: a
batch that fails or times out is re-run one input at a time, so an exception or a
timeout becomes an error prediction for the inputs at fault only, and the latency
probes (a share of requests called alone) give the gates per-request latencies.
Offsets are committed only after every prediction of the batch is acknowledged
by Kafka, so a crash replays rather than loses (at-least-once; the joiner
ignores duplicates).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from shadowline.consumers.deadletter import DeadLetters
from shadowline.consumers.loop import commit, flush_all, stop_on_signals, usable

from shadowline import kafka
from shadowline.calls import Call, ModelCalls
from shadowline.config import IN_PROCESS_MODES, SERVED_MODES, CandidateConfig, Config
from shadowline.envelopes import BATCH_SHARE, REQUEST, Prediction, Request
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
    # calls refused because every call slot was held by running (hung) calls
    saturated: int = 0
    # batches re-run one input at a time after failing or timing out as a batch
    batch_retries: int = 0
    dead_lettered: int = 0
    batches: int = 0
    served_skipped: int = 0  # requests of A/B and canary experiments


class Outcome(NamedTuple):
    """What one request got from one model: output or error, latency and its kind."""

    output: Any
    latency_ms: float
    error: str | None
    timing: str  # "request": timed on this request alone; "batch_share": batch time / size


def is_probe(request_id: str, share: float) -> bool:
    """Whether a request is a latency probe (deterministic: replays pick the same ones).

    Salted so the choice is independent of the tap's ``sampling`` (CRC-32 of the ID).
    """
    if share >= 1.0:
        return True
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8, person=b"sl-probe").digest()
    return int.from_bytes(digest, "big") < share * 18_446_744_073_709_551_616


class CandidateRunner:
    """One candidate (or the secondary): its model, its call slots and its timeouts.

    What is recorded for a request is what calling the model with that request alone
    would give. Inputs are scored in batches; a batch that raises, times out or
    returns the wrong number of outputs is re-run one input at a time (``concurrency``
    at once, each with its own ``timeout_ms``), so only the inputs at fault become
    errors. A deterministic share of requests (``latency_probe_share``) is called
    alone, one at a time, so the latency the gates judge is what serving one request
    costs; the batched rows carry their batch's time divided by its size, marked
    ``batch_share``.
    """

    def __init__(self, cfg: CandidateConfig, model: Model, role: str = "candidate") -> None:
        self.cfg = cfg
        self.model = model
        self.role = role
        self._calls = ModelCalls(model.predict_batch, cfg.max_in_flight, f"cand-{cfg.name}")
        self._timeout_s = cfg.timeout_ms / 1000.0
        self._batch_timeout_s = (cfg.batch_timeout_ms or cfg.timeout_ms) / 1000.0

    def run(self, requests: Sequence[Request], stats: WorkerStats) -> list[Outcome]:
        """One outcome per request, in order. Never raises."""
        results = self.run_batched(requests, stats)
        return self.run_probes(requests, results, stats)

    def run_batched(self, requests: Sequence[Request], stats: WorkerStats) -> list[Outcome | None]:
        """Outcomes of the batched requests; None where a request is a latency probe."""
        share = self.cfg.latency_probe_share
        chosen = {i for i, r in enumerate(requests) if is_probe(r.request_id, share)}
        batched = [i for i in range(len(requests)) if i not in chosen]
        results: list[Outcome | None] = [None] * len(requests)
        # A batch of one is the same call as a probe: time it as one.
        if len(batched) > 1:
            self._batch(requests, batched, results, stats)
        return results

    def run_probes(
        self, requests: Sequence[Request], results: list[Outcome | None], stats: WorkerStats
    ) -> list[Outcome]:
        """Fill the probes of ``run_batched``'s results, one call at a time."""
        probes = [i for i, r in enumerate(results) if r is None]
        self._alone(requests, probes, results, stats, concurrency=1)
        out = [r for r in results if r is not None]
        assert len(out) == len(requests)
        return out

    def _batch(
        self, requests: Sequence[Request], idx: list[int], results: list[Outcome | None],
        stats: WorkerStats,
    ) -> None:  # fmt: skip
        inputs = [requests[i].inputs for i in idx]
        call = self._calls.start(inputs, wait_s=self._batch_timeout_s)
        if call is not None and call.wait(self._batch_timeout_s) and call.error is None:
            outputs = call.result
            if isinstance(outputs, list) and len(outputs) == len(idx):
                per = call.elapsed_ms / len(idx)
                for i, output in zip(idx, outputs, strict=True):
                    results[i] = Outcome(output, per, None, BATCH_SHARE)
                return
        stats.batch_retries += 1
        # Failed, late or malformed as a batch: find the inputs at fault.
        self._alone(requests, idx, results, stats, concurrency=self.cfg.concurrency)

    def _alone(
        self, requests: Sequence[Request], idx: list[int], results: list[Outcome | None],
        stats: WorkerStats, concurrency: int,
    ) -> None:  # fmt: skip
        todo = list(reversed(idx))
        patient = True
        while todo:
            wave: list[tuple[int, Call | None]] = []
            while todo and len(wave) < concurrency:
                i = todo.pop()
                # Only a wave's first call waits for a slot (the others start if one is
                # free, else in the next wave), and only until a wait has been in vain:
                # a hung model must not hold the worker for timeout_ms per input.
                wait = self._timeout_s if not wave and patient else 0.0
                call = self._calls.start([requests[i].inputs], wait_s=wait)
                if call is None and wave:
                    todo.append(i)
                    break
                patient = patient and call is not None
                wave.append((i, call))
            for i, call in wave:
                results[i] = self._single_outcome(call, stats)

    def _single_outcome(self, call: Call | None, stats: WorkerStats) -> Outcome:
        name = self.cfg.name
        if call is None:
            stats.saturated += 1
            return Outcome(None, 0.0, self._calls.saturated_error(self.role, name), REQUEST)
        if not call.wait(self._timeout_s):
            stats.timeouts += 1
            limit = self.cfg.timeout_ms
            error = f"TimeoutError: {self.role} {name!r} took longer than {limit:g} ms"
            return Outcome(None, self.cfg.timeout_ms, error, REQUEST)
        if call.error is not None:
            return Outcome(None, call.elapsed_ms, call.error, REQUEST)
        outputs = call.result
        if not isinstance(outputs, list) or len(outputs) != 1:
            got = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
            error = f"ValueError: {name} returned {got} outputs for 1 input"
            return Outcome(None, call.elapsed_ms, error, REQUEST)
        return Outcome(outputs[0], call.elapsed_ms, None, REQUEST)

    def close(self) -> None:
        self._calls.close()


def _load(cfg: CandidateConfig, base: Path | None) -> Model:
    # A model server's HTTP call ends at the candidate's own timeout (a batch's when
    # longer), so a hung server frees the call slot; one connection per call slot.
    timeout_ms = max(cfg.timeout_ms, cfg.batch_timeout_ms or 0.0)
    return load_model(
        cfg.model, base, timeout_s=timeout_ms / 1000.0, max_connections=cfg.max_in_flight
    )


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
            self.runners[exp.name] = [CandidateRunner(c, _load(c, base)) for c in exp.candidates]
            if exp.secondary is not None:
                model = _load(exp.secondary, base)
                self.runners[exp.name].append(CandidateRunner(exp.secondary, model, "secondary"))
        self._delivery_failed: str | None = None
        # Candidates score a batch side by side, so a slow one delays only itself.
        n = max(1, sum(len(r) for r in self.runners.values()))
        self._fanout = ThreadPoolExecutor(max_workers=n, thread_name_prefix="score")
        self.metrics = ComponentMetrics("worker")

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._delivery_failed = f"{msg.topic()}: {err}"

    def run(self, stop: threading.Event | None = None, batch_size: int = 2000) -> WorkerStats:
        """Run until ``stop`` is set (or SIGINT/SIGTERM); returns the counters."""
        stop = stop or threading.Event()
        stop_on_signals(stop)
        k = self.config.kafka
        kafka.copartitioned(k, ["requests", "predictions"])
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
                # A short wait: consume() holds a part-filled batch until it times out.
                msgs = consumer.consume(num_messages=batch_size, timeout=0.05)
                if not msgs:
                    continue
                started = time.perf_counter()
                predictions, dead = self.stats.predictions, dlq.count
                m.consumed(k.topic("requests"), len(msgs))
                self.process(msgs, producer, dlq)
                flush_all(producer, stop, "worker")
                if self._delivery_failed:
                    raise KafkaError(f"prediction not delivered: {self._delivery_failed}")
                # Every prediction of the batch is acknowledged: a lost commit replays.
                commit(consumer, asynchronous=True)
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
        # Each prediction goes to its request's partition, whatever partitioner the
        # request's producer used: partners must meet on one partition.
        parts: dict[str, list[int]] = defaultdict(list)
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
            parts[req.experiment].append(msg.partition())
        self.stats.batches += 1
        work = [(runner, reqs, parts[name]) for name, reqs in by_exp.items()
                for runner in self.runners[name]]  # fmt: skip
        stats = [WorkerStats() for _ in work]
        # Candidates score their batches side by side, so a slow one delays only itself.
        tasks = [
            self._fanout.submit(self._batched, runner, reqs, s)
            for (runner, reqs, _), s in zip(work, stats, strict=True)
        ]
        partial = [task.result() for task in tasks]
        # Then the latency probes, one call at a time with no other model, batch or
        # encoding running in this process: a probe's time is what serving that one
        # request costs, not a wait for the interpreter lock held by another candidate
        # (seen: a 7 ms forest read 100-340 ms beside a second candidate's batches).
        for (runner, reqs, p), results, s in zip(work, partial, stats, strict=True):
            outcomes = runner.run_probes(reqs, results, s)
            for req, partition, outcome in zip(reqs, p, outcomes, strict=True):
                self._produce(producer, topic, req, partition, runner, outcome, s)
            for name in ("timeouts", "errors", "predictions", "saturated", "batch_retries"):
                setattr(self.stats, name, getattr(self.stats, name) + getattr(s, name))

    @staticmethod
    def _batched(
        runner: CandidateRunner, reqs: list[Request], stats: WorkerStats
    ) -> list[Outcome | None]:
        size = runner.cfg.batch_size
        results: list[Outcome | None] = []
        for start in range(0, len(reqs), size):
            results.extend(runner.run_batched(reqs[start : start + size], stats))
        return results

    def _produce(
        self, producer: Any, topic: str, req: Request, partition: int, runner: CandidateRunner,
        outcome: Outcome, stats: WorkerStats,
    ) -> None:  # fmt: skip
        model, role = runner.cfg.name, runner.role
        pred = Prediction(
            request_id=req.request_id, experiment=req.experiment, role=role, model=model,
            output=outcome.output, latency_ms=outcome.latency_ms, event_time=req.event_time,
            error=outcome.error, timing=outcome.timing,
        )  # fmt: skip
        try:
            value = pred.encode()
        except Exception as exc:  # an output that is not JSON-serialisable is a model error
            pred = Prediction(
                request_id=req.request_id, experiment=req.experiment, role=role,
                model=model, output=None, latency_ms=outcome.latency_ms,
                event_time=req.event_time, timing=outcome.timing,
                error=f"{describe(exc)} (output could not be encoded)",
            )  # fmt: skip
            value = pred.encode()
        if pred.error:
            stats.errors += 1
        while True:
            try:
                producer.produce(
                    topic, key=pred.key, value=value, partition=partition, headers=AVRO_HEADERS
                )
                break
            except BufferError:
                producer.poll(0.05)  # the worker may wait; it is not the serving path
        stats.predictions += 1
        producer.poll(0)
