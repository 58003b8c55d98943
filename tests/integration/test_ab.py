"""A/B mode on the real broker and warehouse: the router splits users 50/50 by the
weights on the control topic, the tap mirrors what each arm served plus the feedback
users gave, and the gates compare the arms on errors, latency, accuracy and conversions."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from shadowline import Mirror, Router, kafka
from shadowline.envelopes import Control, now_ms
from shadowline.supervisor import Pipeline
from shadowline.warehouse import named_query
from tests.integration.helpers import produce, rows, wait_for

ROOT = Path(__file__).resolve().parents[2]
N = 4000


def test_ab_split_with_feedback_is_judged_per_arm(
    config_factory: Any, child_env: dict[str, str], tmp_path: Path
) -> None:
    config, path = config_factory(
        [
            {
                "name": "split",
                "mode": "ab",
                "production_model": "prod",
                "candidates": [{"name": "cand", "model": "tests.fixtures.models:EchoModel"}],
                "feedback_window_s": 3600,
                "gates": {
                    "min_samples": 500,
                    "max_accuracy_drop": 0.02,
                    "max_conversion_rate_drop": 0.02,
                },
            }
        ]
    )
    pipeline = Pipeline(path, components=("sink",), log_dir=tmp_path / "logs", env=child_env)
    pipeline.start()
    try:
        group = [f"{config.kafka.namespace}sink"]
        wait_for(lambda: kafka.groups_ready(config.kafka, group), 90, "the sink", pipeline)
        control = Control("split", {"cand": 0.5, "prod": 0.5}, 1, now_ms(), step=None)
        produce(config, "control", [(control.key, control.encode(), "avro/binary")])
        rng = random.Random(11)
        served: dict[str, int] = {}
        with Router(config) as router, Mirror(config) as mirror:
            assert router.wait_ready(10)
            wait_for(lambda: router.weights("split"), 10, "the weights")
            for i in range(N):
                unit = f"user-{i % 1500}"
                a = router.assign("split", unit)
                served[a.arm] = served.get(a.arm, 0) + 1
                truth = rng.randrange(2)
                # The candidate is right 70 % of the time, production 90 %; users of the
                # candidate convert 5 % of the time, of production 15 %.
                right = rng.random() < (0.7 if a.candidate else 0.9)
                label = truth if right else 1 - truth
                assert mirror.record(
                    experiment="split", request_id=f"q{i}", inputs={"x": i},
                    output={"label": label}, latency_ms=3.0, model=a.arm, unit_id=unit,
                    arm=a.arm, arm_weight=a.weight,
                )  # fmt: skip
                assert mirror.feedback(
                    experiment="split", request_id=f"q{i}", kind="label", value=truth
                )
                if rng.random() < (0.05 if a.candidate else 0.15):
                    mirror.feedback(experiment="split", request_id=f"q{i}", kind="conversion",
                                    value=round(rng.uniform(5, 50), 2))  # fmt: skip
            assert mirror.flush(30) == 0
            assert router.counters.control_unavailable == 0
        # Sticky 50/50 by user: both arms near half.
        assert abs(served["cand"] / N - 0.5) < 0.05, served
        wait_for(
            lambda: rows(config, "SELECT count() AS n FROM served_final")[0]["n"] == N,
            60, "every served request in the warehouse", pipeline,
        )  # fmt: skip
        labels_sql = "SELECT count() AS n FROM feedback FINAL WHERE kind = 'label'"
        wait_for(
            lambda: rows(config, labels_sql)[0]["n"] == N,
            60, "every label in the warehouse", pipeline,
        )  # fmt: skip
        arm_sql = named_query("arm_feedback", config.warehouse.database)
        found = rows(
            config, arm_sql, experiment="split", since="2000-01-01 00:00:00",
            until="2100-01-01 00:00:00", feedback_window_s=3600,
        )  # fmt: skip
        arms = {r["arm"]: r for r in found}
        assert arms["cand"]["labelled"] == served["cand"]
        assert 0.65 < arms["cand"]["accuracy"] < 0.75
        assert 0.86 < arms["prod"]["accuracy"] < 0.94
        assert arms["cand"]["conversion_rate"] < arms["prod"]["conversion_rate"]
        # The tap's arm predictions carry the unit: each user is one unit of one arm.
        assert sum(a["units"] for a in arms.values()) == 1500
        assert arms["cand"]["requests_sq"] > arms["cand"]["requests"]  # users came back
        proc = subprocess.run(
            [sys.executable, "-m", "shadowline", "gate", "check", "-c", str(path), "split",
             "--json"],
            capture_output=True, text=True, timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        rules = {r["rule"]: r for r in report["candidates"][0]["rules"]}
        assert rules["max_accuracy_drop"]["outcome"] == "fail"
        assert 0.15 < rules["max_accuracy_drop"]["observed"] < 0.25
        assert rules["max_conversion_rate_drop"]["outcome"] == "fail"
        assert rules["max_error_rate"]["outcome"] == "pass"
        # Pair-only rules do not apply to arms that served different users.
        assert "min_agreement" not in rules and "max_output_shift" not in rules
    finally:
        pipeline.stop()
