"""Gate verdicts: the experiment's rules judged on the warehouse's figures.

Every figure comes from a named query in ``deploy/clickhouse/queries``
(``gate_figures``, ``output_drift``), the same SQL the dashboards show; the
sequential tests in ``shadowline.stats`` turn counts into ``pass``, ``fail`` or
``inconclusive``. A verdict depends only on the experiment's rows whose event time
lies in ``[since, until)``, so re-evaluating a past range gives the same answer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shadowline import stats
from shadowline.config import SERVED_MODES, Config, ExperimentConfig, GateConfig
from shadowline.errors import ShadowlineError
from shadowline.rules import Context, RuleResult, fail_alpha, judge, num, overall
from shadowline.warehouse import Warehouse, named_query

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 2}
EXIT_ERROR = 3
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_WINDOW_S = 10 * 366 * 86400.0  # ten years: anything longer is a typo
_LATEST_MS = 7_258_118_400_000  # 2200-01-01


class GateError(ShadowlineError):
    """A gate could not be evaluated (unknown experiment, bad window, no warehouse)."""


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"250ms"``.

    Parsed by hand, in one pass: the text comes from URLs, and a pattern with two
    adjacent optional blanks took seconds on 40,000 of them."""
    bad = GateError(
        f"window {text[:40]!r} is not a positive duration such as 30s, 5m, 2h or 1d "
        "(at most 10 years)"
    )
    t = text.strip()
    if not t or len(t) > 32:
        raise bad
    unit = "ms" if t.endswith("ms") else t[-1] if t[-1] in _UNIT_S else ""
    number = t[: len(t) - len(unit)].strip()
    digits = number.replace(".", "", 1)
    if not digits.isdigit() or not digits.isascii() or len(number) > 15:
        raise bad
    seconds = float(number) * _UNIT_S.get(unit, 1.0)
    if not 0 < seconds <= MAX_WINDOW_S:
        raise bad
    return seconds


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (UTC when no offset is given) or epoch milliseconds, between
    1970 and 2200."""
    bad = GateError(
        f"time {text[:40]!r} is neither ISO 8601 nor epoch milliseconds between 1970 and 2200"
    )
    if len(text) > 64:
        raise bad
    try:
        if text.isdigit() and text.isascii():
            ms = int(text)
            if ms > _LATEST_MS:
                raise bad
            return datetime.fromtimestamp(ms / 1000, tz=UTC)
        t = datetime.fromisoformat(text)
    except (ValueError, OverflowError) as exc:
        raise bad from exc
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    if not 1970 <= t.year < 2200:
        raise bad
    return t


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
    # Backtest runs of the experiment, each with its own verdict (never part of this one).
    backtests: list[dict[str, Any]] | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (times as ISO 8601, NaN as null)."""
        out = asdict(self)
        out["since"] = self.since.isoformat()
        out["until"] = self.until.isoformat()
        if self.backtests is None:
            del out["backtests"]
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
    production_range: tuple[datetime, datetime] | None = None,
    labels_from: str | None = None,
) -> GateReport:
    """Judge ``experiment`` (every candidate, or ``candidate``) over a time range.

    ``labels_from``: the experiment whose feedback labels the rows (a backtest's rows
    are judged on the labels of the live experiment it replays).

    A/B and canary: the arms are compared over the same range, except that
    ``production_range`` (a canary's 100 % step, where production serves nothing)
    says where production's own figures come from instead.
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
        return _evaluate_arms(warehouse, experiment, candidate, start, end, production_range)
    figures = {
        r["candidate_model"]: r
        for r in warehouse.query(
            named_query("gate_figures", db),
            params | {"latency_limit_ms": float(gates.max_p99_latency_ms or 0.0)},
        )
    }
    drift: dict[str, dict[str, Any]] = {}
    if gates.max_output_shift is not None:
        rows = warehouse.query(named_query("output_drift", db), params)
        drift = {r["candidate_model"]: r for r in rows}
    features = _feature_rule(warehouse, experiment, start, end)
    labels: dict[str, dict[str, Any]] = {}
    if gates.max_accuracy_drop is not None:
        rows = warehouse.query(
            named_query("feedback_figures", db),
            params
            | {
                "feedback_window_s": int(experiment.feedback_window_s),
                "labels_experiment": labels_from or experiment.name,
            },
        )
        labels = {r["candidate_model"]: r for r in rows}
    duels = _interleave_outcomes(warehouse, experiment, params)
    ctx = context(experiment)
    # The budget is split over every configured candidate, judged together or not,
    # so a verdict on one candidate is the same as its part of the whole verdict.
    fa = fail_alpha(gates, ctx, len(names))
    verdicts = []
    for name in [candidate] if candidate else names:
        fig = dict(figures.get(name) or {"candidate_model": name, "pairs": 0})
        base = figures.get(experiment.secondary.name) if experiment.secondary else None
        if experiment.secondary:
            base = base or {"compared": 0, "agreed": 0}
            fig |= _baseline_figures(fig, base)
        duel = duels.get(name, {}) if duels is not None else None
        rules = judge(
            gates, fig, drift.get(name), feedback=labels.get(name), baseline=base, duel=duel,
            fail_alpha=fa,
        )  # fmt: skip
        rules += [features] if features else []
        if duel is not None:
            fig.update({f"interleave_{k}": v for k, v in duel.items() if k != "candidate_model"})
        fig.update({f"feedback_{k}": v for k, v in labels.get(name, {}).items()})
        if name in drift:
            fig.update({k: drift[name][k] for k in ("psi", "jsd", "outputs")})
        verdicts.append(CandidateVerdict(name, overall(rules), rules, _shown(fig)))
    verdict = overall([RuleResult("candidate", None, 0.0, v.verdict, "") for v in verdicts])
    return GateReport(experiment.name, start, end, verdict, verdicts)


def context(experiment: ExperimentConfig) -> Context:
    """What the experiment's rules depend on besides its gates."""
    return Context(
        paired=experiment.mode not in SERVED_MODES,
        interleaved_ranking=experiment.mode == "interleave" and experiment.output == "ranking",
    )


