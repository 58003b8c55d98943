"""Model calls on bounded daemon slots: timeouts, refusals, and a hung model's cost."""

from __future__ import annotations

import threading
import time

from shadowline.calls import ModelCalls


def test_a_hung_model_holds_at_most_limit_slots_and_costs_one_wait() -> None:
    release = threading.Event()
    calls = ModelCalls(lambda x: release.wait(), limit=3, name="hung")
    try:
        started = [calls.start(i) for i in range(3)]
        assert all(c is not None for c in started)
        assert not started[0].wait(0.05)  # type: ignore[union-attr]
        t0 = time.monotonic()
        assert calls.start(3, wait_s=0.2) is None  # waited for a slot, in vain
        assert time.monotonic() - t0 >= 0.15
        # ...and from then on refuses at once (no wait per call) until a call returns
        assert calls.starved
        assert [calls.start(i, wait_s=0.2) for i in range(10)] == [None] * 10
        assert calls.running == 3
        assert "all 3 of its call slots are held" in calls.saturated_error("candidate", "m")
        release.set()
        assert started[0].wait(1.0)  # type: ignore[union-attr]
        deadline = time.monotonic() + 2
        while calls.running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not calls.starved
        again = calls.start(9)
        assert again is not None and again.wait(1.0) and again.result is True
    finally:
        release.set()
        calls.close()


def test_a_call_reports_its_result_error_and_own_time() -> None:
    def model(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        time.sleep(0.02)
        return x * 2

    calls = ModelCalls(model, limit=2, name="m")
    try:
        ok, bad = calls.start(4), calls.start(-1)
        assert ok is not None and bad is not None
        assert ok.wait(1.0) and ok.result == 8 and ok.error is None and ok.elapsed_ms >= 15
        assert bad.wait(1.0) and bad.error == "ValueError: negative"
    finally:
        calls.close()
