"""The gate rules: one candidate's figures in, an outcome per rule out (pure).

``judge`` turns the figures of ``deploy/clickhouse/queries`` into ``pass``, ``fail``
or ``inconclusive`` per rule with the sequential tests of ``shadowline.stats``.
The verdict's false-failure budget, ``gates.alpha``, is split evenly (Bonferroni)
over every sequential rule of every candidate (``fail_alpha``); each pass side runs
at ``alpha`` itself, since a candidate that truly breaks a rule passes only if that
rule passes wrongly. Two rules are point rules (a value against a limit once
``min_samples`` are in): ``max_mean_divergence`` and ``max_feature_psi``; they are
off by default and outside the alpha guarantee.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from shadowline import stats
from shadowline.config import GateConfig

# p99 <= limit  <=>  at most 1 % of requests are slower than the limit.
TAIL = 0.01


@dataclass(frozen=True)
class RuleResult:
    """One rule: what was observed, the limit, and the outcome."""

    rule: str
    observed: float | None
    threshold: float
    outcome: stats.Outcome
    # How the outcome was reached: the test and its evidence, or what it waits for.
    detail: str


@dataclass(frozen=True)
class Context:
    """What an experiment's rules depend on besides its gates."""

    # shadow and interleave: both models answered the same requests
    paired: bool = True
    # interleave mode with rankings: team-draft lists judged from clicks
    interleaved_ranking: bool = False


def sequential_rules(gates: GateConfig, ctx: Context) -> list[str]:
    """The sequential rules ``judge`` applies to each candidate (Bonferroni's count)."""
    names = [
        "max_error_rate", "max_error_rate_increase", "max_p99_latency_ms",
        "max_p99_latency_ratio", "max_p99_latency_increase_ms", "max_accuracy_drop",
    ]  # fmt: skip
    if ctx.paired:
        names += ["min_agreement", "max_output_shift"]
        if ctx.interleaved_ranking:
            names.append("min_interleave_win_share")
    else:
        names.append("max_conversion_rate_drop")
    return [n for n in names if getattr(gates, n) is not None]


def fail_alpha(gates: GateConfig, ctx: Context, candidates: int) -> float:
    """Each sequential rule's share of the verdict's false-failure budget."""
    return gates.alpha / max(1, len(sequential_rules(gates, ctx)) * max(1, candidates))


