"""The simulation suite's fast cases: A/A verdicts looked at after every request stay
within alpha, regressions are caught, and a simulated look decides as the gates do.

The long runs (50,000 looks per arm, hundreds of runs) are bench/gate_statistics.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import simulation as sim
from shadowline import rules, stats
from shadowline.config import GateConfig

ALPHA = 0.05
HEALTHY = sim.Arm(error_rate=0.01, p99_ms=100.0)


@pytest.mark.parametrize(
    "case",
    [
        sim.Case("aa-shadow", HEALTHY, (HEALTHY,), requests=3000, probe_share=0.2),
        sim.Case("aa-ab", HEALTHY, (HEALTHY,), paired=False, requests=3000),
        sim.Case("aa-shadow-3", HEALTHY, (HEALTHY,) * 3, requests=2000, probe_share=0.2),
        sim.Case(
            "aa-accuracy-70",
            sim.Arm(accuracy=0.7),
            (sim.Arm(accuracy=0.7),),
            gates={"max_accuracy_drop": 0.0},
            requests=2000,
        ),
        sim.Case(
            "aa-p99-increase",
            HEALTHY,
            (HEALTHY,),
            gates={"max_p99_latency_increase_ms": 0.0},
            requests=3000,
            probe_share=0.5,
        ),
    ],  # fmt: skip
    ids=lambda c: c.name,
)
def test_a_healthy_candidates_verdict_fails_at_most_alpha_at_every_look(case: sim.Case) -> None:
    result = sim.aa_rate(case, runs=100, seed=3)
    # 100 runs: a true rate at alpha would exceed 0.1 in under 2 % of suites.
    assert result["false_failure_rate"] <= 2 * ALPHA, result


def test_the_verdicts_budget_is_split_over_rules_and_candidates() -> None:
    gates = GateConfig()
    one = rules.fail_alpha(gates, rules.Context(), 1)
    three = rules.fail_alpha(gates, rules.Context(), 3)
    defaults = rules.sequential_rules(gates, rules.Context())
    assert defaults == [
        "max_error_rate", "max_error_rate_increase", "max_p99_latency_ms",
        "max_p99_latency_ratio", "max_output_shift",
    ]  # fmt: skip
    assert one == pytest.approx(ALPHA / 5) and three == pytest.approx(ALPHA / 15)


def test_a_doubling_of_errors_is_caught_by_the_relative_rule_alone() -> None:
    only = {
        "max_error_rate": False, "max_p99_latency_ms": False, "max_p99_latency_ratio": False,
        "max_output_shift": False,
    }  # fmt: skip
    case = sim.Case(
        "1-to-2", sim.Arm(error_rate=0.01), (sim.Arm(error_rate=0.02),), gates=only,
        requests=20_000,
    )  # fmt: skip
    result = sim.detection(case, runs=20, seed=5)
    assert result["caught_share"] == 1.0
    assert result["median_requests"] < 6000, result


def test_a_p99_regression_at_1000_rps_is_caught_within_30_seconds() -> None:
    case = sim.Case(
        "60-to-110", sim.Arm(error_rate=0.001, p99_ms=60.0),
        (sim.Arm(error_rate=0.001, p99_ms=110.0),), requests=30_000, rate_per_s=1000.0,
    )  # fmt: skip
    result = sim.detection(case, runs=10, seed=6)
    assert result["caught_share"] == 1.0 and result["p90_seconds"] <= 30, result


def test_a_simulated_look_decides_as_the_gates_do() -> None:
    # One shadow run with a candidate that errs, slows and drifts: at many looks,
    # each rule's fail decision in the simulation equals rules.judge on the same counts.
    rng = np.random.default_rng(9)
    n = 1500
    prod = sim.Arm(error_rate=0.01, p99_ms=50.0).draw(rng, n)
    cand = sim.Arm(error_rate=0.03, p99_ms=120.0, classes=(0.35, 0.55, 0.1)).draw(rng, n)
    gates = GateConfig(max_accuracy_drop=None)
    fa = rules.fail_alpha(gates, rules.Context(), 1)
    ratio = gates.max_p99_latency_ratio or 1.0
    looks = np.arange(1, n + 1)
    timed = ~cand["error"]
    ok = ~prod["error"]
    masks = {
        "max_error_rate": sim._rate_fail(cand["error"], looks, 0.01, fa),
        "max_error_rate_increase": sim._paired_fail(
            cand["error"] & ~prod["error"], prod["error"] & ~cand["error"], 0.0, fa
        ),
        "max_p99_latency_ratio": sim._relative_p99_fail(
            prod["latency"][ok],
            ok,
            cand["latency"][timed],
            timed,
            lambda q: max(q * ratio, q + gates.p99_latency_ratio_slack_ms),
            fa,
        ),
        "max_output_shift": sim._shift_fail(prod["label"], cand["label"], 0.1, fa),
    }
    decided = {name: 0 for name in masks}
    for t in list(range(20, n, 37)) + [n - 1]:
        k = t + 1
        pe, ce = prod["error"][:k], cand["error"][:k]
        p_lat, c_lat = prod["latency"][:k][ok[:k]], cand["latency"][:k][timed[:k]]
        pl, cl = prod["label"][:k], cand["label"][:k]
        classes = sorted(set(pl.tolist()) | set(cl.tolist()))
        figures = {
            "pairs": k, "candidate_errors": int(ce.sum()),
            "candidate_only_errors": int((ce & ~pe).sum()),
            "production_only_errors": int((pe & ~ce).sum()),
            "candidate_latencies": len(c_lat), "production_latencies": len(p_lat),
            "candidate_p99_ms": float(np.quantile(c_lat, 0.99)),
            "production_p99_ms": float(np.quantile(p_lat, 0.99)),
            "candidate_slow": int((c_lat > 100).sum()),
            "candidate_top_ms": sorted(c_lat.tolist(), reverse=True),
            "production_top_ms": sorted(p_lat.tolist(), reverse=True),
        }  # fmt: skip
        drift = {
            "outputs": k, "bins": [str(c) for c in classes],
            "up_counts": [int(((cl == c) & (pl != c)).sum()) for c in classes],
            "down_counts": [int(((pl == c) & (cl != c)).sum()) for c in classes],
        }  # fmt: skip
        judged = {r.rule: r.outcome for r in rules.judge(gates, figures, drift, fail_alpha=fa)}
        for name, mask in masks.items():
            assert (judged[name] == "fail") == bool(mask[t]), (name, k, judged[name])
            decided[name] += judged[name] == "fail"
    # the comparison covered failing looks, not only quiet ones
    assert all(v > 0 for v in decided.values()), decided


def test_quantile_bounds_cover_the_true_p99_at_every_look() -> None:
    rng = np.random.default_rng(4)
    misses = 0
    runs, n = 100, 3000
    truth = math.exp(sim.Z99)  # p99 of a standard lognormal
    least = stats.count_bound_table(n, 0.01, 2 / 0.05, -1)  # each side at alpha / 2
    most = stats.count_bound_table(n, 0.01, 2 / 0.05, +1)
    for _ in range(runs):
        x = np.exp(rng.standard_normal(n))
        above = np.cumsum(x > truth)
        # the bounds fail exactly when the count above the truth leaves [least, most]
        if np.any((above < least[1:]) | (above > most[1:])):
            misses += 1
    assert misses / runs <= 2 * 0.05
    top = sorted(np.exp(rng.standard_normal(20_000)).tolist(), reverse=True)
    lower, upper = stats.quantile_bounds(top, 20_000, 0.99, 0.05)
    assert lower < truth < upper and upper / lower < 1.25


def test_interleaving_needs_fewer_queries_than_ab_to_fail_the_worse_ranker() -> None:
    for model in ("pbm", "cascade"):
        result = sim.interleaving_power(model, runs=6, seed=2, max_queries=50_000)
        assert result["interleaving_caught_share"] == 1.0, result
        assert result["ab_median_queries"] > 2 * result["interleaving_median_queries"], result


def test_the_interleaving_bound_is_below_the_sign_tests_queries_and_infinite_for_twins() -> None:
    # no test can beat an oracle that knows the win share: the gate's sign test needs
    # more queries on average (it learns the share as it goes)
    result = sim.interleaving_power("pbm", runs=20, seed=3, max_queries=50_000)
    assert 0.3 < result["candidate_win_share"] < 0.45, result
    assert result["oracle_queries"] < result["interleaving_median_queries"] * 1.5, result
    assert result["largest_possible_ratio"] > result["ab_over_interleaving"] * 0.5, result
    twins = sim.interleaving_bound("pbm", seed=3, rankers=sim.Rankers(0.3, 0.3), queries=4000)
    assert abs(twins["candidate_win_share"] - 0.5) < 0.03
    assert twins["oracle_queries"] > 20 * result["oracle_queries"]


UNITS = {"requests_per_unit": 10, "unit_correlation": 0.2}


def test_errors_that_go_together_per_user_stay_within_alpha_only_when_counted_per_unit() -> None:
    # Users of 10 requests whose errors go together (intra-user correlation 0.2): the
    # A/B verdict looked at after every request, counted per unit as the gates do, and
    # per request as they did before units.
    per_unit = sim.Case("aa-units", HEALTHY, (HEALTHY,), paired=False, requests=3000, **UNITS)
    per_request = sim.Case(
        "aa-units-per-request", HEALTHY, (HEALTHY,), paired=False, requests=3000,
        count_units=False, **UNITS,
    )  # fmt: skip
    counted = sim.aa_rate(per_unit, runs=100, seed=3)
    naive = sim.aa_rate(per_request, runs=100, seed=3)
    assert counted["false_failure_rate"] <= 2 * ALPHA, counted
    # the same runs counted per request fail well above alpha (0.12 on this seed)
    assert naive["false_failure_rate"] > 2 * ALPHA, naive


def _unit_figures(traffic: sim.UnitTraffic, arm: int, k: int) -> dict[str, float]:
    """One arm's figures after ``k`` requests, summed per unit the plain way."""
    per: dict[int, list[int]] = {}
    for u, e, a in zip(traffic.unit[:k], traffic.error[:k], traffic.arm[:k], strict=True):
        if a == arm:
            per.setdefault(int(u), [0, 0])
            per[int(u)][0] += 1
            per[int(u)][1] += int(e)
    return {
        "requests": sum(n for n, _ in per.values()), "errors": sum(e for _, e in per.values()),
        "units": len(per), "errors_sq": sum(e * e for _, e in per.values()),
        "errors_cross": sum(n * e for n, e in per.values()),
        "requests_sq": sum(n * n for n, _ in per.values()),
    }  # fmt: skip


