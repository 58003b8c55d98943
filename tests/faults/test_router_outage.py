"""The router while Kafka is away: production only, counted, never blocking; the
weights come back with the broker."""

from __future__ import annotations

import time

from shadowline import Router, broker
from shadowline.envelopes import Control, now_ms
from tests.conftest import free_port
from tests.integration.helpers import produce, wait_for


def test_router_serves_production_while_control_is_unreadable(config_factory, tmp_path):
    port = free_port()
    config, _ = config_factory(
        [
            {
                "name": "ramp",
                "mode": "canary",
                "production_model": "prod",
                "candidates": [{"name": "cand", "model": "tests.fixtures.models:EchoModel"}],
            }
        ],
        kafka={"bootstrap_servers": f"127.0.0.1:{port}", "local_data_dir": str(tmp_path / "k")},
        _before_topics=lambda cfg: broker.up(cfg, timeout=120),
    )
    try:
        control = Control("ramp", {"cand": 1.0}, 1, now_ms())
        produce(config, "control", [(control.key, control.encode(), "avro/binary")])
        with Router(config) as router:
            wait_for(lambda: router.assign("ramp", "u1").arm == "cand", 30, "weights in force")
            broker.down(config)
            wait_for(lambda: not router.readable, 15, "the router to notice")
            worst = 0.0
            before = router.counters.control_unavailable
            for i in range(2000):
                t0 = time.perf_counter()
                a = router.assign("ramp", f"u{i}")
                worst = max(worst, time.perf_counter() - t0)
                assert (a.arm, a.candidate) == ("prod", False)
            assert router.counters.control_unavailable - before == 2000
            assert worst < 0.05, worst  # a dict lookup, never a wait on Kafka
            broker.up(config, timeout=120)
            wait_for(lambda: router.assign("ramp", "u1").arm == "cand", 60, "weights back")
            assert router.counters.errors == 0
    finally:
        broker.down(config)
