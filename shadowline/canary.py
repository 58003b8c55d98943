"""The canary controller (``shadowline canary run|status``).

It walks the experiment's schedule (``[experiments.canary] steps``): publishes the
step's weight on the control topic, evaluates the gates every ``check_interval_s`` on
what both arms served during the step (the same time range; at a 100 % step, which
has no production traffic, production's figures come from the step before), and
decides:

- ``fail``: roll back to 0 % at once, with the failing rules as the reason; stop.
- ``pass``, the step has lasted ``min_dwell_s`` and holds ``min_samples`` candidate
  requests: promote to the next step (or finish at the last one).
- still inconclusive after ``max_step_s``: ``on_step_timeout`` (roll back, the
  default, or promote), with what the gates were waiting for as the reason.
- otherwise: hold, naming each undecided rule and the evidence it still needs.

Every decision is a control message (key: experiment; ``version`` increasing, ``step``
set), which routers apply and the sink records in ``rollout_events``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shadowline import gates
from shadowline.config import Config, ExperimentConfig
from shadowline.envelopes import Control, now_ms
from shadowline.errors import DecodeError, KafkaError, ShadowlineError
from shadowline.warehouse import Warehouse

log = logging.getLogger("shadowline.canary")
AVRO_HEADERS = [("content-type", b"avro/binary")]


class CanaryError(ShadowlineError):
    """The canary cannot run (wrong mode, Kafka unreachable, warehouse missing)."""


@dataclass
class Decision:
    """One evaluation of the controller, as published."""

    step: int
    weight: float
    verdict: str
    action: str  # start | hold | promote | rollback | complete
    reason: str
    version: int


def latest_control(config: Config, experiment: str, timeout: float = 10.0) -> Control | None:
    """The last decision on the control topic for ``experiment``, if any."""
    from shadowline import kafka

    topic = config.kafka.topic("control")
    consumer = kafka.make_consumer(
        config.kafka, f"shadowline-canary-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True}
    )
    try:
        consumer.assign([kafka.TopicPartition(topic, 0, kafka.OFFSET_BEGINNING)])
        latest: Control | None = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == kafka.PARTITION_EOF:
                    return latest
                continue
            try:
                c = Control.from_message(msg.key(), msg.value(), kafka.header(msg, "content-type"))
            except DecodeError:
                continue
            if c.experiment == experiment and (latest is None or c.version >= latest.version):
                latest = c
        raise CanaryError(f"could not read {topic} within {timeout:.0f} s (is Kafka up?)")
    finally:
        consumer.close()


def _failing(report: gates.GateReport) -> str:
    parts = [text for cand in report.candidates for text in gates.failing_rules(cand)]
    return "; ".join(parts) or "gates failed"


def _waiting(report: gates.GateReport) -> str:
    """What the gates wait for: each undecided rule with the evidence it still needs."""
    parts = [
        f"{r.rule} ({r.detail})"
        for cand in report.candidates
        for r in cand.rules
        if r.outcome == "inconclusive"
    ]
    return "waiting for " + "; ".join(parts) if parts else "gates inconclusive"


class Controller:
    """Runs one experiment's canary until it completes, rolls back, or is stopped."""

    def __init__(self, config: Config, experiment: str) -> None:
        exp = config.require_experiment(experiment, CanaryError)
        if exp.mode != "canary":
            raise CanaryError(
                f"experiment {experiment!r} has mode {exp.mode!r}; canary run needs mode 'canary'"
            )
        self.config = config
        self.exp: ExperimentConfig = exp
        self.candidate = exp.candidates[0].name
        self.decisions: list[Decision] = []
        self._producer: Any = None
        self._version = 0

    def _publish(self, step: int, weight: float, verdict: str, action: str, reason: str) -> None:

        self._version += 1
        control = Control(
            experiment=self.exp.name,
            weights={self.candidate: weight, self.exp.production_model: round(1.0 - weight, 12)},
            version=self._version,
            event_time=now_ms(),
            verdict=verdict,
            reason=f"{action}: {reason}",
            step=step,
        )
        failed: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(str(err))

        self._producer.produce(
            self.config.kafka.topic("control"), key=control.key, value=control.encode(),
            headers=AVRO_HEADERS, on_delivery=delivered,
        )  # fmt: skip
        if self._producer.flush(30) or failed:
            raise KafkaError(f"control decision not delivered: {failed or 'timeout'}")
        decision = Decision(step, weight, verdict, action, reason, self._version)
        self.decisions.append(decision)
        log.warning(
            "canary %s: %s step %d weight %.4g verdict %s (%s)",
            self.exp.name, action, step, weight, verdict, reason,
        )  # fmt: skip

    def run(self, stop: threading.Event | None = None) -> Decision:
        """Walk the schedule; returns the final decision (complete or rollback)."""
        from shadowline import kafka

        stop = stop or threading.Event()
        canary = self.exp.canary
        previous = latest_control(self.config, self.exp.name)
        self._version = previous.version if previous else 0
        self._producer = kafka.make_producer(self.config.kafka)
        # Connect and learn the control topic's leader before the first decision, so a
        # decision's recorded time is when routers can read it, not a cold start earlier.
        try:
            self._producer.list_topics(self.config.kafka.topic("control"), timeout=10)
        except Exception as exc:
            raise KafkaError(f"cannot reach Kafka to publish decisions: {exc}") from exc
        # Promotion needs canary.min_samples in the step; the other rules stay as set.
        step_gates = self.exp.gates.model_copy(update={"min_samples": canary.min_samples})
        exp = self.exp.model_copy(update={"gates": step_gates})
        step = 0
        started = datetime.now(UTC)
        previous_start = started  # where production's own figures come from at 100 %
        self._publish(step, canary.steps[0], "inconclusive", "start", "first step")
        warehouse: Warehouse | None = None
        try:
            while not stop.wait(canary.check_interval_s):
                if warehouse is None:
                    warehouse = Warehouse.open_reader(self.config)
                # The step's own range for both arms: production is judged on what it
                # served beside the candidate in the same minutes; at 100 % it serves
                # nothing, and its figures come from the step before.
                weight = canary.steps[step]
                report = gates.evaluate(
                    warehouse, exp, self.candidate, since=started,
                    production_range=(previous_start, started) if weight >= 1.0 else None,
                )  # fmt: skip
                verdict = report.verdict
                n = int(report.candidates[0].figures.get("pairs") or 0)
                dwelt = (datetime.now(UTC) - started).total_seconds()
                if verdict == "fail":
                    self._publish(step, 0.0, "fail", "rollback", _failing(report))
                    return self.decisions[-1]
                timed_out = verdict == "inconclusive" and dwelt >= canary.max_step_s
                if timed_out and canary.on_step_timeout == "rollback":
                    self._publish(
                        step, 0.0, "inconclusive", "rollback",
                        f"step {step} undecided after {dwelt:.0f} s (max_step_s "
                        f"{canary.max_step_s:g}): {_waiting(report)}",
                    )  # fmt: skip
                    return self.decisions[-1]
                if (verdict == "pass" and dwelt >= canary.min_dwell_s) or timed_out:
                    why = (
                        f"{n} requests passed at {weight:.4g} after {dwelt:.0f} s"
                        if verdict == "pass"
                        else f"undecided after {dwelt:.0f} s (max_step_s {canary.max_step_s:g}, "
                        f"on_step_timeout promote): {_waiting(report)}"
                    )
                    if step == len(canary.steps) - 1:
                        self._publish(step, weight, verdict, "complete", why)
                        return self.decisions[-1]
                    step += 1
                    previous_start, started = started, datetime.now(UTC)
                    self._publish(step, canary.steps[step], verdict, "promote", why)
                    continue
                why = (
                    f"{dwelt:.0f} of {canary.min_dwell_s:.0f} s dwelt"
                    if verdict == "pass"
                    else _waiting(report)
                )
                self._publish(step, weight, verdict, "hold", why)
        finally:
            if warehouse is not None:
                warehouse.close()
        # Stopped from outside: leave the weights as they are and say so.
        self._publish(step, canary.steps[step], "inconclusive", "hold", "controller stopped")
        return self.decisions[-1]


def status(config: Config, experiment: str, limit: int = 20) -> dict[str, Any]:
    """Where a rollout stands: the latest decision and the recent history."""
    if not any(e.name == experiment for e in config.experiments):
        raise CanaryError(f"experiment {experiment!r} is not configured")
    latest = latest_control(config, experiment)
    history: list[dict[str, Any]] = []
    try:
        wh = Warehouse.open_reader(config)
        try:
            history = wh.query(
                "SELECT event_time, version, step, weight, verdict, reason "
                "FROM rollout_events FINAL WHERE experiment = {e:String} "
                "ORDER BY version DESC LIMIT {n:UInt32}",
                {"e": experiment, "n": limit},
            )
        finally:
            wh.close()
    except ShadowlineError as exc:
        log.info("no rollout history from the warehouse: %s", exc)
    return {
        "experiment": experiment,
        "latest": None
        if latest is None
        else {
            "version": latest.version, "step": latest.step, "weights": latest.weights,
            "verdict": latest.verdict, "reason": latest.reason,
            "time": datetime.fromtimestamp(latest.event_time / 1000, tz=UTC).isoformat(),
        },
        "history": history,
    }  # fmt: skip