def _shown(fig: dict[str, Any]) -> dict[str, Any]:
    # The largest latencies feed the p99 bounds and the per-unit sums the design
    # effect; a report shows the quantiles and the rule details instead.
    hidden = ("_top_ms", "_sq", "_cross")
    return {k: v for k, v in fig.items() if not k.endswith(hidden)}


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
    mean_c, mean_b = num(fig.get("mean_divergence")), num(base.get("mean_divergence"))
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
    production_range: tuple[datetime, datetime] | None = None,
) -> GateReport:
    gates = experiment.gates
    params = {
        "experiment": experiment.name,
        "since": start.replace(tzinfo=None),
        "until": end.replace(tzinfo=None),
        "latency_limit_ms": float(gates.max_p99_latency_ms or 0.0),
    }
    sql = named_query("arm_figures", warehouse.database)
    arms = {r["arm"]: r for r in warehouse.query(sql, params)}
    if production_range is not None:
        p_since, p_until = production_range
        elsewhere = params | {
            "since": p_since.replace(tzinfo=None), "until": p_until.replace(tzinfo=None)
        }  # fmt: skip
        arms[experiment.production_model] = {
            r["arm"]: r for r in warehouse.query(sql, elsewhere)
        }.get(experiment.production_model) or {}
    prod = arms.get(experiment.production_model) or {"requests": 0, "errors": 0}
    features = _feature_rule(warehouse, experiment, start, end)
    names = [c.name for c in experiment.candidates]
    fa = fail_alpha(gates, context(experiment), len(names))
    verdicts = []
    for name in [candidate] if candidate else names:
        arm = arms.get(name) or {"arm": name, "requests": 0}
        # The candidate arm's figures under the names the rules read.
        fig = {
            "candidate_model": name,
            "pairs": arm.get("requests", 0),
            "candidate_errors": arm.get("errors", 0),
            "candidate_requests": arm.get("requests", 0),
            **{f"candidate_{k}": arm[k] for k in _UNIT_SUMS if k in arm},
            "candidate_latencies": arm.get("requests", 0),
            "candidate_p50_ms": arm.get("p50_ms"),
            "candidate_p95_ms": arm.get("p95_ms"),
            "candidate_p99_ms": arm.get("p99_ms"),
            "candidate_slow": arm.get("slow", 0),
            "candidate_top_ms": arm.get("top_ms") or [],
            "production_requests": prod.get("requests", 0),
            "production_errors": prod.get("errors", 0),
            "production_latencies": prod.get("requests", 0),
            "production_units": prod.get("units"),
            "production_most_requests_per_unit": prod.get("most_requests_per_unit"),
            "production_p50_ms": prod.get("p50_ms"),
            "production_p99_ms": prod.get("p99_ms"),
            "production_top_ms": prod.get("top_ms") or [],
        }
        fb = _arm_feedback(warehouse, experiment, name, params) if _wants_feedback(gates) else {}
        fig.update({f"feedback_{k}": v for k, v in fb.items()})
        rules = judge(gates, fig, None, production=prod, feedback=fb, fail_alpha=fa)
        rules += [features] if features else []
        verdicts.append(CandidateVerdict(name, overall(rules), rules, _shown(fig)))
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


