"""Prometheus endpoints of worker, joiner and sink, and the SDK collectors, scraped from
a real pipeline run."""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shadowline import Mirror, Router
from shadowline.metrics import register_router, register_tap
from tests.integration.helpers import produce, rows, start_pipeline, wait_for

EXP = {
    "name": "m",
    "production_model": "prod",
    "window_s": 5,
    "candidates": [{"name": "echo", "model": "tests.fixtures.models:EchoModel"}],
}
PROBS = {"0": 0.4, "1": 0.6}


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:  # noqa: S310
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == val for k, val in labels.items())
    )  # fmt: skip


def test_components_export_their_counters(config_factory: Any, child_env, tmp_path) -> None:
    config, path = config_factory([EXP])
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        registry = CollectorRegistry()
        with Mirror(config) as mirror:
            register_tap(mirror, registry)
            for i in range(200):
                out = {"label": 1, "probabilities": PROBS}
                mirror.record(experiment="m", request_id=f"r{i}", inputs=out, output=out,
                              latency_ms=1.0, model="prod")  # fmt: skip
            assert mirror.flush(30) == 0
            tap = generate_latest(registry).decode()
        assert "shadowline_tap_delivered_total 400.0" in tap
        assert "shadowline_tap_dropped_queue_full_total 0.0" in tap
        produce(config, "requests", [(b"bad", b"\xc3\x01garbage", "avro/binary")])
        wait_for(lambda: rows(config, "SELECT count() AS n FROM comparisons_final")[0]["n"] == 200,
                 60, "200 rows", pipeline)  # fmt: skip
        ns = config.kafka.namespace
        m = config.metrics

        def data_lags(samples: dict) -> dict:
            # Lag per partition of the data topics (the tick topic always moves).
            return {
                (dict(ls)["topic"], dict(ls)["partition"]): v
                for (n, ls), v in samples.items()
                if n == "shadowline_consumer_lag" and not dict(ls)["topic"].endswith("ticks")
            }  # fmt: skip

        def scraped() -> Any:
            w, j, s = _scrape(m.worker_port), _scrape(m.joiner_port), _scrape(m.sink_port)
            ready = (
                _total(w, "shadowline_dead_lettered_total") >= 1
                and _total(s, "shadowline_events_out_total", destination="comparisons") >= 200
                # every consumer reports its lag, measured every second, drained to zero
                and all((lags := data_lags(x)) and max(lags.values()) == 0 for x in (w, j, s))
            )
            return ready and (w, j, s)

        w, j, s = wait_for(scraped, 30, "the counters")
        assert _total(w, "shadowline_events_in_total", topic=f"{ns}requests") == 201
        assert _total(w, "shadowline_events_out_total", destination=f"{ns}predictions") == 200
        assert _total(w, "shadowline_decode_errors_total", topic=f"{ns}requests") == 1
        assert _total(w, "shadowline_batch_seconds_count") >= 1
        assert _total(j, "shadowline_events_in_total", topic=f"{ns}predictions") == 400
        assert _total(j, "shadowline_events_out_total", destination=f"{ns}comparisons") == 200
        assert _total(s, "shadowline_events_in_total", topic=f"{ns}comparisons") == 200
        assert {t for t, _ in data_lags(j)} == {f"{ns}requests", f"{ns}predictions"}
    finally:
        pipeline.stop()


def test_router_counters_in_a_registry(config_factory: Any) -> None:
    config, _ = config_factory([dict(EXP, mode="ab")])
    registry = CollectorRegistry()
    with Router(config) as router:
        register_router(router, registry)
        router.wait_ready(10)
        wait_for(lambda: router.readable, 10, "the control topic")
        for i in range(10):
            router.assign("m", f"u{i}")
        text = generate_latest(registry).decode()
    assert "shadowline_router_assigned_total 10.0" in text
    assert "shadowline_router_control_readable 1.0" in text