def num(value: Any) -> float | None:
    """A finite float, or None."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def sequential(
    name: str, result: stats.TestResult, observed: float | None, threshold: float
) -> RuleResult:
    """A rule decided by a sequential test, with its evidence in the detail."""
    if result.outcome == "fail":
        detail = f"sequential test: evidence {result.evidence_fail:.3g} >= {result.bar_fail:.3g}"
    elif result.outcome == "pass":
        detail = f"sequential test: evidence {result.evidence_pass:.3g} >= {result.bar_pass:.3g}"
    elif result.n == 0:
        detail = "no data yet"
    else:
        detail = (
            f"waiting for evidence (n={result.n}): pass needs {result.bar_pass:.3g} "
            f"(has {result.evidence_pass:.3g}), fail needs {result.bar_fail:.3g} "
            f"(has {result.evidence_fail:.3g})"
        )
    return RuleResult(name, observed, threshold, result.outcome, detail)


def point(
    name: str, observed: float | None, threshold: float, worse_above: bool, n: int, min_n: int
) -> RuleResult:
    """A value against a limit once ``min_n`` pairs are in (not a sequential test)."""
    if observed is None:
        return RuleResult(name, None, threshold, "inconclusive", "no data yet")
    if n < min_n:
        return RuleResult(
            name, observed, threshold, "inconclusive", f"waiting for {min_n} pairs (have {n})"
        )
    bad = observed > threshold if worse_above else observed < threshold
    return RuleResult(name, observed, threshold, "fail" if bad else "pass", "value vs limit")


def _empty() -> stats.TestResult:
    return stats.TestResult("inconclusive", math.nan, 1.0, 1.0, 0)


def _both(
    fail: stats.TestResult, passing: stats.TestResult, estimate: float, n: int
) -> stats.TestResult:
    """One result from the fail side of one test and the pass side of another."""
    outcome: stats.Outcome = "inconclusive"
    if fail.evidence_fail >= fail.bar_fail:
        outcome = "fail"
    elif passing.evidence_pass >= passing.bar_pass:
        outcome = "pass"
    return stats.TestResult(
        outcome, estimate, fail.evidence_fail, passing.evidence_pass, n, fail.bar_fail,
        passing.bar_pass,
    )  # fmt: skip


def judge(
    gates: GateConfig,
    figures: dict[str, Any],
    drift: dict[str, Any] | None = None,
    production: dict[str, Any] | None = None,
    feedback: dict[str, Any] | None = None,
    baseline: dict[str, Any] | None = None,
    duel: dict[str, Any] | None = None,
    fail_alpha: float | None = None,
) -> list[RuleResult]:
    """The rules of ``gates`` on one candidate's figures.

    Shadow figures are paired (both models answered the same requests). With
    ``production`` (A/B, canary: the production arm's own figures) the comparisons
    are of two independent samples, and the rules that need pairs (agreement, output
    drift) do not apply. With ``baseline`` (the secondary's figures: production
    compared with itself) agreement and divergence are judged in excess of it.
    ``duel`` holds team-draft wins and losses (interleaved rankers). ``fail_alpha``
    is this candidate's share of the verdict's budget per rule (default ``alpha``).
    """
    a = gates.alpha
    fa = a if fail_alpha is None else fail_alpha
    pairs = int(figures.get("pairs") or 0)
    rules = [
        RuleResult(
            "min_samples", float(pairs), float(gates.min_samples),
            "pass" if pairs >= gates.min_samples else "inconclusive",
            "answered pairs in the range" if pairs >= gates.min_samples
            else f"waiting for {gates.min_samples} answered pairs (have {pairs})",
        )
    ]  # fmt: skip
    errors = int(figures.get("candidate_errors") or 0)
    if gates.max_error_rate is not None:
        # Errors that go together within a unit (a bot, a broken client) are fewer
        # independent draws than requests: the counts are divided by the design effect.
        own = unit_sums(figures, "candidate_errors", "pairs") or unit_sums(
            figures, "errors", "requests", "candidate_"
        )
        effect = stats.design_effect(own)
        result = stats.rate_test(
            errors / effect, pairs / effect, gates.max_error_rate, a, fail_alpha=fa
        )
        rule = sequential(
            "max_error_rate", replace(result, n=pairs), errors / pairs if pairs else None,
            gates.max_error_rate,
        )  # fmt: skip
        rules.append(_per_unit_note(rule, effect, own))
    if gates.max_error_rate_increase is not None:
        rules.append(_error_increase(gates.max_error_rate_increase, figures, production, a, fa))
    rules += _latency_rules(gates, figures, a, fa)
    rules += _feedback_rules(gates, feedback or {}, paired=production is None, fa=fa)
    if production is not None:
        return rules
    if baseline is not None:
        rules += _noise_cancelled_rules(gates, figures, baseline, pairs, fa)
    else:
        rules += _divergence_rules(gates, figures, pairs, fa)
    if gates.max_output_shift is not None:
        rules.append(_output_shift(gates.max_output_shift, drift, a, fa))
    if duel is not None and gates.min_interleave_win_share is not None:
        rules.append(_interleave_rule(gates.min_interleave_win_share, duel, a, fa))
    return rules


def _error_increase(
    limit: float, figures: dict[str, Any], production: dict[str, Any] | None, a: float, fa: float
) -> RuleResult:
    """Fails once the candidate is shown to err more often than production; passes
    once it is shown to err at most ``limit`` more."""
    pairs = int(figures.get("pairs") or 0)
    if pairs == 0:
        return sequential("max_error_rate_increase", _empty(), None, limit)
    if production is None:
        c_only = int(figures.get("candidate_only_errors") or 0)
        p_only = int(figures.get("production_only_errors") or 0)
        # Exact at every n: a betting martingale on the discordant pairs.
        result = stats.paired_difference_test(
            pairs, c_only, p_only, limit, a, fail_above=0.0, fail_alpha=fa
        )
        return sequential("max_error_rate_increase", result, (c_only - p_only) / pairs, limit)
    c_err, n_p = int(figures.get("candidate_errors") or 0), int(production.get("requests") or 0)
    p_err = int(production.get("errors") or 0)
    if n_p == 0:
        return sequential("max_error_rate_increase", _empty(), None, limit)
    c_units = unit_sums(figures, "errors", "requests", "candidate_")
    p_units = unit_sums(production, "errors", "requests")
    c_eff, p_eff = stats.design_effect(c_units), stats.design_effect(p_units)
    d, v = stats.independent_rate_difference(c_err, pairs, p_err, n_p, c_eff, p_eff)
    # Fail: among all errors, the candidate arm's share is above its share of traffic
    # (exact for rare errors: each error's arm is a coin weighted by traffic if the
    # arms err alike). Errors that come in clumps from one unit are one coin, not
    # many: the counts are divided by the arms' pooled design effect. Pass: mSPRT on
    # the difference (asymptotic).
    pooled = stats.design_effect(c_units, p_units)
    share = pairs / (pairs + n_p)
    fail = (
        stats.rate_test(c_err / pooled, (c_err + p_err) / pooled, share, a, fail_alpha=fa)
        if c_err + p_err
        else _empty()
    )
    passing = stats.difference_test(d, v, limit, a, pairs, fail_alpha=fa)
    rule = sequential("max_error_rate_increase", _both(fail, passing, d, pairs), d, limit)
    return _per_unit_note(rule, pooled, c_units, p_units)


def unit_sums(
    fig: dict[str, Any], events: str, trials: str, prefix: str = ""
) -> stats.UnitSums | None:
    """An arm's per-unit sums from its figures: ``arm_figures.sql`` and
    ``arm_feedback.sql`` name them ``units``, ``<events>_sq``, ``<events>_cross`` and
    ``<trials>_sq``, each key here with ``prefix`` before it. None when there are none
    (the rules then count every trial as independent)."""
    units = fig.get(f"{prefix}units")
    if units is None:
        return None
    return stats.UnitSums(
        float(fig.get(f"{prefix}{events}") or 0), float(fig.get(f"{prefix}{trials}") or 0),
        int(units), float(fig.get(f"{prefix}{events}_sq") or 0),
        float(fig.get(f"{prefix}{events}_cross") or 0),
        float(fig.get(f"{prefix}{trials}_sq") or 0),
    )  # fmt: skip


def _per_unit_note(rule: RuleResult, effect: float, *arms: stats.UnitSums | None) -> RuleResult:
    if effect <= 1.0:
        return rule
    units = sum(s.units for s in arms if s is not None)
    return replace(
        rule,
        detail=f"{rule.detail}; outcomes go together within units: evidence divided by "
        f"the design effect {effect:.3g} ({units} units)",
    )


def _count_above(top: list[float], threshold: float) -> int:
    # `top` holds the largest values; a count that reaches its end is a lower bound,
    # which is on the safe side for both uses (see _relative_p99).
    return sum(1 for x in top if x > threshold)


def _latency_rules(gates: GateConfig, fig: dict[str, Any], a: float, fa: float) -> list[RuleResult]:
    n_c = int(fig.get("candidate_latencies") or 0)
    c99, p99 = num(fig.get("candidate_p99_ms")), num(fig.get("production_p99_ms"))
    rules = []
    if gates.max_p99_latency_ms is not None:
        slow = int(fig.get("candidate_slow") or 0)
        result = stats.rate_test(slow, n_c, TAIL, a, fail_alpha=fa) if n_c else _empty()
        rules.append(sequential("max_p99_latency_ms", result, c99, gates.max_p99_latency_ms))
    if gates.max_p99_latency_ratio is not None:
        ratio, slack = gates.max_p99_latency_ratio, gates.p99_latency_ratio_slack_ms
        rule = _relative_p99(
            "max_p99_latency_ratio", lambda q: max(q * ratio, q + slack), fig, a, fa,
            c99 / p99 if c99 is not None and p99 else None, ratio,
        )  # fmt: skip
        rules.append(rule)
    if gates.max_p99_latency_increase_ms is not None:
        inc = gates.max_p99_latency_increase_ms
        rule = _relative_p99(
            "max_p99_latency_increase_ms", lambda q: q + inc, fig, a, fa,
            c99 - p99 if c99 is not None and p99 is not None else None, inc,
        )  # fmt: skip
        rules.append(rule)
    return rules


def _relative_p99(
    name: str, limit_of: Callable[[float], float], fig: dict[str, Any], a: float, fa: float,
    observed: float | None, threshold: float,
) -> RuleResult:  # fmt: skip
    """The candidate's p99 against a limit derived from production's p99.

    Production's p99 is only estimated, so it is taken at its confidence bounds (a
    confidence sequence, valid at every look): the fail side asks whether more than
    1 % of the candidate's requests are slower than the limit at production's upper
    bound, the pass side whether fewer than 1 % are slower than the limit at its
    lower bound. Each bound and each count test gets half of its side's level.
    """
    n_c, n_p = int(fig.get("candidate_latencies") or 0), int(fig.get("production_latencies") or 0)
    c_top = [float(x) for x in fig.get("candidate_top_ms") or []]
    p_top = [float(x) for x in fig.get("production_top_ms") or []]
    if n_c == 0 or n_p == 0:
        return sequential(name, _empty(), observed, threshold)
    _, upper = stats.quantile_bounds(p_top, n_p, 1 - TAIL, fa / 2)
    lower, _ = stats.quantile_bounds(p_top, n_p, 1 - TAIL, a / 2)
    slower_fail = 0 if math.isinf(upper) else _count_above(c_top, limit_of(upper))
    slower_pass = n_c if math.isinf(lower) else _count_above(c_top, limit_of(lower))
    fail = stats.rate_test(slower_fail, n_c, TAIL, a / 2, fail_alpha=fa / 2)
    passing = stats.rate_test(slower_pass, n_c, TAIL, a / 2, fail_alpha=fa / 2)
    rule = sequential(name, _both(fail, passing, observed or math.nan, n_c), observed, threshold)
    bounds = (
        f"production p99 within [{lower:.4g}, {upper:.4g}] ms"
        if math.isfinite(lower) and math.isfinite(upper)
        else f"production p99 not yet bounded ({n_p} latencies)"
    )
    return replace(rule, detail=f"{rule.detail}; {bounds}")


def _divergence_rules(
    gates: GateConfig, figures: dict[str, Any], pairs: int, fa: float
) -> list[RuleResult]:
    rules = []
    if gates.min_agreement is not None:
        compared = int(figures.get("compared") or 0)
        agreed = int(figures.get("agreed") or 0)
        result = (
            stats.rate_test(agreed, compared, gates.min_agreement, gates.alpha,
                            fail_when="below", fail_alpha=fa)
            if compared else _empty()
        )  # fmt: skip
        rules.append(
            sequential("min_agreement", result, agreed / compared if compared else None,
                       gates.min_agreement)
        )  # fmt: skip
    if gates.max_mean_divergence is not None:
        rules.append(
            point(
                "max_mean_divergence", num(figures.get("mean_divergence")),
                gates.max_mean_divergence, True, pairs, gates.min_samples,
            )
        )  # fmt: skip
    return rules


def _noise_cancelled_rules(
    gates: GateConfig, figures: dict[str, Any], baseline: dict[str, Any], pairs: int, fa: float
) -> list[RuleResult]:
    """Agreement and divergence judged in excess of production-versus-secondary.

    A non-deterministic production model disagrees with itself; only the
    candidate's disagreement beyond that is the candidate's own. Agreement passes
    when ``disagreement(candidate) - disagreement(secondary) <= 1 - min_agreement``
    (mSPRT on the difference of the two rates); mean divergence is judged as the
    candidate's mean minus the secondary's.
    """
    rules = []
    compared, agreed = int(figures.get("compared") or 0), int(figures.get("agreed") or 0)
    b_compared = int(baseline.get("compared") or 0)
    b_agreed = int(baseline.get("agreed") or 0)
    base_note = (
        f"in excess of production vs secondary (agreement {b_agreed / b_compared:.4g}, "
        f"n={b_compared})"
        if b_compared
        else "no production-vs-secondary pairs yet"
    )
    if gates.min_agreement is not None:
        excess, var = stats.independent_rate_difference(
            compared - agreed, compared, b_compared - b_agreed, b_compared
        )
        result = (
            stats.difference_test(
                excess, var, 1 - gates.min_agreement, gates.alpha, compared, fail_alpha=fa
            )
            if compared and b_compared
            else _empty()
        )
        rule = sequential(
            "min_agreement", result, 1 - excess if math.isfinite(excess) else None,
            gates.min_agreement,
        )  # fmt: skip
        rules.append(replace(rule, detail=f"{rule.detail}; {base_note}"))
    if gates.max_mean_divergence is not None:
        mean_c = num(figures.get("mean_divergence"))
        mean_b = num(baseline.get("mean_divergence"))
        excess_div = mean_c - mean_b if mean_c is not None and mean_b is not None else None
        rule = point(
            "max_mean_divergence", excess_div, gates.max_mean_divergence, True, pairs,
            gates.min_samples,
        )  # fmt: skip
        rules.append(replace(rule, detail=f"{rule.detail}; {base_note}"))
    return rules


def _output_shift(limit: float, drift: dict[str, Any] | None, a: float, fa: float) -> RuleResult:
    """No output class's share moves by more than ``limit`` (paired per request)."""
    if not drift or not drift.get("outputs"):
        return sequential("max_output_shift", _empty(), None, limit)
    bins = [str(b) for b in drift.get("bins") or []]
    up = dict(zip(bins, (int(x) for x in drift.get("up_counts") or []), strict=True))
    down = dict(zip(bins, (int(x) for x in drift.get("down_counts") or []), strict=True))
    n = int(drift["outputs"])
    result, decisive = stats.share_shift_test(n, up, down, limit, a, fail_alpha=fa)
    rule = sequential("max_output_shift", result, result.estimate, limit)
    if decisive is None:
        return replace(rule, detail=f"{rule.detail}; {len(bins)} classes")
    return replace(rule, detail=f"{rule.detail}; {len(bins)} classes, decided by {decisive!r}")