# Per-unit sums of each arm (arm_figures.sql, arm_feedback.sql): the rules derive from
# them how much outcomes go together within a unit.
_UNIT_SUMS = ("units", "most_requests_per_unit", "errors_sq", "errors_cross", "requests_sq")
_FEEDBACK_UNIT_SUMS = (
    "units", "converted_sq", "converted_cross", "requests_sq", "correct_sq", "correct_cross",
    "labelled_sq",
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
        "candidate_labelled": cand.get("labelled", 0),
        **{f"candidate_{k}": cand[k] for k in _FEEDBACK_UNIT_SUMS if k in cand},
        **{f"production_{k}": prod[k] for k in _FEEDBACK_UNIT_SUMS if k in prod},
    }


def check(
    config: Config,
    experiment: str,
    candidate: str | None = None,
    window_s: float | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> GateReport:
    """Open the configured warehouse and evaluate (``shadowline gate check``).

    ``EXPERIMENT@backtest:RUN`` judges a stored backtest run; a live experiment's
    verdict lists its backtest runs beside it (``backtests``)."""
    from shadowline import backtest

    parts = backtest.split_name(experiment)
    exp = config.require_experiment(parts[0] if parts else experiment, GateError)
    warehouse = Warehouse.open_reader(config)
    try:
        if parts:
            stored = backtest.stored_experiment(warehouse, exp, experiment)
            return evaluate(warehouse, stored, candidate, window_s, since, until,
                            labels_from=exp.name)  # fmt: skip
        report = evaluate(warehouse, exp, candidate, window_s, since, until)
        runs = backtest.judge_stored(warehouse, exp)
        report.backtests = runs or None
        return report
    finally:
        warehouse.close()


def failing_rules(verdict: CandidateVerdict) -> list[str]:
    """``rule: observed X, limit Y`` for each failing rule of one candidate."""
    return [
        f"{r.rule}: observed {'n/a' if r.observed is None else f'{r.observed:.6g}'}, "
        f"limit {r.threshold:.6g}"
        for r in verdict.rules
        if r.outcome == "fail"
    ]


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
    if report.backtests:
        lines.append("  backtests (each judged on its own rows, not part of this verdict):")
        for b in report.backtests:
            why = f": {'; '.join(b['failing'])}" if b["failing"] else ""
            lines.append(
                f"    {b['verdict'].upper():<12} {b['stored_as']} candidate {b['candidate']} "
                f"({b['rows']} rows, {b['first_event']} .. {b['last_event']}){why}"
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
    from urllib.parse import unquote, urlsplit

    import orjson

    from shadowline.httpserve import BoundedServer, HardenedHandler, Refused, query_fields

    codes = {"pass": 200, "fail": 412, "inconclusive": 425}
    known = {"candidate", "window", "since", "until"}

    class Handler(HardenedHandler):
        methods = ("GET", "HEAD", "POST")

        def _send(self, code: int, body: dict[str, Any]) -> None:
            self.answer(code, orjson.dumps(body), "application/json")

        def refuse(self, refused: Refused) -> None:
            self._send(refused.status, {"verdict": "error", "error": refused.message})

        def route(self) -> None:
            if self.command == "POST":
                self.read_body()  # Flagger posts its rollout's metadata; only the path counts
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
                raise Refused(404, 0, "use /gates/EXPERIMENT or /gates/EXPERIMENT/verdict")
            q = query_fields(url.query)
            if unknown := sorted(set(q) - known):
                raise Refused(400, 0, f"unknown parameter {unknown[0][:40]!r}: use {sorted(known)}")
            try:
                window = parse_duration(q["window"]) if q.get("window") else None
                since = parse_time(q["since"]) if q.get("since") else None
                until = parse_time(q["until"]) if q.get("until") else None
            except GateError as exc:
                raise Refused(400, 0, str(exc)) from exc
            try:
                report = check(
                    config, parts[1], candidate=q.get("candidate") or None, window_s=window,
                    since=since, until=until,
                )  # fmt: skip
            except ShadowlineError as exc:
                self._send(500 if len(parts) == 3 else 400, {"verdict": "error", "error": str(exc)})
                return
            body = report.as_dict()
            self._send(codes[report.verdict] if len(parts) == 3 else 200, body)

    return BoundedServer((host, port), Handler)
