"""Canary rollouts on the real broker and warehouse: the router serves users by the
weights on the control topic, the tap mirrors what each arm served, the sink stores
it, and `shadowline canary run` promotes a healthy candidate to 100 % and rolls a
regressed one back by itself."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shadowline import Mirror, Router, kafka
from shadowline.envelopes import Control, Prediction
from shadowline.supervisor import Pipeline
from tests.integration.helpers import read_topic, rows, wait_for

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / ".shadowline" / "test-output"
RATE = 400  # requests per second from the serving thread


class Serving:
    """A service: the router picks the arm per user, the arm answers, the tap mirrors."""

    def __init__(self, config: Any, experiment: str, regressed: bool) -> None:
        self.config, self.experiment, self.regressed = config, experiment, regressed
        self.stop = threading.Event()
        self.served: dict[str, int] = {}
        self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(5)
        with Router(self.config) as router, Mirror(self.config) as mirror:
            router.wait_ready(10)
            i = 0
            next_at = time.monotonic()
            while not self.stop.is_set():
                unit = f"user-{rng.randrange(20_000)}"
                try:
                    a = router.assign(self.experiment, unit)
                    latency, error = 4.0 + rng.random(), None
                    if a.candidate and self.regressed:
                        if rng.random() < 0.05:
                            error = "RuntimeError: candidate failed"
                        if rng.random() < 0.10:
                            latency += 150.0
                    mirror.record(
                        experiment=self.experiment, request_id=f"q{i}", inputs={"x": i},
                        output=None if error else {"label": 1}, latency_ms=latency,
                        model=a.arm, unit_id=unit, arm=a.arm, arm_weight=a.weight, error=error,
                    )  # fmt: skip
                    self.served[a.arm] = self.served.get(a.arm, 0) + 1
                except Exception:
                    self.errors += 1
                i += 1
                next_at += 1 / RATE
                time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Serving:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture
def canary_setup(config_factory: Any, child_env: dict[str, str], tmp_path: Path) -> Any:
    def make(**canary: Any) -> tuple[Any, Path, Pipeline]:
        config, path = config_factory(
            [
                {
                    "name": "ramp",
                    "mode": "canary",
                    "production_model": "prod",
                    "candidates": [{"name": "cand", "model": "tests.fixtures.models:EchoModel"}],
                    "canary": {
                        "steps": [0.2, 0.5, 1.0],
                        "min_dwell_s": 2,
                        "min_samples": 600,
                        "check_interval_s": 0.5,
                    }
                    | canary,
                }
            ]
        )
        pipeline = Pipeline(path, components=("sink",), log_dir=tmp_path / "logs", env=child_env)
        pipeline.start()
        group = [f"{config.kafka.namespace}sink"]
        wait_for(lambda: kafka.groups_ready(config.kafka, group), 90, "the sink", pipeline)
        return config, path, pipeline

    made: list[Pipeline] = []

    def factory(**canary: Any) -> tuple[Any, Path, Pipeline]:
        out = make(**canary)
        made.append(out[2])
        return out

    yield factory
    for p in made:
        p.stop()


def _canary_run(path: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    log = path.parent / "canary.log"
    with log.open("w") as err:
        try:
            return subprocess.run(
                [sys.executable, "-m", "shadowline", "canary", "run", "-c", str(path), "ramp"],
                stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout, cwd=ROOT,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise AssertionError("canary run did not finish:\n" + log.read_text()[-3000:]) from None


def _controls(config: Any) -> list[tuple[int, Control]]:
    msgs = read_topic(config, "control", 1, timeout=5)
    out = []
    for m in msgs:
        out.append((m.timestamp()[1], Control.from_message(m.key(), m.value(), "avro/binary")))
    return sorted(out, key=lambda tc: tc[1].version)


def test_healthy_candidate_is_ramped_to_100_percent(canary_setup: Any) -> None:
    config, path, pipeline = canary_setup()
    with Serving(config, "ramp", regressed=False) as serving:
        proc = _canary_run(path, timeout=90)
        pipeline.check()
    assert proc.returncode == 0, proc.stdout + (path.parent / "canary.log").read_text()
    assert "complete at step 2" in proc.stdout
    assert serving.errors == 0
    decisions = [c for _, c in _controls(config)]
    actions = [c.reason.split(":", 1)[0] for c in decisions if c.reason]
    assert actions[0] == "start" and actions[-1] == "complete"
    promoted = [(c.step, c.weights["cand"]) for c in decisions if c.reason.startswith("promote")]
    assert promoted == [(1, 0.5), (2, 1.0)]
    # The router followed: at 100 % nearly every request after the last promotion was
    # served by the candidate, and the sink recorded every decision.
    last_promotion = max(t for t, c in _controls(config) if c.reason.startswith("promote"))
    served = rows(
        config,
        "SELECT model, count() AS n FROM served_final WHERE experiment = 'ramp' "
        "AND event_time > fromUnixTimestamp64Milli({t:Int64}) + INTERVAL 1 SECOND GROUP BY model",
        t=last_promotion,
    )
    by_model = {r["model"]: r["n"] for r in served}
    assert by_model.get("cand", 0) > 0 and by_model.get("prod", 0) == 0, by_model
    count_sql = "SELECT count() AS n FROM rollout_events FINAL WHERE experiment = 'ramp'"
    recorded = wait_for(
        lambda: (n := rows(config, count_sql)[0]["n"]) == len(decisions) and n,
        30,
        "every decision in rollout_events",
    )
    assert recorded == len(decisions)


def test_regressed_candidate_is_rolled_back_automatically(canary_setup: Any) -> None:
    config, path, pipeline = canary_setup()
    with Serving(config, "ramp", regressed=True):
        proc = _canary_run(path, timeout=180)
        pipeline.check()
        # After the rollback the routers move everyone back to production.
        time.sleep(2)
    assert proc.returncode == 1, proc.stdout + (path.parent / "canary.log").read_text()
    controls = _controls(config)
    stamp, rollback = controls[-1]
    assert rollback.reason.startswith("rollback")
    assert rollback.verdict == "fail" and rollback.weights["cand"] == 0.0
    assert "max_p99_latency_ms" in rollback.reason or "max_error_rate" in rollback.reason
    # Time from the first regressed request reaching Kafka to the rollback record.
    first_bad = None
    for m in read_topic(config, "predictions", 1, timeout=10):
        p = Prediction.from_message(m.key(), m.value(), "avro/binary")
        if p.model == "cand" and (p.error or p.latency_ms > 100):
            t = m.timestamp()[1]
            first_bad = t if first_bad is None else min(first_bad, t)
    assert first_bad is not None
    seconds = (stamp - first_bad) / 1000
    assert 0 < seconds < 60
    OUTPUT.mkdir(parents=True, exist_ok=True)
    report = {"first_regressed_request_to_rollback_s": seconds, "reason": rollback.reason}
    (OUTPUT / "canary_rollback.json").write_text(json.dumps(report, indent=2))
    print(f"\nrollback {seconds:.2f} s after the first regressed request reached Kafka")
    # No candidate traffic once routers applied the rollback.
    after = rows(
        config,
        "SELECT countIf(model = 'cand') AS cand, count() AS n FROM served_final "
        "WHERE experiment = 'ramp' AND event_time > fromUnixTimestamp64Milli({t:Int64}) "
        "+ INTERVAL 1 SECOND",
        t=stamp,
    )[0]
    assert after["n"] > 0 and after["cand"] == 0, after
    # `canary status` tells the same story from the control topic and rollout_events.
    status_sql = "SELECT count() AS n FROM rollout_events FINAL WHERE experiment = 'ramp'"
    wait_for(lambda: rows(config, status_sql)[0]["n"] == len(controls), 30, "rollout_events")
    status = subprocess.run(
        [sys.executable, "-m", "shadowline", "canary", "status", "-c", str(path), "ramp", "--json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=True,
    )  # fmt: skip
    info = json.loads(status.stdout)
    assert info["latest"]["verdict"] == "fail"
    assert info["latest"]["weights"]["cand"] == 0.0
    assert info["history"][0]["reason"] == rollback.reason
    assert [h["version"] for h in info["history"]] == sorted(
        (c.version for _, c in controls), reverse=True
    )[: len(info["history"])]


def test_a_step_that_stays_undecided_ends_at_max_step_s_and_says_why(canary_setup: Any) -> None:
    # 10 million requests per step can never be reached: the gates stay inconclusive,
    # and after max_step_s the step ends as configured (rollback), naming what the gates
    # were waiting for.
    config, path, _ = canary_setup(min_samples=10_000_000, max_step_s=4)
    with Serving(config, "ramp", regressed=False):
        proc = _canary_run(path, timeout=60)
    assert proc.returncode == 1, proc.stdout + (path.parent / "canary.log").read_text()
    decisions = [c for _, c in _controls(config)]
    holds = [c for c in decisions if c.reason.startswith("hold")]
    assert holds and all("waiting for min_samples" in c.reason for c in holds), holds[:2]
    assert any("have " in c.reason for c in holds)  # how many it has, of how many
    last = decisions[-1]
    assert last.reason.startswith("rollback: step 0 undecided after")
    assert "max_step_s 4" in last.reason and last.weights["cand"] == 0.0
    assert last.verdict == "inconclusive"
