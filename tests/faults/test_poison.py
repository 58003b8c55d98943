"""Hostile input on every consumed topic: each bad message is dead-lettered once with a
reason, and the good traffic around it still ends as exactly one row per candidate."""

from __future__ import annotations

import orjson
import pytest

from shadowline.envelopes import DeadLetter, Prediction, Request, now_ms
from shadowline.tap import Mirror
from tests.integration.helpers import produce, read_topic, rows, start_pipeline, wait_for

pytestmark = pytest.mark.integration

PROBS = {"0": 0.5, "1": 0.5}
EXP = {
    "name": "poison",
    "production_model": "prod",
    "window_s": 30,
    "candidates": [{"name": "echo", "model": "tests.fixtures.models:EchoModel"}],
}


def poison(topic: str) -> list[tuple[bytes | None, bytes, str | None, str]]:
    """(key, value, content-type, expected reason fragment) for one topic."""
    t = now_ms()
    huge = "x" * 900_000  # just under the topic's 1 MiB limit
    good_req = Request("ok", "poison", t, {"label": 1, "probabilities": PROBS})
    good_pred = Prediction("ok", "poison", "candidate", "echo", 1, 1.0, t)
    other = good_pred if topic == "requests" else good_req
    body = {"request_id": "p", "experiment": "poison", "event_time": t, "inputs": {},
            "role": "candidate", "model": "echo", "output": 1, "latency_ms": 1.0}  # fmt: skip
    bad = lambda **kw: orjson.dumps({**body, **kw})  # noqa: E731
    return [
        (b"p", b"\xc3\x01\x00\x01garbage!", "avro/binary", "unknown writer schema"),
        (b"p", b"\xff" * 64, None, "neither Avro"),
        (b"p", other.encode(), "avro/binary", "wrong schema"),
        (None, good_req.encode() if topic == "requests" else good_pred.encode(), None, "no key"),
        (b"p", bad(request_id=None), "application/json", "'request_id' is missing"),
        (b"p", bad(request_id=huge), "application/json", "characters, more than 256"),
        (b"p", bad(inputs=[1, 2], latency_ms=-3), "application/json", None),
        (b"p", bad(event_time=10**15), "application/json", "not a plausible"),
        (b"p", b'{"request_id": "p", "inputs": {"a": NaN}}', "application/json", "invalid JSON"),
        (b"p", bad(experiment="nobody-configured-this"), "application/json", "not configured"),
    ]


def test_poison_on_every_consumed_topic_is_dead_lettered_once(config_factory, child_env, tmp_path):
    config, path = config_factory([EXP])
    pipeline = start_pipeline(config, path, child_env, tmp_path / "logs")
    try:
        sent = 0
        expected_letters = 0
        with Mirror(config) as mirror:
            for round_ in range(5):
                for topic in ("requests", "predictions", "comparisons"):
                    batch = poison(topic)
                    produce(config, topic, [(k, v, ct) for k, v, ct, _ in batch])
                    expected_letters += len(batch)
                for i in range(40):
                    mirror.record(
                        experiment="poison", request_id=f"g-{round_}-{i}", model="prod",
                        inputs={"label": 1, "probabilities": PROBS}, output={"label": 1,
                        "probabilities": PROBS}, latency_ms=1.0,
                    )  # fmt: skip
                    sent += 1
        letters = [
            DeadLetter.from_message(m.key(), m.value())
            for m in read_topic(config, "deadletter", expected_letters, timeout=90)
        ]
        by_topic: dict[str, int] = {}
        for d in letters:
            by_topic[d.topic.rsplit(".", 1)[-1]] = by_topic.get(d.topic.rsplit(".", 1)[-1], 0) + 1
        good = wait_for(
            lambda: (n := rows(config, "SELECT count() AS n FROM comparisons_final "
                                       "WHERE startsWith(request_id, 'g-')")[0]["n"]) >= sent and n,
            120, f"{sent} good rows", pipeline,
        )  # fmt: skip
        assert good == sent
        assert all(d.reason for d in letters)
        reasons = " | ".join(d.reason for d in letters)
        for _, _, _, fragment in poison("requests"):
            if fragment:
                assert fragment in reasons, fragment
        # every poison message is dead-lettered exactly once, by its topic's consumer
        keys = [(d.topic, d.partition, d.offset) for d in letters]
        assert len(keys) == len(set(keys)) == expected_letters, "lost or dead-lettered twice"
        per_topic = expected_letters // 3
        assert by_topic == {"requests": per_topic, "predictions": per_topic,
                            "comparisons": per_topic}  # fmt: skip
        assert not rows(config, "SELECT count() AS n FROM comparisons_final "
                                "WHERE request_id = 'p'")[0]["n"]  # fmt: skip
    finally:
        pipeline.stop()
