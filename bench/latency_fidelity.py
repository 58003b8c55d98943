"""Benchmark: is the p99 the gates judge what serving one request costs?

    .venv/bin/python bench/latency_fidelity.py [--requests 10000] [--probe-share 0.1]
        [--batch-size 32] [--bootstrap 127.0.0.1:9092]

A candidate whose cost per input is lognormal (median 2 ms, sigma 0.5, plus 0.5 ms
per call: what batching amortises) is scored by the real worker, joiner and sink.
Side by side in one run, on the same inputs:

- alone: the model called with each input alone, one at a time (the truth);
- judged: the candidate p99 the gates read (`gate_figures`: latencies timed on one
  request: probes and inputs re-run alone);
- amortised: the p99 of batch time / batch size, what the workers recorded before.

Writes bench/results/latency_fidelity.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "results"
sys.path.insert(0, str(ROOT))

from shadowline.consumers.worker import is_probe  # noqa: E402

from shadowline import kafka  # noqa: E402
from shadowline.config import load_config  # noqa: E402
from shadowline.supervisor import Pipeline  # noqa: E402
from shadowline.tap import Mirror  # noqa: E402
from shadowline.warehouse import Warehouse, embedded_server_answers, named_query  # noqa: E402

CALL_OVERHEAD_S = 0.0005


class LognormalCostModel:
    """Sleeps each input's ``cost_ms`` in turn, plus a fixed cost per call."""

    def __call__(self, inputs: list[dict[str, Any]]) -> list[Any]:
        time.sleep(CALL_OVERHEAD_S)
        for x in inputs:
            time.sleep(x["cost_ms"] / 1000.0)
        return [{"label": 1} for _ in inputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--probe-share", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()
    rng = np.random.default_rng(17)
    costs = 2.0 * np.exp(0.5 * rng.standard_normal(args.requests))
    ids = [f"r-{i}" for i in range(args.requests)]
    inputs = [{"cost_ms": float(c)} for c in costs]

    # The truth: each input alone, one at a time, in this process.
    model = LognormalCostModel()
    alone = []
    for x in inputs:
        t0 = time.perf_counter()
        model([x])
        alone.append((time.perf_counter() - t0) * 1000.0)
    alone_ms = np.asarray(alone)
    probes = np.asarray([is_probe(rid, args.probe_share) for rid in ids])

    tmp = Path(tempfile.mkdtemp(prefix="shadowline-latency-"))
    ns = f"lat{uuid.uuid4().hex[:8]}."
    path = tmp / "shadowline.toml"
    path.write_text(
        tomli_w.dumps(
            {
                "kafka": {"bootstrap_servers": args.bootstrap, "namespace": ns, "partitions": 3},
                "warehouse": {"path": str(tmp / "wh"), "port": 18900 + os.getpid() % 400,
                              "flush_interval_s": 0.5},
                "joiner": {"app_id": f"{ns}joiner", "data_dir": str(tmp / "j"),
                           "late_grace_s": 30},
                "metrics": {"worker_port": 0, "joiner_port": 0, "sink_port": 0},
                "experiments": [{
                    "name": "lat", "production_model": "prod", "window_s": 600,
                    "candidates": [{
                        "name": "cand", "model": "latency_fidelity:LognormalCostModel",
                        "batch_size": args.batch_size, "timeout_ms": 5000,
                        "latency_probe_share": args.probe_share,
                    }],
                }],
            }
        )
    )  # fmt: skip
    config = load_config(path)
    kafka.create_topics(config)
    env = {"PYTHONPATH": f"{BENCH}{os.pathsep}{ROOT}"}
    pipeline = Pipeline(path, log_dir=tmp / "logs", env=env)
    pipeline.start()
    try:
        groups = [f"{ns}workers", f"{ns}joiner", f"{ns}sink"]
        while not (embedded_server_answers(config) and kafka.groups_ready(config.kafka, groups)):
            pipeline.check()
            time.sleep(0.2)
        started = time.monotonic()
        with Mirror(config) as mirror:
            for rid, x, ms in zip(ids, inputs, alone, strict=True):
                mirror.record(
                    experiment="lat", request_id=rid, inputs=x, output={"label": 1},
                    latency_ms=ms, model="prod",
                )  # fmt: skip
        wh = Warehouse.open_reader(config)
        deadline = time.monotonic() + 900
        count = "SELECT count() AS n FROM comparisons_final WHERE experiment = 'lat'"
        while wh.query(count)[0]["n"] < args.requests:
            pipeline.check()
            if time.monotonic() > deadline:
                raise SystemExit("rows did not all arrive within 900 s")
            time.sleep(0.5)
        scored_s = time.monotonic() - started
        params = {
            "experiment": "lat", "candidate": "", "since": "1970-01-01 00:00:00",
            "until": "2100-01-01 00:00:00", "latency_limit_ms": 100.0,
        }  # fmt: skip
        figures = wh.query(named_query("gate_figures", config.warehouse.database), params)[0]
        amortised = wh.query(
            "SELECT quantileExactIf(0.99)(candidate_latency_ms, candidate_timing = "
            "'batch_share') AS p99, countIf(candidate_timing = 'batch_share') AS n, "
            "groupArrayIf(request_id, candidate_timing = 'request') AS timed "
            "FROM comparisons_final WHERE experiment = 'lat'"
        )[0]
        wh.close()
    finally:
        pipeline.stop()
    timed = set(amortised["timed"])
    on_timed = np.asarray([rid in timed for rid in ids])
    truth = float(np.quantile(alone_ms, 0.99))
    truth_same = float(np.quantile(alone_ms[on_timed], 0.99))
    judged = float(figures["candidate_p99_ms"])
    result = {
        "requests": args.requests,
        "batch_size": args.batch_size,
        "probe_share": args.probe_share,
        "probes": int(probes.sum()),
        "timed_alone_rows": int(figures["candidate_latencies"]),
        "alone_p99_ms_all_inputs": round(truth, 3),
        "alone_p99_ms_same_inputs": round(truth_same, 3),
        "judged_p99_ms": round(judged, 3),
        "judged_over_alone_same_inputs": round(judged / truth_same, 4),
        "judged_over_alone_all_inputs": round(judged / truth, 4),
        "amortised_p99_ms": round(float(amortised["p99"]), 3),
        "amortised_over_alone": round(float(amortised["p99"]) / truth, 4),
        "pipeline_seconds": round(scored_s, 1),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "latency_fidelity.json").write_text(json.dumps(result, indent=2))
    md = [
        "| p99 of | ms | ÷ alone |",
        "|---|---|---|",
        f"| each input alone, all {args.requests:,} inputs | {truth:.2f} | 1 |",
        f"| each input alone, the {result['timed_alone_rows']:,} inputs the gates read "
        f"| {truth_same:.2f} | {truth_same / truth:.3f} |",
        f"| judged by the gates (timed alone in the worker) | {judged:.2f} | "
        f"{judged / truth_same:.3f} (same inputs), {judged / truth:.3f} (all) |",
        f"| batch time ÷ batch size (batch {args.batch_size}) | {float(amortised['p99']):.2f} "
        f"| {float(amortised['p99']) / truth:.3f} |",
    ]
    (OUT / "latency_fidelity.md").write_text("\n".join(md) + "\n")
    print(json.dumps(result, indent=2))
    print("\n".join(md))


if __name__ == "__main__":
    main()
