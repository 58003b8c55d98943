"""Benchmark: cost of ``Mirror.record()`` in the serving thread, next to a bare produce().

    .venv/bin/python bench/tap_overhead.py [--calls 200000] [--bootstrap 127.0.0.1:9092]

Measures, in one run on the same machine: per-call latency of a bare
confluent-kafka ``produce()`` enqueue (the floor), of ``record()`` with Kafka up,
and of ``record()`` with Kafka unreachable. Writes bench/results/tap_overhead.json
and .md. Kafka must answer at --bootstrap for the "up" case (shadowline kafka up).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from shadowline.config import parse_config
from shadowline.envelopes import Request, now_ms
from shadowline.kafka import create_topics, make_producer, ping
from shadowline.tap import Mirror

OUT = Path(__file__).resolve().parent / "results"
INPUTS = {f"f{i}": float(i) * 0.5 for i in range(30)}
OUTPUT = {"label": 1, "probabilities": {"0": 0.2, "1": 0.8}}


def _config(bootstrap: str, queue: int) -> Any:
    return parse_config(
        {
            "kafka": {"bootstrap_servers": bootstrap, "namespace": f"bench{uuid.uuid4().hex[:6]}."},
            "tap": {"queue_size": queue, "close_timeout_s": 2.0},
            "experiments": [
                {
                    "name": "b",
                    "production_model": "p",
                    "candidates": [{"name": "c", "model": "m:f"}],
                }
            ],
        },
        env={},
    )


def _stats(samples_ns: np.ndarray) -> dict[str, float]:
    us = samples_ns / 1000.0
    return {
        "p50_us": round(float(np.percentile(us, 50)), 3),
        "p99_us": round(float(np.percentile(us, 99)), 3),
        "p999_us": round(float(np.percentile(us, 99.9)), 3),
        "mean_us": round(float(us.mean()), 3),
    }


def bench_bare_produce(config: Any, calls: int) -> dict[str, float]:
    producer = make_producer(config.kafka, **{"queue.buffering.max.messages": calls * 3})
    topic = config.kafka.topic("requests")
    value = Request("r", "b", now_ms(), INPUTS).encode()
    samples = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        producer.produce(topic, value=value, key=b"r")
        samples[i] = clock() - t0
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(30)
    return _stats(samples)


def bench_record(config: Any, calls: int) -> tuple[dict[str, float], dict[str, Any]]:
    mirror = Mirror(config)
    samples = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    record = mirror.record
    for i in range(calls):
        rid = f"req-{i}"
        t0 = clock()
        record(
            experiment="b", request_id=rid, inputs=INPUTS, output=OUTPUT, latency_ms=0.4, model="p"
        )
        samples[i] = clock() - t0
    mirror.close()
    return _stats(samples), mirror.counters.snapshot()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()
    up = _config(args.bootstrap, queue=args.calls + 10)
    if not ping(up.kafka):
        raise SystemExit(f"Kafka does not answer at {args.bootstrap}: run `shadowline kafka up`")
    create_topics(up)
    bare = bench_bare_produce(up, args.calls)
    rec_up, counters_up = bench_record(up, args.calls)
    down = _config("127.0.0.1:1", queue=100_000)
    rec_down, counters_down = bench_record(down, args.calls)
    result = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "calls": args.calls,
        "bare_produce": bare,
        "record_kafka_up": rec_up,
        "record_kafka_down": rec_down,
        "ratio_record_up_to_bare_p50": round(rec_up["p50_us"] / bare["p50_us"], 2),
        "ratio_record_up_to_bare_p99": round(rec_up["p99_us"] / bare["p99_us"], 2),
        "counters_kafka_up": counters_up,
        "counters_kafka_down": counters_down,
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "tap_overhead.json").write_text(json.dumps(result, indent=2))
    rows = [
        ("bare produce() enqueue", bare),
        ("Mirror.record(), Kafka up", rec_up),
        ("Mirror.record(), Kafka down", rec_down),
    ]
    md = ["| per call | p50 µs | p99 µs | p99.9 µs |", "|---|---|---|---|"]
    md += [f"| {name} | {s['p50_us']} | {s['p99_us']} | {s['p999_us']} |" for name, s in rows]
    md.append(
        f"\n{args.calls} calls each; Kafka down: {counters_down['dropped_queue_full']} dropped "
        f"(queue full), {counters_down['failed']} failed, "
        f"{counters_down['undelivered_at_close']} undelivered at close; the caller saw no error."
    )
    (OUT / "tap_overhead.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
