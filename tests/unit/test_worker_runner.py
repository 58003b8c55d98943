"""A candidate's per-request outcomes without a broker: what each request gets is what
calling the model with it alone would give, and a hung model ends as errors that say
what happened."""

from __future__ import annotations

import threading
from typing import Any

from shadowline.consumers.worker import CandidateRunner, WorkerStats

from shadowline.config import CandidateConfig
from shadowline.envelopes import Request, now_ms


class HangsOnMarked:
    """Echoes ``n``; blocks until released on inputs marked ``hang``; raises on ``bad``."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
        if any(x.get("bad") for x in inputs):
            raise RuntimeError("bad input")
        if any(x.get("hang") for x in inputs):
            self.release.wait()
        return [x["n"] for x in inputs]


def _requests(start: int, marks: dict[int, str]) -> list[Request]:
    return [
        Request(f"r{i}", "e", now_ms(), {"n": i, **({marks[i]: True} if i in marks else {})})
        for i in range(start, start + 8)
    ]


def test_only_the_inputs_at_fault_fail_and_a_saturated_model_says_so() -> None:
    model = HangsOnMarked()
    cfg = CandidateConfig(
        name="c", model="x:y", batch_size=8, timeout_ms=1000, max_in_flight=4, concurrency=2,
        latency_probe_share=0.0,
    )  # fmt: skip
    runner = CandidateRunner(cfg, model)
    stats = WorkerStats()
    try:
        first = runner.run(_requests(0, {3: "hang", 5: "bad"}), stats)
        assert [o.output for o in first] == [0, 1, 2, None, 4, None, 6, 7]
        assert first[3].error == "TimeoutError: candidate 'c' took longer than 1000 ms"
        assert first[3].latency_ms == 1000.0
        assert first[5].error == "RuntimeError: bad input"
        assert {o.timing for o in first} == {"request"}  # all re-run alone
        # A healthy batch keeps its batched timing.
        healthy = runner.run(_requests(8, {}), stats)
        assert [o.output for o in healthy] == list(range(8, 16))
        assert {o.timing for o in healthy} == {"batch_share"}
        # Hung calls keep their slots (1 so far): a batch that hangs holds one more, its
        # hung input re-run alone another.
        second = runner.run(_requests(16, {16: "hang"}), stats)
        assert second[0].error is not None and second[0].error.startswith("TimeoutError")
        assert [o.output for o in second[1:]] == list(range(17, 24))
        # The next hanging batch takes the last slot: every slot is held by a hung call,
        # the inputs are not called alone, and each request says why (not that its
        # prediction was lost), as do the requests after it, refused at once.
        for start in (24, 32):
            refused = runner.run(_requests(start, {24: "hang"}), stats)
            assert all(o.output is None for o in refused)
            assert all(
                o.error is not None and o.error.startswith("shadowline.calls.SaturatedError")
                for o in refused
            )
        assert stats.saturated == 16 and stats.timeouts == 2
    finally:
        model.release.set()
        runner.close()


def test_probes_are_called_alone_and_chosen_by_request_id() -> None:
    calls: list[int] = []

    class Counting:
        def predict_batch(self, inputs: list[dict[str, Any]]) -> list[Any]:
            calls.append(len(inputs))
            return [x["n"] for x in inputs]

    cfg = CandidateConfig(name="c", model="x:y", batch_size=8, latency_probe_share=0.5)
    runner = CandidateRunner(cfg, Counting())
    try:
        reqs = _requests(0, {})
        out = runner.run(reqs, WorkerStats())
        again = runner.run(reqs, WorkerStats())
        probes = [o.timing == "request" for o in out]
        assert probes == [o.timing == "request" for o in again]  # deterministic
        assert 0 < sum(probes) < 8
        # one batch call for the rest, one call per probe
        assert calls[0] == 8 - sum(probes) and calls[1 : 1 + sum(probes)] == [1] * sum(probes)
    finally:
        runner.close()
