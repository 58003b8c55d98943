"""A newcomer's first run: `shadowline init` in an empty directory, then `up` and
`replay` as the starter config's own comments say, on the real broker and chDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.integration


def shadowline(*args: str, cwd, env, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shadowline", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_a_starter_config_runs_as_written_and_its_traffic_lands(kafka_bootstrap, tmp_path):
    work = tmp_path / "new-project"  # does not exist yet: init makes it
    env = dict(os.environ)
    # Only what differs on a shared test machine: the broker, a private namespace and
    # a free port for the embedded warehouse. Everything else is the written file.
    env.update(
        SHADOWLINE_KAFKA_BOOTSTRAP=kafka_bootstrap,
        SHADOWLINE_KAFKA_NAMESPACE=f"init{uuid.uuid4().hex[:8]}.",
        SHADOWLINE_WAREHOUSE_PORT=str(free_port()),
    )
    done = shadowline("init", "--dir", str(work), cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert (work / "shadowline.toml").read_text().startswith("# shadowline starter config")
    again = shadowline("init", "--dir", str(work), cwd=tmp_path, env=env)
    assert again.returncode == 2 and "not overwritten (use --force)" in again.stderr

    up = subprocess.Popen(
        [sys.executable, "-m", "shadowline", "up", "--log-dir", "logs"],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:  # the sink serves the warehouse once it is up
            ping = shadowline("query", "SELECT 1", cwd=work, env=env)
            if ping.returncode == 0 and "1" in ping.stdout:
                break
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            assert time.monotonic() < deadline, ping.stderr
            time.sleep(1)
        sent = shadowline("replay", "--no-progress", "example-traffic.jsonl", cwd=work, env=env)
        assert sent.returncode == 0, sent.stderr
        assert "1000 requests, 1000 predictions" in sent.stdout and "0 rejected" in sent.stdout
        sql = "SELECT status, count() AS n FROM comparisons_final GROUP BY status"
        while True:
            got = shadowline("query", "--format", "tsv", sql, cwd=work, env=env)
            if got.stdout.split() == ["status", "n", "matched", "1000"]:
                break
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            assert time.monotonic() < deadline + 120, (got.stdout, got.stderr)
            time.sleep(1)
        verdict = shadowline("gate", "check", "checkout-risk", "--json", cwd=work, env=env)
        assert verdict.returncode in (0, 1, 2) and verdict.stdout, verdict.stderr
        (candidate,) = json.loads(verdict.stdout)["candidates"]
        assert candidate["candidate"] == "risk-v2"
        rules = candidate["rules"]
        samples = next(r for r in rules if r["rule"] == "min_samples")
        assert samples["observed"] == 1000 and samples["outcome"] == "pass"
        for component in ("worker", "joiner", "sink"):
            assert (work / "logs" / f"{component}.log").exists()
    finally:
        up.terminate()
        up.wait(timeout=60)
