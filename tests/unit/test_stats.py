"""The gates' sequential tests: A/A simulations under continuous monitoring, power
against real regressions, and the binned drift measures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shadowline import stats

ALPHA = 0.05
RUNS = 200
N = 10_000
EVERY = 50  # a look every 50 requests: 200 looks per run


def _ever_fails_rate(p: float, threshold: float, rng: np.random.Generator) -> tuple[float, list]:
    fails, when = 0, []
    for _ in range(RUNS):
        counts = np.cumsum(rng.random(N) < p)
        for k in range(EVERY, N + 1, EVERY):
            if stats.rate_test(int(counts[k - 1]), k, threshold, ALPHA).outcome == "fail":
                fails += 1
                when.append(k)
                break
    return fails / RUNS, when


def _ever_fails_difference(
    pc: float, pp: float, paired: bool, rng: np.random.Generator, max_increase: float = 0.0
) -> tuple[float, list]:
    fails, when = 0, []
    for _ in range(RUNS):
        xc = rng.random(N) < pc
        xp = rng.random(N) < pp
        c_only, p_only = np.cumsum(xc & ~xp), np.cumsum(xp & ~xc)
        c_all, p_all = np.cumsum(xc), np.cumsum(xp)
        for k in range(EVERY, N + 1, EVERY):
            if paired:
                r = stats.paired_difference_test(
                    k, int(c_only[k - 1]), int(p_only[k - 1]), max_increase, ALPHA
                )
            else:
                d, v = stats.independent_rate_difference(int(c_all[k - 1]), k, int(p_all[k - 1]), k)
                r = stats.difference_test(d, v, max_increase, ALPHA, k)
            if r.outcome == "fail":
                fails += 1
                when.append(k)
                break
    return fails / RUNS, when


def test_naive_repeated_z_test_breaks_alpha_which_is_why_the_gates_do_not_use_it() -> None:
    # The control for the simulations below: the same A/A data and looks, judged by
    # a fixed-sample z-test at each look, fail healthy candidates far above alpha.
    rng = np.random.default_rng(7)
    fails = 0
    for _ in range(RUNS):
        xc, xp = rng.random(N) < 0.02, rng.random(N) < 0.02
        cc, cp = np.cumsum(xc), np.cumsum(xp)
        for k in range(EVERY, N + 1, EVERY):
            d, v = stats.independent_rate_difference(int(cc[k - 1]), k, int(cp[k - 1]), k)
            if d / math.sqrt(v) > 1.645:  # one-sided, alpha 0.05 for one look
                fails += 1
                break
    assert fails / RUNS > 2 * ALPHA


def test_rate_a_a_at_the_threshold_fails_at_most_alpha_over_200_looks() -> None:
    # The hardest healthy case: the true error rate sits exactly at the 1 % limit.
    rate, _ = _ever_fails_rate(0.01, 0.01, np.random.default_rng(1))
    assert rate <= ALPHA


def test_rate_regression_is_caught_within_a_few_hundred_requests() -> None:
    rate, when = _ever_fails_rate(0.05, 0.01, np.random.default_rng(2))
    assert rate == 1.0
    assert float(np.median(when)) <= 500


@pytest.mark.parametrize("paired", [True, False], ids=["paired-shadow", "independent-ab"])
def test_difference_a_a_fails_at_most_alpha_over_200_looks(paired: bool) -> None:
    rate, _ = _ever_fails_difference(0.02, 0.02, paired, np.random.default_rng(3))
    assert rate <= ALPHA


@pytest.mark.parametrize("paired", [True, False], ids=["paired-shadow", "independent-ab"])
def test_difference_regression_of_4_points_is_caught(paired: bool) -> None:
    rate, when = _ever_fails_difference(0.05, 0.01, paired, np.random.default_rng(4))
    assert rate == 1.0
    assert float(np.median(when)) <= 1000


def test_rate_passes_a_clearly_healthy_candidate_and_waits_on_thin_data() -> None:
    assert stats.rate_test(0, 30, 0.01, ALPHA).outcome == "inconclusive"
    healthy = stats.rate_test(2, 2000, 0.01, ALPHA)
    assert healthy.outcome == "pass"
    assert healthy.evidence_pass >= 1 / ALPHA
    assert healthy.estimate == pytest.approx(0.001)


def test_agreement_fails_below_its_minimum() -> None:
    low = stats.rate_test(900, 1000, 0.99, ALPHA, fail_when="below")
    high = stats.rate_test(999, 1000, 0.95, ALPHA, fail_when="below")
    assert (low.outcome, high.outcome) == ("fail", "pass")


def test_difference_within_the_allowed_increase_passes() -> None:
    assert stats.paired_difference_test(5000, 10, 12, 0.01, ALPHA).outcome == "pass"
    d, v = stats.independent_rate_difference(30, 5000, 28, 5000)
    assert stats.difference_test(d, v, 0.01, ALPHA, 5000).outcome == "pass"
    assert stats.difference_test(float("nan"), 1.0, 0.0, ALPHA, 0).outcome == "inconclusive"


@pytest.mark.parametrize("accuracy", [0.7, 0.9])
def test_one_discordant_pair_is_never_a_verdict(accuracy: float) -> None:
    # The old paired test floored the variance at 1e-9: one candidate-only error at
    # n = 1 failed the error rule, one label the accuracy rule. A betting martingale
    # on the discordant pairs cannot move that far on one request.
    for n in (1, 2, 5):
        r = stats.paired_difference_test(n, 1, 0, 0.0, ALPHA)
        assert r.outcome == "inconclusive" and r.evidence_fail < 1 / ALPHA
    # an A/A labelled stream, judged after every label: the drop rule at 0 fails <= alpha
    rng = np.random.default_rng(int(accuracy * 100))
    fails = 0
    for _ in range(RUNS):
        prod, cand = rng.random(3000) < accuracy, rng.random(3000) < accuracy
        p_only, c_only = np.cumsum(prod & ~cand), np.cumsum(cand & ~prod)
        n = np.arange(1, 3001)
        counts = np.column_stack([p_only, c_only, n - p_only - c_only])
        log_w = stats.log_betting_path(np.array([1.0, -1.0, 0.0]), counts, 0.0, +1, 1.0)
        fails += bool(np.any(log_w >= math.log(1 / ALPHA)))
        # the path is the scalar test at every look
        k = int(rng.integers(1, 3001))
        scalar = stats.paired_difference_test(k, int(p_only[k - 1]), int(c_only[k - 1]), 0.0, ALPHA)
        assert math.log(scalar.evidence_fail) == pytest.approx(log_w[k - 1], abs=1e-9)
    assert fails / RUNS <= ALPHA


def test_mean_test_names_the_bad_argument() -> None:
    with pytest.raises(ValueError, match="same length"):
        stats.mean_test([1.0, 0.0], [3], 0.0, 1.0, ALPHA, fail_above=0.5)
    with pytest.raises(ValueError, match=r"lie in \[0.0, 1.0\]"):
        stats.mean_test([2.0], [1], 0.0, 1.0, ALPHA, fail_above=0.5)
    with pytest.raises(ValueError, match="discordant"):
        stats.paired_difference_test(3, 2, 2, 0.0, ALPHA)
    with pytest.raises(ValueError, match="fail_alpha"):
        stats.rate_test(1, 10, 0.1, ALPHA, fail_alpha=1.5)


@pytest.mark.parametrize("classes", [2, 50, 200])
def test_output_shift_between_samples_of_one_distribution_fails_at_most_alpha(
    classes: int,
) -> None:
    # PSI > 0.25 on two samples of the same 50-class distribution happened in 43 % of
    # checks (200 classes: always). The shift test's level does not grow with classes.
    rng = np.random.default_rng(classes)
    shares = rng.dirichlet(np.ones(classes))
    fails = 0
    for _ in range(40):
        prod = rng.choice(classes, size=2000, p=shares)
        cand = rng.choice(classes, size=2000, p=shares)
        for k in (100, 300, 1000, 2000):
            p, c = prod[:k], cand[:k]
            up = {str(i): int(((c == i) & (p != i)).sum()) for i in set(c.tolist())}
            down = {str(i): int(((p == i) & (c != i)).sum()) for i in set(p.tolist())}
            result, _ = stats.share_shift_test(k, up, down, 0.05, ALPHA)
            if result.outcome == "fail":
                fails += 1
                break
    assert fails / 40 <= ALPHA
    # ...and a class that truly moved by 15 points or more is caught
    rare = int(np.argmin(shares))
    moved = np.where(rng.random(2000) < 0.3, rare, rng.choice(classes, size=2000, p=shares))
    prod = rng.choice(classes, size=2000, p=shares)
    up = {str(i): int(((moved == i) & (prod != i)).sum()) for i in range(classes)}
    down = {str(i): int(((prod == i) & (moved != i)).sum()) for i in range(classes)}
    result, decisive = stats.share_shift_test(2000, up, down, 0.05, ALPHA)
    assert result.outcome == "fail" and decisive == str(rare)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((5, 3, 0.01, 0.05), "successes"),
        ((1, 10, 1.5, 0.05), "threshold"),
        ((1, 10, 0.01, 0.0), "alpha"),
    ],
)
def test_rate_test_names_the_bad_argument(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        stats.rate_test(*args)


def test_psi_and_jsd_on_known_distributions() -> None:
    same = [10, 20, 30, 40]
    assert stats.psi(same, [1, 2, 3, 4]) == pytest.approx(0.0, abs=1e-12)
    assert stats.jensen_shannon(same, same) == pytest.approx(0.0, abs=1e-12)
    # Disjoint supports: JSD reaches its maximum of 1 bit.
    assert stats.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    # PSI of a 50/50 vs 90/10 split, by hand: (0.9-0.5)ln(0.9/0.5) + (0.1-0.5)ln(0.1/0.5)
    expected = 0.4 * math.log(1.8) + (-0.4) * math.log(0.2)
    assert stats.psi([50, 50], [90, 10]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="positive total"):
        stats.psi([0, 0], [1, 1])
