import threading
import time

from shadowline.config import RedactConfig, parse_config
from shadowline.tap import Mirror, redact, sampled


def test_redaction_drops_and_hashes_without_touching_the_callers_dict():
    inputs = {"email": "a@b.c", "user": {"id": 42, "name": "Ann"}, "x": 1}
    rules = RedactConfig(drop=("email", "user.name"), hash=("user.id",), salt="s3")
    out = redact(inputs, rules)
    assert "email" not in out and "name" not in out["user"]
    assert out["user"]["id"].startswith("sha256:") and "42" not in out["user"]["id"]
    assert out["x"] == 1
    assert inputs == {"email": "a@b.c", "user": {"id": 42, "name": "Ann"}, "x": 1}
    # same value, same salt -> same hash (joinable); other salt -> other hash
    assert redact(inputs, rules)["user"]["id"] == out["user"]["id"]
    other = RedactConfig(hash=("user.id",), salt="other")
    assert redact(inputs, other)["user"]["id"] != out["user"]["id"]


def test_sampling_is_deterministic_and_close_to_the_rate():
    ids = [f"req-{i}" for i in range(20_000)]
    picked = [i for i in ids if sampled(i, 0.1)]
    assert 1700 < len(picked) < 2300
    assert picked == [i for i in ids if sampled(i, 0.1)]
    assert all(sampled(i, 1.0) for i in ids[:100])
    assert not any(sampled(i, 0.0) for i in ids[:100])


def test_tap_never_raises_or_blocks_when_kafka_is_unreachable():
    # A real librdkafka producer pointed at a closed port: nothing answers.
    config = parse_config(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:1"},
            "tap": {"queue_size": 100, "close_timeout_s": 0.5},
            "experiments": [
                {
                    "name": "e",
                    "production_model": "p",
                    "candidates": [{"name": "c", "model": "m:f"}],
                }
            ],
        },
        env={},
    )
    mirror = Mirror(config)
    # bad input and an unknown experiment are counted, not raised
    assert (
        mirror.record(
            experiment="nope", request_id="x", inputs={}, output=1, latency_ms=1, model="p"
        )
        is False
    )
    assert (
        mirror.record(
            experiment="e",
            request_id="y",
            inputs=None,
            output=1,  # type: ignore[arg-type]
            latency_ms=1,
            model="p",
        )
        is False
    )
    calls = 5000
    worst = 0.0
    for i in range(calls):
        t0 = time.perf_counter()
        mirror.record(
            experiment="e", request_id=f"r{i}", inputs={"a": i}, output=1, latency_ms=1.0, model="p"
        )
        worst = max(worst, time.perf_counter() - t0)
    c = mirror.counters
    assert c.recorded + c.dropped_queue_full == calls
    assert c.dropped_queue_full > 0  # the bounded queue filled up
    assert c.dropped_unknown_experiment == 1 and c.rejected == 1
    assert c.delivered == 0
    # not a timing assertion on speed, only that no call waited on the network
    assert worst < 1.0
    done = threading.Event()
    threading.Thread(target=lambda: (mirror.close(), done.set()), daemon=True).start()
    assert done.wait(config.tap.close_timeout_s + 5)
