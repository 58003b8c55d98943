"""Benchmark: `shadowline backtest` over a range of mirrored requests, beside the live
worker scoring the same requests with the same model, in one run on one machine.

    .venv/bin/python bench/backtest.py [--requests 1000000] [--small 100000]
        [--bootstrap 127.0.0.1:29092]

Rates are of reading, scoring and storing (what the backtest prints on stderr; start-up
and the verdict's queries apart, reported as `seconds_in_all`), the worker's of its
steady state. The requests and production's answers are produced to Kafka first (as the tap would
have); the live pipeline (worker, joiner, sink) then judges them, each process's CPU
counted (the worker's rate per CPU-second is the target; a backtest does the work of
all three);
then `shadowline backtest` replays the range from Kafka's log into the embedded
warehouse, and again over the first ``--small`` requests, so memory for a range ten
times larger sits beside it. Memory is sampled every 0.5 s (RSS) and its peak (VmHWM)
read at the end. Writes bench/results/backtest.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w

from shadowline import kafka
from shadowline.config import Config, load_config
from shadowline.envelopes import Prediction, Request, now_ms
from shadowline.supervisor import Pipeline
from shadowline.warehouse import Warehouse, embedded_server_answers

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import cpu_seconds, topic_count  # noqa: E402  the same counters

OUT = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
PROBS = {"0": 0.3, "1": 0.7}
MODEL = "tests.fixtures.models:EchoModel"


def make_config(tmp: Path, bootstrap: str) -> tuple[Config, Path]:
    ns = f"bench{uuid.uuid4().hex[:8]}."
    data = {
        "kafka": {"bootstrap_servers": bootstrap, "namespace": ns, "partitions": 3},
        "warehouse": {"path": str(tmp / "wh"), "port": 18000 + os.getpid() % 1000},
        "experiments": [
            {
                "name": "bench",
                "production_model": "prod",
                "window_s": 2,
                "candidates": [{"name": "echo", "model": MODEL, "batch_size": 256}],
            }
        ],
    }
    path = tmp / "shadowline.toml"
    path.write_text(tomli_w.dumps(data))
    config = load_config(path)
    kafka.create_topics(config)
    return config, path


def produce_traffic(config: Config, n: int, small: int) -> tuple[float, int]:
    """Requests and production's answers stamped as they are produced (as the tap
    stamps them); returns the seconds it took and the event time the small range ends."""
    producer = kafka.make_producer(config.kafka, **{"queue.buffering.max.messages": 1_000_000})
    req_t, pred_t = config.kafka.topic("requests"), config.kafka.topic("predictions")
    headers: list[tuple[str, str | bytes | None]] = [("content-type", b"avro/binary")]
    started = time.perf_counter()
    t = small_end = now_ms()
    for i in range(n):
        rid = f"b-{i:08d}"
        if i % 1000 == 0:
            t = now_ms()
        if i == small:
            small_end = t
        inputs = {"n": i, "label": i % 2, "probabilities": PROBS}
        key = rid.encode()
        for topic, value in (
            (req_t, Request(rid, "bench", t, inputs, unit_id=f"u{i % 997}").encode()),
            (pred_t, Prediction(rid, "bench", "production", "prod",
                                {"label": 1, "probabilities": PROBS}, 1.5, t).encode()),
        ):  # fmt: skip
            while True:
                try:
                    producer.produce(topic, key=key, value=value, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(300)
    return time.perf_counter() - started, small_end


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def live_pipeline(config: Config, path: Path, tmp: Path, n: int) -> dict[str, Any]:
    """Worker, joiner and sink on the same requests, until every row is stored: each
    one's rate per CPU-second (start-up apart), and the three together."""
    pipeline = Pipeline(path, log_dir=tmp / "logs", env={"PYTHONPATH": str(ROOT)})
    pipeline.start()
    try:
        names = ("worker", "joiner", "sink")
        pids = {c: pipeline.procs[c].pid for c in names}
        ns = config.kafka.namespace
        groups = [f"{ns}workers", config.joiner.app_id, f"{ns}sink"]
        while not (embedded_server_answers(config) and kafka.groups_ready(config.kafka, groups)):
            pipeline.check()
            time.sleep(0.2)
        started = time.perf_counter()
        cpu0 = {c: cpu_seconds(p) for c, p in pids.items()}
        worker_done: float | None = None
        while True:
            pipeline.check()
            if worker_done is None and topic_count(config, "predictions") >= 2 * n:
                worker_done = time.perf_counter() - started
                worker_cpu = cpu_seconds(pids["worker"]) - cpu0["worker"]
            wh = Warehouse.open_reader(config)
            try:
                stored = int(wh.query("SELECT count() AS n FROM comparisons")[0]["n"])
            finally:
                wh.close()
            if stored >= n:
                break
            time.sleep(1.0)
        elapsed = time.perf_counter() - started
        cpu = {c: cpu_seconds(p) - cpu0[c] for c, p in pids.items()}
        rss = {c: round(_status_mb(p, "VmHWM:"), 1) for c, p in pids.items()}
    finally:
        pipeline.stop()
    assert worker_done is not None
    total = sum(cpu.values())
    return {
        "requests": n,
        "worker": {
            "seconds": round(worker_done, 2),
            "requests_per_s": round(n / worker_done),
            "cpu_seconds": round(worker_cpu, 2),
            "requests_per_cpu_s": round(n / worker_cpu),
            "peak_rss_mb": rss["worker"],
        },
        "pipeline": {
            "seconds": round(elapsed, 2),
            "requests_per_s": round(n / elapsed),
            "cpu_seconds": {c: round(v, 2) for c, v in cpu.items()},
            "requests_per_cpu_s": round(n / total),
            "peak_rss_mb": rss,
        },
    }


