"""Benchmark: end-to-end freshness at a steady offered load, and memory over the run.

    .venv/bin/python bench/freshness.py [--rate 1000,2500,5000] [--seconds 60]
        [--candidates 2] [--bootstrap 127.0.0.1:9092]

For each rate, on fresh topics: runs worker, joiner and sink as processes, mirrors
that many requests/s for `--seconds` from a serving thread, and reports p50/p99 of
(time the row was inserted and so became queryable) - (time record() was called),
computed by ClickHouse from `inserted_at - event_time`. Every 5 s it samples each
component's resident memory, so a long run (`--rate 5000 --seconds 600`) is the soak
test: compare the first and last samples. Writes bench/results/freshness.json and .md
(soak.json and .md for runs of 300 s or more).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import tomli_w

from shadowline import kafka
from shadowline.config import load_config
from shadowline.supervisor import Pipeline
from shadowline.tap import Mirror
from shadowline.warehouse import Warehouse, embedded_server_answers

OUT = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
PROBS = {"0": 0.3, "1": 0.7}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_pid() -> int | None:
    """The Kafka broker on this host (for its CPU share), if one runs here."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"kafka.Kafka" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    return None


def run_once(rate: float, seconds: float, candidates: int, bootstrap: str) -> dict[str, Any]:
    """One steady load on fresh topics; freshness and memory samples."""
    tmp = Path(tempfile.mkdtemp(prefix="shadowline-fresh-"))
    ns = f"fresh{uuid.uuid4().hex[:8]}."
    path = tmp / "shadowline.toml"
    path.write_text(
        tomli_w.dumps(
            {
                "kafka": {"bootstrap_servers": bootstrap, "namespace": ns, "partitions": 3},
                "warehouse": {"path": str(tmp / "wh"), "port": 18500 + os.getpid() % 400,
                              "flush_interval_s": 0.2},
                "joiner": {"app_id": f"{ns}joiner", "data_dir": str(tmp / "j"),
                           "tick_interval_s": 0.5, "late_grace_s": 30},
                "metrics": {"worker_port": 0, "joiner_port": 0, "sink_port": 0},
                "experiments": [{
                    "name": "fresh", "production_model": "prod", "window_s": 30,
                    "candidates": [{"name": f"echo{i}", "model": "tests.fixtures.models:EchoModel",
                                    "batch_size": 64} for i in range(candidates)],
                }],
            }
        )
    )  # fmt: skip
    config = load_config(path)
    kafka.create_topics(config)
    pipeline = Pipeline(path, log_dir=tmp / "logs", env={"PYTHONPATH": str(ROOT)})
    pipeline.start()
    samples: list[dict[str, float]] = []
    try:
        groups = [f"{ns}workers", f"{ns}joiner", f"{ns}sink"]
        while not (embedded_server_answers(config) and kafka.groups_ready(config.kafka, groups)):
            pipeline.check()
            time.sleep(0.2)
        mirror = Mirror(config)
        stop = threading.Event()
        sent = 0
        lag_s = 0.0

        def serve() -> None:
            nonlocal sent, lag_s
            # Sent in ticks of 1 ms worth of requests: one sleep per request cannot
            # keep 5,000/s on a loaded 2-core machine.
            per_tick = max(1, round(rate / 1000))
            interval = per_tick / rate
            next_at = time.monotonic()
            end = next_at + seconds
            while next_at < end and not stop.is_set():
                for _ in range(per_tick):
                    mirror.record(
                        experiment="fresh", request_id=f"r-{sent}", model="prod",
                        latency_ms=1.0, inputs={"label": 1, "probabilities": PROBS},
                        output={"label": 1, "probabilities": PROBS},
                    )  # fmt: skip
                    sent += 1
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    lag_s = max(lag_s, -delay)  # the serving loop itself fell behind

        thread = threading.Thread(target=serve)
        pids = {name: p.pid for name, p in pipeline.procs.items()}
        pids["load generator + tap"] = os.getpid()
        if (bp := broker_pid()) is not None:
            pids["broker"] = bp
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        thread.start()
        while thread.is_alive():
            pipeline.check()
            samples.append(
                {"t": round(time.monotonic() - started, 1)}
                | {name: round(rss_mb(p.pid), 1) for name, p in pipeline.procs.items()}
            )
            thread.join(timeout=5)
        loaded = time.monotonic() - started
        # cores each process used while the load ran
        cores = {n: round((cpu_seconds(pid) - cpu0[n]) / loaded, 2) for n, pid in pids.items()}
        mirror.close()
        wh = Warehouse.open_reader(config)
        deadline = time.monotonic() + 300
        expected = sent * candidates
        while wh.query("SELECT count() AS n FROM comparisons_final")[0]["n"] < expected:
            pipeline.check()
            if time.monotonic() > deadline:
                raise SystemExit("rows did not all arrive within 300 s after the load stopped")
            time.sleep(0.5)
        fresh = wh.query(
            "SELECT quantile(0.5)(d) AS p50, quantile(0.99)(d) AS p99, max(d) AS max, "
            "countIf(status != 'matched') AS unmatched "
            "FROM (SELECT dateDiff('millisecond', event_time, inserted_at) AS d, status "
            "FROM comparisons_final)"
        )[0]
        wh.close()
    finally:
        pipeline.stop()
    first, last = samples[0], samples[-1]
    return {
        "offered_rate_per_s": rate,
        "achieved_rate_per_s": round(sent / seconds, 1),
        "seconds": seconds,
        "candidates": candidates,
        "requests": sent,
        "serving_loop_max_lag_s": round(lag_s, 3),
        "freshness_ms": {k: round(float(v), 1) for k, v in fresh.items()},
        "rss_mb_first_last": {n: [first[n], last[n]] for n in pipeline.procs},
        "cores_used_during_load": cores,
        "rss_mb_samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", default="1000,2500,5000", help="requests/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()
    runs = [
        run_once(float(r), args.seconds, args.candidates, args.bootstrap)
        for r in args.rate.split(",")
    ]
    OUT.mkdir(exist_ok=True)
    name = "freshness" if args.seconds < 300 else "soak"
    (OUT / f"{name}.json").write_text(json.dumps(runs, indent=2))
    md = [
        "| offered load | achieved | requests | rows not matched | freshness p50 ms | p99 ms "
        "| max ms | RSS MB first -> last (worker, joiner, sink) | cores used during the load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        f = r["freshness_ms"]
        rss = r["rss_mb_first_last"]
        mem = ", ".join(f"{rss[c][0]} -> {rss[c][1]}" for c in ("worker", "joiner", "sink"))
        md.append(
            f"| {r['offered_rate_per_s']:g}/s for {r['seconds']:g} s "
            f"| {r['achieved_rate_per_s']:g}/s | {r['requests']} | {f['unmatched']:g} "
            f"| {f['p50']} | {f['p99']} | {f['max']} | {mem} "
            f"| {', '.join(f'{n} {c}' for n, c in r['cores_used_during_load'].items())} |"
        )
    md.append(f"\n{args.candidates} candidates (EchoModel, batch 64), 3 partitions, "
              f"{os.cpu_count()} CPUs, broker and load generator on the same host.")  # fmt: skip
    (OUT / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
