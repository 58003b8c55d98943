"""Benchmark: what ``Interleave`` adds to the caller's path, next to the bare model call.

    .venv/bin/python bench/interleave_overhead.py [--calls 20000] [--rate 2000]
        [--bootstrap 127.0.0.1:9092]

In one run, side by side, at a steady request rate (a serving loop, not a tight
loop: a pool fed faster than it drains measures the overload path instead):

- the control model called directly (the floor), then ``Mirror.record()`` after it
  (what shadow traffic costs the caller), then ``Interleave(...)(x)`` with 1 and 3
  candidates, with and without copying the inputs for each candidate;
- ``Interleave.rank()`` against the control ranking called directly (team-draft:
  the caller waits for the candidate, by design);
- the control's response time, from each request's scheduled arrival, alone and
  with a CPU-bound candidate (pure Python, 2 ms a call) beside it in the same
  process: the GIL is shared, so this is the cost of running such a candidate in
  process rather than in the workers.

Writes bench/results/interleave_overhead.json and .md. Kafka must answer at
--bootstrap (``shadowline kafka up``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shadowline import Interleave, Mirror
from shadowline.config import parse_config
from shadowline.kafka import create_topics, ping

OUT = Path(__file__).resolve().parent / "results"
INPUTS = {f"f{i}": float(i) * 0.5 for i in range(30)}
WEIGHTS = {k: (i % 7 - 3) * 0.1 for i, k in enumerate(INPUTS)}
DOCS = [f"doc-{i}" for i in range(50)]


def control(x: dict[str, float]) -> dict[str, Any]:
    """A small linear model: a weighted sum and a logistic link (about 3 µs)."""
    z = sum(WEIGHTS[k] * v for k, v in x.items())
    p = 1 / (1 + np.exp(-z))
    return {"label": int(p > 0.5), "probabilities": {"0": float(1 - p), "1": float(p)}}


def ranker(x: dict[str, float]) -> list[str]:
    return DOCS[:10]


def cpu_bound(x: dict[str, float]) -> dict[str, Any]:
    deadline = time.perf_counter() + 0.002
    n = 0
    while time.perf_counter() < deadline:
        n += 1
    return control(x)


def _config(bootstrap: str, mode: str, n_candidates: int, output: str = "classification") -> Any:
    return parse_config(
        {
            "kafka": {"bootstrap_servers": bootstrap, "namespace": f"bench{uuid.uuid4().hex[:6]}."},
            "tap": {"queue_size": 1_000_000, "close_timeout_s": 5.0},
            "experiments": [
                {
                    "name": "b",
                    "mode": mode,
                    "output": output,
                    "production_model": "p",
                    "candidates": [
                        {"name": f"c{i}", "model": "m:f", "timeout_ms": 1000}
                        for i in range(n_candidates)
                    ],
                }
            ],
        },
        env={},
    )


def _stats(samples_ns: np.ndarray) -> dict[str, float]:
    us = samples_ns / 1000.0
    return {
        "p50_us": round(float(np.percentile(us, 50)), 2),
        "p99_us": round(float(np.percentile(us, 99)), 2),
        "mean_us": round(float(us.mean()), 2),
    }


def _paced(
    calls: int, rate: float, body: Callable[[int], Any], from_arrival: bool = False
) -> np.ndarray:
    """Call ``body(i)`` ``calls`` times at ``rate`` per second; time each call (from
    its scheduled arrival with ``from_arrival``, else from when it started).

    Between calls the loop sleeps, as a server waiting for its next request does: a
    busy wait would hold the GIL and starve the candidates' threads."""
    samples = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    gap = int(1e9 / rate)
    next_at = clock()
    for i in range(calls):
        wait = next_at - clock()
        if wait > 0:
            time.sleep(wait / 1e9)
        t0 = clock()
        body(i)
        samples[i] = clock() - (min(t0, next_at) if from_arrival else t0)
        next_at += gap
    return samples


