"""Sequential tests the gates use: valid however often they are checked.

A gate looks at the warehouse every few seconds. A fixed-sample test (a t-test, a
chi-square) checked that often fails healthy candidates far more often than its
nominal alpha, because each look is another chance for noise to cross the line.
The tests here are built on test martingales: under the null hypothesis their value
stays below ``1 / alpha`` forever with probability at least ``1 - alpha`` (Ville's
inequality), so a verdict reached at any look, after any number of looks, keeps the
stated error rate.

- ``rate_test``: is a rate (errors, slow requests, agreement) above or below a
  threshold? A mixture of likelihood-ratio martingales against a grid of
  alternatives on the odds scale (exact for Bernoulli outcomes).
- ``difference_test``: is the difference of two rates (candidate minus production)
  above or below an allowed increase? A mixture sequential probability ratio test
  (mSPRT, normal mixture) on the estimated difference, for paired (shadow) or
  independent (A/B, canary) samples; valid as samples grow (asymptotically).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Outcome = Literal["pass", "fail", "inconclusive"]

# Alternatives for the rate test: odds ratios from 1.05 to about 55 against the
# threshold's odds, equally weighted. Close alternatives catch small regressions
# slowly, far ones catch gross regressions within a few dozen requests.
_LOG_ODDS_RATIOS = np.linspace(0.05, 4.0, 40)


def _logsumexp(values: np.ndarray) -> float:
    top = float(np.max(values))
    return top + math.log(float(np.sum(np.exp(values - top))))


def _log_mixture_lr(successes: int, n: int, p0: float, direction: int) -> float:
    """log of the mixture likelihood ratio of "rate is beyond p0 in ``direction``"
    (+1 above, -1 below) against "rate is p0"; a supermartingale under every rate on
    the other side of p0, so it tests the composite null."""
    if n == 0:
        return 0.0
    odds0 = p0 / (1 - p0)
    odds1 = odds0 * np.exp(direction * _LOG_ODDS_RATIOS)
    p1 = odds1 / (1 + odds1)
    failures = n - successes
    log_lr = successes * np.log(p1 / p0) + failures * np.log((1 - p1) / (1 - p0))
    return _logsumexp(log_lr) - math.log(len(_LOG_ODDS_RATIOS))


@dataclass(frozen=True)
class TestResult:
    """A sequential test's outcome with the evidence behind it."""

    outcome: Outcome
    estimate: float
    # Evidence for each side as a likelihood ratio: the verdict needs >= 1/alpha.
    evidence_fail: float
    evidence_pass: float
    n: int

    def as_dict(self) -> dict[str, float | int | str]:
        """JSON-friendly form (evidence capped so JSON never sees infinity)."""
        cap = 1e300
        return {
            "outcome": self.outcome,
            "estimate": self.estimate,
            "evidence_fail": min(self.evidence_fail, cap),
            "evidence_pass": min(self.evidence_pass, cap),
            "n": self.n,
        }


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))


def rate_test(
    successes: int,
    n: int,
    threshold: float,
    alpha: float,
    fail_when: Literal["above", "below"] = "above",
) -> TestResult:
    """Sequential test of a rate against ``threshold``.

    ``fail_when="above"`` (error rates, slow-request shares): fail once the data show
    the rate is above the threshold, pass once they show it is below. ``"below"``
    (agreement): the other way round. Each verdict is wrong with probability at most
    ``alpha`` however many times the test is repeated as data accumulate.
    """
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within 0..n, got {successes} of {n}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha}")
    up = _log_mixture_lr(successes, n, threshold, +1)
    down = _log_mixture_lr(successes, n, threshold, -1)
    log_fail, log_pass = (up, down) if fail_when == "above" else (down, up)
    bar = math.log(1 / alpha)
    outcome: Outcome = "inconclusive"
    if log_fail >= bar:
        outcome = "fail"
    elif log_pass >= bar:
        outcome = "pass"
    return TestResult(
        outcome=outcome,
        estimate=successes / n if n else float("nan"),
        evidence_fail=_exp(log_fail),
        evidence_pass=_exp(log_pass),
        n=n,
    )


def difference_test(
    estimate: float,
    variance: float,
    max_increase: float,
    alpha: float,
    n: int,
    tau: float = 0.02,
) -> TestResult:
    """mSPRT of "difference == max_increase" with a normal mixture of width ``tau``.

    ``estimate`` is the observed difference (candidate minus production) and
    ``variance`` its variance. Rejecting with the estimate above ``max_increase``
    fails; rejecting below passes. ``tau`` is the scale of differences the test is
    most sensitive to (2 percentage points by default).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha}")
    if n == 0 or not math.isfinite(estimate):
        return TestResult("inconclusive", float("nan"), 1.0, 1.0, n)
    v = max(variance, 1e-12)
    t2 = tau * tau
    gap = estimate - max_increase
    log_lr = 0.5 * math.log(v / (v + t2)) + t2 * gap * gap / (2 * v * (v + t2))
    outcome: Outcome = "inconclusive"
    if log_lr >= math.log(1 / alpha):
        outcome = "fail" if gap > 0 else "pass"
    lr = _exp(log_lr)
    return TestResult(
        outcome=outcome,
        estimate=estimate,
        evidence_fail=lr if gap > 0 else 1.0,
        evidence_pass=lr if gap <= 0 else 1.0,
        n=n,
    )


def paired_rate_difference(
    n: int, candidate_only: int, production_only: int
) -> tuple[float, float]:
    """Difference of two rates measured on the same requests, and its variance.

    ``candidate_only`` counts requests where only the candidate had the event (an
    error, say), ``production_only`` those where only production had it.
    """
    if n == 0:
        return float("nan"), float("inf")
    d = (candidate_only - production_only) / n
    # Per-request differences are +1, -1 or 0; a half-count of each kind keeps the
    # variance away from zero when no discordant request was seen yet.
    second = (candidate_only + production_only + 1) / (n + 1)
    return d, max(second - d * d, 1e-9) / n


def independent_rate_difference(
    events_a: int, n_a: int, events_b: int, n_b: int
) -> tuple[float, float]:
    """Difference of rates a - b from two independent samples, and its variance."""
    if n_a == 0 or n_b == 0:
        return float("nan"), float("inf")
    pa = (events_a + 0.5) / (n_a + 1)
    pb = (events_b + 0.5) / (n_b + 1)
    return events_a / n_a - events_b / n_b, pa * (1 - pa) / n_a + pb * (1 - pb) / n_b


def psi(expected: list[float], actual: list[float], floor: float = 1e-4) -> float:
    """Population stability index between two binned distributions (counts or shares)."""
    e = _shares(expected, floor)
    a = _shares(actual, floor)
    return float(np.sum((a - e) * np.log(a / e)))


def jensen_shannon(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two binned distributions."""
    a = _shares(p, 0.0)
    b = _shares(q, 0.0)
    m = (a + b) / 2
    return float(0.5 * _kl(a, m) + 0.5 * _kl(b, m))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log2(p[mask] / q[mask])))


def _shares(counts: list[float], floor: float) -> np.ndarray:
    arr = np.asarray(counts, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("a binned distribution needs at least one bin")
    if np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError("bin counts must be finite and non-negative")
    total = arr.sum()
    if total <= 0:
        raise ValueError("a binned distribution needs a positive total")
    shares = arr / total
    if floor > 0:
        shares = np.maximum(shares, floor)
        shares = shares / shares.sum()
    return shares
