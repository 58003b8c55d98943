"""The serving-side tap: mirror each production request and output to Kafka.

``record()`` runs in the serving thread and does as little as possible: a
sampling check, a shallow copy and an append to a bounded queue. A background
thread redacts, encodes and produces. Nothing here blocks the caller or raises
into it; every message that does not reach Kafka is counted.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

from shadowline.config import Config, ExperimentConfig, RedactConfig, load_config
from shadowline.envelopes import Feedback, Prediction, Request, now_ms
from shadowline.errors import describe

log = logging.getLogger(__name__)

_BATCH = 512
_FEEDBACK = object()  # tags feedback items in the send queue
_PREDICTION = object()  # tags predictions recorded without a request (interleave)
_REQUEST = object()  # tags requests recorded without production's output (ingest)


@dataclass
class TapCounters:
    """What happened to every ``record()`` call. Read them from ``Mirror.counters``."""

    recorded: int = 0  # calls accepted into the local queue
    sampled_out: int = 0  # calls skipped by the experiment's sampling rate
    dropped_queue_full: int = 0  # local queue full (Kafka slow or down)
    dropped_unknown_experiment: int = 0
    rejected: int = 0  # inputs/outputs that could not be encoded
    enqueued: int = 0  # messages handed to the Kafka client
    dropped_client_full: int = 0  # the Kafka client's own buffer was full
    delivered: int = 0  # messages acknowledged by Kafka
    failed: int = 0  # messages Kafka did not take before their timeout
    undelivered_at_close: int = 0  # messages still unacknowledged when close() gave up
    last_error: str | None = None

    def snapshot(self) -> dict[str, Any]:
        """A plain dict copy, for logs and metrics."""
        return dict(self.__dict__)


def _hash_value(value: Any, salt: bytes) -> str:
    digest = hmac.new(salt, repr(value).encode(), hashlib.sha256).hexdigest()
    return f"sha256:{digest[:32]}"


def redact(inputs: dict[str, Any], rules: RedactConfig) -> dict[str, Any]:
    """Drop or hash the named fields (dotted paths reach into nested objects)."""
    if not rules.drop and not rules.hash:
        return inputs
    out = _copy_paths(inputs, rules.drop + rules.hash)
    salt = rules.salt.get_secret_value().encode()
    for path in rules.drop:
        _apply(out, path.split("."), None)
    for path in rules.hash:
        _apply(out, path.split("."), salt)
    return out


def _copy_paths(inputs: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    # Copy only the nested dicts we are about to change, never the caller's own.
    out = dict(inputs)
    for path in paths:
        node = out
        for part in path.split(".")[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                break
            node[part] = dict(child)
            node = node[part]
    return out


def _apply(node: dict[str, Any], parts: list[str], salt: bytes | None) -> None:
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            return
        node = child
    leaf = parts[-1]
    if leaf not in node:
        return
    if salt is None:
        del node[leaf]
    else:
        node[leaf] = _hash_value(node[leaf], salt)


def sampled(request_id: str, rate: float) -> bool:
    """Deterministic per-request sampling, so replays and restarts pick the same requests."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return zlib.crc32(request_id.encode()) < rate * 4_294_967_296