def _feedback_rules(
    gates: GateConfig, fb: dict[str, Any], paired: bool, fa: float
) -> list[RuleResult]:
    """Accuracy (labels) and conversion-rate drops, from the feedback figures."""
    out = []
    a = gates.alpha
    if gates.max_accuracy_drop is not None:
        n = int(fb.get("labelled") or 0)
        limit = gates.max_accuracy_drop
        if n == 0:
            out.append(sequential("max_accuracy_drop", _empty(), None, limit))
        elif paired:
            p_only = int(fb.get("production_only_correct") or 0)
            c_only = int(fb.get("candidate_only_correct") or 0)
            # The drop is production right where the candidate is wrong, minus the
            # reverse: a betting martingale on the discordant labels, exact at every n.
            test = stats.paired_difference_test(n, p_only, c_only, limit, a, fail_alpha=fa)
            out.append(sequential("max_accuracy_drop", test, (p_only - c_only) / n, limit))
        else:
            p_units = unit_sums(fb, "correct", "labelled", "production_")
            c_units = unit_sums(fb, "correct", "labelled", "candidate_")
            p_eff, c_eff = stats.design_effect(p_units), stats.design_effect(c_units)
            drop, v = stats.independent_rate_difference(
                int(fb.get("production_correct") or 0), int(fb.get("production_labelled") or 0),
                int(fb.get("candidate_correct") or 0), n, p_eff, c_eff,
            )  # fmt: skip
            test = stats.difference_test(drop, v, limit, a, n, fail_alpha=fa)
            rule = sequential("max_accuracy_drop", test, num(drop), limit)
            out.append(_per_unit_note(rule, max(p_eff, c_eff), p_units, c_units))
    if gates.max_conversion_rate_drop is not None and not paired:
        # Shadow traffic never reaches users, so conversions exist only for served arms.
        n = int(fb.get("candidate_requests") or 0)
        p_units = unit_sums(fb, "converted", "requests", "production_")
        c_units = unit_sums(fb, "converted", "requests", "candidate_")
        p_eff, c_eff = stats.design_effect(p_units), stats.design_effect(c_units)
        drop, v = stats.independent_rate_difference(
            int(fb.get("production_converted") or 0), int(fb.get("production_requests") or 0),
            int(fb.get("candidate_converted") or 0), n, p_eff, c_eff,
        )  # fmt: skip
        test = stats.difference_test(drop, v, gates.max_conversion_rate_drop, a, n, fail_alpha=fa)
        rule = sequential(
            "max_conversion_rate_drop", test, num(drop), gates.max_conversion_rate_drop
        )
        out.append(_per_unit_note(rule, max(p_eff, c_eff), p_units, c_units))
    return out


