"""Every Grafana panel's SQL, run against the embedded warehouse after a real pipeline
run (shadow pairs, a canary's served arms and its rollout decisions)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from shadowline import Interleave, Mirror, Router, backtest
from shadowline.envelopes import Control, now_ms
from shadowline.warehouse import DDL_DIR
from tests.integration.helpers import produce, rows, start_pipeline, wait_for

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
PROBS = {"0": 0.4, "1": 0.6}
SHADOW = {
    "name": "shadow",
    "production_model": "prod",
    "window_s": 5,
    "candidates": [
        {"name": "echo", "model": "tests.fixtures.models:EchoModel"},
        {"name": "flip", "model": "tests.fixtures.models:FlipModel"},
    ],
    "secondary": {"name": "prod-again", "model": "tests.fixtures.models:EchoModel"},
}
CANARY = {
    "name": "ramp",
    "mode": "canary",
    "production_model": "prod",
    "candidates": [{"name": "cand", "model": "tests.fixtures.models:EchoModel"}],
}
RANKER = {
    "name": "rank",
    "mode": "interleave",
    "output": "ranking",
    "production_model": "prod",
    "window_s": 5,
    "candidates": [{"name": "alt", "model": "unused:in_process"}],
}
ALL_TIME = (
    "{col} >= toDateTime64('2000-01-01 00:00:00', 3) "
    "AND {col} < toDateTime64('2100-01-01 00:00:00', 3)"
)


def _dashboards() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))]


def _clickhouse_annotations(dash: dict) -> list[dict]:
    return [
        a
        for a in dash["annotations"]["list"]
        if a["datasource"]["type"] == "grafana-clickhouse-datasource"
    ]


def _sql(raw: str, experiment: str) -> str:
    sql = raw.replace("${experiment}", experiment)
    return re.sub(r"\$__timeFilter\((\w+)\)", lambda m: ALL_TIME.format(col=m.group(1)), sql)


def test_provisioning_files_are_in_grafanas_format() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/clickhouse.yaml").read_text())
    assert ds["apiVersion"] == 1
    assert ds["datasources"][0]["type"] == "grafana-clickhouse-datasource"
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/shadowline.yaml").read_text())
    assert prov["providers"][0]["type"] == "file"
    (dash,) = _dashboards()
    uid = ds["datasources"][0]["uid"]
    assert dash["templating"]["list"][0]["name"] == "experiment"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            assert target["refId"] and target["rawSql"]
    # Every panel reads a view or table defined in deploy/clickhouse.
    made = r"CREATE (?:TABLE|VIEW|OR REPLACE VIEW)(?: IF NOT EXISTS)? \{db\}\.(\w+)"
    defined = set(re.findall(made, "".join(p.read_text() for p in DDL_DIR.glob("*.sql"))))
    for panel in dash["panels"]:
        used = set(re.findall(r"FROM shadowline\.(\w+)", panel["targets"][0]["rawSql"]))
        assert used and used <= defined, (panel["title"], used)
    for annotation in _clickhouse_annotations(dash):
        assert annotation["target"]["datasource"]["uid"] == uid
        used = set(re.findall(r"FROM shadowline\.(\w+)", annotation["target"]["rawSql"]))
        assert used and used <= defined, (annotation["name"], used)


def test_every_panel_returns_sane_rows_from_a_real_run(
    config_factory: Any, child_env, tmp_path
) -> None:
    config, path = config_factory([SHADOW, CANARY, RANKER])
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        control = Control("ramp", {"cand": 0.5, "prod": 0.5}, 1, now_ms(), verdict="pass",
                          reason="promote: test", step=2)  # fmt: skip
        produce(config, "control", [(control.key, control.encode(), "avro/binary")])
        with Router(config) as router, Mirror(config) as mirror:
            wait_for(lambda: router.weights("ramp"), 20, "the weights")
            for i in range(300):
                out = {"label": i % 2, "probabilities": PROBS}
                mirror.record(experiment="shadow", request_id=f"s{i}", inputs=out, output=out,
                              latency_ms=2.0, model="prod")  # fmt: skip
                a = router.assign("ramp", f"user-{i}")
                error = "E: x" if i % 50 == 0 else None
                mirror.record(experiment="ramp", request_id=f"c{i}", inputs={"x": i},
                              output={"label": 1}, latency_ms=3.0, model=a.arm, arm=a.arm,
                              arm_weight=a.weight, error=error)  # fmt: skip
            # An interleaved ranker: every user clicks the first item of the merged list.
            alt = {"alt": lambda q: ["c", "b", "a"]}
            ranker = Interleave(config, "rank", control=lambda q: ["a", "b", "c"],
                                candidates=alt, mirror=mirror)  # fmt: skip
            for i in range(40):
                served = ranker.rank({"q": i}, request_id=f"q{i}")
                mirror.feedback(experiment="rank", request_id=f"q{i}", kind="click",
                                value=served[0])  # fmt: skip
            assert ranker.flush(30) == 0
            ranker.close()
            assert mirror.flush(30) == 0
        # 300 requests x (2 candidates + the secondary)
        for table, n in (("comparisons_final", 940), ("served_final", 300), ("rollout_events", 1),
                         ("interleaved", 40), ("feedback", 40)):  # fmt: skip
            sql = f"SELECT count() AS n FROM {table}"  # noqa: S608  fixed names
            wait_for(lambda sql=sql, n=n: rows(config, sql)[0]["n"] >= n,
                     60, f"{n} rows in {table}", pipeline)  # fmt: skip
        # A backtest of the shadow experiment: listed beside it, selectable on its own.
        replay = backtest.run(config, "shadow", "echo", progress=False)
        assert replay.counts.requests == 300 and replay.counts.rows == 300
        (dash,) = _dashboards()
        variable = rows(config, dash["templating"]["list"][0]["query"])
        assert [r["experiment"] for r in variable] == ["ramp", "rank", "shadow", replay.stored_as]
        for panel in dash["panels"]:
            title = panel["title"].lower()
            experiment = (
                "ramp"
                if ("arm" in title or "rollout" in title)
                else "rank"
                if title.startswith("interleaving")
                else "shadow"
            )
            result = rows(config, _sql(panel["targets"][0]["rawSql"], experiment))
            assert result, panel["title"]
            for row in result:
                for key, value in row.items():
                    if key.endswith(("rate", "share", "agreement", "weight")):
                        assert 0 <= value <= 1, (panel["title"], key, value)
                    if key.endswith(("_ms", "_per_s")):
                        assert value >= 0, (panel["title"], key, value)
            if panel["title"].startswith("Pairs per second"):
                total = sum(r["pairs_per_s"] * 60 for r in result)
                assert round(total) == 900  # 300 requests x (2 candidates + secondary)
            if panel["title"].startswith("Missing and error"):
                assert all(r["missing_rate"] == 0 for r in result)
            if panel["title"].startswith("Served arms (A/B"):
                assert round(sum(r["requests_per_s"] * 60 for r in result)) == 300
                assert {r["arm"] for r in result} == {"cand", "prod"}
            if panel["title"].startswith("Gate verdicts"):
                assert result[0]["verdict"] == "pass" and result[0]["step"] == 2
            if panel["title"].startswith("Interleaving"):
                # One click per request, on the first item: whoever placed it wins.
                assert sum(r["wins"] + r["losses"] for r in result) == 40
                assert sum(r["ties"] for r in result) == 0
                assert all(r["candidate_model"] == "alt" for r in result)
            if panel["title"].startswith("Backtest runs"):
                assert [(r["stored_as"], r["candidate_model"], r["rows"]) for r in result] == [
                    (replay.stored_as, "echo", 300)
                ]
                assert result[0]["agreement"] == 1.0
            if panel["title"].startswith("Noise cancellation"):
                # echo agrees with production as the secondary does; flip never does.
                excess = {r["candidate_model"]: r["excess_disagreement"] for r in result}
                assert excess == {"echo": 0.0, "flip": 1.0}
                assert all(r["baseline_disagreement"] == 0 for r in result)
        # The rollout decisions are also marked on every time series as annotations.
        (decisions,) = _clickhouse_annotations(dash)
        marks = rows(config, _sql(decisions["target"]["rawSql"], "ramp"))
        assert [(m["title"], m["text"]) for m in marks] == [
            ("pass: weight 0.5, step 2", "promote: test")
        ]
        assert rows(config, _sql(decisions["target"]["rawSql"], "shadow")) == []
        # Grafana's own driver: clickhouse-go v2 over HTTP reads every panel, the variable
        # and the annotation from the embedded endpoint, row for row as clickhouse-connect.
        queries = {"variable": dash["templating"]["list"][0]["query"]}
        queries["annotation"] = _sql(decisions["target"]["rawSql"], "ramp")
        for panel in dash["panels"]:
            title = panel["title"].lower()
            experiment = "ramp" if ("arm" in title or "rollout" in title) else (
                "rank" if title.startswith("interleaving") else "shadow"
            )  # fmt: skip
            queries[panel["title"]] = _sql(panel["targets"][0]["rawSql"], experiment)
        got = clickhouse_go(config.warehouse.port, config.warehouse.database, queries)
        for name, sql in queries.items():
            expected = rows(config, sql)
            assert "error" not in got[name], (name, got[name])
            assert len(got[name]) == len(expected) > 0, name
            for go_row, row in zip(got[name], expected, strict=True):
                assert same_row(go_row, list(row.values())), (name, go_row, row)
    finally:
        pipeline.stop()


def clickhouse_go(port: int, database: str, queries: dict[str, str]) -> dict[str, Any]:
    """Run ``queries`` with clickhouse-go v2 (deploy/grafana/clickhouse-go, built from the
    Go module proxy on first use) against the embedded endpoint."""
    tool = ROOT / ".shadowline" / "tools" / "clickhouse-go-panels"
    source = GRAFANA / "clickhouse-go"
    env = dict(os.environ, GOFLAGS="-mod=mod")
    built = subprocess.run(
        ["go", "build", "-o", str(tool), "."], cwd=source, env=env, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    ran = subprocess.run(
        [str(tool), "-addr", f"127.0.0.1:{port}", "-database", database],
        input=json.dumps(queries), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def same_row(go_row: list[Any], row: list[Any]) -> bool:
    if len(go_row) != len(row):
        return False
    for a, b in zip(go_row, row, strict=True):
        if isinstance(b, datetime):
            a = datetime.fromisoformat(a)
            b = b if b.tzinfo else b.replace(tzinfo=UTC)
            if a != b:
                return False
        elif isinstance(b, float):
            a = float(a)
            if not (math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (a != a and b != b)):
                return False
        elif a != b:
            return False
    return True
