"""``shadowline init``: a commented starter config and traffic to try it with.

The config runs as written: `shadowline kafka up`, `shadowline up`, then
`shadowline replay example-traffic.jsonl` sends 1,000 recorded requests with
production's answers, and the example candidate's comparisons land in the warehouse.
Nothing here needs the pipeline extra: the example models are plain Python.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import orjson

from shadowline.errors import ConfigError

CONFIG_NAME = "shadowline.toml"
TRAFFIC_NAME = "example-traffic.jsonl"

STARTER_CONFIG = """\
# shadowline starter config, written by `shadowline init`. It runs as it is:
#
#   shadowline kafka up                      # a local broker on 127.0.0.1:9092 (Java 17)
#   shadowline up --log-dir logs             # worker + joiner + sink; Ctrl-C stops them
#   shadowline replay example-traffic.jsonl  # (another terminal) 1,000 recorded requests
#   shadowline query "SELECT status, count() FROM comparisons_final GROUP BY status"
#   shadowline gate check checkout-risk      # the verdict
#
# Every key is optional unless marked; docs/configuration.md (the reference) lists them
# all, with the environment variables that override them (SHADOWLINE_KAFKA_BOOTSTRAP, ...).

[kafka]
# Where Kafka is. Your own cluster: its bootstrap servers, security_protocol, SASL or
# mTLS settings (ssl_ca_location, ssl_certificate_location, ssl_key_location).
bootstrap_servers = "127.0.0.1:9092"
# Every topic is "<namespace><name>": requests, predictions, comparisons, ...
namespace = "shadowline."
partitions = 3
# `shadowline kafka up` keeps the local broker's storage and logs here.
local_data_dir = ".shadowline/kafka"

[warehouse]
# embedded: chDB (the ClickHouse engine) in the sink's process, data in `path`, served
# read-only to every other reader on 127.0.0.1:`port`. For a ClickHouse server:
# backend = "clickhouse" and url = "https://user:pass@host:8443" (or
# SHADOWLINE_WAREHOUSE_URL).
backend = "embedded"
path = ".shadowline/warehouse"
port = 8124

[joiner]
# "confluent" scales out: run more joiners and they share the partitions. Their
# state lives in Kafka (topic "<app_id>-pending-changelog"), nothing on disk.
engine = "confluent"

# One experiment: production's model and the candidates judged against it.
[[experiments]]
name = "checkout-risk"                  # required; the experiment key in every topic
mode = "shadow"                         # shadow | interleave | ab | canary
output = "classification"               # classification | regression | ranking | text
production_model = "risk-v1"            # required; the name production records under
sampling = 1.0                          # share of requests mirrored (per request ID)
window_s = 30                           # how long the joiner waits for both sides
# Fields hashed (or dropped) before anything leaves the serving process.
redact = { hash = ["customer_id"] }
# Keep requests and production's answers in the warehouse too, so `shadowline backtest`
# can replay ranges older than Kafka's retention (false: the retained log only).
store_requests = false

[experiments.gates]
# The defaults judge errors, latency and output shift with sequential tests whose
# false-failure rate stays within alpha however often you check; a rule set to false
# is off. The latency rules read the requests timed alone (latency_probe_share, 5 %):
# the example's 1,000 requests leave them inconclusive, a live service decides them.
alpha = 0.05
min_samples = 200
max_error_rate = 0.01

[[experiments.candidates]]
name = "risk-v2"                        # required
# A Python callable (package.module:attr) taking a list of input dicts and returning
# one output per input; or file:model.joblib (scikit-learn), or mlflow:<uri>.
model = "shadowline.starter:candidate_model"
timeout_ms = 200
batch_size = 32
"""


def _score(x: dict[str, Any], weight: float) -> float:
    z = 0.004 * (float(x["amount"]) - 300.0) + weight * (float(x["new_device"]) - 0.3)
    return 1.0 / (1.0 + math.exp(-z))


def _answers(inputs: list[dict[str, Any]], new_device_weight: float) -> list[dict[str, Any]]:
    out = []
    for x in inputs:
        p = _score(x, new_device_weight)
        out.append({"label": int(p >= 0.5), "probabilities": {"0": 1 - p, "1": p}})
    return out


def production_model(inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The example's production model (what `example-traffic.jsonl` recorded)."""
    return _answers(inputs, 2.0)


def candidate_model(inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The example's candidate: weighs a new device more than production does."""
    return _answers(inputs, 3.0)


def example_traffic(n: int = 1000, seed: int = 7) -> list[dict[str, Any]]:
    """Recorded requests with production's answers, as `shadowline replay` reads them."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        inputs = {
            "customer_id": f"c-{rng.randrange(10_000):05d}",
            "amount": round(rng.lognormvariate(5.3, 0.8), 2),
            "new_device": int(rng.random() < 0.3),
            "country": rng.choice(["NL", "DE", "FR", "US"]),
        }
        output = production_model([inputs])[0]
        lines.append(
            {
                "experiment": "checkout-risk",
                "request_id": f"example-{i:05d}",
                "unit_id": inputs["customer_id"],
                "model": "risk-v1",
                "inputs": inputs,
                "output": output,
                "latency_ms": round(rng.lognormvariate(1.0, 0.4), 3),
            }
        )
    return lines


def write_starter(directory: Path, force: bool = False) -> list[Path]:
    """Write the starter config and the example traffic into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    config, traffic = directory / CONFIG_NAME, directory / TRAFFIC_NAME
    existing = [p.name for p in (config, traffic) if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"{', '.join(existing)} already in {directory}: not overwritten (use --force)"
        )
    config.write_text(STARTER_CONFIG)
    traffic.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in example_traffic()))
    return [config, traffic]
