"""End to end on the real broker and chDB: tap -> workers -> joiner -> sink -> warehouse."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import orjson
import pytest

from shadowline.envelopes import DeadLetter, Prediction, Request, now_ms
from shadowline.tap import Mirror
from tests.integration.helpers import produce, read_topic, rows, start_pipeline, wait_for

pytestmark = pytest.mark.integration

PROBS = {"0": 0.25, "1": 0.75}
CANDIDATES = [
    {"name": "echo", "model": "tests.fixtures.models:EchoModel", "batch_size": 16},
    {"name": "flip", "model": "tests.fixtures.models:FlipModel", "batch_size": 16},
    {"name": "failing", "model": "tests.fixtures.models:FailingModel", "batch_size": 8},
    {
        "name": "slow",
        "model": "tests.fixtures.models:SlowModel",
        "batch_size": 4,
        "timeout_ms": 300,
    },
]


def experiment(name: str, candidates: list[dict], window_s: float = 2.0) -> dict:
    return {
        "name": name,
        "production_model": "prod",
        "output": "classification",
        "window_s": window_s,
        "candidates": candidates,
    }


def test_every_request_ends_as_exactly_one_row_per_candidate(config_factory, child_env, tmp_path):
    config, path = config_factory([experiment("e2e", CANDIDATES, window_s=5.0)])
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        served = 300
        fail_ids = {f"req-{i}" for i in range(0, served, 20)}  # 15 requests make `failing` raise
        slow_ids = {"req-7", "req-150", "req-299"}  # 3 requests make `slow` hang past its timeout
        with Mirror(config) as mirror:
            for i in range(served):
                rid = f"req-{i}"
                inputs = {
                    "n": i,
                    "label": 1,
                    "probabilities": PROBS,
                    "fail": rid in fail_ids,
                    "slow": rid in slow_ids,
                }
                assert mirror.record(
                    experiment="e2e", request_id=rid, inputs=inputs,
                    output={"label": 1, "probabilities": PROBS}, latency_ms=1.5, model="prod",
                    unit_id=f"user-{i % 7}",
                )  # fmt: skip
        assert mirror.counters.delivered == 2 * served

        # 20 requests whose production prediction never comes, sent as JSON like any client
        orphans = [
            Request(f"orphan-{i}", "e2e", now_ms(), {"n": i, "label": 0, "probabilities": PROBS})
            for i in range(20)
        ]
        produce(config, "requests", [(r.key, r.encode_json(), "application/json") for r in orphans])
        # poison: corrupt bytes, no key, wrong schema, absurd latency
        bad_pred = Prediction("req-1", "e2e", "candidate", "echo", 1, -5.0, now_ms()).encode()
        produce(config, "requests", [
            (b"junk-1", b"\x00\x01garbage", None),
            (None, orphans[0].encode(), None),
            (b"req-1", bad_pred, "avro/binary"),
        ])  # fmt: skip
        produce(config, "predictions", [(b"req-2", bad_pred[:15], "avro/binary")])  # truncated
        # a replayed production prediction must not add rows
        dup = Prediction(
            "req-3",
            "e2e",
            "production",
            "prod",
            {"label": 1, "probabilities": PROBS},
            1.5,
            now_ms(),
        )
        produce(config, "predictions", [(dup.key, dup.encode(), "avro/binary")])

        expected = (served + len(orphans)) * len(CANDIDATES)
        count_sql = "SELECT count() AS n FROM comparisons_final WHERE experiment = 'e2e'"
        wait_for(
            lambda: rows(config, count_sql)[0]["n"] >= expected, 120, f"{expected} rows", pipeline
        )
        time.sleep(3)  # anything extra (a duplicate) would land now
        by_status = {
            (r["candidate_model"], r["status"]): r["n"]
            for r in rows(
                config,
                "SELECT candidate_model, status, count() AS n FROM comparisons_final "
                "WHERE experiment = 'e2e' GROUP BY candidate_model, status",
            )
        }
        unique = rows(
            config,
            "SELECT count() AS n, uniqExact(request_id, candidate_model) AS u "
            "FROM comparisons_final WHERE experiment = 'e2e'",
        )[0]
        assert unique == {"n": expected, "u": expected}, by_status
        assert by_status[("echo", "matched")] == served
        assert by_status[("flip", "matched")] == served
        for cand in ("echo", "flip", "failing"):
            assert by_status[(cand, "missing_production")] == len(orphans)
        assert by_status[("failing", "candidate_error")] == len(fail_ids)
        assert by_status[("failing", "matched")] == served - len(fail_ids)
        # A hung model also delays (and times out) what queued behind it, and may answer
        # after the window: its rows are then 'late' corrections, errors still flagged.
        slow = {
            r["request_id"]: r
            for r in rows(
                config,
                "SELECT request_id, status, candidate_failed, candidate_error "
                "FROM comparisons_final WHERE experiment = 'e2e' AND candidate_model = 'slow'",
            )
        }
        assert len(slow) == served + len(orphans)
        assert {r["status"] for r in slow.values()} <= {
            "matched",
            "candidate_error",
            "late",
            "missing_production",
        }
        for rid in slow_ids:
            assert slow[rid]["candidate_failed"], slow[rid]
            assert slow[rid]["candidate_error"].startswith(
                "TimeoutError: candidate 'slow' took longer than 300 ms"
            )

        detail = {
            r["candidate_model"]: r
            for r in rows(
                config,
                "SELECT candidate_model, avg(agree) AS agree, avg(divergence) AS div, "
                "anyIf(candidate_error, candidate_failed) AS err, "
                "min(latency_delta_ms IS NOT NULL) AS has_delta, any(unit_id) AS unit "
                "FROM comparisons_final WHERE experiment = 'e2e' AND status = 'matched' "
                "GROUP BY candidate_model",
            )
        }
        assert detail["echo"]["agree"] == 1.0 and detail["echo"]["div"] == 0.0
        assert detail["flip"]["agree"] == 0.0 and detail["flip"]["div"] > 0.1
        assert detail["echo"]["has_delta"] == 1 and detail["echo"]["unit"].startswith("user-")
        errors = rows(
            config,
            "SELECT candidate_model, any(candidate_error) AS e FROM comparisons_final "
            "WHERE experiment = 'e2e' AND status = 'candidate_error' GROUP BY candidate_model",
        )
        messages = {r["candidate_model"]: r["e"] for r in errors}
        assert messages["failing"].startswith("RuntimeError: cannot score input")

        letters = [
            DeadLetter.from_message(m.key(), m.value()) for m in read_topic(config, "deadletter", 4)
        ]
        reasons = sorted(f"{d.topic.rsplit('.', 1)[-1]}@{d.offset}: {d.reason}" for d in letters)
        assert len(letters) == 4, reasons
        assert any("neither Avro" in r for r in reasons)
        assert any("no key" in r for r in reasons)
        assert any("wrong schema: got Prediction, expected Request" in r for r in reasons)
        assert any(r.startswith("predictions") and "corrupt Avro body" in r for r in reasons)
        assert all(d.value for d in letters)  # the original bytes travel with the reason
        # each topic's consumer of record dead-letters it, once
        assert sorted(d.component for d in letters) == ["joiner", "worker", "worker", "worker"]
    finally:
        codes = pipeline.stop()
    assert codes == {"sink": 0, "joiner": 0, "worker": 0}

    # the rows stay queryable after the pipeline stopped (the CLI opens the directory itself)
    proc = subprocess.run(
        [sys.executable, "-m", "shadowline", "query", "-c", str(path), "--format", "json",
         "SELECT candidate_model, count() AS n FROM comparisons_final GROUP BY candidate_model "
         "ORDER BY candidate_model"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(proc.stdout) == [
        {"candidate_model": c, "n": served + len(orphans)}
        for c in sorted(c["name"] for c in CANDIDATES)
    ]


def test_late_partner_corrects_the_missing_row(config_factory, child_env, tmp_path):
    # No request is sent, so no worker runs: the test plays the candidate itself, late.
    config, path = config_factory(
        [experiment("late", [{"name": "echo", "model": "tests.fixtures.models:EchoModel"}], 1.0)]
    )
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        out = {"label": 1, "probabilities": PROBS}
        prods = [
            Prediction(f"l-{i}", "late", "production", "prod", out, 2.0, now_ms()) for i in range(5)
        ]
        produce(config, "predictions", [(p.key, p.encode(), "avro/binary") for p in prods])
        sql = "SELECT request_id, status, revision FROM comparisons_final ORDER BY request_id"
        first = wait_for(
            lambda: len(rows(config, sql)) == 5 and rows(config, sql),
            60,
            "5 missing rows",
            pipeline,
        )
        assert {(r["status"], r["revision"]) for r in first} == {("missing_candidate", 0)}
        cands = [
            Prediction(f"l-{i}", "late", "candidate", "echo", out, 4.0, now_ms()) for i in range(5)
        ]
        produce(
            config, "predictions", [(p.key, p.encode_json(), "application/json") for p in cands]
        )
        fixed = wait_for(
            lambda: {r["status"] for r in rows(config, sql)} == {"late"} and rows(config, sql),
            60, "late corrections", pipeline,
        )  # fmt: skip
        assert len(fixed) == 5 and {r["revision"] for r in fixed} == {3}
        raw = rows(config, "SELECT count() AS n FROM comparisons")[0]["n"]
        assert raw >= 5  # corrections are new versions; FINAL reads one row per pair
    finally:
        pipeline.stop()


def test_replay_sends_valid_lines_and_names_bad_ones(config_factory, tmp_path):
    config, path = config_factory([experiment("replay", CANDIDATES[:1])])
    lines = [
        {
            "experiment": "replay",
            "request_id": f"rp-{i}",
            "inputs": {"label": 1, "probabilities": PROBS},
            "output": {"label": 1},
            "latency_ms": 1.0,
            "model": "prod",
        }
        for i in range(10)
    ]
    lines.insert(
        4,
        {
            "experiment": "replay",
            "request_id": "rp-bad",
            "inputs": {},
            "output": 1,
            "latency_ms": -3,
            "model": "prod",
        },
    )
    file = tmp_path / "traffic.jsonl"
    file.write_bytes(b"\n".join(orjson.dumps(x) for x in lines) + b"\n")
    proc = subprocess.run(
        [sys.executable, "-m", "shadowline", "replay", str(file), "-c", str(path), "--no-progress"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "10 requests, 10 predictions" in proc.stdout and "1 rejected" in proc.stdout
    assert "line 5: field 'latency_ms' = -3.0 is not a latency" in proc.stderr
    assert len(read_topic(config, "requests", 10)) == 10
    assert len(read_topic(config, "predictions", 10)) == 10
