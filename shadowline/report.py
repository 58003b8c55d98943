"""``shadowline report``: one file to attach to a rollout decision.

HTML (default): self-contained (plots inlined as SVG, no external assets), so it opens
offline. Markdown (``--format md``): the same content with SVG plots written next to
it, for a pull request (GitHub and GitLab show them). Content: the gate verdict with
every rule, plots over time from the dashboard views, the rollout history, and the
most divergent requests.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shadowline import charts, gates
from shadowline.config import IN_PROCESS_MODES, SERVED_MODES, Config, ExperimentConfig
from shadowline.warehouse import Warehouse, named_query


def _series(
    rows: list[dict[str, Any]], column: str, name: Any
) -> dict[str, list[tuple[Any, float]]]:
    """Plot series of ``column`` over ``minute``, one per ``name(row)``; NaN and None skipped."""
    series: dict[str, list[tuple[Any, float]]] = {}
    for r in rows:
        if r[column] is not None and r[column] == r[column]:
            series.setdefault(name(r), []).append((r["minute"], float(r[column])))
    return series


TOP_LABELS = 8  # output classes plotted by name; the rest are "(other)"
LABEL_CHARS = 40  # of a label's name in a plot
SHOWN_CHARS = 300  # of a value in a table (outputs, errors, request IDs, reasons)


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A value as displayed: at most ``limit`` characters, saying how many were cut."""
    text = _cell(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"


_MD_SPECIAL = str.maketrans(
    {c: "\\" + c for c in "\\`*_{}[]()#+-.!|~"}
    | {"<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": " ", "\r": " ", "\t": " "}
)


def md(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A value as one Markdown table cell: cut to ``limit``, with every character that
    Markdown or HTML would read as syntax escaped, and no line breaks."""
    return shown(value, limit).translate(_MD_SPECIAL)


def _figures(
    wh: Warehouse, experiment: str, exp: ExperimentConfig, since: Any, until: Any
) -> list[tuple[str, str]]:
    served = exp.mode in SERVED_MODES
    params = {"e": experiment, "s": since.replace(tzinfo=None), "u": until.replace(tzinfo=None)}
    window = (
        "experiment = {e:String} AND minute >= {s:DateTime64(3)} AND minute < {u:DateTime64(3)}"
    )
    out = []
    if served:
        sql = "SELECT minute, arm, requests, error_rate, p99_ms FROM served_minutely"
        rows = wh.query(f"{sql} WHERE {window} ORDER BY minute", params)
        key = "arm"
        specs = [
            ("requests", "Requests per minute, by arm", "requests"),
            ("error_rate", "Error rate, by arm", "share"),
            ("p99_ms", "p99 latency, by arm", "ms"),
        ]
    else:
        # The Grafana dashboard's panels, from the same view.
        sql = (
            "SELECT minute, candidate_model, pairs, missing_rate, candidate_error_rate, "
            "production_error_rate, agreement, mean_divergence, production_p50_ms, "
            "production_p99_ms, candidate_p50_ms, candidate_p99_ms FROM comparisons_minutely"
        )
        rows = wh.query(f"{sql} WHERE {window} ORDER BY minute", params)
        key = "candidate_model"
        specs = [
            ("pairs", "Pairs per minute, by candidate", "pairs"),
            ("missing_rate", "Missing rate (a side never arrived), by candidate", "share"),
            ("candidate_error_rate", "Candidate error rate", "share"),
            ("production_error_rate", "Production error rate (on each candidate's pairs)", "share"),
            ("agreement", "Agreement with production", "share"),
            ("mean_divergence", "Mean divergence from production", "divergence"),
            ("candidate_p50_ms", "Candidate p50 latency", "ms"),
            ("candidate_p99_ms", "Candidate p99 latency", "ms"),
            ("production_p99_ms", "Production p99 latency", "ms"),
        ]
    for column, title, unit in specs:
        series = _series(rows, column, lambda r: str(r[key]))
        out.append((title, charts.line_chart(series, title, unit)))
    if not served:
        # Bounded however many labels there are and however long: the TOP_LABELS most
        # frequent, the rest as "other", each name cut (with a hash, so two long labels
        # never merge).
        shares = wh.query(
            "SELECT minute, concat(candidate_model, ' / ', side, ' / label ', "
            "if(label IN (SELECT label FROM output_labels_minutely WHERE " + window + " "
            f"GROUP BY label ORDER BY sum(n) DESC, label LIMIT {TOP_LABELS}), "
            f"if(lengthUTF8(label) > {LABEL_CHARS}, concat(leftUTF8(label, {LABEL_CHARS}), "
            "'…', lower(substring(hex(sipHash64(label)), 1, 6))), label), '(other)')) AS series, "
            "sum(share) AS share FROM output_labels_minutely WHERE " + window + " "
            "GROUP BY minute, series ORDER BY minute, series",
            params,
        )
        drift = _series(shares, "share", lambda r: r["series"])
        title = "Output drift: share of each predicted label"
        out.append((title, charts.line_chart(drift, title, "share")))
        # Noise cancellation (experiments with a secondary): the candidates' excess.
        # Asked only of those: each view reads the experiment's rows again.
        excess = (
            []
            if exp.secondary is None
            else wh.query(
                "SELECT minute, candidate_model, excess_disagreement, excess_divergence "
                "FROM excess_divergence_minutely WHERE " + window + " ORDER BY minute",
                params,
            )
        )
        for column, title in (
            ("excess_disagreement", "Disagreement in excess of production vs secondary"),
            ("excess_divergence", "Mean divergence in excess of production vs secondary"),
        ):
            series = _series(excess, column, lambda r: r["candidate_model"])
            if series:
                out.append((title, charts.line_chart(series, title, "excess")))
        duels = (
            []
            if exp.mode not in IN_PROCESS_MODES
            else wh.query(
                "SELECT minute, candidate_model, wins, losses FROM interleave_minutely WHERE "
                + window
                + " ORDER BY minute",
                params,
            )
        )
        if duels:
            title = "Interleaving: wins and losses against production per minute"
            series = {}
            for column in ("wins", "losses"):
                series |= _series(duels, column, lambda r, c=column: f"{r['candidate_model']} {c}")
            out.append((title, charts.line_chart(series, title, "requests")))
    weights = wh.query(
        "SELECT event_time, weight FROM rollout_timeline WHERE experiment = {e:String} "
        "AND event_time >= {s:DateTime64(3)} AND event_time < {u:DateTime64(3)} ORDER BY version",
        params,
    )
    if weights:
        series = {"candidate weight": [(r["event_time"], float(r["weight"])) for r in weights]}
        title = "Rollout weight of the candidate"
        out.append(("Rollout weight", charts.line_chart(series, title, "share")))
    return out


def build(
    config: Config, experiment: str, window_s: float | None = None, limit: int = 20
) -> dict[str, Any]:
    """Everything a report shows, gathered from the warehouse."""
    from shadowline import backtest

    parts = backtest.split_name(experiment)
    exp = config.require_experiment(parts[0] if parts else experiment, gates.GateError)
    wh = Warehouse.open_reader(config)
    try:
        runs: list[dict[str, Any]] = []
        if parts:
            # A backtest run: its own rows, judged as `shadowline backtest` judged them.
            live = exp
            exp = backtest.stored_experiment(wh, live, experiment)
            report = gates.evaluate(wh, exp, window_s=window_s, labels_from=live.name)
        else:
            report = gates.evaluate(wh, exp, window_s=window_s)
            runs = backtest.judge_stored(wh, exp)
        served = exp.mode in SERVED_MODES
        figures = _figures(wh, experiment, exp, report.since, report.until)
        history = wh.query(
            "SELECT event_time, version, step, weight, verdict, reason FROM rollout_timeline "
            "WHERE experiment = {e:String} ORDER BY version DESC LIMIT 50",
            {"e": experiment},
        )
        divergent = (
            []
            if served
            else wh.query(
                named_query("top_divergent", wh.database),
                {
                    "experiment": experiment,
                    "since": report.since.replace(tzinfo=None),
                    "until": report.until.replace(tzinfo=None),
                    "limit": limit,
                },
            )
        )
    finally:
        wh.close()
    return {
        "experiment": exp,
        "gates": report,
        "figures": figures,
        "history": history,
        "divergent": divergent,
        "backtests": runs,
        "generated": datetime.now(UTC),
    }


def _backtest_rows(data: dict[str, Any]) -> list[list[Any]]:
    return [
        [b["stored_as"], b["candidate"], b["rows"], f"{b['first_event']} .. {b['last_event']}",
         b["verdict"], "; ".join(b["failing"])]
        for b in data.get("backtests") or []
    ]  # fmt: skip


BACKTEST_HEAD = ["backtest run", "candidate", "rows", "events", "outcome", "failing"]
BACKTEST_NOTE = (
    "Backtests replay this experiment's mirrored requests through a candidate; each is "
    "judged on its own rows (latency rules apart) and is not part of the verdict above. "
    "Open one with its run name as the experiment."
)


def _since(t: datetime) -> str:
    return "the beginning" if t <= gates.EPOCH else t.isoformat()


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)


def _rule_rows(data: dict[str, Any]) -> list[list[str]]:
    out = []
    for cand in data["gates"].candidates:
        for r in cand.rules:
            out.append(
                [cand.candidate, r.rule, _cell(r.observed), _cell(r.threshold), r.outcome, r.detail]
            )
    return out


def to_html(data: dict[str, Any]) -> str:
    """A self-contained HTML page (inline CSS and SVG; no network needed)."""
    g = data["gates"]
    esc = html.escape

    def table(head: list[str], rows: list[list[Any]], cls: str = "") -> str:
        th = "".join(f"<th>{esc(h)}</th>" for h in head)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td class='{esc(_cell(c)) if h == 'outcome' else ''}'>{esc(shown(c))}</td>"
                for h, c in zip(head, r, strict=True)
            )
            + "</tr>"
            for r in rows
        )
        return f"<table class='{cls}'><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>shadowline report: {esc(g.experiment)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        ".pass{background:#d9f2d9}.fail{background:#f8d0d0}.inconclusive{background:#fff3c4}"
        ".verdict{font-size:20px;padding:6px 12px;display:inline-block}"
        "pre{white-space:pre-wrap;margin:0;font-size:12px}</style></head><body>",
        f"<h1>Experiment {esc(g.experiment)}</h1>",
        f"<p>mode {esc(data['experiment'].mode)}; "
        f"production {esc(data['experiment'].production_model)}; "
        f"range {esc(_since(g.since))} .. {esc(g.until.isoformat())}; "
        f"generated {esc(data['generated'].isoformat())}</p>",
        f"<p class='verdict {esc(g.verdict)}' id='verdict'>"
        f"Gate verdict: {esc(g.verdict.upper())}</p>",
        "<h2>Rules</h2>",
        table(
            ["candidate", "rule", "observed", "limit", "outcome", "detail"],
            _rule_rows(data),
            "rules",
        ),
        "<h2>Over time</h2>",
    ]
    for title, fig in data["figures"]:
        parts.append(f"<figure class='plot'><figcaption>{esc(title)}</figcaption>{fig}</figure>")
    parts.append("<h2>Rollout history</h2>")
    if data["history"]:
        parts.append(
            table(
                ["time", "version", "step", "weight", "verdict", "reason"],
                [
                    [
                        r["event_time"],
                        r["version"],
                        r["step"],
                        r["weight"],
                        r["verdict"],
                        r["reason"],
                    ]
                    for r in data["history"]
                ],
                "history",
            )
        )
    else:
        parts.append("<p>No rollout decisions for this experiment.</p>")
    if data.get("backtests"):
        parts += [
            "<h2>Backtests</h2>",
            f"<p>{esc(BACKTEST_NOTE)}</p>",
            table(BACKTEST_HEAD, _backtest_rows(data), "backtests"),
        ]
    parts.append("<h2>Most divergent requests</h2>")
    if data["divergent"]:
        rows = [
            [
                r["request_id"],
                r["candidate_model"],
                r["status"],
                r["divergence"],
                r["production_output"],
                r["candidate_output"] or r["candidate_error"],
            ]
            for r in data["divergent"]
        ]
        parts.append(
            table(
                [
                    "request",
                    "candidate",
                    "status",
                    "divergence",
                    "production output",
                    "candidate output",
                ],
                rows,
                "divergent",
            )
        )
    else:
        parts.append("<p>None in this range.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def to_markdown(data: dict[str, Any], out: Path) -> str:
    """Markdown with SVG plots written to ``<out stem>_files/`` beside it."""
    g = data["gates"]
    assets = out.parent / f"{out.stem}_files"
    assets.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Experiment {md(g.experiment)}: {g.verdict.upper()}",
        "",
        f"Mode {md(data['experiment'].mode)}, production "
        f"{md(data['experiment'].production_model)}, range {_since(g.since)} .. "
        f"{g.until.isoformat()}.",
        "",
        "| candidate | rule | observed | limit | outcome | detail |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(md(c) for c in r) + " |" for r in _rule_rows(data)]
    lines.append("")
    for i, (title, fig) in enumerate(data["figures"]):
        name = f"plot{i + 1}.svg"
        (assets / name).write_text(fig, encoding="utf-8")
        lines += [f"![{title}]({assets.name}/{name})", ""]
    lines += ["## Rollout history", ""]
    if data["history"]:
        lines += [
            "| time | version | step | weight | verdict | reason |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {md(r['event_time'])} | {md(r['version'])} | {md(r['step'])} | {md(r['weight'])} "
            f"| {md(r['verdict'])} | {md(r['reason'])} |"
            for r in data["history"]
        ]
    else:
        lines.append("No rollout decisions for this experiment.")
    if data.get("backtests"):
        lines += ["", "## Backtests", "", md(BACKTEST_NOTE), ""]
        lines += ["| " + " | ".join(BACKTEST_HEAD) + " |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(md(c) for c in r) + " |" for r in _backtest_rows(data)]
    lines += ["", "## Most divergent requests", ""]
    if data["divergent"]:
        lines += [
            "| request | candidate | divergence | production output | candidate output |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {md(r['request_id'])} | {md(r['candidate_model'])} | {md(r['divergence'])} "
            f"| {md(r['production_output'])} "
            f"| {md(r['candidate_output'] or r['candidate_error'])} |"
            for r in data["divergent"]
        ]
    else:
        lines.append("None in this range.")
    return "\n".join(lines) + "\n"


def write(
    config: Config, experiment: str, out: Path, fmt: str = "html", window_s: float | None = None
) -> Path:
    """Build and write the report; returns the path written."""
    data = build(config, experiment, window_s)
    text = to_html(data) if fmt == "html" else to_markdown(data, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
