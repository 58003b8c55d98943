"""Simulations of the gates' statistics, judged at every request as a gate would.

Each run draws one experiment's traffic (errors, latencies, output classes, labels)
and asks, after every request, what each rule of the verdict says, with the
gates' own arithmetic from ``shadowline.stats``: the same martingales evaluated at
every look at once (``log_mixture_lr_path``, ``log_betting_path``), and the count
bounds of the p99 confidence sequences as tables built by the same test
(``count_bound_table``). ``tests/unit/test_simulation.py`` checks that a look here
decides as ``shadowline.rules.judge`` does on the same counts. The alpha split is
``shadowline.rules.fail_alpha`` of the simulated experiment's gates.

Two questions: how often a healthy candidate's verdict ever fails (A/A, must stay
within alpha), and after how many requests a real regression fails it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
from sortedcontainers import SortedList

from shadowline import stats
from shadowline.config import GateConfig
from shadowline.rules import TAIL, Context, fail_alpha, sequential_rules

Z99 = 2.3263478740408408  # the standard normal's 99th percentile


@dataclass(frozen=True)
class Arm:
    """One model's traffic: error rate, lognormal latency, output classes, accuracy."""

    error_rate: float = 0.01
    p99_ms: float = 100.0
    sigma: float = 0.5
    classes: tuple[float, ...] = (0.6, 0.3, 0.1)
    accuracy: float | None = None

    def draw(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        median = self.p99_ms / math.exp(Z99 * self.sigma)
        out = {
            "error": rng.random(n) < self.error_rate,
            "latency": median * np.exp(self.sigma * rng.standard_normal(n)),
            "label": rng.choice(len(self.classes), size=n, p=np.asarray(self.classes)),
        }
        if self.accuracy is not None:
            out["correct"] = rng.random(n) < self.accuracy
        return out


@dataclass(frozen=True)
class Case:
    """One simulated experiment: production, its candidates and the gates."""

    name: str
    production: Arm
    candidates: tuple[Arm, ...]
    gates: dict[str, Any] = field(default_factory=dict)
    paired: bool = True  # shadow; False: A/B arms of equal share
    probe_share: float = 0.05  # shadow: candidate latencies timed alone
    requests: int = 50_000  # per arm
    rate_per_s: float | None = None  # to report detection in seconds
    # A/B assignment units (users): requests per unit (geometric mean; 1 = every
    # request its own unit), the intra-unit correlation of errors (each unit's error
    # rate drawn from a Beta around its arm's), and whether the rules count units.
    requests_per_unit: float = 1.0
    unit_correlation: float = 0.0
    count_units: bool = True

    def gate_config(self) -> GateConfig:
        return GateConfig(**self.gates)

    def context(self) -> Context:
        return Context(paired=self.paired)


@cache
def _bound_table(n_max: int, bar: float, side: int) -> np.ndarray:
    return stats.count_bound_table(n_max, TAIL, bar, side)


def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _rate_fail(events: np.ndarray, n: np.ndarray, p0: float, fa: float) -> np.ndarray:
    return stats.log_mixture_lr_path(np.cumsum(events), n, p0, +1) >= math.log(1 / fa)


def _paired_fail(
    c_only: np.ndarray, p_only: np.ndarray, m: float, fa: float, bar: float | None = None
) -> np.ndarray:
    n = np.arange(1, c_only.size + 1)
    b, c = np.cumsum(c_only), np.cumsum(p_only)
    counts = np.column_stack([b, c, n - b - c])
    log_w = stats.log_betting_path(np.array([1.0, -1.0, 0.0]), counts, m, +1, m + 1.0)
    return log_w >= math.log(bar if bar is not None else 1 / fa)


def _relative_p99_fail(
    prod_lat: np.ndarray, prod_seen: np.ndarray, cand_lat: np.ndarray, cand_seen: np.ndarray,
    limit_of: Callable[[float], float], fa: float,
) -> np.ndarray:  # fmt: skip
    """Per look: the fail side of ``rules._relative_p99``. ``*_seen`` says, per look,
    whether that look added a latency to the side (probes, or the arm served)."""
    looks = prod_seen.size
    least = _bound_table(looks, 2 / fa, -1)  # production p99's upper bound: least-th largest
    most = _bound_table(looks, 2 / fa, +1)  # candidate: fail once slower > most
    out = np.zeros(looks, dtype=bool)
    prod, cand = SortedList(), SortedList()
    pi = ci = 0
    for t in range(looks):
        if prod_seen[t]:
            prod.add(prod_lat[pi])
            pi += 1
        if cand_seen[t]:
            cand.add(cand_lat[ci])
            ci += 1
        n_p, n_c = len(prod), len(cand)
        if not n_p or not n_c:
            continue
        k = int(least[n_p])
        if k == 0:
            continue  # production's p99 not bounded above yet: no fail
        limit = limit_of(prod[n_p - k])
        slower = n_c - cand.bisect_right(limit)
        out[t] = slower > most[n_c]
    return out


def _shift_fail(
    prod_label: np.ndarray, cand_label: np.ndarray, limit: float, fa: float
) -> np.ndarray:
    n = np.arange(1, prod_label.size + 1)
    classes = np.union1d(prod_label, cand_label)
    seen = np.zeros(prod_label.size)
    logs = np.full(prod_label.size, -np.inf)
    for k in classes:
        first = int(np.flatnonzero((prod_label == k) | (cand_label == k))[0])
        seen[first:] += 1
        up = np.cumsum((cand_label == k) & (prod_label != k))
        down = np.cumsum((prod_label == k) & (cand_label != k))
        for a, b in ((up, down), (down, up)):
            counts = np.column_stack([a, b, n - a - b])
            log_w = stats.log_betting_path(np.array([1.0, -1.0, 0.0]), counts, limit, +1, limit + 1)
            logs = np.maximum(logs, np.where(np.arange(n.size) >= first, log_w, -np.inf))
    return logs >= np.log(2 * np.maximum(seen, 1) / fa)


def _p99_limits(gates: GateConfig, rules: list[str]) -> list[tuple[str, Callable[[float], float]]]:
    """The relative p99 rules' limits as ``shadowline.rules`` derives them."""
    out: list[tuple[str, Callable[[float], float]]] = []
    ratio, slack = gates.max_p99_latency_ratio, gates.p99_latency_ratio_slack_ms
    if "max_p99_latency_ratio" in rules and ratio is not None:
        out.append(("max_p99_latency_ratio", lambda q: max(q * ratio, q + slack)))
    inc = gates.max_p99_latency_increase_ms
    if "max_p99_latency_increase_ms" in rules and inc is not None:
        out.append(("max_p99_latency_increase_ms", lambda q: q + inc))
    return out


def first_failures(case: Case, rng: np.random.Generator) -> dict[str, int | None]:
    """One run: per rule (candidate index appended), the request count at which the
    rule first fails (None: never within ``case.requests``)."""
    gates = case.gate_config()
    fa = fail_alpha(gates, case.context(), len(case.candidates))
    rules = sequential_rules(gates, case.context())
    n = case.requests
    out: dict[str, int | None] = {}
    if case.paired:
        prod = case.production.draw(rng, n)
        looks = np.arange(1, n + 1)
        for i, arm in enumerate(case.candidates):
            cand = arm.draw(rng, n)
            probes = rng.random(n) < case.probe_share
            if "max_error_rate" in rules:
                out[f"max_error_rate#{i}"] = _first(
                    _rate_fail(cand["error"], looks, gates.max_error_rate or 0, fa)
                )
            if "max_error_rate_increase" in rules:
                c_only, p_only = cand["error"] & ~prod["error"], prod["error"] & ~cand["error"]
                out[f"max_error_rate_increase#{i}"] = _first(_paired_fail(c_only, p_only, 0.0, fa))
            timed = probes & ~cand["error"]
            if "max_p99_latency_ms" in rules:
                slow = cand["latency"] > (gates.max_p99_latency_ms or 0)
                hit = _rate_fail(slow[timed], np.arange(1, int(timed.sum()) + 1), TAIL, fa)
                idx = np.flatnonzero(timed)
                j = _first(hit)
                out[f"max_p99_latency_ms#{i}"] = None if j is None else int(idx[j])
            ok_prod = ~prod["error"]
            for rule, limit_of in _p99_limits(gates, rules):
                fails = _relative_p99_fail(
                    prod["latency"][ok_prod], ok_prod, cand["latency"][timed], timed, limit_of, fa
                )
                out[f"{rule}#{i}"] = _first(fails)
            if "max_output_shift" in rules:
                out[f"max_output_shift#{i}"] = _first(
                    _shift_fail(prod["label"], cand["label"], gates.max_output_shift or 0, fa)
                )
            if "max_accuracy_drop" in rules and "correct" in prod:
                p_only = prod["correct"] & ~cand["correct"]
                c_only = cand["correct"] & ~prod["correct"]
                out[f"max_accuracy_drop#{i}"] = _first(
                    _paired_fail(p_only, c_only, gates.max_accuracy_drop or 0.0, fa)
                )
        return {k: None if v is None else v + 1 for k, v in out.items()}
    return _served_first_failures(case, gates, rules, fa, rng)


@dataclass
class UnitTraffic:
    """A/B traffic by assignment unit: per request (in arrival order) its unit and
    error, per unit its arm."""

    unit: np.ndarray
    error: np.ndarray
    unit_arm: np.ndarray

    @property
    def arm(self) -> np.ndarray:
        return self.unit_arm[self.unit]


def unit_traffic(case: Case, total: int, rng: np.random.Generator) -> UnitTraffic:
    """``total`` requests from units of geometric size (mean ``requests_per_unit``),
    each unit in one arm (equal shares) and arriving in random order; a unit's error
    rate is Beta-distributed around its arm's with intra-unit correlation
    ``unit_correlation`` (0: independent requests)."""
    arms = [case.production, *case.candidates]
    sizes = rng.geometric(1 / case.requests_per_unit, size=int(total / case.requests_per_unit) + 64)
    while sizes.sum() < total:
        sizes = np.concatenate([sizes, rng.geometric(1 / case.requests_per_unit, size=64)])
    unit = rng.permutation(np.repeat(np.arange(sizes.size), sizes))[:total]
    unit_arm = rng.integers(0, len(arms), size=sizes.size)
    mean = np.array([a.error_rate for a in arms])[unit_arm]
    rho = case.unit_correlation
    if rho > 0:
        k = (1 - rho) / rho
        rate = rng.beta(mean * k, (1 - mean) * k)
    else:
        rate = mean
    return UnitTraffic(unit, rng.random(total) < rate[unit], unit_arm)


def unit_sum_paths(traffic: UnitTraffic, arm: int) -> dict[str, np.ndarray]:
    """Per look (after each request, any arm's), one arm's errors, requests and their
    per-unit sums as ``arm_figures.sql`` computes them over the requests so far."""
    unit, err = traffic.unit, traffic.error.astype(float)
    order = np.argsort(unit, kind="stable")  # each unit's requests in arrival order
    u_sorted, e_sorted = unit[order], err[order]
    start = np.r_[0, np.flatnonzero(np.diff(u_sorted)) + 1]
    first = np.repeat(start, np.diff(np.r_[start, u_sorted.size]))
    prior_n = np.arange(u_sorted.size) - first
    cum_e = np.cumsum(e_sorted)
    prior_e = cum_e - e_sorted - np.r_[0.0, cum_e][first]
    k_n, k_e = np.empty_like(err), np.empty_like(err)
    k_n[order], k_e[order] = prior_n, prior_e
    mine = (traffic.arm == arm).astype(float)
    return {
        "requests": np.cumsum(mine),
        "errors": np.cumsum(mine * err),
        "units": np.cumsum(mine * (k_n == 0)),
        "errors_sq": np.cumsum(mine * err * (2 * k_e + 1)),
        "errors_cross": np.cumsum(mine * (k_e + err * (k_n + 1))),
        "requests_sq": np.cumsum(mine * (2 * k_n + 1)),
    }


def _design_effect_path(*paths: dict[str, np.ndarray]) -> np.ndarray:
    """``stats.design_effect`` at every look."""
    resid = np.zeros_like(paths[0]["requests"])
    binomial = np.zeros_like(resid)
    for p in paths:
        n = p["requests"]
        r = np.divide(p["errors"], n, out=np.zeros_like(n), where=n > 0)
        resid += p["errors_sq"] - 2 * r * p["errors_cross"] + r * r * p["requests_sq"]
        binomial += r * (1 - r) * n
    out = np.ones_like(resid)
    ok = binomial > 0
    out[ok] = np.maximum(1.0, resid[ok] / binomial[ok])
    return out


def unit_error_fails(
    traffic: UnitTraffic, arm: int, gates: GateConfig, rules: list[str], fa: float,
    count_units: bool = True,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per look, the fail side of the A/B error rules (``rules.judge``) for candidate
    arm ``arm`` against production (arm 0), their counts divided by the design effect
    as the gates do (``count_units=False``: counted per request, as before units)."""
    c, p = unit_sum_paths(traffic, arm), unit_sum_paths(traffic, 0)
    ones = np.ones_like(c["requests"])
    own = _design_effect_path(c) if count_units else ones
    pooled = _design_effect_path(c, p) if count_units else ones
    out: dict[str, np.ndarray] = {}
    bar = math.log(1 / fa)
    if "max_error_rate" in rules:
        fails = np.zeros(ones.size, dtype=bool)
        ok = c["requests"] > 0
        log_e = stats.log_mixture_lr_path(
            c["errors"][ok] / own[ok], c["requests"][ok] / own[ok], gates.max_error_rate or 0, +1
        )
        fails[ok] = log_e >= bar
        out["max_error_rate"] = fails
    if "max_error_rate_increase" in rules:
        ec, ep = c["errors"], p["errors"]
        share = c["requests"] / np.maximum(c["requests"] + p["requests"], 1)
        fails = np.zeros(ones.size, dtype=bool)
        ok = (ec + ep > 0) & (share > 0) & (share < 1)
        log_e = stats.log_mixture_lr_path(
            ec[ok] / pooled[ok], (ec[ok] + ep[ok]) / pooled[ok], share[ok], +1
        )
        fails[ok] = log_e >= bar
        out["max_error_rate_increase"] = fails
    return out


def _served_first_failures(
    case: Case, gates: GateConfig, rules: list[str], fa: float, rng: np.random.Generator
) -> dict[str, int | None]:
    """A/B: every request goes to one of the arms (equal shares); a look after each.
    With units (``requests_per_unit`` > 1) the arm is the unit's and the error rules
    read the per-unit sums (``unit_error_fails``)."""
    arms = [case.production, *case.candidates]
    total = case.requests * len(arms)
    traffic = unit_traffic(case, total, rng) if case.requests_per_unit > 1 else None
    which = traffic.arm if traffic is not None else rng.integers(0, len(arms), size=total)
    draws = [arm.draw(rng, total) for arm in arms]  # each arm uses the requests it got
    if traffic is not None:
        for d in draws:
            d["error"] = traffic.error
    per_arm = [
        {key: d[key][which == a] for key in d} | {"seen": which == a} for a, d in enumerate(draws)
    ]
    prod = per_arm[0]
    out: dict[str, int | None] = {}
    for i in range(1, len(arms)):
        cand = per_arm[i]
        n_c = np.cumsum(cand["seen"])
        err_c = np.zeros(total, dtype=bool)
        err_c[cand["seen"]] = cand["error"]
        err_p = np.zeros(total, dtype=bool)
        err_p[prod["seen"]] = prod["error"]
        if traffic is not None:
            error_rules = unit_error_fails(traffic, i, gates, rules, fa, case.count_units)
            out |= {f"{rule}#{i}": _first(fails) for rule, fails in error_rules.items()}
        if "max_error_rate" in rules and traffic is None:
            fails = _rate_fail(err_c, n_c, gates.max_error_rate or 0, fa) & (n_c > 0)
            out[f"max_error_rate#{i}"] = _first(fails)
        if "max_error_rate_increase" in rules and traffic is None:
            # the candidate arm's share of all errors against its share of traffic
            ec, ep = np.cumsum(err_c), np.cumsum(err_p)
            n_p = np.cumsum(prod["seen"])
            share = n_c / np.maximum(n_c + n_p, 1)
            fails = np.zeros(total, dtype=bool)
            ok = (ec + ep > 0) & (share > 0) & (share < 1)
            log_e = stats.log_mixture_lr_path(ec[ok], ec[ok] + ep[ok], share[ok], +1)
            fails[ok] = log_e >= math.log(1 / fa)
            out[f"max_error_rate_increase#{i}"] = _first(fails)
        ok_c, ok_p = cand["seen"].copy(), prod["seen"].copy()
        ok_c[cand["seen"]] = ~cand["error"]
        ok_p[prod["seen"]] = ~prod["error"]
        if "max_p99_latency_ms" in rules:
            slow = np.zeros(total, dtype=bool)
            slow[ok_c] = cand["latency"][~cand["error"]] > (gates.max_p99_latency_ms or 0)
            fails = _rate_fail(slow, np.cumsum(ok_c), TAIL, fa) & (np.cumsum(ok_c) > 0)
            out[f"max_p99_latency_ms#{i}"] = _first(fails)
        for rule, limit_of in _p99_limits(gates, rules):
            fails = _relative_p99_fail(
                prod["latency"][~prod["error"]], ok_p, cand["latency"][~cand["error"]], ok_c,
                limit_of, fa,
            )  # fmt: skip
            out[f"{rule}#{i}"] = _first(fails)
    # requests per arm when the rule failed
    return {k: None if v is None else int(v / len(arms)) + 1 for k, v in out.items()}


def aa_rate(case: Case, runs: int, seed: int) -> dict[str, Any]:
    """How often the whole verdict ever fails over ``case.requests`` looks."""
    rng = np.random.default_rng(seed)
    fails = 0
    by_rule: dict[str, int] = {}
    for _ in range(runs):
        first = first_failures(case, rng)
        failed = [k for k, v in first.items() if v is not None]
        fails += bool(failed)
        for k in failed:
            rule = k.split("#")[0]
            by_rule[rule] = by_rule.get(rule, 0) + 1
    gates = case.gate_config()
    return {
        "case": case.name,
        "runs": runs,
        "requests": case.requests,
        "rules": sequential_rules(gates, case.context()),
        "alpha": gates.alpha,
        "fail_alpha_per_rule": fail_alpha(gates, case.context(), len(case.candidates)),
        "false_failure_rate": fails / runs,
        "false_failures_by_rule": by_rule,
    }


def detection(case: Case, runs: int, seed: int) -> dict[str, Any]:
    """After how many requests (per arm) the verdict first fails, per run."""
    rng = np.random.default_rng(seed)
    when: list[float] = []
    for _ in range(runs):
        first = [v for v in first_failures(case, rng).values() if v is not None]
        when.append(min(first) if first else math.inf)
    arr = np.asarray(when)
    caught = np.isfinite(arr)
    res: dict[str, Any] = {
        "case": case.name,
        "runs": runs,
        "requests": case.requests,
        "caught_share": float(caught.mean()),
        "median_requests": float(np.quantile(arr, 0.5, method="inverted_cdf")),
        "p90_requests": float(np.quantile(arr, 0.9, method="inverted_cdf")),
    }
    if case.rate_per_s:
        res["median_seconds"] = res["median_requests"] / case.rate_per_s
        res["p90_seconds"] = res["p90_requests"] / case.rate_per_s
    return res


# -- interleaving against A/B on the same pair of rankers ----------------------------

LIST_LENGTH = 10
CATALOGUE = 30


@dataclass(frozen=True)
class Rankers:
    """Production ranks by attractiveness seen through noise ``production_noise``; the
    candidate through more noise: it is the worse ranker, the verdict should fail it."""

    production_noise: float = 0.3
    candidate_noise: float = 0.6


def full_query(
    rng: np.random.Generator, rankers: Rankers, intent_spread: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A query's attractiveness per document and both rankers' whole rankings.
    ``intent_spread`` scales every attractiveness by a per-query Uniform(0, 1), so that
    queries differ in how often they get clicks at all."""
    attract = rng.beta(0.6, 2.0, size=CATALOGUE)  # few attractive documents per query
    if intent_spread:
        attract = attract * rng.random()
    prod = np.argsort(-(attract + rankers.production_noise * rng.standard_normal(CATALOGUE)))
    cand = np.argsort(-(attract + rankers.candidate_noise * rng.standard_normal(CATALOGUE)))
    return attract, prod, cand


def _query(rng: np.random.Generator, rankers: Rankers) -> tuple[np.ndarray, list[int], list[int]]:
    attract, prod, cand = full_query(rng, rankers)
    return attract, prod[:LIST_LENGTH].tolist(), cand[:LIST_LENGTH].tolist()


def clicks(
    model: str, attract: np.ndarray, shown: list[int], rng: np.random.Generator
) -> list[int]:
    """Positions clicked: ``pbm`` (position-based: examined with 1/rank, clicked by
    attractiveness, any number of clicks) or ``cascade`` (scanned from the top, the
    first attractive document is clicked and the user stops)."""
    out = []
    for pos, doc in enumerate(shown):
        if model == "pbm":
            if rng.random() < attract[doc] / (pos + 1):
                out.append(pos)
        elif rng.random() < attract[doc]:
            out.append(pos)
            break
    return out


def interleaving_bound(
    click_model: str,
    seed: int,
    rankers: Rankers = Rankers(),  # noqa: B008  frozen, never mutated
    queries: int = 20_000,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The fewest queries any sequential test of team-draft outcomes could need, on
    average, to fail the worse ranker at ``alpha``: Wald's approximation for a test that
    knows the true win share in advance, log(1/alpha) / (KL per query), KL per query being
    the non-tie share times KL(Bernoulli(win share) || Bernoulli(1/2)). Estimated from
    ``queries`` simulated queries. No real test does better on average, so A/B's median
    over this bound is the largest ratio team-draft can show under this click model."""
    from shadowline.interleave import team_draft

    rng = np.random.default_rng(seed)
    wins = losses = 0
    p_click = np.empty(queries)  # production's chance of a click, per query
    for q in range(queries):
        attract, prod, cand = _query(rng, rankers)
        seen = attract[prod] / (np.arange(len(prod)) + 1) if click_model == "pbm" else attract[prod]
        p_click[q] = 1 - np.prod(1 - seen)
        merged, teams = team_draft({"p": prod, "c": cand}, seed * 1_000_003 + q)
        got = clicks(click_model, attract, merged[:LIST_LENGTH], rng)
        c = sum(teams[pos] == "c" for pos in got)
        wins += c > len(got) - c
        losses += len(got) - c > c
    decided = wins + losses
    share = wins / decided
    kl = share * math.log(2 * share) + (1 - share) * math.log(2 * (1 - share))
    per_query = decided / queries * kl
    mean = float(p_click.mean())
    return {
        # how much of an A/B click rate's variance is queries differing from each other
        # (which a comparison within each query cancels), the rest being each click's own
        "click_probability_mean": mean,
        "click_probability_sd": float(p_click.std()),
        "between_query_variance_share": float(p_click.var()) / (mean * (1 - mean)),
        "non_tie_share": decided / queries,
        "candidate_win_share": share,
        "kl_per_query": per_query,
        "oracle_queries": math.log(1 / alpha) / per_query if per_query > 0 else math.inf,
    }


def interleaving_power(
    click_model: str,
    runs: int,
    seed: int,
    rankers: Rankers = Rankers(),  # noqa: B008  frozen, never mutated
    max_queries: int = 200_000,
) -> dict[str, Any]:
    """Queries until the verdict fails the worse ranker: by team-draft interleaving with
    the gate's sign test (``min_interleave_win_share`` 0.5), and by an A/B split with
    the gate's A/B rule on the share of queries with a click (``max_conversion_rate_drop``
    0). Both at alpha 0.05, looked at after every query; the merge is
    ``shadowline.interleave.team_draft`` itself."""
    from shadowline.interleave import team_draft

    rng = np.random.default_rng(seed)
    alpha = 0.05
    bar = math.log(1 / alpha)
    inter_n: list[float] = []
    ab_n: list[float] = []
    for run in range(runs):
        wins = losses = 0
        found = math.inf
        for q in range(1, max_queries + 1):
            attract, prod, cand = _query(rng, rankers)
            merged, teams = team_draft({"p": prod, "c": cand}, seed * 1_000_003 + run * 7919 + q)
            got = clicks(click_model, attract, merged[:LIST_LENGTH], rng)
            c = sum(teams[pos] == "c" for pos in got)
            p = len(got) - c
            wins += c > p
            losses += p > c
            if wins + losses and wins < losses:
                if stats._log_mixture_lr(wins, wins + losses, 0.5, -1) >= bar:
                    found = q
                    break
        inter_n.append(found)
        n_arm = [0, 0]
        hit = [0, 0]
        found = math.inf
        for q in range(1, max_queries + 1):
            attract, prod, cand = _query(rng, rankers)
            arm = int(rng.integers(2))
            n_arm[arm] += 1
            hit[arm] += bool(clicks(click_model, attract, (prod, cand)[arm], rng))
            if q % 10 == 0 and n_arm[0] and n_arm[1]:
                d, v = stats.independent_rate_difference(hit[0], n_arm[0], hit[1], n_arm[1])
                if stats.difference_test(d, v, 0.0, alpha, n_arm[1]).outcome == "fail":
                    found = q
                    break
        ab_n.append(found)
    med_i = float(np.quantile(inter_n, 0.5, method="inverted_cdf"))
    med_ab = float(np.quantile(ab_n, 0.5, method="inverted_cdf"))
    bound = interleaving_bound(click_model, seed, rankers)
    return {
        **bound,
        "largest_possible_ratio": med_ab / bound["oracle_queries"],
        "click_model": click_model,
        "runs": runs,
        "interleaving_median_queries": med_i,
        "ab_median_queries": med_ab,
        "ab_over_interleaving": med_ab / med_i if math.isfinite(med_ab / med_i) else None,
        "interleaving_caught_share": float(np.isfinite(inter_n).mean()),
        "ab_caught_share": float(np.isfinite(ab_n).mean()),
    }
