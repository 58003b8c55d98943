"""Per-request outcomes on the real broker: a batch that fails or times out blames
only the inputs at fault, and latencies say how they were measured."""

from __future__ import annotations

import random

import pytest
from shadowline.consumers.worker import is_probe

from shadowline.tap import Mirror
from tests.integration.helpers import rows, start_pipeline, wait_for

pytestmark = pytest.mark.integration

PROBS = {"0": 0.25, "1": 0.75}


def test_only_the_inputs_that_fail_or_time_out_alone_are_errors(
    config_factory, child_env, tmp_path
):
    flaky = {
        "name": "flaky", "model": "tests.fixtures.models:FlakyModel",
        "batch_size": 32, "timeout_ms": 300,
    }  # fmt: skip
    config, path = config_factory(
        [
            {
                "name": "outcomes",
                "production_model": "prod",
                "output": "classification",
                "window_s": 10.0,
                "candidates": [flaky],
            }
        ]  # fmt: skip
    )
    served = 1000
    rng = random.Random(11)
    ids = [f"r-{i}" for i in range(served)]
    picked = rng.sample(ids, 40)
    slow_ids, fail_ids = set(picked[:20]), set(picked[20:])  # 2 % time out, 2 % raise
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        with Mirror(config) as mirror:
            for i, rid in enumerate(ids):
                inputs = {
                    "n": i, "label": 1, "probabilities": PROBS,
                    "slow": rid in slow_ids, "fail": rid in fail_ids,
                }  # fmt: skip
                assert mirror.record(
                    experiment="outcomes", request_id=rid, inputs=inputs,
                    output={"label": 1, "probabilities": PROBS}, latency_ms=2.0, model="prod",
                )  # fmt: skip
        sql = "SELECT count() AS n FROM comparisons_final WHERE experiment = 'outcomes'"
        wait_for(lambda: rows(config, sql)[0]["n"] >= served, 180, f"{served} rows", pipeline)
        got = {
            r["request_id"]: r
            for r in rows(
                config,
                "SELECT request_id, status, candidate_error, candidate_timing, "
                "candidate_latency_ms FROM comparisons_final WHERE experiment = 'outcomes'",
            )
        }
    finally:
        codes = pipeline.stop()
    assert codes == {"sink": 0, "joiner": 0, "worker": 0}
    assert len(got) == served
    failed = {rid for rid, r in got.items() if r["candidate_error"] is not None}
    assert failed == slow_ids | fail_ids, (
        f"wrongly blamed: {sorted(failed - slow_ids - fail_ids)[:10]}; "
        f"missed: {sorted((slow_ids | fail_ids) - failed)[:10]}"
    )
    for rid in slow_ids:
        assert got[rid]["candidate_error"] == (
            "TimeoutError: candidate 'flaky' took longer than 300 ms"
        ), got[rid]
    for rid in fail_ids:
        assert got[rid]["candidate_error"].startswith("RuntimeError: cannot score input"), got[rid]
    assert {r["status"] for rid, r in got.items() if rid not in failed} == {"matched"}
    # Every latency says how it was measured; probes and inputs re-run alone were timed
    # on their own request, the rest carry a share of their batch's time.
    timing = {rid: r["candidate_timing"] for rid, r in got.items()}
    probes = {rid for rid in ids if is_probe(rid, 0.05)}
    assert 20 <= len(probes) <= 80
    assert all(timing[rid] == "request" for rid in probes | failed)
    assert set(timing.values()) == {"request", "batch_share"}
    for rid in slow_ids:
        assert got[rid]["candidate_latency_ms"] == 300.0