def test_a_simulated_look_with_units_decides_as_the_gates_do() -> None:
    # A/B with users of 10 requests whose errors go together; the candidate errs 4 %
    # against production's 1 %. At many looks the simulation's per-unit sums equal
    # those summed the plain way, and its fail decisions equal rules.judge on them.
    case = sim.Case(
        "units", sim.Arm(error_rate=0.01), (sim.Arm(error_rate=0.04),), paired=False,
        requests=3000, **UNITS,
    )  # fmt: skip
    rng = np.random.default_rng(12)
    traffic = sim.unit_traffic(case, 6000, rng)
    gates = GateConfig(max_p99_latency_ms=None, max_p99_latency_ratio=None)
    ctx = rules.Context(paired=False)
    names = rules.sequential_rules(gates, ctx)
    assert names == ["max_error_rate", "max_error_rate_increase"]
    fa = rules.fail_alpha(gates, ctx, 1)
    masks = sim.unit_error_fails(traffic, 1, gates, names, fa)
    paths = sim.unit_sum_paths(traffic, 1)
    decided = {name: 0 for name in masks}
    for t in list(range(30, 6000, 97)) + [5999]:
        c, p = _unit_figures(traffic, 1, t + 1), _unit_figures(traffic, 0, t + 1)
        assert {key: float(v[t]) for key, v in paths.items()} == c
        figures = {"pairs": c["requests"], "candidate_errors": c["errors"]}
        figures |= {f"candidate_{key}": v for key, v in c.items()}
        judged = {
            r.rule: r.outcome for r in rules.judge(gates, figures, production=p, fail_alpha=fa)
        }
        for name, mask in masks.items():
            assert (judged[name] == "fail") == bool(mask[t]), (name, t, judged[name])
            decided[name] += judged[name] == "fail"
    assert all(v > 0 for v in decided.values()), decided
