"""Sequential tests the gates use: valid however often they are checked.

A gate looks at the warehouse every few seconds. A fixed-sample test (a t-test, a
chi-square) checked that often fails healthy candidates far more often than its
nominal alpha, because each look is another chance for noise to cross the line.
The tests here are built on test martingales (e-processes): under the null
hypothesis their value stays below ``1 / alpha`` forever with probability at least
``1 - alpha`` (Ville's inequality), so a verdict reached at any look, after any
number of looks, keeps the stated error rate. Each test takes two levels: ``alpha``
for its pass side and ``fail_alpha`` for its fail side, so the gates can split the
verdict's false-failure budget over all its rules and candidates.

- ``rate_test``: is a rate (errors, slow requests, agreement) above or below a
  threshold? A mixture of likelihood-ratio martingales over a grid of alternatives
  (exact for Bernoulli outcomes, at every n).
- ``mean_test``: is the mean of a bounded outcome above or below a value? A mixture
  of betting martingales ``prod(1 + lam (x - m))`` over a grid of bets, computed from
  the count of each value (exact at every n, no variance estimate). Paired rate
  differences (shadow: both models on the same requests) are its main use.
- ``quantile_bounds``: a confidence sequence for a quantile from order statistics;
  the p99-increase rules compare the candidate with it, so both sides' sampling
  error is carried.
- ``share_shift_test``: has any output class's share moved by more than a limit
  (paired per request)? One ``mean_test`` per class and direction, Bonferroni inside.
- ``difference_test``: a mixture sequential probability ratio test (mSPRT, normal
  mixture) on a difference with a plug-in variance, for independent samples (A/B
  pass sides, noise-cancelled agreement); valid as samples grow (asymptotically).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Outcome = Literal["pass", "fail", "inconclusive"]

# Alternatives for the rate test: odds ratios from 1.05 to about 55 against the
# threshold's odds. Close alternatives catch small regressions slowly, far ones catch
# gross regressions within a few dozen requests. Odds ratios 1.35-5 (a rate that
# doubles, the regression users fear most) weigh three times as much as the rest; any
# fixed weights keep the test valid, these only move where it is quickest.
_LOG_ODDS_RATIOS = np.linspace(0.05, 4.0, 40)
_LOG_ODDS_WEIGHTS = np.where((_LOG_ODDS_RATIOS >= 0.3) & (_LOG_ODDS_RATIOS <= 1.61), 3.0, 1.0)
_LOG_ODDS_WEIGHTS = np.log(_LOG_ODDS_WEIGHTS / _LOG_ODDS_WEIGHTS.sum())


def _logsumexp(values: np.ndarray) -> float:
    top = float(np.max(values))
    return top + math.log(float(np.sum(np.exp(values - top))))


def log_mixture_lr_path(
    successes: np.ndarray, n: np.ndarray, p0: float | np.ndarray, direction: int
) -> np.ndarray:
    """``_log_mixture_lr`` at every look at once (arrays of counts, and of ``p0`` when
    it changes between looks): the simulations judge every request of a run with the
    gates' own arithmetic."""
    s = np.asarray(successes, dtype=float).reshape(-1, 1)
    f = np.asarray(n, dtype=float).reshape(-1, 1) - s
    base = np.asarray(p0, dtype=float).reshape(-1, 1)
    odds1 = base / (1 - base) * np.exp(direction * _LOG_ODDS_RATIOS)[None, :]
    p1 = odds1 / (1 + odds1)
    log_lr = s * np.log(p1 / base) + f * np.log((1 - p1) / (1 - base)) + _LOG_ODDS_WEIGHTS
    top = log_lr.max(axis=1)
    return top + np.log(np.exp(log_lr - top[:, None]).sum(axis=1))


def _log_mixture_lr(successes: float, n: float, p0: float, direction: int) -> float:
    """log of the mixture likelihood ratio of "rate is beyond p0 in ``direction``"
    (+1 above, -1 below) against "rate is p0"; a supermartingale under every rate on
    the other side of p0, so it tests the composite null."""
    if n == 0:
        return 0.0
    return float(log_mixture_lr_path(np.array([successes]), np.array([n]), p0, direction)[0])


