"""The backtest's pure parts: run identity, candidate parsing, the derived experiment,
and scoring pairs into the rows the live joiner would make (no broker)."""

from __future__ import annotations

import pytest
from shadowline.consumers.worker import CandidateRunner
from shadowline.streams import pairing

from shadowline import backtest, codec
from shadowline.config import CandidateConfig, parse_config
from shadowline.envelopes import Prediction, Request
from shadowline.errors import ConfigError
from shadowline.models import load_model

PROBS = {"0": 0.3, "1": 0.7}


def _exp(**extra):
    config = parse_config(
        {
            "experiments": [
                {
                    "name": "exp",
                    "production_model": "prod",
                    "candidates": [
                        {"name": "echo", "model": "tests.fixtures.models:EchoModel",
                         "timeout_ms": 250, "batch_size": 7},
                    ],
                    "gates": {"max_p99_latency_ms": 50, "max_feature_psi": 0.2},
                    **extra,
                }
            ]
        },
        env={},
    )  # fmt: skip
    return config.experiments[0]


def test_run_ids_name_their_inputs():
    cand = CandidateConfig(name="c", model="m:x")
    a = backtest.run_id("exp", cand, 1, 2, "kafka")
    assert a == backtest.run_id("exp", cand, 1, 2, "kafka") and len(a) == 12
    others = {
        backtest.run_id("exp2", cand, 1, 2, "kafka"),
        backtest.run_id("exp", CandidateConfig(name="d", model="m:x"), 1, 2, "kafka"),
        backtest.run_id("exp", CandidateConfig(name="c", model="m:y"), 1, 2, "kafka"),
        backtest.run_id("exp", cand, 0, 2, "kafka"),
        backtest.run_id("exp", cand, 1, 3, "kafka"),
        backtest.run_id("exp", cand, 1, 2, "warehouse"),
    }
    assert a not in others and len(others) == 6
    name = backtest.run_name("exp", a)
    assert backtest.split_name(name) == ("exp", a)
    assert backtest.split_name("exp") is None and backtest.split_name("@backtest:x") is None


def test_candidates_by_name_or_reference():
    exp = _exp()
    configured = backtest.parse_candidate("echo", exp)
    assert (configured.model, configured.timeout_ms, configured.batch_size) == (
        "tests.fixtures.models:EchoModel", 250, 7
    )  # fmt: skip
    assert configured.latency_probe_share == 0.0  # a replay does not time requests
    swapped = backtest.parse_candidate("echo=tests.fixtures.models:FlipModel", exp)
    assert swapped.model == "tests.fixtures.models:FlipModel" and swapped.timeout_ms == 250
    new = backtest.parse_candidate("new=file:m.joblib", exp)
    assert (new.name, new.model, new.timeout_ms) == ("new", "file:m.joblib", 1000.0)
    for text, says in (
        ("nope", "not a candidate of 'exp'"),
        ("prod=tests.fixtures.models:EchoModel", "production model's name"),
        ("x=", "model after '=' is empty"),
        ("=m:x", "expected NAME=MODEL"),
        ("x=notamodel", "--candidate 'x=notamodel'"),
    ):
        with pytest.raises(backtest.BacktestError, match=says):
            backtest.parse_candidate(text, exp)


def test_the_derived_experiment_keeps_the_rules_but_latency_and_drift():
    exp = _exp()
    cand = backtest.parse_candidate("echo", exp)
    derived = backtest.derived_experiment(exp, "abc", [cand])
    assert derived.name == "exp@backtest:abc" and derived.mode == "shadow"
    assert derived.gates.max_p99_latency_ms is None and derived.gates.max_feature_psi is None
    assert derived.gates.max_p99_latency_ratio is None
    assert derived.gates.max_error_rate == exp.gates.max_error_rate
    with pytest.raises(ConfigError, match="reserved for backtest runs"):
        _exp(name="a@backtest:b")


def test_store_requests_switch():
    assert _exp(store_requests=True).stores_requests
    assert _exp().stores_requests  # max_feature_psi needs the requests anyway
    plain = parse_config({"experiments": [{"name": "e", "production_model": "p", "candidates": [
        {"name": "c", "model": "m:x"}]}]}, env={}).experiments[0]  # fmt: skip
    assert not plain.stores_requests


def test_scoring_makes_the_joiners_rows_without_clock_or_latency():
    exp = _exp()
    cand = backtest.parse_candidate("echo", exp)
    derived = backtest.derived_experiment(exp, "r1", [cand])
    runner = CandidateRunner(cand, load_model(cand.model, None))
    pairs = []
    for i in range(20):
        req = Request(f"q{i}", "exp", 1000 + i, {"label": i % 2, "probabilities": PROBS})
        prod = Prediction(f"q{i}", "exp", "production", "prod", {"label": 1, "probabilities":
                          PROBS}, 3.0 + i, 1000 + i)  # fmt: skip
        pairs.append(backtest.Pair(req, None if i == 19 else prod, i % 3))
    counts = backtest.Counts()
    try:
        rows = backtest.score(runner, derived, pairs, counts)
        again = backtest.score(runner, derived, pairs, backtest.Counts())
    finally:
        runner.close()
    assert rows == again  # nothing in a row depends on when it was made
    assert [r.request_id for r in rows] == [f"q{i}" for i in range(20)]
    by_status = {r.status for r in rows[:19]}
    assert by_status == {"matched"} and rows[19].status == "missing_production"
    assert all(r.experiment == "exp@backtest:r1" and r.candidate_model == "echo" for r in rows)
    assert all(r.joined_at == r.event_time for r in rows)
    assert all(r.candidate_latency_ms is None and r.latency_delta_ms is None for r in rows)
    assert [r.agree for r in rows[:4]] == [False, True, False, True]
    assert rows[3].production_latency_ms == 6.0
    # The joiner's own verdict on the same pair, for the fields a replay keeps.
    state = pairing.new_state("q3", derived, 1003, 0, 5)
    pairing.on_request(state, pairs[3].request)
    pairing.on_prediction(state, pairs[3].production, derived, 5)
    answer = Prediction("q3", "exp", "candidate", "echo", {"label": 1, "probabilities": PROBS},
                        9.0, 1003)  # fmt: skip
    live = pairing.on_prediction(state, answer, derived, 5)
    assert (live[0].status, live[0].agree, live[0].divergence, live[0].metrics) == (
        rows[3].status,
        rows[3].agree,
        rows[3].divergence,
        rows[3].metrics,
    )


def test_peeking_reads_experiment_and_role_or_gives_up():
    pred = Prediction("r", "exp", "candidate", "m", {"label": 1}, 1.0, 5).encode()
    assert codec.peek_prediction(pred, "avro/binary") == ("exp", "candidate")
    assert codec.peek_prediction(pred, "application/json") is None
    assert codec.peek_prediction(pred[:14], None) is None  # cut short: decode it in full
    assert codec.peek_prediction(b'{"request_id": "r"}', None) is None
    req = Request("r", "exp2", 5, {"a": 1}).encode()
    assert codec.peek_request(req, None) == "exp2"
    assert codec.peek_prediction(req, None) is None  # a request is not a prediction
    assert codec.peek_request(pred, None) is None