def run(args: argparse.Namespace) -> dict[str, Any]:
    calls, rate, boot = args.calls, args.rate, args.bootstrap
    results: dict[str, Any] = {}
    counters: dict[str, Any] = {}

    results["control alone"] = _stats(_paced(calls, rate, lambda i: control(INPUTS)))

    cfg = _config(boot, "shadow", 1)
    create_topics(cfg)
    with Mirror(cfg) as mirror:

        def shadow(i: int) -> None:
            started = time.perf_counter()
            out = control(INPUTS)
            mirror.record(experiment="b", request_id=f"r{i}", inputs=INPUTS, output=out,
                          latency_ms=(time.perf_counter() - started) * 1000, model="p")  # fmt: skip

        results["control + Mirror.record() (shadow)"] = _stats(_paced(calls, rate, shadow))

    for n, copy in ((1, True), (1, False), (3, True)):
        cfg = _config(boot, "interleave", n)
        create_topics(cfg)
        cands = {f"c{i}": control for i in range(n)}
        inter = Interleave(cfg, "b", control=control, candidates=cands, copy_inputs=copy)
        name = f"Interleave, {n} candidate{'s' if n > 1 else ''}" + ("" if copy else ", no copy")

        def serve(i: int, inter: Interleave = inter) -> Any:
            return inter(INPUTS, request_id=f"r{i}")

        results[name] = _stats(_paced(calls, rate, serve))
        inter.flush(30)
        counters[name] = inter.counters.__dict__.copy()
        inter.close()

    results["ranker alone"] = _stats(_paced(calls, rate, lambda i: ranker(INPUTS)))
    cfg = _config(boot, "interleave", 1, output="ranking")
    create_topics(cfg)
    inter = Interleave(cfg, "b", control=ranker, candidates={"c0": ranker})
    results["Interleave.rank(), 1 candidate"] = _stats(
        _paced(calls, rate, lambda i: inter.rank(INPUTS, request_id=f"q{i}"))
    )
    inter.flush(30)
    counters["Interleave.rank(), 1 candidate"] = inter.counters.__dict__.copy()
    inter.close()

    # The GIL: a CPU-bound candidate (pure Python, 2 ms a call) beside the control.
    # Measured from each request's scheduled arrival to its answer, so the wait for
    # the interpreter lock after the server wakes up is included.
    slow_rate = 200.0
    n_slow = calls // 8
    arrival: dict[str, np.ndarray] = {}
    arrival["alone"] = _paced(n_slow, slow_rate, lambda i: control(INPUTS), from_arrival=True)
    cfg = _config(boot, "interleave", 1)
    create_topics(cfg)
    inter = Interleave(cfg, "b", control=control, candidates={"c0": cpu_bound})
    arrival["beside"] = _paced(
        n_slow, slow_rate, lambda i: inter(INPUTS, request_id=f"s{i}"), from_arrival=True
    )
    inter.flush(30)
    counters["CPU-bound candidate"] = inter.counters.__dict__.copy()
    inter.close()
    results["control alone, from arrival"] = _stats(arrival["alone"])
    results["Interleave, 2 ms CPU-bound candidate, from arrival"] = _stats(arrival["beside"])

    bases = {
        "Interleave.rank(), 1 candidate": "ranker alone",
        "Interleave, 2 ms CPU-bound candidate, from arrival": "control alone, from arrival",
    }
    added: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        if name.startswith(("control +", "Interleave")):
            base = results[bases.get(name, "control alone")]
            added[name] = {
                "p50_us": round(r["p50_us"] - base["p50_us"], 2),
                "p99_us": round(r["p99_us"] - base["p99_us"], 2),
            }
    out = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "calls": calls,
        "rate_per_s": rate,
        "results": results,
        "added_us": added,
        "counters": counters,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()
    probe = _config(args.bootstrap, "shadow", 1)
    if not ping(probe.kafka):
        raise SystemExit(f"Kafka does not answer at {args.bootstrap}: run `shadowline kafka up`")
    result = run(args)
    OUT.mkdir(exist_ok=True)
    (OUT / "interleave_overhead.json").write_text(json.dumps(result, indent=2))
    md = [
        "| caller's path, per call | p50 µs | p99 µs | added p50 µs | added p99 µs |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["results"].items():
        add = result["added_us"].get(name, {})
        md.append(
            f"| {name} | {r['p50_us']} | {r['p99_us']} | {add.get('p50_us', '')} "
            f"| {add.get('p99_us', '')} |"
        )
    skipped = {n: c["skipped_overloaded"] for n, c in result["counters"].items()}
    md.append(
        f"\n{args.calls} calls per row at {args.rate:g} calls/s (the rows from arrival: "
        f"{args.calls // 8} at 200/s); candidate calls skipped as overloaded: {skipped}."
    )
    (OUT / "interleave_overhead.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