def _interleave_rule(limit: float, duel: dict[str, Any], a: float, fa: float) -> RuleResult:
    """Sign test of wins against losses, sequential like every rate rule: ties say
    nothing about which model users prefer and are left out."""
    if not duel.get("impressions"):
        return RuleResult(
            "min_interleave_win_share", None, limit, "inconclusive",
            "no team-draft lists in the range: serve them with Interleave.rank(), or set "
            "gates.min_interleave_win_share = false for plain in-process interleave",
        )  # fmt: skip
    wins, losses = int(duel.get("wins") or 0), int(duel.get("losses") or 0)
    decided = wins + losses
    result = (
        stats.rate_test(wins, decided, limit, a, fail_when="below", fail_alpha=fa)
        if decided
        else _empty()
    )
    rule = sequential(
        "min_interleave_win_share", result, wins / decided if decided else None, limit
    )
    note = f"{wins} wins, {losses} losses, {int(duel.get('ties') or 0)} ties"
    return replace(rule, detail=f"{rule.detail}; {note}")


def overall(rules: list[RuleResult]) -> stats.Outcome:
    """Fail if any rule fails; pass if every rule passes; otherwise inconclusive."""
    outcomes = {r.outcome for r in rules}
    if "fail" in outcomes:
        return "fail"
    if outcomes == {"pass"}:
        return "pass"
    return "inconclusive"
