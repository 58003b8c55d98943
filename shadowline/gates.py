"""Gate verdicts: the experiment's rules judged on the warehouse's figures.

Every figure comes from a named query in ``deploy/clickhouse/queries``
(``gate_figures``, ``output_drift``), the same SQL the dashboards show; the
sequential tests in ``shadowline.stats`` turn counts into ``pass``, ``fail`` or
``inconclusive``. A verdict depends only on the experiment's rows whose event time
lies in ``[since, until)``, so re-evaluating a past range gives the same answer.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shadowline import stats
from shadowline.config import SERVED_MODES, Config, ExperimentConfig, GateConfig
from shadowline.errors import ShadowlineError
from shadowline.warehouse import Warehouse, named_query

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2}
EXIT_ERROR = 3
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}


class GateError(ShadowlineError):
    """A gate could not be evaluated (unknown experiment, bad window, no warehouse)."""


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"250ms"``."""
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise GateError(f"window {text!r} is not a positive duration such as 30s, 5m, 2h or 1d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (UTC when no offset is given) or epoch milliseconds."""
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise GateError(f"time {text!r} is neither ISO 8601 nor epoch milliseconds") from exc
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RuleResult:
    """One rule: what was observed, the limit, and the outcome."""

    rule: str
    observed: float | None
    threshold: float
    outcome: stats.Outcome
    # How the outcome was reached: the test and its evidence, or why it waits.
    detail: str


@dataclass
class CandidateVerdict:
    """One candidate's verdict with each rule and the figures behind them."""

    candidate: str
    verdict: stats.Outcome
    rules: list[RuleResult]
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class GateReport:
    """The verdict for an experiment (every candidate, or one) over a time range."""

    experiment: str
    since: datetime
    until: datetime
    verdict: stats.Outcome
    candidates: list[CandidateVerdict]

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (times as ISO 8601, NaN as null)."""
        out = asdict(self)
        out["since"] = self.since.isoformat()
        out["until"] = self.until.isoformat()
        return _json_safe(out)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _num(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _sequential(
    name: str, result: stats.TestResult, observed: float | None, threshold: float
) -> RuleResult:
    if result.outcome == "fail":
        detail = f"sequential test: evidence {result.evidence_fail:.3g} >= 1/alpha"
    elif result.outcome == "pass":
        detail = f"sequential test: evidence {result.evidence_pass:.3g} >= 1/alpha"
    else:
        detail = (
            f"not enough evidence yet (n={result.n}; evidence for fail "
            f"{result.evidence_fail:.3g}, for pass {result.evidence_pass:.3g})"
        )
    return RuleResult(name, observed, threshold, result.outcome, detail)


def _point(
    name: str, observed: float | None, threshold: float, worse_above: bool, n: int, min_n: int
) -> RuleResult:
    # Drift and mean divergence are not rates: no sequential test applies, so they
    # are judged on their value once the minimum sample is in.
    if observed is None:
        return RuleResult(name, None, threshold, "inconclusive", "no data yet")
    if n < min_n:
        return RuleResult(
            name, observed, threshold, "inconclusive", f"waiting for {min_n} pairs (have {n})"
        )
    bad = observed > threshold if worse_above else observed < threshold
    return RuleResult(name, observed, threshold, "fail" if bad else "pass", "value vs limit")


def judge(
    gates: GateConfig,
    figures: dict[str, Any],
    drift: dict[str, Any] | None,
    production: dict[str, Any] | None = None,
    feedback: dict[str, Any] | None = None,
    baseline: dict[str, Any] | None = None,
) -> list[RuleResult]:
    """The rules of ``gates`` on one candidate's figures (pure: no warehouse).

    Shadow figures are paired (both models answered the same requests). With
    ``production`` (A/B, canary: the production arm's own figures) the error-rate
    increase compares two independent samples, and the rules that need pairs
    (agreement, divergence, output drift) do not apply. With ``baseline`` (the
    secondary's figures: production compared with itself) agreement and divergence
    are judged in excess of it.
    """
    a = gates.alpha
    pairs = int(figures.get("pairs") or 0)
    rules = [
        RuleResult(
            "min_samples", float(pairs), float(gates.min_samples),
            "pass" if pairs >= gates.min_samples else "inconclusive",
            "answered pairs in the window",
        )
    ]  # fmt: skip
    if gates.max_error_rate is not None:
        errors = int(figures.get("candidate_errors") or 0)
        rules.append(
            _sequential(
                "max_error_rate",
                stats.rate_test(errors, pairs, gates.max_error_rate, a) if pairs else _empty(),
                errors / pairs if pairs else None,
                gates.max_error_rate,
            )
        )
    if gates.max_error_rate_increase is not None:
        if production is None:
            d, v = stats.paired_rate_difference(
                pairs,
                int(figures.get("candidate_only_errors") or 0),
                int(figures.get("production_only_errors") or 0),
            )
        else:
            d, v = stats.independent_rate_difference(
                int(figures.get("candidate_errors") or 0),
                pairs,
                int(production.get("errors") or 0),
                int(production.get("requests") or 0),
            )
        rules.append(
            _sequential(
                "max_error_rate_increase",
                stats.difference_test(d, v, gates.max_error_rate_increase, a, pairs),
                _num(d) if pairs else None,
                gates.max_error_rate_increase,
            )
        )
    n_lat = int(figures.get("candidate_latencies") or 0)
    if gates.max_p99_latency_ms is not None:
        # p99 <= limit  <=>  at most 1 % of requests are slower than the limit.
        slow = int(figures.get("candidate_slow") or 0)
        rules.append(
            _sequential(
                "max_p99_latency_ms",
                stats.rate_test(slow, n_lat, 0.01, a) if n_lat else _empty(),
                _num(figures.get("candidate_p99_ms")),
                gates.max_p99_latency_ms,
            )
        )
    if gates.max_p99_latency_increase_ms is not None:
        slower = int(figures.get("candidate_slower_than_production_p99") or 0)
        c99, p99 = _num(figures.get("candidate_p99_ms")), _num(figures.get("production_p99_ms"))
        rules.append(
            _sequential(
                "max_p99_latency_increase_ms",
                stats.rate_test(slower, n_lat, 0.01, a) if n_lat else _empty(),
                c99 - p99 if c99 is not None and p99 is not None else None,
                gates.max_p99_latency_increase_ms,
            )
        )
    rules += _feedback_rules(gates, feedback or {}, paired=production is None)
    if production is not None:
        return rules
    if baseline is not None:
        rules += _noise_cancelled_rules(gates, figures, baseline, pairs)
    else:
        rules += _divergence_rules(gates, figures, pairs)
    for rule, key in (("max_output_psi", "psi"), ("max_output_jsd", "jsd")):
        limit = getattr(gates, rule)
        if limit is not None:
            observed = _num(drift.get(key)) if drift else None
            n = int(drift.get("outputs") or 0) if drift else 0
            rules.append(_point(rule, observed, limit, True, n, gates.min_samples))
    return rules


def _divergence_rules(gates: GateConfig, figures: dict[str, Any], pairs: int) -> list[RuleResult]:
    rules = []
    if gates.min_agreement is not None:
        compared = int(figures.get("compared") or 0)
        agreed = int(figures.get("agreed") or 0)
        rules.append(
            _sequential(
                "min_agreement",
                stats.rate_test(agreed, compared, gates.min_agreement, gates.alpha,
                                fail_when="below") if compared else _empty(),
                agreed / compared if compared else None,
                gates.min_agreement,
            )
        )  # fmt: skip
    if gates.max_mean_divergence is not None:
        rules.append(
            _point(
                "max_mean_divergence", _num(figures.get("mean_divergence")),
                gates.max_mean_divergence, True, pairs, gates.min_samples,
            )
        )  # fmt: skip
    return rules


def _noise_cancelled_rules(
    gates: GateConfig, figures: dict[str, Any], baseline: dict[str, Any], pairs: int
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
            stats.difference_test(excess, var, 1 - gates.min_agreement, gates.alpha, compared)
            if compared and b_compared
            else _empty()
        )
        rule = _sequential(
            "min_agreement", result, 1 - excess if math.isfinite(excess) else None,
            gates.min_agreement,
        )  # fmt: skip
        rules.append(replace(rule, detail=f"{rule.detail}; {base_note}"))
    if gates.max_mean_divergence is not None:
        mean_c = _num(figures.get("mean_divergence"))
        mean_b = _num(baseline.get("mean_divergence"))
        excess_div = mean_c - mean_b if mean_c is not None and mean_b is not None else None
        rule = _point(
            "max_mean_divergence", excess_div, gates.max_mean_divergence, True, pairs,
            gates.min_samples,
        )  # fmt: skip
        rules.append(replace(rule, detail=f"{rule.detail}; {base_note}"))
    return rules


def _feedback_rules(gates: GateConfig, fb: dict[str, Any], paired: bool) -> list[RuleResult]:
    """Accuracy (labels) and conversion-rate drops, from the feedback figures."""
    out = []
    a = gates.alpha
    if gates.max_accuracy_drop is not None:
        n = int(fb.get("labelled") or 0)
        if paired:
            drop, v = stats.paired_rate_difference(
                n, int(fb.get("production_only_correct") or 0),
                int(fb.get("candidate_only_correct") or 0),
            )  # fmt: skip
        else:
            drop, v = stats.independent_rate_difference(
                int(fb.get("production_correct") or 0), int(fb.get("production_labelled") or 0),
                int(fb.get("candidate_correct") or 0), n,
            )  # fmt: skip
        test = stats.difference_test(drop, v, gates.max_accuracy_drop, a, n)
        out.append(_sequential("max_accuracy_drop", test, _num(drop), gates.max_accuracy_drop))
    if gates.max_conversion_rate_drop is not None and not paired:
        # Shadow traffic never reaches users, so conversions exist only for served arms.
        n = int(fb.get("candidate_requests") or 0)
        drop, v = stats.independent_rate_difference(
            int(fb.get("production_converted") or 0), int(fb.get("production_requests") or 0),
            int(fb.get("candidate_converted") or 0), n,
        )  # fmt: skip
        test = stats.difference_test(drop, v, gates.max_conversion_rate_drop, a, n)
        out.append(
            _sequential(
                "max_conversion_rate_drop", test, _num(drop), gates.max_conversion_rate_drop
            )
        )
    return out


def _empty() -> stats.TestResult:
    return stats.TestResult("inconclusive", float("nan"), 1.0, 1.0, 0)


def overall(rules: list[RuleResult]) -> stats.Outcome:
    """Fail if any rule fails; pass if every rule passes; otherwise inconclusive."""
    outcomes = {r.outcome for r in rules}
    if "fail" in outcomes:
        return "fail"
    if outcomes == {"pass"}:
        return "pass"
    return "inconclusive"


def time_range(
    gates: GateConfig,
    window_s: float | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[datetime, datetime]:
    """The ``[since, until)`` a check covers: explicit bounds win, then the window
    (``--window`` or ``gates.window_s``), else everything up to now."""
    end = until or datetime.now(UTC)
    if since is not None:
        start = since
    elif (window_s or gates.window_s) is not None:
        start = end - timedelta(seconds=float(window_s or gates.window_s or 0))
    else:
        start = EPOCH
    if start >= end:
        raise GateError(
            f"empty time range: since {start.isoformat()} is not before until {end.isoformat()}"
        )
    return start, end


def evaluate(
    warehouse: Warehouse,
    experiment: ExperimentConfig,
    candidate: str | None = None,
    window_s: float | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    baseline_since: datetime | None = None,
) -> GateReport:
    """Judge ``experiment`` (every candidate, or ``candidate``) over a time range.

    A/B and canary: the production arm's figures come from ``[baseline_since, until)``
    when given (a canary's 100 % step has no production traffic of its own, so the
    controller compares it with production during the earlier steps).
    """
    names = [c.name for c in experiment.candidates]
    if candidate is not None and candidate not in names:
        raise GateError(
            f"candidate {candidate!r} is not configured for experiment {experiment.name!r} "
            f"(configured: {', '.join(names)})"
        )
    gates = experiment.gates
    start, end = time_range(gates, window_s, since, until)
    params: dict[str, Any] = {
        "experiment": experiment.name,
        "candidate": candidate or "",
        "since": start.replace(tzinfo=None),
        "until": end.replace(tzinfo=None),
    }
    db = warehouse.database
    if experiment.mode in SERVED_MODES:
        return _evaluate_arms(warehouse, experiment, candidate, start, end, baseline_since)
    figures = {
        r["candidate_model"]: r
        for r in warehouse.query(
            named_query("gate_figures", db),
            params
            | {
                "latency_limit_ms": float(gates.max_p99_latency_ms or 0.0),
                "latency_increase_ms": float(gates.max_p99_latency_increase_ms or 0.0),
            },
        )
    }
    drift: dict[str, dict[str, Any]] = {}
    wants_drift = gates.max_output_psi is not None or gates.max_output_jsd is not None
    if wants_drift and experiment.output != "text":  # free text has no bins
        rows = warehouse.query(named_query("output_drift", db), params)
        drift = {r["candidate_model"]: r for r in rows}
    features = _feature_rule(warehouse, experiment, start, end)
    labels: dict[str, dict[str, Any]] = {}
    if gates.max_accuracy_drop is not None:
        rows = warehouse.query(
            named_query("feedback_figures", db),
            params | {"feedback_window_s": int(experiment.feedback_window_s)},
        )
        labels = {r["candidate_model"]: r for r in rows}
    duels = _interleave_outcomes(warehouse, experiment, params)
    verdicts = []
    for name in [candidate] if candidate else names:
        fig = dict(figures.get(name) or {"candidate_model": name, "pairs": 0})
        base = figures.get(experiment.secondary.name) if experiment.secondary else None
        if experiment.secondary:
            base = base or {"compared": 0, "agreed": 0}
            fig |= _baseline_figures(fig, base)
        rules = judge(gates, fig, drift.get(name), feedback=labels.get(name), baseline=base)
        rules += [features] if features else []
        if duels is not None:
            duel = duels.get(name, {})
            rules.append(_interleave_rule(gates, duel))
            fig.update({f"interleave_{k}": v for k, v in duel.items() if k != "candidate_model"})
        fig.update({f"feedback_{k}": v for k, v in labels.get(name, {}).items()})
        fig.update({k: drift[name][k] for k in ("psi", "jsd", "outputs")} if name in drift else {})
        verdicts.append(CandidateVerdict(name, overall(rules), rules, fig))
    verdict = overall([RuleResult("candidate", None, 0.0, v.verdict, "") for v in verdicts])
    return GateReport(experiment.name, start, end, verdict, verdicts)


def _interleave_outcomes(
    warehouse: Warehouse, experiment: ExperimentConfig, params: dict[str, Any]
) -> dict[str, dict[str, Any]] | None:
    """Wins, losses and ties per candidate from clicks on team-draft lists, or None
    when the experiment is not an interleaved ranker (or the rule is off)."""
    if not (
        experiment.mode == "interleave"
        and experiment.output == "ranking"
        and experiment.gates.min_interleave_win_share is not None
    ):
        return None
    rows = warehouse.query(
        named_query("interleave_outcomes", warehouse.database),
        params
        | {
            "production": experiment.production_model,
            "feedback_window_s": int(experiment.feedback_window_s),
        },
    )
    return {r["candidate_model"]: r for r in rows}


def _interleave_rule(gates: GateConfig, duel: dict[str, Any]) -> RuleResult:
    """Sign test of wins against losses, sequential like every rate rule: ties say
    nothing about which model users prefer and are left out."""
    limit = gates.min_interleave_win_share
    assert limit is not None
    if not duel.get("impressions"):
        return RuleResult(
            "min_interleave_win_share", None, limit, "inconclusive",
            "no team-draft lists in the range: serve them with Interleave.rank(), or set "
            "gates.min_interleave_win_share = false for plain in-process interleave",
        )  # fmt: skip
    wins, losses = int(duel.get("wins") or 0), int(duel.get("losses") or 0)
    decided = wins + losses
    result = (
        stats.rate_test(wins, decided, limit, gates.alpha, fail_when="below")
        if decided
        else _empty()
    )
    rule = _sequential(
        "min_interleave_win_share", result, wins / decided if decided else None, limit
    )
    note = f"{wins} wins, {losses} losses, {int(duel.get('ties') or 0)} ties"
    return replace(rule, detail=f"{rule.detail}; {note}")


def _baseline_figures(fig: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The secondary's agreement and divergence beside the candidate's excess over them."""
    out: dict[str, Any] = {}
    c_n, b_n = int(fig.get("compared") or 0), int(base.get("compared") or 0)
    if b_n:
        out["baseline_agreement"] = int(base.get("agreed") or 0) / b_n
    if c_n and b_n:
        out["excess_disagreement"] = (1 - int(fig.get("agreed") or 0) / c_n) - (
            1 - out["baseline_agreement"]
        )
    mean_c, mean_b = _num(fig.get("mean_divergence")), _num(base.get("mean_divergence"))
    if mean_b is not None:
        out["baseline_mean_divergence"] = mean_b
    if mean_c is not None and mean_b is not None:
        out["excess_divergence"] = mean_c - mean_b
    return out


def _evaluate_arms(
    warehouse: Warehouse,
    experiment: ExperimentConfig,
    candidate: str | None,
    start: datetime,
    end: datetime,
    baseline_since: datetime | None = None,
) -> GateReport:
    gates = experiment.gates
    base = baseline_since or start
    params = {
        "experiment": experiment.name,
        "production": experiment.production_model,
        "since": start.replace(tzinfo=None),
        "until": end.replace(tzinfo=None),
        "baseline_since": base.replace(tzinfo=None),
        "latency_limit_ms": float(gates.max_p99_latency_ms or 0.0),
        "latency_increase_ms": float(gates.max_p99_latency_increase_ms or 0.0),
    }
    sql = named_query("arm_figures", warehouse.database)
    arms = {r["arm"]: r for r in warehouse.query(sql, params)}
    if base != start:
        baseline = {
            r["arm"]: r for r in warehouse.query(sql, params | {"since": params["baseline_since"]})
        }
        arms[experiment.production_model] = baseline.get(experiment.production_model) or {}
    prod = arms.get(experiment.production_model) or {"requests": 0, "errors": 0}
    features = _feature_rule(warehouse, experiment, start, end)
    verdicts = []
    for name in [candidate] if candidate else [c.name for c in experiment.candidates]:
        arm = arms.get(name) or {"arm": name, "requests": 0}
        # The candidate arm's figures under the names the rules read.
        fig = {
            "candidate_model": name,
            "pairs": arm.get("requests", 0),
            "candidate_errors": arm.get("errors", 0),
            "candidate_latencies": arm.get("requests", 0),
            "candidate_p50_ms": arm.get("p50_ms"),
            "candidate_p95_ms": arm.get("p95_ms"),
            "candidate_p99_ms": arm.get("p99_ms"),
            "candidate_slow": arm.get("slow", 0),
            "candidate_slower_than_production_p99": arm.get("slower_than_production_p99", 0),
            "production_requests": prod.get("requests", 0),
            "production_errors": prod.get("errors", 0),
            "production_p50_ms": prod.get("p50_ms"),
            "production_p99_ms": prod.get("p99_ms"),
        }
        fb = _arm_feedback(warehouse, experiment, name, params) if _wants_feedback(gates) else {}
        fig.update({f"feedback_{k}": v for k, v in fb.items()})
        rules = judge(gates, fig, None, production=prod, feedback=fb)
        rules += [features] if features else []
        verdicts.append(CandidateVerdict(name, overall(rules), rules, fig))
    verdict = overall([RuleResult("candidate", None, 0.0, v.verdict, "") for v in verdicts])
    return GateReport(experiment.name, start, end, verdict, verdicts)


def _feature_rule(
    warehouse: Warehouse, experiment: ExperimentConfig, start: datetime, end: datetime
) -> RuleResult | None:
    """PSI of every numeric input feature against the window just before ``start``."""
    gates = experiment.gates
    limit = gates.max_feature_psi
    if limit is None:
        return None
    if start <= EPOCH:
        return RuleResult(
            "max_feature_psi", None, limit, "inconclusive",
            "needs a range with a reference before it (--window or --since)",
        )  # fmt: skip
    reference = start - timedelta(seconds=gates.feature_reference_s)
    rows = warehouse.query(
        named_query("feature_drift", warehouse.database),
        {
            "experiment": experiment.name,
            "reference_since": reference.replace(tzinfo=None),
            "since": start.replace(tzinfo=None),
            "until": end.replace(tzinfo=None),
        },
    )
    judged = [r for r in rows if min(r["reference"], r["current"]) >= gates.min_samples]
    if not judged:
        return RuleResult(
            "max_feature_psi", None, limit, "inconclusive",
            f"waiting for {gates.min_samples} requests in the range and in its reference",
        )  # fmt: skip
    worst = max(judged, key=lambda r: r["psi"])
    psi = float(worst["psi"])
    return RuleResult(
        "max_feature_psi", psi, limit, "fail" if psi > limit else "pass",
        f"worst feature {worst['feature']!r} of {len(judged)} (reference "
        f"{reference.isoformat()} .. {start.isoformat()})",
    )  # fmt: skip


def _wants_feedback(gates: GateConfig) -> bool:
    return gates.max_accuracy_drop is not None or gates.max_conversion_rate_drop is not None


def _arm_feedback(
    warehouse: Warehouse, experiment: ExperimentConfig, candidate: str, params: dict[str, Any]
) -> dict[str, Any]:
    rows = warehouse.query(
        named_query("arm_feedback", warehouse.database),
        {k: params[k] for k in ("experiment", "since", "until")}
        | {"feedback_window_s": int(experiment.feedback_window_s)},
    )
    arms = {r["arm"]: r for r in rows}
    cand = arms.get(candidate, {})
    prod = arms.get(experiment.production_model, {})
    return {
        "labelled": cand.get("labelled", 0),
        "candidate_correct": cand.get("correct", 0),
        "candidate_requests": cand.get("requests", 0),
        "candidate_converted": cand.get("converted", 0),
        "candidate_accuracy": cand.get("accuracy"),
        "candidate_conversion_rate": cand.get("conversion_rate"),
        "production_labelled": prod.get("labelled", 0),
        "production_correct": prod.get("correct", 0),
        "production_requests": prod.get("requests", 0),
        "production_converted": prod.get("converted", 0),
        "production_accuracy": prod.get("accuracy"),
        "production_conversion_rate": prod.get("conversion_rate"),
    }


def check(
    config: Config,
    experiment: str,
    candidate: str | None = None,
    window_s: float | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> GateReport:
    """Open the configured warehouse and evaluate (``shadowline gate check``)."""
    exp = config.require_experiment(experiment, GateError)
    warehouse = Warehouse.open_reader(config)
    try:
        return evaluate(warehouse, exp, candidate, window_s, since, until)
    finally:
        warehouse.close()


def format_report(report: GateReport) -> str:
    """The human-readable verdict: one line per rule with observed, limit and outcome."""
    lines = [
        f"experiment {report.experiment}: {report.verdict.upper()}"
        f"  ({report.since.isoformat()} .. {report.until.isoformat()})"
    ]
    for cand in report.candidates:
        lines.append(f"  candidate {cand.candidate}: {cand.verdict.upper()}")
        for r in cand.rules:
            observed = "n/a" if r.observed is None else f"{r.observed:.6g}"
            lines.append(
                f"    {r.outcome:<12} {r.rule:<28} observed {observed:<12} "
                f"limit {r.threshold:<10.6g} {r.detail}"
            )
    return "\n".join(lines)


def make_server(config: Config, host: str = "127.0.0.1", port: int = 8126) -> Any:
    """The HTTP face of the gates (``shadowline gate serve``).

    - ``GET /gates/EXPERIMENT[?candidate=&window=&since=&until=]``: the verdict as JSON
      (always 200 when evaluated; an Argo Rollouts web metric reads ``verdict``).
    - ``GET|POST /gates/EXPERIMENT/verdict``: the verdict as a status code for a
      Flagger webhook: 200 pass, 412 fail, 425 inconclusive, 500 error.
    - ``GET /healthz``: 200.
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, unquote, urlsplit

    import orjson

    codes = {"pass": 200, "fail": 412, "inconclusive": 425}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            raw = orjson.dumps(body)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _handle(self) -> None:
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/") if p]
            if parts == ["healthz"]:
                self._send(200, {"status": "ok"})
                return
            if (
                len(parts) not in (2, 3)
                or parts[0] != "gates"
                or parts[2:] not in ([], ["verdict"])
            ):
                self._send(404, {"error": "use /gates/EXPERIMENT or /gates/EXPERIMENT/verdict"})
                return
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                report = check(
                    config, parts[1], candidate=q.get("candidate") or None,
                    window_s=parse_duration(q["window"]) if q.get("window") else None,
                    since=parse_time(q["since"]) if q.get("since") else None,
                    until=parse_time(q["until"]) if q.get("until") else None,
                )  # fmt: skip
            except ShadowlineError as exc:
                self._send(500 if len(parts) == 3 else 400, {"verdict": "error", "error": str(exc)})
                return
            body = report.as_dict()
            self._send(codes[report.verdict] if len(parts) == 3 else 200, body)

        def do_GET(self) -> None:  # noqa: N802
            self._handle()

        def do_POST(self) -> None:  # noqa: N802
            # Flagger posts its rollout's metadata; the verdict needs only the path.
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 1_048_576))
            self._handle()

    return ThreadingHTTPServer((host, port), Handler)
