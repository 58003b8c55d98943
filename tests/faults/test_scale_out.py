"""Scale-out on the real broker: two workers, two joiners and one sink in their groups.

Partners must meet whichever joiner owns their partition and however often the
partitions move: kills, restarts and graceful leaves rebalance the joiners while
traffic flows, and every request still ends exactly once per candidate with the
values its models gave. Input produced by a Java service with the Java client's
defaults pairs too.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from shadowline import broker
from shadowline.envelopes import Prediction, Request, now_ms
from shadowline.kafka import group_members, make_producer
from shadowline.partitioning import partition_for
from shadowline.tap import Mirror
from tests.faults.test_crashes import EXPERIMENT, PROBS, Traffic
from tests.integration.helpers import members, rows, start_pipeline, wait_for

pytestmark = pytest.mark.integration

JAVA_PRODUCER = Path(__file__).resolve().parent.parent / "fixtures" / "java" / "MirrorProducer.java"
SCALED = ("sink", "joiner", "joiner-2", "worker", "worker-2")


def test_two_joiners_and_two_workers_lose_nothing_through_kills_and_rebalances(
    config_factory, child_env, tmp_path
):
    config, path = config_factory([EXPERIMENT])
    joiners, workers = config.joiner.app_id, f"{config.kafka.namespace}workers"
    logs = tmp_path / "logs"
    pipeline = start_pipeline(config, path, child_env, logs, components=SCALED)
    rebalances = 0
    try:
        wait_for(lambda: members(config, joiners, 2) and members(config, workers, 2), 90,
                 "two joiners and two workers", pipeline)  # fmt: skip
        with Mirror(config) as mirror, Traffic(mirror, rate=150) as traffic:
            time.sleep(3)
            # kill -9 a joiner: once its session expires the survivor takes its
            # partitions and restores their state from the changelog
            pipeline.kill("joiner-2")
            wait_for(lambda: members(config, joiners, 1), 60, "the survivor alone", pipeline)
            time.sleep(2)
            pipeline.start_one("joiner-2")  # the rejoin revokes and re-assigns the survivor
            wait_for(lambda: members(config, joiners, 2), 60, "joiner-2 back", pipeline)
            rebalances += 2
            # graceful joins and leaves: a rebalance each, seconds apart, under traffic
            for _ in range(2):
                time.sleep(2)
                pipeline.start_one("joiner-3")
                wait_for(lambda: members(config, joiners, 3), 60, "joiner-3 in", pipeline)
                time.sleep(2)
                assert pipeline.terminate("joiner-3") == 0
                wait_for(lambda: members(config, joiners, 2), 60, "joiner-3 out", pipeline)
                rebalances += 2
            pipeline.kill("worker-2")
            pipeline.start_one("worker-2")
            wait_for(lambda: members(config, workers, 2), 60, "worker-2 back", pipeline)
            pipeline.kill("sink")
            pipeline.start_one("sink")
            time.sleep(3)
        assert traffic.errors == []
        assert mirror.counters.delivered == 2 * traffic.sent
        sent = traffic.sent
        expected = sent * len(EXPERIMENT["candidates"])
        sql = (
            "SELECT count() AS n, uniqExact(request_id, candidate_model) AS u, "
            "countIf(status IN ('matched', 'late')) AS paired, "
            "countIf(candidate_model = 'echo' AND agree AND candidate_output = "
            "production_output) AS echo_right, "
            "countIf(candidate_model = 'flip' AND NOT agree) AS flip_right, "
            "uniqExact(request_id) AS requests FROM comparisons_final"
        )
        wait_for(lambda: rows(config, sql)[0]["n"] >= expected, 180, f"{expected} rows", pipeline)
        time.sleep(2)  # a duplicate would arrive now
        got = rows(config, sql)[0]
        assert got == {"n": expected, "u": expected, "paired": expected, "echo_right": sent,
                       "flip_right": sent, "requests": sent}, got  # fmt: skip
        restores = sum(
            (logs / f"{name}.log").read_text().count("restored")
            for name in ("joiner", "joiner-2", "joiner-3")
        )
        assert restores >= rebalances  # every rebalance assigned partitions somewhere
        print(f"scale-out: {sent} requests through {rebalances} joiner rebalances, a worker "
              f"and a sink kill: {got['n']} rows, each paired once")  # fmt: skip
    finally:
        pipeline.stop()


def _java() -> str:
    java = shutil.which("java")
    assert java, "Java 17 runs the broker, so it must be here"
    return java


def test_input_from_the_java_client_pairs_across_two_joiners(config_factory, child_env, tmp_path):
    echo = {"name": "echo", "model": "tests.fixtures.models:EchoModel"}
    stray = {"name": "stray", "production_model": "prod", "window_s": 2, "candidates": [echo]}
    config, path = config_factory([EXPERIMENT, stray])
    k = config.kafka
    parts = k.partitions
    lines, keys = [], []
    for i in range(300):
        rid = f"java-{i}"
        inputs = {"n": i, "label": 1, "probabilities": PROBS}
        req = Request(rid, "faults", now_ms(), inputs)
        prod = Prediction(rid, "faults", "production", "prod", {"label": 1, "probabilities": PROBS},
                          3.0, now_ms())  # fmt: skip
        lines += [f"{k.topic('requests')}\t{rid}\t{req.encode_json().decode()}",
                  f"{k.topic('predictions')}\t{rid}\t{prod.encode_json().decode()}"]  # fmt: skip
        keys.append(rid)
    # librdkafka's default partitioner (CRC-32) would put many of these elsewhere:
    # the test could tell the two apart
    crc = sum(zlib.crc32(r.encode()) % parts != partition_for(r.encode(), parts) for r in keys)
    assert crc > len(keys) / 3, crc
    data = tmp_path / "records.tsv"
    data.write_text("\n".join(lines) + "\n")

    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs",
                              components=("sink", "joiner", "joiner-2", "worker"))  # fmt: skip
    try:
        wait_for(lambda: members(config, config.joiner.app_id, 2), 90, "two joiners", pipeline)
        done = subprocess.run(
            [_java(), "-cp", f"{broker.LIB_DIR}/*", str(JAVA_PRODUCER), k.bootstrap_servers,
             str(data)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        chosen = [line.split("\t") for line in done.stdout.splitlines()]
        assert len(chosen) == len(lines)
        # the Java client's partition for every key is the one shadowline computes
        assert all(int(p) == partition_for(key.encode(), parts) for _, key, p in chosen)

        # two requests of another experiment put off their key's partition by hand
        for i in range(2):
            rid = f"stray-{i}"
            wrong = (partition_for(rid.encode(), parts) + 1) % parts
            prod = Prediction(rid, "stray", "production", "prod", {"label": 1}, 1.0, now_ms())
            req = Request(rid, "stray", now_ms(), {"label": 1, "probabilities": PROBS})
            producer = make_producer(k)
            producer.produce(k.topic("predictions"), key=prod.key, value=prod.encode(),
                             partition=wrong)  # fmt: skip
            producer.produce(k.topic("requests"), key=req.key, value=req.encode())
            assert producer.flush(30) == 0

        sql = ("SELECT experiment, status, count() AS n FROM comparisons_final "
               "GROUP BY experiment, status ORDER BY experiment, status")  # fmt: skip
        want = 300 * len(EXPERIMENT["candidates"])
        got = wait_for(
            lambda: (r := rows(config, sql)) and sum(x["n"] for x in r) >= want + 2 and r,
            120, f"{want} Java-produced rows and the strays", pipeline,
        )  # fmt: skip
        assert [r for r in got if r["experiment"] == "faults"] == [
            {"experiment": "faults", "status": "matched", "n": want}
        ]
        strays = [r for r in got if r["experiment"] == "stray"]
        assert sum(r["n"] for r in strays) == 2
        assert all(r["status"].startswith("missing_") for r in strays), strays
        logs = tmp_path / "logs"
        logged = "".join((logs / f"{n}.log").read_text() for n in ("joiner", "joiner-2"))
        assert "arrived on a partition other than their key's" in logged
        assert "'stray-" in logged
    finally:
        pipeline.stop()


def test_a_second_faust_joiner_is_refused_with_the_reason(config_factory, child_env, tmp_path):
    config, path = config_factory([EXPERIMENT], joiner={"engine": "faust"})
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        second = pipeline.start_one("joiner-2")
        assert second.wait(timeout=90) != 0
        log = (tmp_path / "logs" / "joiner-2.log").read_text()
        assert "joiner.engine = 'faust' runs as one instance" in log, log[-2000:]
        assert "joiner.engine = 'confluent'" in log
        pipeline.procs.pop("joiner-2")
        pipeline.check()  # the first one is still running
        assert len(group_members(config.kafka, config.joiner.app_id)) == 1
    finally:
        pipeline.stop()
