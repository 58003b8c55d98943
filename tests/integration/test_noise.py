"""Noise cancellation: a non-deterministic production model and a secondary instance.

Production disagrees with itself on about a third of requests. Without a baseline a
candidate that is the very same model fails the agreement gate; with the secondary
the gates judge only the disagreement in excess of production-versus-itself, so the
same model passes while a truly different one still fails.
"""

from __future__ import annotations

from typing import Any

from shadowline import Mirror, report
from shadowline.config import Config
from shadowline.gates import evaluate
from shadowline.warehouse import Warehouse
from tests.fixtures.models import NoisyModel
from tests.integration.helpers import rows, start_pipeline, wait_for

N = 1500
EXPERIMENT = {
    "name": "noisy",
    "production_model": "prod",
    "window_s": 5,
    "secondary": {"name": "prod-again", "model": "tests.fixtures.models:NoisyModel"},
    "candidates": [
        {"name": "same", "model": "tests.fixtures.models:NoisyModel"},
        {"name": "skewed", "model": "tests.fixtures.models:SkewedNoisyModel"},
    ],
    "gates": {"min_samples": 500, "min_agreement": 0.9, "max_mean_divergence": 0.1,
              "max_p99_latency_ms": False, "max_p99_latency_ratio": False},
}  # fmt: skip


def _verdicts(config: Config, experiment: Any) -> dict[str, dict[str, Any]]:
    wh = Warehouse.open_reader(config)
    try:
        report = evaluate(wh, experiment)
    finally:
        wh.close()
    return {
        c.candidate: {"verdict": c.verdict, "rules": {r.rule: r for r in c.rules}, **c.figures}
        for c in report.candidates
    }


def test_secondary_cancels_production_noise_but_not_a_real_difference(
    config_factory: Any, child_env: dict[str, str], tmp_path: Any
) -> None:
    config, path = config_factory([EXPERIMENT])
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    production = NoisyModel()
    try:
        with Mirror(config) as mirror:
            for n in range(N):
                x = {"n": n, "label": n % 2}
                out = production.answer(x)
                mirror.record(experiment="noisy", request_id=f"r{n}", inputs=x, output=out,
                              latency_ms=1.0, model="prod")  # fmt: skip
            assert mirror.flush(30) == 0
        wait_for(
            lambda: rows(config, "SELECT count() AS n FROM comparisons_final")[0]["n"] >= 3 * N,
            120, f"{3 * N} comparisons (2 candidates + the secondary)", pipeline,
        )  # fmt: skip
    finally:
        pipeline.stop()

    by_model = {
        r["candidate_model"]: r
        for r in rows(
            config,
            "SELECT candidate_model, count() AS n, avg(agree) AS agreement "
            "FROM comparisons_final GROUP BY candidate_model",
        )  # fmt: skip
    }
    assert {m: r["n"] for m, r in by_model.items()} == {"prod-again": N, "same": N, "skewed": N}
    # Production against itself: about 68 % agreement, far below the 0.9 gate.
    assert 0.6 < by_model["prod-again"]["agreement"] < 0.76

    exp = config.experiments[0]
    with_baseline = _verdicts(config, exp)
    assert set(with_baseline) == {"same", "skewed"}  # the secondary is a baseline, not gated
    same, skewed = with_baseline["same"], with_baseline["skewed"]
    assert same["rules"]["min_agreement"].outcome == "pass", same["rules"]["min_agreement"]
    assert same["rules"]["max_mean_divergence"].outcome == "pass"
    assert abs(same["excess_disagreement"]) < 0.06
    assert skewed["rules"]["min_agreement"].outcome == "fail", skewed["rules"]["min_agreement"]
    assert skewed["excess_disagreement"] > 0.1
    assert skewed["verdict"] == "fail" and same["verdict"] == "pass"
    assert "production vs secondary" in same["rules"]["min_agreement"].detail

    # The same data judged without the baseline: the identical model is a false alarm.
    without = _verdicts(config, exp.model_copy(update={"secondary": None}))
    assert without["same"]["rules"]["min_agreement"].outcome == "fail"
    assert without["same"]["verdict"] == "fail"

    # The report and the dashboard plot each candidate's excess over the baseline.
    titles = [title for title, _ in report.build(config, exp.name)["figures"]]
    assert "Disagreement in excess of production vs secondary" in titles