class Mirror:
    """Mirror production traffic onto Kafka without ever slowing or failing the caller."""

    def __init__(self, config: Config, *, producer_settings: dict[str, Any] | None = None) -> None:
        self._config = config
        self._experiments: dict[str, ExperimentConfig] = {e.name: e for e in config.experiments}
        self._requests_topic = config.kafka.topic("requests")
        self._predictions_topic = config.kafka.topic("predictions")
        self._feedback_topic = config.kafka.topic("feedback")
        self._queue: deque[tuple[Any, ...]] = deque()
        self._max = config.tap.queue_size
        self._producer_settings = producer_settings or {}
        self.counters = TapCounters()
        self._stop = threading.Event()
        self._producer: Any = None
        self._thread = threading.Thread(target=self._run, name="shadowline-tap", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] = "shadowline.toml") -> Mirror:
        """Build a tap from a TOML config file (raises ``ConfigError`` on a bad file)."""
        return cls(load_config(path))

    def record(
        self,
        *,
        experiment: str,
        request_id: str,
        inputs: dict[str, Any],
        output: Any,
        latency_ms: float,
        model: str,
        unit_id: str | None = None,
        error: str | BaseException | None = None,
        event_time: int | None = None,
        arm: str | None = None,
        arm_weight: float | None = None,
    ) -> bool:
        """Mirror one served request and its production output. Returns whether it was queued.

        Never raises and never blocks: a full queue or an unknown experiment is
        counted and the call returns False.
        """
        try:
            exp = self._admit(experiment, request_id)
            if exp is None:
                return False
            self._queue.append(
                (exp, request_id, dict(inputs), output, latency_ms, model, unit_id, error,
                 event_time or now_ms(), arm, arm_weight)
            )  # fmt: skip
            self.counters.recorded += 1
            return True
        except Exception as exc:  # the serving path must never see our failures
            return self._reject(exc)

    def _reject(self, exc: Exception) -> bool:
        """Count a call that failed inside the tap; the caller gets False, never ``exc``."""
        self.counters.rejected += 1
        self.counters.last_error = describe(exc)
        return False

    def _admit(self, experiment: str, request_id: str | None) -> ExperimentConfig | None:
        """The experiment if a message for it may be queued now (sampled by
        ``request_id`` when given), else None with the reason counted."""
        exp = self._experiments.get(experiment)
        if exp is None:
            self.counters.dropped_unknown_experiment += 1
            return None
        if request_id is not None and not sampled(request_id, exp.sampling):
            self.counters.sampled_out += 1
            return None
        if len(self._queue) >= self._max:
            self.counters.dropped_queue_full += 1
            return None
        return exp

    def feedback(
        self,
        *,
        experiment: str,
        request_id: str,
        kind: str,
        value: Any,
        event_time: int | None = None,
    ) -> bool:
        """Publish a label, click or conversion for a past request (``kind``: label,
        click, conversion; ``value``: any JSON value, e.g. the true label, the clicked
        item, the conversion amount). Like ``record``: never raises, never blocks."""
        try:
            if self._admit(experiment, None) is None:
                return False
            self._queue.append((_FEEDBACK, experiment, request_id, kind, value,
                                event_time or now_ms()))  # fmt: skip
            self.counters.recorded += 1
            return True
        except Exception as exc:
            return self._reject(exc)

    def record_prediction(
        self,
        *,
        experiment: str,
        request_id: str,
        role: str,
        model: str,
        output: Any,
        latency_ms: float,
        error: str | BaseException | None = None,
        event_time: int | None = None,
    ) -> bool:
        """Mirror one more model's answer for a request already ``record``-ed (used by
        ``shadowline.Interleave``: candidates and the secondary run in process).
        Like ``record``: sampled the same way, never raises, never blocks."""
        try:
            exp = self._admit(experiment, request_id)
            if exp is None:
                return False
            self._queue.append((_PREDICTION, experiment, request_id, role, model, output,
                                latency_ms, error, event_time or now_ms()))  # fmt: skip
            self.counters.recorded += 1
            return True
        except Exception as exc:
            return self._reject(exc)

    def record_request(
        self,
        *,
        experiment: str,
        request_id: str,
        inputs: dict[str, Any],
        event_time: int | None = None,
        unit_id: str | None = None,
    ) -> bool:
        """Mirror a request whose production output never came (the payload-log ingest:
        a request event without its response); the join then records it as
        ``missing_production``. Like ``record``: never raises, never blocks."""
        try:
            exp = self._admit(experiment, request_id)
            if exp is None:
                return False
            self._queue.append((_REQUEST, exp, request_id, dict(inputs), event_time or now_ms(),
                                unit_id))  # fmt: skip
            self.counters.recorded += 1
            return True
        except Exception as exc:
            return self._reject(exc)

    # -- background side -------------------------------------------------

    def _make_producer(self) -> Any:
        from shadowline.kafka import make_producer

        settings = {
            "queue.buffering.max.messages": max(2 * self._max, 1000),
            "linger.ms": self._config.tap.linger_ms,
            "message.timeout.ms": 120_000,
            "log_level": 3,
        }
        settings.update(self._producer_settings)
        return make_producer(self._config.kafka, **settings)

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.counters.delivered += 1
        else:
            self.counters.failed += 1
            self.counters.last_error = str(err)

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        try:
            self._producer.produce(
                topic, value=value, key=key, headers=[("content-type", b"avro/binary")],
                on_delivery=self._on_delivery,
            )  # fmt: skip
            self.counters.enqueued += 1
        except BufferError:
            self.counters.dropped_client_full += 1
        except Exception as exc:  # e.g. message larger than message.max.bytes
            self.counters.failed += 1
            self.counters.last_error = describe(exc)

    def _send(self, item: tuple[Any, ...]) -> None:
        if item[0] is _FEEDBACK:
            self._send_feedback(item)
            return
        if item[0] is _PREDICTION:
            self._send_prediction(item)
            return
        if item[0] is _REQUEST:
            self._send_request(item)
            return
        (exp, request_id, inputs, output, latency_ms, model, unit_id, error, event_time, arm,
         arm_weight) = item  # fmt: skip
        try:
            req = Request(
                request_id=request_id,
                experiment=exp.name,
                event_time=event_time,
                inputs=redact(inputs, exp.redact),
                unit_id=unit_id,
                arm=arm,
                arm_weight=arm_weight,
            )
            if isinstance(error, BaseException):
                error = describe(error)
            pred = Prediction(
                request_id=request_id,
                experiment=exp.name,
                # With an arm (A/B, canary) the output is whichever arm served it.
                role="production" if arm is None else "arm",
                model=model,
                output=output,
                latency_ms=max(0.0, float(latency_ms)),
                event_time=event_time,
                error=error,
                unit_id=unit_id,
            )
            key = request_id.encode()
            req_bytes, pred_bytes = req.encode(), pred.encode()
        except Exception as exc:
            self.counters.rejected += 1
            self.counters.last_error = describe(exc)
            return
        self._produce(self._requests_topic, key, req_bytes)
        self._produce(self._predictions_topic, key, pred_bytes)

    def _send_request(self, item: tuple[Any, ...]) -> None:
        _, exp, request_id, inputs, event_time, unit_id = item
        try:
            req = Request(
                request_id=request_id, experiment=exp.name, event_time=event_time,
                inputs=redact(inputs, exp.redact), unit_id=unit_id,
            )  # fmt: skip
            value = req.encode()
        except Exception as exc:
            self.counters.rejected += 1
            self.counters.last_error = describe(exc)
            return
        self._produce(self._requests_topic, request_id.encode(), value)

    def _send_prediction(self, item: tuple[Any, ...]) -> None:
        _, experiment, request_id, role, model, output, latency_ms, error, event_time = item
        try:
            pred = Prediction(
                request_id=request_id, experiment=experiment, role=role, model=model,
                output=output, latency_ms=max(0.0, float(latency_ms)), event_time=event_time,
                error=describe(error) if isinstance(error, BaseException) else error,
            )  # fmt: skip
            value = pred.encode()
        except Exception as exc:  # e.g. an output that is not JSON
            self.counters.rejected += 1
            self.counters.last_error = describe(exc)
            return
        self._produce(self._predictions_topic, request_id.encode(), value)

    def _send_feedback(self, item: tuple[Any, ...]) -> None:
        _, experiment, request_id, kind, value, event_time = item
        try:
            fb = Feedback(request_id, experiment, kind, value, event_time)
            raw = Feedback.from_message(fb.key, fb.encode(), "avro/binary")  # validates
            value_bytes = raw.encode()
        except Exception as exc:
            self.counters.rejected += 1
            self.counters.last_error = describe(exc)
            return
        self._produce(self._feedback_topic, request_id.encode(), value_bytes)

    def _run(self) -> None:
        try:
            self._producer = self._make_producer()
        except Exception as exc:
            self.counters.last_error = describe(exc)
            self._drain_as_dropped()
            return
        queue = self._queue
        while not self._stop.is_set():
            if not queue:
                self._producer.poll(0.005)
                continue
            for _ in range(min(len(queue), _BATCH)):
                self._send(queue.popleft())
            self._producer.poll(0)
        while queue:
            self._send(queue.popleft())

    def _drain_as_dropped(self) -> None:
        while not self._stop.is_set():
            while self._queue:
                self._queue.popleft()
                self.counters.dropped_client_full += 1
            time.sleep(0.05)

    # -- lifecycle ---------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` s for queued messages to reach Kafka; returns how many remain."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.002)
        if self._producer is None:
            return len(self._queue)
        remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
        return int(remaining) + len(self._queue)

    def close(self) -> None:
        """Send what is buffered (up to ``tap.close_timeout_s``), then stop the sender thread."""
        remaining = self.flush(self._config.tap.close_timeout_s)
        self._stop.set()
        self._thread.join(timeout=self._config.tap.close_timeout_s + 1)
        if remaining:
            self.counters.undelivered_at_close += remaining
            log.warning("tap closed with %d messages not delivered", remaining)

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
