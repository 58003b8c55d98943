"""`shadowline gate check` on the real embedded ClickHouse (chDB): verdicts, exit codes,
the JSON form, and re-evaluation of a past range."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import tomli_w
from shadowline.streams import pairing

from shadowline.config import load_config
from shadowline.envelopes import Comparison, Prediction
from shadowline.warehouse import Warehouse

ROOT = Path(__file__).resolve().parents[2]
BASE_MS = 1_790_000_000_000  # 2026-09-21, a fixed past so ranges are reproducible
PROBS = {"0": 0.2, "1": 0.8}


def _rows(exp: Any, start: int, n: int, bad_from: int | None = None) -> list[Comparison]:
    """Rows made by the joiner's own state machine. "good" answers like production in
    5 ms; "bad" fails 1 in 20 requests and takes +150 ms on 1 in 10. With ``bad_from``,
    "good" turns bad too from that index on."""
    out = []
    for i in range(start, start + n):
        t = BASE_MS + i * 10
        rid = f"r{i}"
        state = pairing.new_state(rid, exp, t, 0, t)
        out += pairing.on_prediction(
            state,
            Prediction(
                rid, exp.name, "production", "prod", {"label": 1, "probabilities": PROBS}, 5.0, t
            ),
            exp,
            t,
        )
        for name in ("good", "bad"):
            broken = name == "bad" or (bad_from is not None and i >= bad_from)
            failed = broken and i % 20 == 0
            latency = 5.0 + (150.0 if broken and i % 10 == 5 else 0.0)
            pred = Prediction(
                rid, exp.name, "candidate", name,
                None if failed else {"label": 1, "probabilities": PROBS},
                latency, t, error="RuntimeError: boom" if failed else None,
            )  # fmt: skip
            out += pairing.on_prediction(state, pred, exp, t)
    return out


@pytest.fixture
def gated(tmp_path: Path) -> tuple[Path, Any]:
    data = {
        "warehouse": {"path": str(tmp_path / "wh"), "port": 1},
        "experiments": [
            {
                "name": "exp",
                "production_model": "prod",
                "candidates": [
                    {"name": "good", "model": "tests.fixtures.models:EchoModel"},
                    {"name": "bad", "model": "tests.fixtures.models:EchoModel"},
                ],
                "gates": {"min_samples": 500, "min_agreement": 0.9},
            }
        ],
    }
    path = tmp_path / "shadowline.toml"
    path.write_text(tomli_w.dumps(data))
    config = load_config(path)
    wh = Warehouse.open_owner(config)
    try:
        wh.insert_comparisons(_rows(config.experiments[0], 0, 2000))
    finally:
        wh.close()
    return path, config


def _check(path: Path, *args: str) -> tuple[int, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "shadowline", "gate", "check", "-c", str(path), *args, "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else proc.stderr


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def _rules(report: dict, candidate: str) -> dict[str, dict]:
    cand = next(c for c in report["candidates"] if c["candidate"] == candidate)
    return {r["rule"]: r for r in cand["rules"]}


def test_healthy_candidate_passes_with_exit_0(gated: tuple[Path, Any]) -> None:
    code, report = _check(gated[0], "exp", "--candidate", "good")
    assert code == 0, report
    assert report["verdict"] == "pass"
    rules = _rules(report, "good")
    assert rules["min_samples"]["observed"] == 2000
    assert rules["max_error_rate"]["observed"] == 0
    assert rules["max_p99_latency_ms"]["observed"] == pytest.approx(5.0)
    assert rules["min_agreement"]["observed"] == 1.0
    assert all(r["outcome"] == "pass" for r in rules.values())


def test_regressed_candidate_fails_with_exit_1_naming_the_rules(gated: tuple[Path, Any]) -> None:
    code, report = _check(gated[0], "exp")
    assert code == 1, report
    assert report["verdict"] == "fail"
    verdicts = {c["candidate"]: c["verdict"] for c in report["candidates"]}
    assert verdicts == {"good": "pass", "bad": "fail"}
    rules = _rules(report, "bad")
    # 100 failures in 2,000 requests; 1 in 10 requests at 155 ms.
    assert rules["max_error_rate"] | {"detail": ""} == {
        "rule": "max_error_rate", "observed": 0.05, "threshold": 0.01,
        "outcome": "fail", "detail": "",
    }  # fmt: skip
    assert rules["max_error_rate_increase"]["outcome"] == "fail"
    assert rules["max_p99_latency_ms"]["outcome"] == "fail"
    assert rules["max_p99_latency_ms"]["observed"] == pytest.approx(155.0)
    assert rules["max_p99_latency_ms"]["threshold"] == 100.0


def test_thin_data_is_inconclusive_with_exit_2(gated: tuple[Path, Any]) -> None:
    # The first 100 requests only: too few to pass; "good" gives no evidence to fail.
    code, report = _check(
        gated[0], "exp", "--candidate", "good",
        "--since", _iso(BASE_MS), "--until", _iso(BASE_MS + 100 * 10),
    )  # fmt: skip
    assert code == 2, report
    rules = _rules(report, "good")
    assert rules["min_samples"] == {
        "rule": "min_samples", "observed": 100.0, "threshold": 500.0,
        "outcome": "inconclusive", "detail": "waiting for 500 answered pairs (have 100)",
    }  # fmt: skip


def test_a_past_range_re_evaluates_to_the_same_answer(gated: tuple[Path, Any]) -> None:
    path, config = gated
    window = ("--since", _iso(BASE_MS), "--until", _iso(BASE_MS + 2000 * 10))
    code_before, before = _check(path, "exp", "--candidate", "good", *window)
    # Later traffic in which "good" regresses must not change the past verdict.
    wh = Warehouse.open_owner(config)
    try:
        wh.insert_comparisons(_rows(config.experiments[0], 2000, 2000, bad_from=2000))
    finally:
        wh.close()
    code_after, after = _check(path, "exp", "--candidate", "good", *window)
    assert (code_before, code_after) == (0, 0)
    assert after == before
    # ...while the whole history now sees the regression.
    code_now, now = _check(path, "exp", "--candidate", "good")
    assert code_now == 1
    assert _rules(now, "good")["max_error_rate"]["outcome"] == "fail"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "experiment 'nope' is not in"),
        (["exp", "--candidate", "ghost"], "candidate 'ghost' is not configured"),
        (["exp", "--window", "5 parsecs"], "window '5 parsecs' is not a positive duration"),
        (["exp", "--since", "yesterday"], "time 'yesterday' is neither ISO 8601"),
    ],
)
def test_errors_exit_3_with_the_reason(
    gated: tuple[Path, Any], args: list[str], message: str
) -> None:
    code, report = _check(gated[0], *args)
    assert code == 3
    assert report["verdict"] == "error"
    assert message in report["error"]


def test_usage_error_exits_3_not_a_verdict_code(gated: tuple[Path, Any]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shadowline", "gate", "check", "-c", str(gated[0])],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 3
    assert "Missing argument 'EXPERIMENT'" in proc.stderr


def test_gate_serve_answers_argo_json_and_flagger_status_codes(gated: tuple[Path, Any]) -> None:
    import threading
    import urllib.error
    import urllib.request

    from shadowline.gates import make_server

    server = make_server(gated[1], "127.0.0.1", 0)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def get(path: str, method: str = "GET") -> tuple[int, dict]:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     data=b"{}" if method == "POST" else None)  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310  loopback
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        code, body = get("/gates/exp?candidate=good")
        assert (code, body["verdict"]) == (200, "pass")
        # The same document as `gate check --json` gives for the same range.
        until = body["until"]
        _, cli = _check(gated[0], "exp", "--candidate", "good", "--until", until)
        assert body == cli
        assert get("/gates/exp/verdict?candidate=good")[0] == 200
        assert get("/gates/exp/verdict?candidate=bad", "POST")[0] == 412
        early = f"/gates/exp/verdict?candidate=good&until={BASE_MS + 1000}&since={BASE_MS}"
        assert get(early)[0] == 425
        code, body = get("/gates/nope/verdict")
        assert code == 500 and "not in" in body["error"]
        assert get("/elsewhere")[0] == 404
        assert get("/healthz") == (200, {"status": "ok"})
    finally:
        server.shutdown()
        server.server_close()


def test_labels_from_feedback_judge_accuracy_on_the_same_requests(tmp_path: Path) -> None:
    data = {
        "warehouse": {"path": str(tmp_path / "wh"), "port": 1},
        "experiments": [
            {
                "name": "lab",
                "production_model": "prod",
                "feedback_window_s": 60,
                "candidates": [{"name": "worse", "model": "tests.fixtures.models:EchoModel"}],
                "gates": {"max_accuracy_drop": 0.02},
            }
        ],
    }
    path = tmp_path / "shadowline.toml"
    path.write_text(tomli_w.dumps(data))
    config = load_config(path)
    exp = config.experiments[0]
    comparisons, feedback = [], []
    for i in range(3000):
        t = BASE_MS + i * 10
        rid = f"r{i}"
        truth = i % 2
        # Production is wrong when i % 20 == 0, the candidate when i % 5 == 0: among the
        # even requests (whose labels arrive in time) that is 10 % and 20 %.
        prod_label = truth if i % 20 else 1 - truth
        cand_label = truth if i % 5 else 1 - truth
        state = pairing.new_state(rid, exp, t, 0, t)
        for role, name, label in (
            ("production", "prod", prod_label),
            ("candidate", "worse", cand_label),
        ):
            pred = Prediction(rid, "lab", role, name, {"label": label}, 2.0, t)
            comparisons += pairing.on_prediction(state, pred, exp, t)
        # Every other label arrives too late (after the 60 s feedback window).
        late = 120_000 if i % 2 else 1_000
        feedback.append([t + late, "lab", rid, "label", str(truth)])
    wh = Warehouse.open_owner(config)
    try:
        wh.insert_comparisons(comparisons)
        wh.insert("feedback", ("event_time", "experiment", "request_id", "kind", "value"), feedback)
    finally:
        wh.close()
    code, report = _check(path, "lab")
    assert code == 1, report
    figures = report["candidates"][0]["figures"]
    assert figures["feedback_labelled"] == 1500  # only labels inside the window
    assert figures["feedback_production_accuracy"] == pytest.approx(0.90)
    assert figures["feedback_candidate_accuracy"] == pytest.approx(0.80)
    rule = _rules(report, "worse")["max_accuracy_drop"]
    assert rule["outcome"] == "fail"
    assert rule["observed"] == pytest.approx(0.10)
    # The output drift the gate used is computed in SQL; it equals shadowline.stats on
    # the same binned counts (the dashboards show the SQL figure).
    from shadowline import stats
    from shadowline.warehouse import named_query

    wh = Warehouse.open_reader(config)
    try:
        drift = wh.query(
            named_query("output_drift", config.warehouse.database),
            {"experiment": "lab", "candidate": "", "since": "2000-01-01 00:00:00",
             "until": "2100-01-01 00:00:00"},
        )[0]  # fmt: skip
    finally:
        wh.close()
    assert drift["production_counts"] != drift["candidate_counts"]
    assert drift["psi"] == pytest.approx(
        stats.psi(drift["production_counts"], drift["candidate_counts"]), rel=1e-9
    )
    assert drift["jsd"] == pytest.approx(
        stats.jensen_shannon(drift["production_counts"], drift["candidate_counts"]), rel=1e-9
    )
    assert figures["psi"] == pytest.approx(drift["psi"])


@pytest.mark.parametrize(("shift", "outcome"), [(0.0, "pass"), (1.0, "fail")])
def test_feature_drift_against_the_window_before(tmp_path: Path, shift: float, outcome: str):
    import random

    data = {
        "warehouse": {"path": str(tmp_path / "wh"), "port": 1},
        "experiments": [
            {
                "name": "feat",
                "production_model": "prod",
                "candidates": [{"name": "c", "model": "tests.fixtures.models:EchoModel"}],
                "gates": {
                    "max_feature_psi": 0.25, "feature_reference_s": 600, "min_samples": 500,
                    "max_error_rate": False, "max_error_rate_increase": False,
                    "max_p99_latency_ms": False, "max_output_shift": False,
                },
            }
        ],
    }  # fmt: skip
    path = tmp_path / "shadowline.toml"
    path.write_text(tomli_w.dumps(data))
    config = load_config(path)
    rng = random.Random(3)
    rows_ = []
    # 10 minutes of reference traffic, then 10 minutes where `amount` moves by `shift`
    # standard deviations; `country` is text and not a numeric feature.
    for i in range(2400):
        t = BASE_MS + i * 500
        current = i >= 1200
        amount = rng.gauss(shift if current else 0.0, 1.0)
        inputs = json.dumps({"amount": amount, "age": rng.gauss(40, 10), "country": "NL"})
        rows_.append([t, "feat", f"r{i}", None, None, None, inputs])
    wh = Warehouse.open_owner(config)
    try:
        cols = ("event_time", "experiment", "request_id", "unit_id", "arm", "arm_weight", "inputs")
        wh.insert("requests", cols, rows_)
    finally:
        wh.close()
    window = ("--since", _iso(BASE_MS + 1200 * 500), "--until", _iso(BASE_MS + 2400 * 500))
    _, report = _check(path, "feat", *window)
    rule = _rules(report, "c")["max_feature_psi"]
    assert rule["outcome"] == outcome, rule
    if outcome == "fail":
        assert "'amount'" in rule["detail"] and rule["observed"] > 0.25
    else:
        assert rule["observed"] < 0.1
    # Judged over all history there is no reference window: no verdict on drift.
    _, everything = _check(path, "feat")
    assert _rules(everything, "c")["max_feature_psi"]["outcome"] == "inconclusive"


def test_report_html_is_self_contained_and_markdown_has_its_plots(gated: tuple[Path, Any]) -> None:
    path = gated[0]
    out = path.parent / "report.html"
    proc = subprocess.run(
        [sys.executable, "-m", "shadowline", "report", "-c", str(path), "exp", "-o", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert "Gate verdict: FAIL" in page
    assert page.count("<svg") >= 4  # pairs, errors, agreement, latency
    assert "max_error_rate" in page and "RuntimeError: boom" in page  # rules, divergent rows
    # Opens offline: nothing is fetched from anywhere.
    assert 'src="http' not in page and 'href="http' not in page and "<script src" not in page
    md = path.parent / "report.md"
    proc = subprocess.run(
        [sys.executable, "-m", "shadowline", "report", "-c", str(path), "exp", "-o", str(md),
         "--format", "md"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    text = md.read_text()
    assert text.startswith("# Experiment exp: FAIL")
    svgs = sorted((path.parent / "report_files").glob("*.svg"))
    assert len(svgs) >= 4 and all(f"report_files/{p.name}" in text for p in svgs)
    # each a standalone SVG document (as GitHub shows an image) with its lines drawn
    ns = "{http://www.w3.org/2000/svg}"
    drawn = [ElementTree.parse(p).getroot() for p in svgs]
    assert all(root.tag == f"{ns}svg" for root in drawn)
    assert sum(len(root.findall(f"{ns}polyline")) for root in drawn) >= 4


def test_dashboard_lists_experiments_and_serves_their_pages(gated: tuple[Path, Any]) -> None:
    import threading
    import urllib.error
    import urllib.request

    from shadowline.dashboard import make_server

    server = make_server(gated[1], "127.0.0.1", 0, refresh_s=5)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:  # noqa: S310
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        code, index = get("/")
        assert code == 200
        assert "<a href='/experiments/exp'>exp</a>" in index
        assert "<td class='fail'>fail</td>" in index
        code, page = get("/experiments/exp")
        assert code == 200
        assert "content='5'" in page  # refreshes by itself
        assert "Gate verdict: FAIL" in page and page.count("<svg") >= 4
        assert "RuntimeError: boom" in page  # the divergent table, both sides
        assert 'src="http' not in page and "<script" not in page  # nothing from outside
        assert get("/experiments/nope")[0] == 404
        code, page = get("/experiments/exp?window=bad")
        assert code == 400 and "window &#x27;bad&#x27; is not a positive duration" in page
    finally:
        server.shutdown()
        server.server_close()


def test_a_text_experiment_passes_with_the_defaults_and_drift_is_judged(tmp_path: Path) -> None:
    # Free text has no labels: its outputs are binned by length class, so a paraphrase
    # passes every default rule while a candidate answering in two letters fails drift.
    data = {
        "warehouse": {"path": str(tmp_path / "wh"), "port": 1},
        "experiments": [{
            "name": "txt", "output": "text", "production_model": "prod",
            "candidates": [
                {"name": "para", "model": "tests.fixtures.models:EchoModel"},
                {"name": "terse", "model": "tests.fixtures.models:EchoModel"},
            ],
        }],
    }  # fmt: skip
    path = tmp_path / "shadowline.toml"
    path.write_text(tomli_w.dumps(data))
    config = load_config(path)
    exp = config.experiments[0]
    answers = {
        "prod": ["Paris is the capital of France.", "Water boils at 100 degrees Celsius."],
        "para": ["The capital city of France is Paris.", "At sea level water boils at 100 C."],
        "terse": ["ok", "no"],
    }
    out = []
    for i in range(2000):
        t = BASE_MS + i * 10
        state = pairing.new_state(f"t{i}", exp, t, 0, t)
        for role, name in (("production", "prod"), ("candidate", "para"), ("candidate", "terse")):
            pred = Prediction(f"t{i}", "txt", role, name, answers[name][i % 2], 5.0, t)
            out += pairing.on_prediction(state, pred, exp, t)
    wh = Warehouse.open_owner(config)
    try:
        wh.insert_comparisons(out)
    finally:
        wh.close()
    code, report = _check(path, "txt")
    assert code == 1, report
    para, terse = _rules(report, "para"), _rules(report, "terse")
    assert {r["outcome"] for r in para.values()} == {"pass"}, para
    assert terse["max_output_shift"]["outcome"] == "fail"
    assert terse["max_output_shift"]["observed"] == pytest.approx(1.0)
    assert "decided by 'length 1'" in terse["max_output_shift"]["detail"]  # "ok", "no"
