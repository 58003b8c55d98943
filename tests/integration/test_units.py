"""The gates count assignment units, not requests, where outcomes go together within a
unit: per-unit sums from the real warehouse (chDB) and the verdicts they lead to."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest

from shadowline import stats
from shadowline.config import parse_config
from shadowline.envelopes import Feedback, Prediction, now_ms
from shadowline.gates import evaluate
from shadowline.warehouse import (
    SERVED_COLUMNS,
    Warehouse,
    feedback_row,
    named_query,
    served_row,
)
from tests.conftest import free_port
from tests.fixtures.rows import comparison

EXPERIMENTS = [
    {
        "name": name,
        "mode": "ab",
        "production_model": "prod",
        "candidates": [{"name": "cand", "model": "tests.fixtures.models:EchoModel"}],
        "feedback_window_s": 3600,
        "gates": {"max_conversion_rate_drop": 0.0},
    }
    for name in ("bot-units", "bot-no-units", "buyers")
]


@pytest.fixture(scope="module")
def config(tmp_path_factory: Any) -> Any:
    return parse_config(
        {
            "warehouse": {"path": str(tmp_path_factory.mktemp("wh")), "port": free_port()},
            "experiments": EXPERIMENTS,
        },
        env={},
    )


@pytest.fixture(scope="module")
def owner(config: Any) -> Any:
    wh = Warehouse.open_owner(config)  # chDB: one data directory per process
    yield wh
    wh.close()


def _served(
    experiment: str, rid: str, arm: str, unit: str | None, failed: bool, t: int
) -> list[Any]:
    pred = Prediction(
        request_id=rid, experiment=experiment, role="arm", model=arm,
        output=None if failed else {"label": 1}, latency_ms=3.0, event_time=t,
        error="RuntimeError: boom" if failed else None, unit_id=unit,
    )  # fmt: skip
    return served_row(pred)


def _bot_traffic(seed: int) -> list[tuple[str, str, str, bool]]:
    """Identical arms (0.5 % independent errors), 1,000 users per arm with 3 requests
    each, and one bot in the candidate arm whose 60 requests all fail."""
    rng = random.Random(seed)
    out = []
    for arm in ("prod", "cand"):
        for u in range(1000):
            for k in range(3):
                out.append((f"{arm}-{u}-{k}", arm, f"{arm}-user-{u}", rng.random() < 0.005))
    out += [(f"bot-{k}", "cand", "bot", True) for k in range(60)]
    return out


def _python_sums(traffic: list[tuple[str, str, str, bool]]) -> dict[str, dict[str, float]]:
    per: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for _, arm, unit, failed in traffic:
        per[arm, unit][0] += 1
        per[arm, unit][1] += failed
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for (arm, _), (n, e) in per.items():
        out[arm]["units"] += 1
        out[arm]["errors_sq"] += e * e
        out[arm]["errors_cross"] += n * e
        out[arm]["requests_sq"] += n * n
    return out


def test_a_bots_failures_in_one_arm_fail_the_verdict_only_when_counted_per_request(
    owner: Warehouse, config: Any
) -> None:
    traffic = _bot_traffic(seed=5)
    t = now_ms() - 60_000
    with_units = [_served("bot-units", r, a, u, f, t) for r, a, u, f in traffic]
    without = [_served("bot-no-units", r, a, None, f, t) for r, a, _, f in traffic]
    owner.insert("served", SERVED_COLUMNS, with_units + without)

    figures = {
        r["arm"]: r
        for r in owner.query(
            named_query("arm_figures", owner.database),
            {
                "experiment": "bot-units",
                "since": "2000-01-01 00:00:00",
                "until": "2100-01-01 00:00:00",
                "latency_limit_ms": 0.0,
            },
        )  # fmt: skip
    }
    expected = _python_sums(traffic)
    for arm in ("prod", "cand"):
        for key in ("units", "errors_sq", "errors_cross", "requests_sq"):
            assert figures[arm][key] == expected[arm][key], (arm, key)
    assert figures["cand"]["most_requests_per_unit"] == 60

    by_rule = {}
    for name in ("bot-units", "bot-no-units"):
        report = evaluate(owner, config.require_experiment(name))
        by_rule[name] = {r.rule: r for r in report.candidates[0].rules}
    # Counted per request, 60 errors of one bot look like a candidate erring 3 times as
    # often as production: both error rules fail an A/A pair.
    assert by_rule["bot-no-units"]["max_error_rate_increase"].outcome == "fail"
    assert by_rule["bot-no-units"]["max_error_rate"].outcome == "fail"
    # Counted per unit, the bot is one unit among 2,001 (1,001 in the candidate's arm).
    for rule, units in (("max_error_rate_increase", 2001), ("max_error_rate", 1001)):
        got = by_rule["bot-units"][rule]
        assert got.outcome != "fail", got
        assert "design effect" in got.detail and f"({units} units)" in got.detail, got.detail


def test_conversions_that_go_together_per_user_widen_the_ab_test(
    owner: Warehouse, config: Any
) -> None:
    # Identical arms of 300 users with 10 requests each; a user is a buyer (converts on
    # 60 % of requests) with probability 0.1, otherwise converts on 1 %.
    rng = random.Random(8)
    t = now_ms() - 60_000
    served, feedback = [], []
    per_user: dict[tuple[str, str], list[int]] = {}
    for arm in ("prod", "cand"):
        for u in range(300):
            unit = f"{arm}-u{u}"
            p = 0.6 if rng.random() < 0.1 else 0.01
            for k in range(10):
                rid = f"{unit}-{k}"
                served.append(_served("buyers", rid, arm, unit, False, t))
                converted = rng.random() < p
                if converted:
                    fb = Feedback(rid, "buyers", "conversion", 10.0, t + 1000)
                    feedback.append(feedback_row(fb))
                n_c = per_user.setdefault((arm, unit), [0, 0])
                n_c[0] += 1
                n_c[1] += converted
    owner.insert("served", SERVED_COLUMNS, served)
    owner.insert("feedback", ["event_time", "experiment", "request_id", "kind", "value"], feedback)
    rows = {
        r["arm"]: r
        for r in owner.query(
            named_query("arm_feedback", owner.database),
            {
                "experiment": "buyers",
                "since": "2000-01-01 00:00:00",
                "until": "2100-01-01 00:00:00",
                "feedback_window_s": 3600,
            },
        )  # fmt: skip
    }
    for arm in ("prod", "cand"):
        mine = [v for (a, _), v in per_user.items() if a == arm]
        assert rows[arm]["units"] == 300
        assert rows[arm]["converted"] == sum(c for _, c in mine)
        assert rows[arm]["converted_sq"] == sum(c * c for _, c in mine)
        assert rows[arm]["converted_cross"] == sum(n * c for n, c in mine)
        assert rows[arm]["requests_sq"] == 300 * 100
    effect = stats.design_effect(
        stats.UnitSums(
            rows["cand"]["converted"], rows["cand"]["requests"], 300,
            rows["cand"]["converted_sq"], rows["cand"]["converted_cross"],
            rows["cand"]["requests_sq"],
        )
    )  # fmt: skip
    # Intra-user correlation of about 0.35 over 10 requests: the variance is several
    # times the binomial one, and the verdict says it divided the evidence by it.
    assert effect > 2.5
    report = evaluate(owner, config.require_experiment("buyers"))
    rule = {r.rule: r for r in report.candidates[0].rules}["max_conversion_rate_drop"]
    assert "design effect" in rule.detail and "600 units" in rule.detail, rule.detail


def test_shadow_figures_sum_the_candidates_errors_per_unit(owner: Warehouse) -> None:
    # 500 users with 4 requests each; the candidate fails on all 40 requests of one
    # client and on 1 % of the rest; a missing candidate answer is not a pair.
    rng = random.Random(3)
    rows, per_unit = [], defaultdict(lambda: [0, 0])
    units = [(f"user-{u}", 4) for u in range(500)] + [("client-x", 40)]
    for unit, n in units:
        for k in range(n):
            failed = unit == "client-x" or rng.random() < 0.01
            rows.append(
                comparison(
                    f"{unit}-{k}",
                    experiment="units-shadow",
                    unit_id=unit,
                    candidate_error="TimeoutError: 2 s" if failed else None,
                    candidate_output=None if failed else {"label": 1},
                )  # fmt: skip
            )
            per_unit[unit][0] += 1
            per_unit[unit][1] += failed
    rows.append(comparison("lost", experiment="units-shadow", unit_id="user-1",
                           status="missing_candidate"))  # fmt: skip
    owner.insert_comparisons(rows)
    got = owner.query(
        named_query("gate_figures", owner.database),
        {"experiment": "units-shadow", "candidate": "", "since": "2000-01-01 00:00:00",
         "until": "2100-01-01 00:00:00", "latency_limit_ms": 0.0},
    )[0]  # fmt: skip
    assert got["pairs"] == 2040 and got["units"] == 501
    assert got["most_requests_per_unit"] == 40
    assert got["candidate_errors"] == sum(e for _, e in per_unit.values())
    assert got["candidate_errors_sq"] == sum(e * e for _, e in per_unit.values())
    assert got["candidate_errors_cross"] == sum(n * e for n, e in per_unit.values())
    assert got["pairs_sq"] == 500 * 16 + 40 * 40