def backtest(path: Path, since: datetime, until: datetime, tmp: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "shadowline", "backtest", "-c", str(path), "bench",
           "--candidate", f"replay={MODEL}", "--since", since.isoformat(), "--until",
           until.isoformat(), "--source", "kafka", "--json", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    samples: list[tuple[float, float]] = []
    peak: list[float] = [0.0]
    cpu: list[float] = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            try:
                samples.append((time.perf_counter() - started, _status_mb(proc.pid, "VmRSS:")))
                peak[0] = _status_mb(proc.pid, "VmHWM:")
                cpu[0] = cpu_seconds(proc.pid)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                break
            time.sleep(0.5)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = proc.communicate(timeout=3600)
    elapsed = time.perf_counter() - started
    watcher.join(5)
    if proc.returncode not in (0, 1, 2):
        raise SystemExit(f"backtest failed ({proc.returncode}): {err.decode()[-3000:]}")
    result = json.loads(out)
    bt = result["backtest"]
    # "N requests read, scored and stored in S s (R/s; C CPU s, ...)" on stderr.
    m = re.search(r"stored in ([0-9.]+) s \([0-9,]+/s; ([0-9.]+) CPU s", err.decode())
    if m is None:
        raise SystemExit(f"no timing line in: {err.decode()[-2000:]}")
    scoring_s, scoring_cpu = float(m.group(1)), float(m.group(2))
    rss = [mb for _, mb in samples]
    # The RSS over the middle of the run (past start-up, before the verdict's queries).
    middle = rss[len(rss) // 5 : max(len(rss) // 5 + 1, 4 * len(rss) // 5)]
    return {
        "requests": bt["requests"],
        "rows": bt["rows"],
        "seconds": round(scoring_s, 2),
        "requests_per_s": round(bt["requests"] / scoring_s),
        "cpu_seconds": round(scoring_cpu, 2),
        "requests_per_cpu_s": round(bt["requests"] / scoring_cpu),
        "seconds_in_all": round(elapsed, 2),
        "cpu_seconds_in_all": round(cpu[0], 2),
        "peak_rss_mb": round(peak[0], 1),
        "rss_mid_run_mb": [round(min(middle), 1), round(max(middle), 1)] if middle else None,
        "verdict": result["verdict"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--bootstrap", default=os.environ.get("SHADOWLINE_TEST_BOOTSTRAP",
                                                              "127.0.0.1:29092"))  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sl-bench-backtest-") as d:
        tmp = Path(d)
        config, path = make_config(tmp, args.bootstrap)
        t0 = now_ms()
        since = datetime.fromtimestamp(t0 / 1000, tz=UTC) - timedelta(seconds=1)
        produced_s, small_end = produce_traffic(config, args.requests, args.small)
        until = datetime.now(UTC) + timedelta(seconds=1)
        print(f"produced {args.requests} requests and answers in {produced_s:.1f}s", flush=True)
        live = live_pipeline(config, path, tmp, args.requests)
        worker = live["worker"]
        print(f"live: {live}", flush=True)
        # The small range is a prefix: the requests before the small-th one's millisecond.
        small_until = datetime.fromtimestamp(small_end / 1000, tz=UTC)
        small = backtest(path, since, small_until, tmp)
        print(f"backtest {args.small}: {small}", flush=True)
        large = backtest(path, since, until, tmp)
        print(f"backtest {args.requests}: {large}", flush=True)
    result = {
        "requests": args.requests,
        "model": MODEL,
        "live_worker": worker,
        "live_pipeline": live["pipeline"],
        "backtest_small": small,
        "backtest": large,
        "rate_ratio_to_worker_per_cpu_s": round(
            large["requests_per_cpu_s"] / worker["requests_per_cpu_s"], 2
        ),
        "rate_ratio_to_pipeline_per_cpu_s": round(
            large["requests_per_cpu_s"] / live["pipeline"]["requests_per_cpu_s"], 2
        ),
        "peak_rss_ratio_large_to_small": round(large["peak_rss_mb"] / small["peak_rss_mb"], 2),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "backtest.json").write_text(json.dumps(result, indent=2))
    lines = [
        "| run | requests | seconds | requests/s | CPU s | requests per CPU s | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    pipe = live["pipeline"]
    lines.append(
        f"| live worker + joiner + sink | {args.requests:,} | {pipe['seconds']} | "
        f"{pipe['requests_per_s']:,} | {round(sum(pipe['cpu_seconds'].values()), 2)} | "
        f"{pipe['requests_per_cpu_s']:,} | "
        f"{' / '.join(str(v) for v in pipe['peak_rss_mb'].values())} |"
    )
    for name, r in (("live worker alone", worker), (f"backtest {args.small:,}", small),
                    (f"backtest {args.requests:,}", large)):  # fmt: skip
        lines.append(
            f"| {name} | {r.get('requests', args.requests):,} | {r['seconds']} | "
            f"{r['requests_per_s']:,} | {r['cpu_seconds']} | {r['requests_per_cpu_s']:,} | "
            f"{r['peak_rss_mb']} |"
        )
    (OUT / "backtest.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
