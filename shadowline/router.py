"""The router SDK: sticky arm assignment for A/B splits and canary weights.

``Router.assign(experiment, unit_id)`` hashes the unit into ``[0, 1)`` and picks the
arm whose cumulative share covers it, so a user stays on one arm for as long as the
weights stand, and a canary ramp (1 % -> 5 % -> 25 %) only ever adds users to the
candidate. Weights come from the compacted ``control`` topic, read by a background
thread; a new decision applies within about a second, without a restart. While the
control topic cannot be read, every unit gets production and the counters say so.

On the serving path ``assign`` never blocks (it reads one dict) and never raises.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from shadowline.config import Config
from shadowline.envelopes import Control
from shadowline.errors import DecodeError, describe

log = logging.getLogger("shadowline.router")


@dataclass(frozen=True, slots=True)
class Assignment:
    """The arm a unit is served by, and the share of traffic that arm has."""

    arm: str
    weight: float
    # True when the arm is a candidate (not the experiment's production model).
    candidate: bool


@dataclass
class RouterCounters:
    """What the router did; read them from your service's metrics."""

    assigned: int = 0
    to_candidate: int = 0
    # Assignments made while the control topic was unreadable (all production).
    control_unavailable: int = 0
    unknown_experiment: int = 0
    control_updates: int = 0
    control_rejected: int = 0  # undecodable control messages, skipped
    errors: int = 0
    last_error: str | None = None


def bucket(experiment: str, unit_id: str) -> float:
    """Where a unit falls in ``[0, 1)`` for an experiment: stable across processes,
    machines and restarts, independent between experiments."""
    digest = hashlib.blake2b(f"{experiment}\x00{unit_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def pick(production: str, weights: dict[str, float], u: float) -> Assignment:
    """The arm covering ``u`` given candidate ``weights`` (the rest is production)."""
    total = 0.0
    for arm in sorted(weights):
        if arm == production:
            continue
        share = weights[arm]
        if share <= 0:
            continue
        total += share
        if u < total:
            return Assignment(arm, share, True)
    rest = max(0.0, 1.0 - sum(w for a, w in weights.items() if a != production and w > 0))
    return Assignment(production, rest, False)


class Router:
    """Assign units to arms from the weights on the control topic.

    ``Router(config)`` starts reading at once; ``close()`` stops it. Use one per
    process, shared by every serving thread.
    """

    def __init__(self, config: Config, *, start: bool = True, check_interval_s: float = 1.0):
        self.counters = RouterCounters()
        self._config = config
        self._production = {e.name: e.production_model for e in config.experiments}
        self._weights: dict[str, Control] = {}
        self._readable = False
        self._check_interval_s = check_interval_s
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shadowline-router", daemon=True)
        if start:
            self._thread.start()

    # -- serving path ------------------------------------------------------

    def assign(self, experiment: str, unit_id: str) -> Assignment:
        """The arm for ``unit_id``; production whenever anything is amiss. Never raises."""
        try:
            production = self._production.get(experiment)
            if production is None:
                self.counters.unknown_experiment += 1
                return Assignment("", 1.0, False)
            self.counters.assigned += 1
            if not self._readable:
                self.counters.control_unavailable += 1
                return Assignment(production, 1.0, False)
            control = self._weights.get(experiment)
            if control is None:
                return Assignment(production, 1.0, False)
            chosen = pick(production, control.weights, bucket(experiment, str(unit_id)))
            if chosen.candidate:
                self.counters.to_candidate += 1
            return chosen
        except Exception as exc:  # the serving path must never see our failures
            self.counters.errors += 1
            self.counters.last_error = describe(exc)
            return Assignment(self._production.get(experiment, ""), 1.0, False)

    def weights(self, experiment: str) -> dict[str, float]:
        """The candidate weights in force for ``experiment`` (empty: all production)."""
        control = self._weights.get(experiment) if self._readable else None
        return dict(control.weights) if control else {}

    @property
    def readable(self) -> bool:
        """Whether the control topic is being read (otherwise: production only)."""
        return self._readable

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Block until the control topic was read to its end once (start-up, tests)."""
        return self._caught_up.wait(timeout)

    # -- background reader -------------------------------------------------

    def _run(self) -> None:
        from shadowline import kafka

        topic = self._config.kafka.topic("control")
        consumer = None
        try:
            # No consumer group: every router reads the whole (compacted) topic.
            consumer = kafka.make_consumer(
                self._config.kafka, "shadowline-router", **{"enable.partition.eof": True}
            )
            tp = kafka.TopicPartition(topic, 0, kafka.OFFSET_BEGINNING)
            consumer.assign([tp])
            last_check = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                if now - last_check >= self._check_interval_s:
                    last_check = now
                    self._readable = self._broker_answers(consumer, topic)
                msg = consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == kafka.PARTITION_EOF:
                        self._caught_up.set()
                    continue
                self._apply(msg)
        except Exception as exc:
            self.counters.errors += 1
            self.counters.last_error = describe(exc)
            self._readable = False
            log.error("router stopped reading control: %s", exc)
        finally:
            if consumer is not None:
                consumer.close()

    def _broker_answers(self, consumer: Any, topic: str) -> bool:
        from shadowline import kafka

        try:
            tp = kafka.TopicPartition(topic, 0)
            consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
            return True
        except Exception as exc:
            self.counters.last_error = describe(exc)
            return False

    def _apply(self, msg: Any) -> None:
        from shadowline import kafka

        try:
            ctype = kafka.header(msg, "content-type")
            control = Control.from_message(msg.key(), msg.value(), ctype)
        except DecodeError as exc:
            self.counters.control_rejected += 1
            self.counters.last_error = f"control message rejected: {exc.reason}"
            return
        current = self._weights.get(control.experiment)
        if current is None or control.version >= current.version:
            self._weights[control.experiment] = control
            self.counters.control_updates += 1

    def close(self) -> None:
        """Stop reading the control topic."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
