"""The joiner's pending state survives a crash (changelog-backed table), and
`shadowline up` stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from shadowline.envelopes import Prediction, now_ms
from shadowline.kafka import group_members, groups_ready
from tests.integration.helpers import produce, rows, start_pipeline, wait_for

pytestmark = pytest.mark.integration

OUT = {"label": 1, "probabilities": {"0": 0.3, "1": 0.7}}


@pytest.mark.parametrize("engine", ["confluent", "faust"])
def test_pending_state_survives_a_joiner_kill(engine, config_factory, child_env, tmp_path):
    # A long window: if the joiner forgot the production side, the candidates below
    # could only end as `missing_production` 60 s later, not as quick matches.
    exp = {
        "name": "restart",
        "production_model": "prod",
        "window_s": 60,
        "candidates": [{"name": "echo", "model": "tests.fixtures.models:EchoModel"}],
    }
    config, path = config_factory([exp], joiner={"engine": engine})
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        prods = [Prediction(f"k-{i}", "restart", "production", "prod", OUT, 1.0, now_ms())
                 for i in range(20)]  # fmt: skip
        produce(config, "predictions", [(p.key, p.encode(), "avro/binary") for p in prods])
        # the joiner commits every second; give it a few to consume and commit
        time.sleep(4)
        before = group_members(config.kafka, config.joiner.app_id)
        pipeline.kill("joiner")  # SIGKILL: no clean shutdown, no final commit
        pipeline.start_one("joiner")
        wait_for(
            lambda: (m := group_members(config.kafka, config.joiner.app_id)) and not m & before
            and groups_ready(config.kafka, [config.joiner.app_id]),
            90, "the restarted joiner to own the partitions", pipeline,
        )  # fmt: skip
        cands = [Prediction(f"k-{i}", "restart", "candidate", "echo", OUT, 2.0, now_ms())
                 for i in range(20)]  # fmt: skip
        started = time.monotonic()
        produce(config, "predictions", [(p.key, p.encode(), "avro/binary") for p in cands])
        sql = "SELECT status, count() AS n FROM comparisons_final GROUP BY status"
        got = wait_for(
            lambda: (r := rows(config, sql)) and sum(x["n"] for x in r) >= 20 and r,
            45, "20 pairs after the restart", pipeline,
        )  # fmt: skip
        assert got == [{"status": "matched", "n": 20}]
        assert time.monotonic() - started < 45  # well inside the 60 s window
    finally:
        pipeline.stop()


def test_up_runs_every_component_and_stops_cleanly_on_sigint(config_factory, child_env, tmp_path):
    exp = {
        "name": "up",
        "production_model": "prod",
        "candidates": [{"name": "echo", "model": "tests.fixtures.models:EchoModel"}],
    }
    config, path = config_factory([exp])
    env = {**__import__("os").environ, **child_env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowline", "up", "-c", str(path), "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    groups = [
        f"{config.kafka.namespace}workers",
        config.joiner.app_id,
        f"{config.kafka.namespace}sink",
    ]
    try:
        wait_for(
            lambda: proc.poll() is not None or groups_ready(config.kafka, groups), 90, "groups"
        )
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "pipeline stopped" in out
    for name in ("worker", "joiner", "sink"):
        assert (tmp_path / f"{name}.log").exists()
