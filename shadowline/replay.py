"""Replay recorded traffic from JSON lines into the input topics.

Each line is one JSON object, recognised by its fields:
- a tap record (``inputs`` and ``output`` or ``error``, plus ``model`` and
  ``latency_ms``): a request and its production prediction, as ``Mirror.record``;
- a request (``inputs``, no ``output``);
- a prediction (``role``);
- feedback (``kind``).
Lines are validated with the same rules as the consumers; a bad line is
reported with its number and skipped, and nothing is sent for it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import orjson

from shadowline import kafka
from shadowline.config import Config
from shadowline.envelopes import Feedback, Prediction, Request, now_ms
from shadowline.errors import DecodeError, KafkaError

JSON_HEADERS = [("content-type", b"application/json")]


@dataclass
class ReplayResult:
    """What a replay sent and what it rejected (line number, reason)."""

    lines: int = 0
    requests: int = 0
    predictions: int = 0
    feedback: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)


def _envelopes(obj: dict[str, Any]) -> list[Request | Prediction | Feedback]:
    obj.setdefault("event_time", now_ms())
    raw = orjson.dumps(obj)
    key = str(obj.get("request_id", "")).encode()
    if "role" in obj:
        return [Prediction.from_message(key, raw, "application/json")]
    if "kind" in obj:
        return [Feedback.from_message(key, raw, "application/json")]
    if "inputs" in obj and ("output" in obj or "error" in obj):
        req = {
            k: obj.get(k)
            for k in ("request_id", "experiment", "unit_id", "event_time", "inputs", "arm")
        }
        pred = {
            k: obj.get(k)
            for k in (
                "request_id",
                "experiment",
                "model",
                "output",
                "latency_ms",
                "error",
                "event_time",
            )
        }
        pred["role"] = "production"
        return [
            Request.from_message(key, orjson.dumps(req), "application/json"),
            Prediction.from_message(key, orjson.dumps(pred), "application/json"),
        ]
    if "inputs" in obj:
        return [Request.from_message(key, raw, "application/json")]
    raise DecodeError("line is none of: tap record, request, prediction (role), feedback (kind)")


def replay(config: Config, path: str, progress: bool = True) -> ReplayResult:
    """Send every valid line of ``path`` ('-' for stdin) to its topic; returns the counts."""
    from tqdm import tqdm

    result = ReplayResult()
    producer = kafka.make_producer(config.kafka)
    topics = {
        Request: config.kafka.topic("requests"),
        Prediction: config.kafka.topic("predictions"),
        Feedback: config.kafka.topic("feedback"),
    }
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        for line_no, line in enumerate(tqdm(stream, disable=not progress, unit=" lines"), 1):
            if not line.strip():
                continue
            result.lines += 1
            try:
                obj = orjson.loads(line)
                if not isinstance(obj, dict):
                    raise DecodeError("line is not a JSON object")
                envs = _envelopes(obj)
            except orjson.JSONDecodeError as exc:
                result.bad.append((line_no, f"invalid JSON: {exc}"))
                continue
            except DecodeError as exc:
                result.bad.append((line_no, exc.reason))
                continue
            for env in envs:
                while True:
                    try:
                        producer.produce(topics[type(env)], key=env.key, value=env.encode())
                        break
                    except BufferError:
                        producer.poll(0.1)
                if isinstance(env, Request):
                    result.requests += 1
                elif isinstance(env, Prediction):
                    result.predictions += 1
                else:
                    result.feedback += 1
            producer.poll(0)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    remaining = producer.flush(60)
    if remaining:
        raise KafkaError(f"{remaining} replayed messages were not acknowledged by Kafka")
    return result
