"""Crashes and outages mid-stream: afterwards every mirrored request is in `comparisons`
exactly once per candidate, and the tap's caller saw no error and no stall."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from shadowline import broker
from shadowline.config import Config
from shadowline.kafka import group_members, groups_ready
from shadowline.supervisor import Pipeline
from shadowline.tap import Mirror
from shadowline.warehouse import Warehouse
from tests.conftest import free_port
from tests.integration.helpers import rows, start_pipeline, wait_for

pytestmark = pytest.mark.integration

PROBS = {"0": 0.4, "1": 0.6}
EXPERIMENT = {
    "name": "faults",
    "production_model": "prod",
    # Longer than any restart below: a request whose partner arrives after a restart
    # still pairs normally instead of being reported missing.
    "window_s": 60,
    "candidates": [
        {"name": "echo", "model": "tests.fixtures.models:EchoModel", "batch_size": 16},
        {"name": "flip", "model": "tests.fixtures.models:FlipModel", "batch_size": 16},
    ],
}


@dataclass
class Traffic:
    """Requests mirrored from a background thread at a steady rate, as a service would."""

    mirror: Mirror
    rate: float
    sent: int = 0
    worst_call_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                ok = self.mirror.record(
                    experiment="faults", request_id=f"f-{self.sent}",
                    inputs={"n": self.sent, "label": 1, "probabilities": PROBS},
                    output={"label": 1, "probabilities": PROBS}, latency_ms=1.0, model="prod",
                )  # fmt: skip
            except Exception as exc:  # the test's point: this must never happen
                self.errors.append(repr(exc))
                ok = False
            self.worst_call_s = max(self.worst_call_s, time.perf_counter() - t0)
            if ok:
                self.sent += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join()


def assert_exactly_once(config: Config, pipeline: Pipeline, sent: int) -> dict[str, Any]:
    expected = sent * len(EXPERIMENT["candidates"])
    sql = (
        "SELECT count() AS n, uniqExact(request_id, candidate_model) AS u, "
        "countIf(status = 'matched') AS matched FROM comparisons_final"
    )
    got = wait_for(
        lambda: (r := rows(config, sql)[0])["n"] >= expected and r,
        180,
        f"{expected} rows",
        pipeline,
    )
    time.sleep(2)  # a duplicate would arrive now
    got = rows(config, sql)[0]
    assert got == {"n": expected, "u": expected, "matched": expected}, got
    # requests 0..sent-1 are all there: no gap
    ids = rows(config, "SELECT uniqExact(request_id) AS r, max(toUInt32(substring(request_id, 3))) "
                       "AS top FROM comparisons_final")[0]  # fmt: skip
    assert ids == {"r": sent, "top": sent - 1}
    return got


def restart(config: Config, pipeline: Pipeline, name: str, group: str) -> None:
    before = group_members(config.kafka, group)
    pipeline.kill(name)
    time.sleep(1.0)  # traffic keeps flowing while it is down
    pipeline.start_one(name)
    wait_for(
        lambda: (m := group_members(config.kafka, group)) and not m & before
        and groups_ready(config.kafka, [group]),
        90, f"restarted {name} to own its partitions", pipeline,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("victim", "engine"),
    [("worker", "confluent"), ("joiner", "confluent"), ("joiner", "faust"), ("sink", "confluent")],
)
def test_kill_9_and_restart_loses_and_duplicates_nothing(
    victim, engine, config_factory, child_env, tmp_path
):
    config, path = config_factory([EXPERIMENT], joiner={"engine": engine})
    groups = {
        "worker": f"{config.kafka.namespace}workers",
        "joiner": config.joiner.app_id,
        "sink": f"{config.kafka.namespace}sink",
    }
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        with Mirror(config) as mirror, Traffic(mirror, rate=150) as traffic:
            for _ in range(2):  # twice: the second crash hits a process that recovered
                time.sleep(3)
                restart(config, pipeline, victim, groups[victim])
            time.sleep(3)
        assert traffic.errors == []
        assert mirror.counters.delivered == 2 * traffic.sent
        got = assert_exactly_once(config, pipeline, traffic.sent)
        print(f"kill -9 {victim}: {traffic.sent} requests, {got['n']} rows, all matched once")
    finally:
        pipeline.stop()


def test_broker_stop_and_restart_mid_stream(config_factory, child_env, tmp_path):
    # A broker of its own: stopping the session's broker would disturb other tests.
    port = free_port()
    config, path = config_factory(
        [EXPERIMENT],
        kafka={"bootstrap_servers": f"127.0.0.1:{port}", "local_data_dir": str(tmp_path / "k")},
        _before_topics=lambda cfg: broker.up(cfg, timeout=120),
    )
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        with Mirror(config) as mirror, Traffic(mirror, rate=150) as traffic:
            time.sleep(3)
            sent_before = traffic.sent
            broker.down(config)
            time.sleep(5)  # the service keeps serving; the tap buffers
            sent_during = traffic.sent - sent_before
            broker.up(config, timeout=120)
            time.sleep(3)
        assert traffic.errors == []
        assert traffic.worst_call_s < 0.5, traffic.worst_call_s  # no call waited on Kafka
        assert sent_during > 300  # traffic went on while Kafka was down
        assert mirror.flush(60) == 0
        assert mirror.counters.delivered == 2 * traffic.sent, mirror.counters
        got = assert_exactly_once(config, pipeline, traffic.sent)
        print(
            f"broker restart: {traffic.sent} requests ({sent_during} while down), {got['n']} rows"
        )
    finally:
        pipeline.stop()
        broker.down(config)


def test_warehouse_refusing_inserts_then_recovering(config_factory, child_env, tmp_path):
    # A real ClickHouse refusal: merges stopped and a parts limit of 1 make every insert
    # fail with TOO_MANY_PARTS until an operator lifts them, as when a server falls behind.
    config, path = config_factory([EXPERIMENT], warehouse={"http_writable": True})
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    admin = Warehouse.open_reader(config)
    try:
        with Mirror(config) as mirror, Traffic(mirror, rate=150) as traffic:
            time.sleep(3)
            before = rows(config, "SELECT count() AS n FROM comparisons")[0]["n"]
            admin.command("SYSTEM STOP MERGES comparisons")
            admin.command(
                "ALTER TABLE comparisons MODIFY SETTING parts_to_throw_insert = 1, "
                "parts_to_delay_insert = 1"
            )
            time.sleep(6)
            during = rows(config, "SELECT count() AS n FROM comparisons")[0]["n"]
            admin.command(
                "ALTER TABLE comparisons MODIFY SETTING parts_to_throw_insert = 3000, "
                "parts_to_delay_insert = 1000"
            )
            admin.command("SYSTEM START MERGES comparisons")
            time.sleep(3)
        assert traffic.errors == []
        # inserts were refused for a while (at most one batch slipped in before the limit)
        assert during - before < 400, (before, during)
        got = assert_exactly_once(config, pipeline, traffic.sent)
        log = (tmp_path / "logs" / "sink.log").read_text()
        assert "warehouse busy" in log and "TOO_MANY_PARTS" in log
        print(f"warehouse outage: {traffic.sent} requests, {got['n']} rows, all once")
    finally:
        admin.close()
        pipeline.stop()
