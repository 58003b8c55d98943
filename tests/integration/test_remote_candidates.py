"""A candidate on a real model server: MLServer (from PyPI, in its own venv made by
deploy/mlserver/install.sh) serving a scikit-learn model over the Open Inference
Protocol, called by the worker, paired with production by the joiner."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from shadowline.remote import RemoteModel, RemoteModelError
from shadowline.tap import Mirror
from tests.conftest import ROOT, free_port
from tests.integration.helpers import rows, start_pipeline, wait_for

pytestmark = pytest.mark.integration

MLSERVER = ROOT / ".shadowline" / "tools" / "mlserver" / "bin" / "mlserver"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310  loopback
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """MLServer on loopback serving a logistic regression as model ``iris``."""
    subprocess.run([str(ROOT / "deploy" / "mlserver" / "install.sh")], check=True)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 3] > 0).astype(int)
    estimator = LogisticRegression().fit(x, y)
    root = tmp_path_factory.mktemp("mlserver")
    model_dir = root / "iris"
    model_dir.mkdir()
    joblib.dump(estimator, model_dir / "model.joblib")
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
    }))  # fmt: skip
    http_port = free_port()
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": free_port(),
        "metrics_port": free_port(), "parallel_workers": 0,
    }))  # fmt: skip
    log = (root / "mlserver.log").open("wb")
    proc = subprocess.Popen([str(MLSERVER), "start", str(root)], cwd=root, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 90
        while not _ready(f"{base}/v2/models/iris/ready"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"MLServer did not become ready: {(root / 'mlserver.log').read_text()[-2000:]}"
                )
            time.sleep(0.3)
        yield {"base": base, "estimator": estimator, "x": x, "log": root / "mlserver.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_the_adapter_scores_batches_and_single_rows_as_sklearn_does(mlserver):
    model = RemoteModel(f"v2+{mlserver['base']}/v2/models/iris", timeout_s=5)
    x = mlserver["x"][:50]
    expected = [int(v) for v in mlserver["estimator"].predict(x)]
    inputs = [{"features": [float(v) for v in row]} for row in x]
    assert model.predict_batch(inputs) == expected
    assert model.predict_batch(inputs[:1]) == expected[:1]
    # named fields in the order the reference gives
    named = RemoteModel(f"v2+{mlserver['base']}/v2/models/iris?features=a,b,c,d", timeout_s=5)
    by_name = [dict(zip("abcd", item["features"], strict=True)) for item in inputs[:5]]
    assert named.predict_batch(by_name) == expected[:5]
    # an input as a V2 payload is passed through, and batched along the first dimension
    v2 = [{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                        "data": item["features"]}]} for item in inputs[:4]]  # fmt: skip
    assert model.predict_batch(v2) == expected[:4]


def test_server_refusals_are_errors_with_the_servers_reason(mlserver):
    model = RemoteModel(f"v2+{mlserver['base']}/v2/models/iris", timeout_s=5)
    with pytest.raises(RemoteModelError, match=r"HTTP 500 from .*/v2/models/iris/infer"):
        model.predict_batch([{"features": [1.0, 2.0, 3.0]}])  # 3 features, the model has 4
    missing = RemoteModel(f"v2+{mlserver['base']}/v2/models/absent", timeout_s=5)
    with pytest.raises(RemoteModelError, match=r"HTTP 404 .*absent"):
        missing.predict_batch([{"features": [1.0, 2.0, 3.0, 4.0]}])
    closed = RemoteModel(f"v2+http://127.0.0.1:{free_port()}/v2/models/iris", timeout_s=2)
    with pytest.raises(Exception, match="(?i)refused|connect"):
        closed.predict_batch([{"features": [1.0, 2.0, 3.0, 4.0]}])


def test_a_candidate_on_mlserver_is_paired_with_production(
    mlserver, config_factory, child_env, tmp_path: Path
):
    model_ref = f"v2+{mlserver['base']}/v2/models/iris"
    config, path = config_factory([{
        "name": "remote", "production_model": "prod", "output": "classification",
        "window_s": 5.0,
        "candidates": [{"name": "served", "model": model_ref, "batch_size": 16,
                        "timeout_ms": 3000, "latency_probe_share": 0.2}],
    }])  # fmt: skip
    estimator, x = mlserver["estimator"], mlserver["x"]
    served = 240
    bad = {f"r-{i}" for i in range(0, served, 40)}  # 6 requests the server refuses
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        with Mirror(config) as mirror:
            for i in range(served):
                rid = f"r-{i}"
                row = [float(v) for v in x[i]]
                label = int(estimator.predict(x[i : i + 1])[0])
                features = row[:3] if rid in bad else row
                assert mirror.record(
                    experiment="remote", request_id=rid, inputs={"features": features},
                    output=label, latency_ms=2.0, model="prod",
                )  # fmt: skip
        assert mirror.counters.delivered == 2 * served
        sql = "SELECT count() AS n FROM comparisons_final WHERE experiment = 'remote'"
        wait_for(lambda: rows(config, sql)[0]["n"] >= served, 120, "a row per request", pipeline)
        got = rows(
            config,
            "SELECT request_id, status, agree, candidate_output, candidate_error, "
            "candidate_latency_ms, candidate_timing FROM comparisons_final "
            "WHERE experiment = 'remote'",
        )
    finally:
        pipeline.stop()
    by_id = {r["request_id"]: r for r in got}
    assert len(got) == served == len(by_id)
    for rid, r in by_id.items():
        if rid in bad:
            assert r["status"] == "candidate_error", r
            assert "RemoteModelError: HTTP 500 from" in r["candidate_error"], r
        else:
            # the same model on both sides: every answered request agrees
            assert (r["status"], r["agree"]) == ("matched", 1), (rid, r["candidate_error"])
            assert r["candidate_latency_ms"] > 0, r
    probes = [r for r in got if r["candidate_timing"] == "request" and r["request_id"] not in bad]
    assert probes, "latency probes are timed on one request each"
