"""`shadowline backtest` on the real broker and warehouse: a replay of mirrored traffic
gives the rows a live shadow gave, the same verdict byte for byte, and no duplicates
after a kill -9; from Kafka's log and from the warehouse's stored requests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from shadowline import backtest, kafka
from shadowline.tap import Mirror
from tests.integration.helpers import rows, start_pipeline, wait_for

pytestmark = pytest.mark.integration

PROBS = {"0": 0.3, "1": 0.7}
SERVED, UNANSWERED = 400, 5
COMPARED = (
    "request_id, status, agree, divergence, toJSONString(metrics) AS metrics, "
    "production_output, candidate_output, production_error, candidate_error, "
    "production_latency_ms, event_time, unit_id"
)


def _cli(path, env, *args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "shadowline", "backtest", "-c", str(path), *args],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    if check:
        assert proc.returncode in (0, 1, 2), proc.stderr[-3000:]
    return proc


def _rows(config, experiment, candidate):
    return rows(
        config,
        f"SELECT {COMPARED} FROM comparisons_final WHERE experiment = {{e:String}} "
        "AND candidate_model = {c:String} ORDER BY request_id",
        e=experiment, c=candidate,
    )  # fmt: skip


def test_backtest_replays_what_a_live_shadow_judged(
    config_factory, child_env, tmp_path, monkeypatch
):
    exp = {
        "name": "bt",
        "production_model": "prod",
        "window_s": 3.0,
        "store_requests": True,
        "candidates": [
            {"name": "echo", "model": "tests.fixtures.models:EchoModel"},
            {"name": "failing", "model": "tests.fixtures.models:FailingModel", "batch_size": 16},
        ],
    }
    config, path = config_factory([exp])
    env = {**os.environ, **child_env}
    since = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        with Mirror(config) as mirror:
            for i in range(SERVED):
                inputs = {"n": i, "label": i % 2, "probabilities": PROBS, "fail": i % 50 == 7}
                assert mirror.record(
                    experiment="bt", request_id=f"r-{i:04d}", inputs=inputs,
                    output={"label": 1, "probabilities": PROBS}, latency_ms=1.0 + i % 7,
                    model="prod", unit_id=f"u-{i % 13}",
                )  # fmt: skip
            for i in range(UNANSWERED):
                assert mirror.record_request(
                    experiment="bt", request_id=f"lost-{i}", inputs={"n": i, "label": 1,
                    "probabilities": PROBS},
                )  # fmt: skip
        total = 2 * (SERVED + UNANSWERED)
        sql = "SELECT count() AS n FROM comparisons_final WHERE experiment = 'bt'"
        wait_for(lambda: rows(config, sql)[0]["n"] >= total, 120, f"{total} live rows", pipeline)
        until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
        live = _rows(config, "bt", "failing")
        assert len(live) == SERVED + UNANSWERED
        assert {r["status"] for r in live} == {"matched", "candidate_error", "missing_production"}

        # A configured candidate, replayed from Kafka's log while the pipeline runs (its
        # rows reach the warehouse through the sink).
        rng = ["--since", since.isoformat(), "--until", until.isoformat()]
        first = _cli(path, env, "bt", "--candidate", "failing", *rng, "--json")
        out = json.loads(first.stdout)
        bt = out["backtest"]
        assert bt["source"] == "kafka" and bt["stored_as"] == f"bt@backtest:{bt['run']}"
        assert bt["requests"] == SERVED + UNANSWERED and bt["missing_production"] == UNANSWERED
        assert bt["rows"] == SERVED + UNANSWERED
        assert (
            out["experiment"] == bt["stored_as"] and out["candidates"][0]["candidate"] == "failing"
        )
        rules = {r["rule"] for r in out["candidates"][0]["rules"]}
        assert "max_error_rate" in rules and not rules & {"max_p99_latency_ms"}
        # 8 of 400 inputs refuse: the verdict fails on errors, as the live gate would.
        assert out["verdict"] == "fail" and first.returncode == 1
        replayed = _rows(config, bt["stored_as"], "failing")
        assert replayed == live  # every compared field of every row

        again = _cli(path, env, "bt", "--candidate", "failing", *rng, "--json")
        assert again.stdout == first.stdout  # byte for byte

        # A new candidate by reference, killed half-way, then run again: no duplicates.
        paced = ["--candidate", "paced=tests.fixtures.models:PacedEchoModel", *rng, "--json"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "shadowline", "backtest", "-c", str(path), "bt", *paced],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        count = (
            "SELECT count() AS n, uniqExact(request_id) AS ids FROM comparisons FINAL "
            "WHERE startsWith(experiment, 'bt@backtest:') AND candidate_model = 'paced'"
        )
        wait_for(lambda: rows(config, count)[0]["n"] > 0, 120, "the first backtest rows", pipeline)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        partial = rows(config, count)[0]["n"]
        assert 0 < partial < SERVED + UNANSWERED, partial
        resumed = _cli(path, env, "bt", *paced)
        done = json.loads(resumed.stdout)
        got = rows(config, count)[0]
        assert got == {"n": SERVED + UNANSWERED, "ids": SERVED + UNANSWERED}
        # The paced echo answers as the live echo did, on every request.
        assert _rows(config, done["backtest"]["stored_as"], "paced") == _rows(config, "bt", "echo")

        # Backtests are listed beside the live verdict, labelled, never mixed in.
        check = subprocess.run(
            [sys.executable, "-m", "shadowline", "gate", "check", "-c", str(path), "bt", "--json"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        live_verdict = json.loads(check.stdout)
        assert [c["candidate"] for c in live_verdict["candidates"]] == ["echo", "failing"]
        assert live_verdict["candidates"][1]["figures"]["pairs"] == SERVED
        runs = {(b["candidate"], b["run"]): b for b in live_verdict["backtests"]}
        assert set(runs) == {("failing", bt["run"]), ("paced", done["backtest"]["run"])}
        assert runs[("failing", bt["run"])]["verdict"] == "fail"
        assert runs[("paced", done["backtest"]["run"])]["rows"] == SERVED + UNANSWERED
        # Rule by rule, the replayed echo is judged as the live echo was (the echo
        # answers the input's label where production always says 1: it fails agreement).
        live_echo = {r["rule"]: r for r in live_verdict["candidates"][0]["rules"]}
        replay = {r["rule"]: r for r in done["candidates"][0]["rules"]}
        assert replay and set(replay) < set(live_echo)
        for name, rule in replay.items():
            assert (rule["outcome"], rule["observed"]) == (
                live_echo[name]["outcome"],
                live_echo[name]["observed"],
            ), name
        assert done["verdict"] == "fail" == live_verdict["candidates"][0]["verdict"]
    finally:
        pipeline.stop()

    # Past the pipeline: the warehouse's stored requests (store_requests) replay the
    # same range straight into the warehouse, with the same rows.
    stored = _cli(path, env, "bt", "--candidate", "failing", *rng, "--source", "warehouse",
                  "--json")  # fmt: skip
    wout = json.loads(stored.stdout)
    assert wout["backtest"]["source"] == "warehouse"
    assert wout["backtest"]["run"] != bt["run"]
    assert wout["candidates"] == out["candidates"]
    assert _rows(config, wout["backtest"]["stored_as"], "failing") == live
    # Page by page (37 requests a page here): the same run, the same verdict.
    monkeypatch.setattr(backtest.WarehouseSource, "PAGE", 37)
    paged = backtest.run(config, "bt", "failing", since=since, until=until,
                         source="warehouse", progress=False)  # fmt: skip
    assert json.loads(orjson.dumps(paged.as_dict())) == wout
    # Retention deletes the start of the log: auto now reads the warehouse, the same run.
    topic = config.kafka.topic("requests")
    admin = kafka.admin(config.kafka)  # held: its futures resolve only while it lives
    deleted = admin.delete_records([kafka.TopicPartition(topic, p, 5) for p in range(3)])
    for future in deleted.values():
        assert future.result(30).low_watermark == 5
    short = json.loads(_cli(path, env, "bt", "--candidate", "failing", *rng, "--source",
                            "kafka", "--json").stdout)  # fmt: skip
    # What the log still has, as another run (the first run's rows stay its own).
    assert short["backtest"]["requests"] == SERVED + UNANSWERED - 15
    assert short["backtest"]["run"] != bt["run"]
    assert short["candidates"][0]["figures"]["rows"] == SERVED + UNANSWERED - 15
    auto = _cli(path, env, "bt", "--candidate", "failing", *rng, "--json")
    assert auto.stdout == stored.stdout  # the warehouse run, byte for byte
    # Not stopped by a missing model or a bad range: a message, exit 3.
    bad = _cli(path, env, "bt", "--candidate", "nope", "--json", check=False)
    assert bad.returncode == 3 and "not a candidate of 'bt'" in bad.stderr