@dataclass(frozen=True)
class TestResult:
    """A sequential test's outcome with the evidence behind it."""

    outcome: Outcome
    estimate: float
    # Evidence for each side (an e-value): a side wins when it reaches its bar.
    evidence_fail: float
    evidence_pass: float
    n: int
    # The evidence each side needs: 1 / fail_alpha and 1 / alpha.
    bar_fail: float = 20.0
    bar_pass: float = 20.0

    def as_dict(self) -> dict[str, float | int | str]:
        """JSON-friendly form (evidence capped so JSON never sees infinity)."""
        cap = 1e300
        return {
            "outcome": self.outcome,
            "estimate": self.estimate,
            "evidence_fail": min(self.evidence_fail, cap),
            "evidence_pass": min(self.evidence_pass, cap),
            "bar_fail": self.bar_fail,
            "bar_pass": self.bar_pass,
            "n": self.n,
        }


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0))


def rate_test(
    successes: float,
    n: float,
    threshold: float,
    alpha: float,
    fail_when: Literal["above", "below"] = "above",
    fail_alpha: float | None = None,
) -> TestResult:
    """Sequential test of a rate against ``threshold``.

    ``fail_when="above"`` (error rates, slow-request shares): fail once the data show
    the rate is above the threshold, pass once they show it is below. ``"below"``
    (agreement): the other way round. Each verdict is wrong with probability at most
    ``alpha`` however many times the test is repeated as data accumulate. Counts may
    be fractional: effective counts, divided by a ``design_effect``.
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
    estimate = successes / n if n else math.nan
    return _result(log_fail, log_pass, alpha, fail_alpha, estimate, round(n))


def _check_alpha(alpha: float, fail_alpha: float | None) -> float:
    fa = alpha if fail_alpha is None else fail_alpha
    for name, value in (("alpha", alpha), ("fail_alpha", fa)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")
    return fa


def _result(
    log_fail: float, log_pass: float, alpha: float, fail_alpha: float | None, estimate: float,
    n: int,
) -> TestResult:  # fmt: skip
    fa = _check_alpha(alpha, fail_alpha)
    outcome: Outcome = "inconclusive"
    if log_fail >= math.log(1 / fa):
        outcome = "fail"
    elif log_pass >= math.log(1 / alpha):
        outcome = "pass"
    return TestResult(outcome, estimate, _exp(log_fail), _exp(log_pass), n, 1 / fa, 1 / alpha)


# Bets of the betting martingales, as shares of the largest bet that keeps every
# factor positive, with their prior weights. The best bet for a mean shift d with
# variance v is about d / v: for a paired error-rate ratio r it is (r - 1) / (r + 1),
# so 0.33 for errors doubling (1 % -> 2 %), 0.6 for 0.3 % -> 1.3 %, 0.14 for 3 % -> 4 %;
# 0.03 for a one-point accuracy drop among 30 % discordant labels. A bet within a
# factor of 1.5 of the best keeps most of its growth, and every bet added costs all of
# them weight, so the grid is coarse and its weight leans towards the doublings users
# fear most. Medians of 1,000 simulated paired runs (alpha 0.05): 1 % -> 2 % 1,875
# requests with equal weights, 1,627 with these; 0.3 % -> 1.3 % 1,082 / 1,035;
# 3 % -> 4 % 4,145 / 4,197 (13 equal halving steps down to 1/4096: 2,542 for the first).
_BET_SHARES = np.array([0.75, 0.5, 0.35, 0.25, 0.18, 0.125, 0.06, 0.03, 0.015])
_LOG_BET_WEIGHTS = np.log(np.array([1.0, 2.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0]) / 13.0)


def log_betting_path(
    values: np.ndarray, counts: np.ndarray, m: float, side: int, span: float
) -> np.ndarray:
    """log of the weighted mixture over ``_BET_SHARES`` of ``prod(1 + side * lam * (x - m))`` for
    each row of ``counts`` (how often each of ``values`` was seen by then).

    ``side = +1`` grows when the mean is above ``m`` (a supermartingale whenever the
    mean is at most ``m``), ``-1`` when it is below. ``span`` is how far the outcomes
    can go against the bet (``m - low`` or ``high - m``)."""
    lam = _BET_SHARES / max(span, 1e-12)
    factors = 1.0 + side * np.outer(lam, np.asarray(values, dtype=float) - m)
    logs = np.atleast_2d(np.asarray(counts, dtype=float)) @ np.log(np.maximum(factors, 1e-300)).T
    logs = logs + _LOG_BET_WEIGHTS[None, :]
    top = logs.max(axis=1)
    return top + np.log(np.exp(logs - top[:, None]).sum(axis=1))


def _log_betting(values: np.ndarray, counts: np.ndarray, m: float, side: int, span: float) -> float:
    if counts.sum() == 0:
        return 0.0
    return float(log_betting_path(values, counts[None, :], m, side, span)[0])


def mean_test(
    values: list[float],
    counts: list[int],
    low: float,
    high: float,
    alpha: float,
    fail_above: float,
    pass_below: float | None = None,
    fail_alpha: float | None = None,
) -> TestResult:
    """Sequential test of the mean of an outcome bounded in ``[low, high]``.

    ``values`` and ``counts`` say how often each outcome was seen (the order does not
    matter: the martingale's value depends only on the counts). Fails once the data
    show the mean is above ``fail_above``; passes once they show it is below
    ``pass_below`` (default ``fail_above``). A ``pass_below`` above ``fail_above`` is an
    indifference zone: a mean in between may end either way.
    """
    v = np.asarray(values, dtype=float)
    c = np.asarray(counts, dtype=float)
    if v.shape != c.shape or v.ndim != 1:
        raise ValueError("values and counts must be lists of the same length")
    if np.any(c < 0) or np.any(v < low) or np.any(v > high) or not low < high:
        raise ValueError(f"outcomes must lie in [{low}, {high}] with non-negative counts")
    top = fail_above if pass_below is None else pass_below
    if not low <= fail_above <= high or not low <= top <= high:
        raise ValueError(f"fail_above and pass_below must lie in [{low}, {high}]")
    n = int(c.sum())
    log_fail = _log_betting(v, c, fail_above, +1, fail_above - low)
    log_pass = _log_betting(v, c, top, -1, high - top)
    estimate = float(v @ c / n) if n else math.nan
    return _result(log_fail, log_pass, alpha, fail_alpha, estimate, n)


def paired_difference_test(
    n: int,
    candidate_only: int,
    production_only: int,
    max_increase: float,
    alpha: float,
    fail_above: float | None = None,
    fail_alpha: float | None = None,
) -> TestResult:
    """Difference of two rates measured on the same ``n`` requests (candidate minus
    production), from the discordant pairs: ``candidate_only`` requests had the event
    (an error, a wrong answer) only for the candidate, ``production_only`` only for
    production. Passes once the difference is shown below ``max_increase``; fails once
    it is shown above ``fail_above`` (default ``max_increase``). Exact at every n."""
    if not 0 <= candidate_only + production_only <= n:
        raise ValueError(
            f"discordant pairs ({candidate_only} + {production_only}) must be within 0..{n}"
        )
    concordant = n - candidate_only - production_only
    return mean_test(
        [1.0, -1.0, 0.0], [candidate_only, production_only, concordant], -1.0, 1.0, alpha,
        fail_above=max_increase if fail_above is None else fail_above,
        pass_below=max_increase, fail_alpha=fail_alpha,
    )  # fmt: skip


def _count_bound(n: int, p: float, bar: float, side: int) -> int:
    """The time-uniform bound on a Binomial(n, p) count from the rate test's
    martingale: the smallest count it does not call too low (``side = -1``) or the
    largest it does not call too high (``+1``), at evidence ``bar``."""
    log_bar = math.log(bar)
    lo, hi = 0, n
    if side < 0:  # smallest s with evidence("rate below p") < bar; evidence falls with s
        while lo < hi:
            mid = (lo + hi) // 2
            if _log_mixture_lr(mid, n, p, -1) >= log_bar:
                lo = mid + 1
            else:
                hi = mid
        return lo
    while lo < hi:  # largest s with evidence("rate above p") < bar; evidence grows with s
        mid = (lo + hi + 1) // 2
        if _log_mixture_lr(mid, n, p, +1) >= log_bar:
            hi = mid - 1
        else:
            lo = mid
    return lo


def count_bound_table(n_max: int, p: float, bar: float, side: int) -> np.ndarray:
    """``_count_bound(n, p, bar, side)`` for every n in 0..n_max (both bounds grow with
    n, so each is found from the previous one): the simulations' per-look bounds."""
    out = np.zeros(n_max + 1, dtype=np.int64)
    log_bar = math.log(bar)
    s = 0
    for n in range(1, n_max + 1):
        if side < 0:
            while s < n and _log_mixture_lr(s, n, p, -1) >= log_bar:
                s += 1
        else:
            while s < n and _log_mixture_lr(s + 1, n, p, +1) < log_bar:
                s += 1
        out[n] = s
    return out


def quantile_bounds(top: list[float], n: int, q: float, alpha: float) -> tuple[float, float]:
    """A confidence sequence for the ``q`` quantile of ``n`` samples whose largest
    values, in descending order, are ``top`` (at least the largest ``3 % + 50``).

    Returns ``(lower, upper)``; each holds at every n with probability at least
    ``1 - alpha`` (``-inf``/``inf`` while the data cannot bound it). The number of
    samples above the true quantile is Binomial(n, 1 - q); the rate test's martingale
    bounds that count, and the order statistics at the bounds bound the quantile.
    """
    if not 0 < q < 1:
        raise ValueError(f"q must be strictly between 0 and 1, got {q}")
    if n == 0:
        return -math.inf, math.inf
    p = 1.0 - q
    least = _count_bound(n, p, 1 / alpha, -1)  # samples above the quantile >= least
    most = _count_bound(n, p, 1 / alpha, +1)  # ... and <= most
    upper = top[least - 1] if 0 < least <= len(top) else math.inf
    # the (most + 1)-th largest is at or below the quantile
    lower = top[most] if most < len(top) else -math.inf
    return lower, upper


def share_shift_test(
    n: int,
    up: dict[str, int],
    down: dict[str, int],
    max_shift: float,
    alpha: float,
    fail_alpha: float | None = None,
) -> tuple[TestResult, str | None]:
    """Has any output class's share moved by more than ``max_shift`` between
    production and the candidate, on the same ``n`` requests?

    Per class, ``up`` counts requests where only the candidate answered it and ``down``
    those where only production did; the paired difference of the two shares is their
    mean. Fails when some class is shown to have moved by more than ``max_shift``
    (each class and direction tested at ``fail_alpha / (2 x classes)``, so the level
    holds however many classes there are); passes when every class is shown to have
    moved less (each at ``alpha``: a false pass needs the class that truly moved to
    pass). Classes never seen are covered by the all-zero class. Returns the result
    (estimate: the largest observed shift) and the class that decided it.
    """
    fa = _check_alpha(alpha, fail_alpha)
    classes = sorted(set(up) | set(down))
    k = max(1, len(classes))
    per_fail = fa / (2 * k)
    worst_fail, worst_pass = -math.inf, math.inf
    fail_class: str | None = None
    pass_class: str | None = None
    biggest = 0.0
    for name in [*classes, None]:
        u = up.get(name, 0) if name is not None else 0
        d = down.get(name, 0) if name is not None else 0
        if n:
            biggest = max(biggest, abs(u - d) / n)
        for a, b in ((u, d), (d, u)):  # the share moved up, then down
            r = paired_difference_test(n, a, b, max_shift, alpha, fail_alpha=per_fail)
            log_fail = math.log(max(r.evidence_fail, 1e-300))
            log_pass = math.log(max(r.evidence_pass, 1e-300))
            if log_fail > worst_fail:
                worst_fail, fail_class = log_fail, name
            if log_pass < worst_pass:
                worst_pass, pass_class = log_pass, name
    outcome: Outcome = "inconclusive"
    if worst_fail >= math.log(1 / per_fail):
        outcome = "fail"
    elif worst_pass >= math.log(1 / alpha):
        outcome = "pass"
    result = TestResult(
        outcome, biggest, _exp(worst_fail), _exp(worst_pass), n, 1 / per_fail, 1 / alpha
    )
    return result, fail_class if outcome == "fail" else pass_class


def difference_test(
    estimate: float,
    variance: float,
    max_increase: float,
    alpha: float,
    n: int,
    tau: float = 0.02,
    fail_alpha: float | None = None,
) -> TestResult:
    """mSPRT of "difference == max_increase" with a normal mixture of width ``tau``.

    ``estimate`` is the observed difference (candidate minus production) and
    ``variance`` its variance. Rejecting with the estimate above ``max_increase``
    fails; rejecting below passes. ``tau`` is the scale of differences the test is
    most sensitive to (2 percentage points by default).
    """
    _check_alpha(alpha, fail_alpha)
    if n == 0 or not math.isfinite(estimate) or not math.isfinite(variance):
        return _result(0.0, 0.0, alpha, fail_alpha, math.nan, n)
    v = max(variance, 1e-12)
    t2 = tau * tau
    gap = estimate - max_increase
    log_lr = 0.5 * math.log(v / (v + t2)) + t2 * gap * gap / (2 * v * (v + t2))
    return _result(log_lr if gap > 0 else 0.0, log_lr if gap <= 0 else 0.0, alpha, fail_alpha,
                   estimate, n)  # fmt: skip


@dataclass(frozen=True)
class UnitSums:
    """One arm's outcome summed per assignment unit (user, session): ``events``
    (errors, conversions, correct labels) over ``trials`` (requests, labels), and over
    the units ``u`` the sums of ``e_u ** 2`` (``events_sq``), ``n_u * e_u``
    (``cross``) and ``n_u ** 2`` (``trials_sq``)."""

    events: float
    trials: float
    units: int
    events_sq: float
    cross: float
    trials_sq: float


def design_effect(*arms: UnitSums | None) -> float:
    """How many times the arms' rates vary more than they would if every trial were an
    independent draw: the squared residuals per unit around each arm's own rate (the
    delta method's cluster-robust variance of a ratio), over the binomial variance,
    pooled over ``arms``; at least 1, and 1 exactly when every unit has one trial.

    The router assigns units, so when a unit's requests fail or convert together (a
    bot, a broken client, a loyal buyer), counting requests overstates the evidence
    by about this factor. An arm without unit sums (``None``) counts as independent.
    """
    resid = binomial = 0.0
    for s in arms:
        if s is None or s.trials <= 0:
            continue
        r = s.events / s.trials
        resid += s.events_sq - 2 * r * s.cross + r * r * s.trials_sq
        binomial += r * (1 - r) * s.trials
    if binomial <= 0:
        return 1.0
    return max(1.0, resid / binomial)


def independent_rate_difference(
    events_a: int,
    n_a: int,
    events_b: int,
    n_b: int,
    effect_a: float = 1.0,
    effect_b: float = 1.0,
) -> tuple[float, float]:
    """Difference of rates a - b from two independent samples, and its variance
    (each side's binomial variance times its ``design_effect``)."""
    if n_a == 0 or n_b == 0:
        return float("nan"), float("inf")
    pa = (events_a + 0.5) / (n_a + 1)
    pb = (events_b + 0.5) / (n_b + 1)
    var = effect_a * pa * (1 - pa) / n_a + effect_b * pb * (1 - pb) / n_b
    return events_a / n_a - events_b / n_b, var


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
