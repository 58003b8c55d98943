"""Benchmark: throughput of worker, joiner and sink each in isolation and of the whole
pipeline, next to a bare confluent-kafka consumer reading the same messages, plus each
component's peak memory. One run, one machine, side by side.

    .venv/bin/python bench/throughput.py [--requests 20000] [--bootstrap 127.0.0.1:9092]

Each stage runs as its own process (as in production). It is started first and waits
on empty topics; then its input is produced in bulk and the clock runs from the first
message produced to the last output counted, so start-up is not measured. Writes
bench/results/throughput.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import tomli_w

from shadowline import kafka
from shadowline.config import Config, load_config
from shadowline.envelopes import Comparison, Prediction, Request, now_ms
from shadowline.supervisor import Pipeline
from shadowline.warehouse import Warehouse, embedded_server_answers

OUT = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
PROBS = {"0": 0.3, "1": 0.7}
CANDIDATES = 2


def make_config(tmp: Path, bootstrap: str, engine: str = "confluent") -> tuple[Config, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    ns = f"bench{uuid.uuid4().hex[:8]}."
    data = {
        "kafka": {"bootstrap_servers": bootstrap, "namespace": ns, "partitions": 3},
        "warehouse": {"path": str(tmp / "wh"), "port": 18000 + os.getpid() % 1000},
        "joiner": {"app_id": f"{ns}joiner", "data_dir": str(tmp / "joiner"), "engine": engine},
        "experiments": [
            {
                "name": "bench",
                "production_model": "prod",
                "window_s": 60,
                "candidates": [
                    {
                        "name": f"echo{i}",
                        "model": "tests.fixtures.models:EchoModel",
                        "batch_size": 256,
                    }
                    for i in range(CANDIDATES)
                ],
            }
        ],
    }
    path = tmp / "shadowline.toml"
    path.write_text(tomli_w.dumps(data))
    config = load_config(path)
    kafka.create_topics(config)
    return config, path


def encoded_inputs(n: int, prefix: str = "b") -> dict[str, list[tuple[bytes, bytes]]]:
    t = now_ms()
    out: dict[str, list[tuple[bytes, bytes]]] = {"requests": [], "production": [], "candidates": []}
    for i in range(n):
        rid = f"{prefix}-{i}"
        out["requests"].append(
            (
                rid.encode(),
                Request(rid, "bench", t, {"n": i, "label": 1, "probabilities": PROBS}).encode(),
            )
        )
        out["production"].append(
            (
                rid.encode(),
                Prediction(
                    rid, "bench", "production", "prod", {"label": 1, "probabilities": PROBS}, 1.0, t
                ).encode(),
            )
        )
        for c in range(CANDIDATES):
            out["candidates"].append(
                (
                    rid.encode(),
                    Prediction(
                        rid,
                        "bench",
                        "candidate",
                        f"echo{c}",
                        {"label": 1, "probabilities": PROBS},
                        2.0,
                        t,
                    ).encode(),
                )
            )
    return out


def produce(config: Config, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = kafka.make_producer(config.kafka, **{"queue.buffering.max.messages": 2_000_000})
    name = config.kafka.topic(topic)
    headers: list[tuple[str, str | bytes | None]] = [("content-type", b"avro/binary")]
    for key, value in messages:
        producer.produce(name, key=key, value=value, headers=headers)
    producer.flush(120)


def topic_count(config: Config, topic: str) -> int:
    consumer = kafka.make_consumer(config.kafka, f"bench-count-{uuid.uuid4().hex[:6]}")
    name = config.kafka.topic(topic)
    md = consumer.list_topics(name, timeout=10).topics[name]
    total = 0
    for p in md.partitions:
        low, high = consumer.get_watermark_offsets(kafka.TopicPartition(name, p), timeout=10)
        total += high - low
    consumer.close()
    return total


def _decoder(config: Config) -> Any:
    """The project's decoder for a topic's messages (what any stage must pay)."""
    requests = config.kafka.topic("requests")

    def decode(msg: Any) -> Any:
        ctype = kafka.header(msg, "content-type")
        t = msg.topic()
        if t == requests:
            return Request.from_message(msg.key(), msg.value(), ctype)
        if t.endswith("comparisons"):
            return Comparison.from_message(msg.key(), msg.value(), ctype)
        return Prediction.from_message(msg.key(), msg.value(), ctype)

    return decode


def consume_rate(config: Config, topics: list[str], expected: int, decode: bool) -> float:
    """Events/s of a confluent-kafka consumer reading ``topics`` in batches of 1,000,
    decoding and validating each message with the project's decoder if ``decode``."""
    consumer = kafka.make_consumer(config.kafka, f"bench-floor-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([config.kafka.topic(t) for t in topics])
    dec = _decoder(config)
    got = 0
    start = None
    while got < expected:
        # Never ask for more than is left: consume() would wait out its timeout.
        msgs = consumer.consume(num_messages=min(1000, expected - got), timeout=1.0)
        if msgs and start is None:
            start = time.perf_counter()
        for m in msgs:
            if m.error() is None:
                got += 1
                if decode:
                    dec(m)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    return got / elapsed


def faust_floor(path: Path, expected: int) -> dict[str, Any]:
    """Faust reading the same messages and doing nothing (bench/faust_floor.py)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "faust_floor.py"), str(path), str(expected)],
        capture_output=True, text=True, timeout=600, env=os.environ | {"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    for line in out.stdout.splitlines():
        if '{"events"' in line:  # Faust may put terminal control codes first
            return json.loads(line[line.index('{"events"') :])
    raise SystemExit(f"faust_floor.py failed: {out.stderr[-2000:]}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_groups(config: Config, pipeline: Pipeline, groups: list[str]) -> None:
    deadline = time.monotonic() + 120
    while not kafka.groups_ready(config.kafka, groups):
        pipeline.check()
        if time.monotonic() > deadline:
            raise SystemExit(f"groups {groups} not ready")
        time.sleep(0.2)


def run_stage(
    config: Config,
    path: Path,
    components: tuple[str, ...],
    feed: list[tuple[str, list]],
    count: Any,
    target: int,
    tmp: Path,
    warmup: tuple[list[tuple[str, list]], int] | None = None,
) -> dict[str, Any]:
    """Run ``components``; once ``warmup`` (a feed and the output count it makes) is
    through, produce ``feed`` and time until ``count()`` reaches ``target``."""
    pipeline = Pipeline(
        path, components=components, log_dir=tmp / "logs", env={"PYTHONPATH": str(ROOT)}
    )
    pipeline.start()
    try:
        group_of = {
            "worker": f"{config.kafka.namespace}workers",
            "joiner": config.joiner.app_id,
            "sink": f"{config.kafka.namespace}sink",
        }
        if "sink" in components:
            while not embedded_server_answers(config):
                pipeline.check()
                time.sleep(0.2)
        wait_groups(config, pipeline, [group_of[c] for c in components])
        if warmup is not None:
            # Ready in the group is not yet working (Faust recovers its tables first):
            # a small warm-up batch keeps start-up out of the measured time.
            for topic, messages in warmup[0]:
                produce(config, topic, messages)
            while count() < warmup[1]:
                pipeline.check()
                time.sleep(0.2)
        start = time.perf_counter()
        cpu0 = {c: cpu_seconds(pipeline.procs[c].pid) for c in components}
        for topic, messages in feed:
            produce(config, topic, messages)
        while count() < target:
            pipeline.check()
            time.sleep(0.2)
        elapsed = time.perf_counter() - start
        cpu = {c: cpu_seconds(pipeline.procs[c].pid) - cpu0[c] for c in components}
        rss = {c: round(peak_rss_mb(pipeline.procs[c].pid), 1) for c in components}
    finally:
        pipeline.stop()
    events = sum(len(m) for _, m in feed)
    return {
        "seconds": round(elapsed, 3),
        "input_events_per_s": round(events / elapsed, 1),
        "peak_rss_mb": rss[components[0]] if len(components) == 1 else rss,
        # share of one core each process used while measured
        "cpu_utilisation": {c: round(cpu[c] / elapsed, 2) for c in components},
    }


def warehouse_rows(config: Config) -> Any:
    def count() -> int:
        wh = Warehouse.open_reader(config)
        try:
            return int(wh.query("SELECT count() AS n FROM comparisons")[0]["n"])
        finally:
            wh.close()

    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()
    n = args.requests
    tmp = Path(tempfile.mkdtemp(prefix="shadowline-bench-"))
    config, path = make_config(tmp, args.bootstrap)
    data = encoded_inputs(n)
    pairs = n * CANDIDATES
    w = max(200, n // 50)
    warm = encoded_inputs(w, prefix="w")
    w_pairs = w * CANDIDATES

    def topic_counter(cfg: Config, topic: str) -> Any:
        # One consumer for all the polls: building one per poll cost enough CPU to
        # slow the stage being measured on a 2-core machine.
        consumer = kafka.make_consumer(cfg.kafka, f"bench-count-{uuid.uuid4().hex[:6]}")
        name = cfg.kafka.topic(topic)
        parts = [
            kafka.TopicPartition(name, p)
            for p in consumer.list_topics(name, timeout=10).topics[name].partitions
        ]

        def count() -> int:
            total = 0
            for tp in parts:
                low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
                total += high - low
            return total

        return count

    # worker: requests in, predictions out
    worker = run_stage(
        config, path, ("worker",), [("requests", data["requests"])],
        topic_counter(config, "predictions"), w_pairs + pairs, tmp,
        warmup=([("requests", warm["requests"])], w_pairs),
    )  # fmt: skip

    # joiner, each engine on its own topics: requests + production + candidate
    # predictions in, comparisons out.
    joiner_events = n + n + pairs

    def joiner_feed(d: dict[str, list]) -> list[tuple[str, list]]:
        return [
            ("requests", d["requests"]),
            ("predictions", d["production"]),
            ("predictions", d["candidates"]),
        ]

    joiners: dict[str, dict[str, Any]] = {}
    j_configs: dict[str, tuple[Config, Path]] = {}
    for engine in ("confluent", "faust"):
        j_config, j_path = make_config(tmp / f"joiner-{engine}", args.bootstrap, engine)
        j_configs[engine] = (j_config, j_path)
        joiners[engine] = run_stage(
            j_config, j_path, ("joiner",), joiner_feed(data),
            topic_counter(j_config, "comparisons"), w_pairs + pairs, tmp / f"joiner-{engine}",
            warmup=(joiner_feed(warm), w_pairs),
        )  # fmt: skip
        joiners[engine]["input_events_per_s"] = round(joiner_events / joiners[engine]["seconds"], 1)
    j_config, j_path = j_configs["confluent"]
    faust_nothing = faust_floor(j_configs["faust"][1], joiner_events + 2 * w + w_pairs)

    # sink: the joiner's comparisons in (already there: start-up is inside its time)
    sink = run_stage(
        j_config, j_path, ("sink",), [], warehouse_rows(j_config), w_pairs + pairs, tmp
    )
    sink["input_events_per_s"] = round((w_pairs + pairs) / sink["seconds"], 1)

    # the whole pipeline on fresh topics: requests + production predictions in, rows out
    p_config, p_path = make_config(tmp / "pipeline", args.bootstrap)
    whole = run_stage(
        p_config, p_path, ("sink", "joiner", "worker"),
        [("requests", data["requests"]), ("predictions", data["production"])],
        warehouse_rows(p_config), w_pairs + pairs, tmp / "pipeline",
        warmup=([("requests", warm["requests"]), ("predictions", warm["production"])], w_pairs),
    )  # fmt: skip
    whole["requests_per_s"] = round(n / whole["seconds"], 1)
    whole["input_events_per_s"] = round(2 * n / whole["seconds"], 1)

    # The floors, on the same messages: a confluent-kafka consumer in batches of 1,000,
    # with and without the project's decoder.
    inputs = {
        "worker": (config, ["requests"], w + n),
        "joiner": (j_config, ["requests", "predictions"], joiner_events + 2 * w + w_pairs),
        "sink": (j_config, ["comparisons"], w_pairs + pairs),
        "pipeline": (p_config, ["requests", "predictions"], 2 * (w + n)),
    }
    floors: dict[str, dict[str, float]] = {
        stage: {
            "consume": round(consume_rate(cfg, topics, count, decode=False), 1),
            "consume_and_decode": round(consume_rate(cfg, topics, count, decode=True), 1),
        }
        for stage, (cfg, topics, count) in inputs.items()
    }
    stages = {"worker": worker, "joiner": joiners["confluent"], "joiner (faust engine)":
              joiners["faust"], "sink": sink, "pipeline": whole}  # fmt: skip
    for name, st in stages.items():
        floor = floors[name.split(" ", 1)[0]]["consume_and_decode"]
        st["ratio_to_decode_floor"] = round(st["input_events_per_s"] / floor, 3)
    result = {
        "requests": n,
        "candidates": CANDIDATES,
        "cpus": os.cpu_count(),
        "floors_events_per_s": floors,
        "stages": stages,
        "faust_agent_doing_nothing_events_per_s": faust_nothing["events_per_s"],
        "joiner_engines_ratio": round(
            joiners["confluent"]["input_events_per_s"] / joiners["faust"]["input_events_per_s"], 2
        ),
    }
    OUT.mkdir(exist_ok=True)
    (OUT / "throughput.json").write_text(json.dumps(result, indent=2))
    md = [
        "| stage | events/s | consume + decode floor, same messages | ratio to floor "
        "| consume only | CPU (cores) | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, st in stages.items():
        fl = floors[name.split(" ", 1)[0]]
        cpu = st["cpu_utilisation"]
        rss = st["peak_rss_mb"]
        rss_text = ", ".join(f"{c} {v}" for c, v in rss.items()) if isinstance(rss, dict) else rss
        md.append(
            f"| {name} | {st['input_events_per_s']:,.0f} | {fl['consume_and_decode']:,.0f} "
            f"| {st['ratio_to_decode_floor']} | {fl['consume']:,.0f} "
            f"| {', '.join(f'{c} {v}' for c, v in cpu.items())} "
            f"| {rss_text} |"
        )
    rates = {e: f"{j['input_events_per_s']:,.0f}" for e, j in joiners.items()}
    md.append(
        f"\nJoiner engines, same messages: confluent {rates['confluent']} events/s, "
        f"faust {rates['faust']} "
        f"({result['joiner_engines_ratio']}x); a Faust agent doing nothing reads "
        f"{faust_nothing['events_per_s']:,.0f}/s (`bench/faust_floor.py`)."
    )
    md.append(
        f"\n{n} requests, {CANDIDATES} candidates (EchoModel, batch 256), 3 partitions, "
        f"{os.cpu_count()} CPUs; the pipeline reads requests + production predictions "
        f"({whole['requests_per_s']:,.0f} requests/s)."
    )
    (OUT / "throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
