"""The in-process interleaver without a broker: team-draft merging, and the serving
path's promises (the control's answer, never blocked or raised by a candidate, bounded).

The Kafka side of the tap is exercised in tests/integration/test_interleave.py; here
a recorder with the tap's interface keeps what would be mirrored.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from shadowline import Interleave
from shadowline.config import load_config
from shadowline.errors import ConfigError
from shadowline.interleave import seed_for, team_draft


class Recorder:
    """The tap's interface, keeping what it is given."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.predictions: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def record(self, **kw: Any) -> bool:
        with self.lock:
            self.requests.append(kw)
        return True

    def record_prediction(self, **kw: Any) -> bool:
        with self.lock:
            self.predictions.append(kw)
        return True

    def flush(self, timeout: float = 10.0) -> int:
        return 0

    def close(self) -> None:
        pass


def _config(tmp_path: Path, output: str = "classification", timeout_ms: float = 200, **extra: Any):
    exp = {
        "name": "inter",
        "mode": "interleave",
        "output": output,
        "production_model": "prod",
        "candidates": [
            {"name": "a", "model": "tests.fixtures.models:EchoModel", "timeout_ms": timeout_ms},
            {"name": "b", "model": "tests.fixtures.models:EchoModel", "timeout_ms": timeout_ms},
        ],
        **extra,
    }
    data = {"kafka": {"bootstrap_servers": "127.0.0.1:1"}, "experiments": [exp]}
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(data))
    return load_config(path)


def _wait(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


RANKING = st.lists(st.integers(0, 40).map(str), unique=True, max_size=20)


@given(RANKING, RANKING, st.integers(0, 2**64 - 1))
def test_team_draft_keeps_each_teams_order_and_takes_turns(
    a: list[str], b: list[str], seed: int
) -> None:
    merged, teams = team_draft({"prod": a, "cand": b}, seed)
    assert len(merged) == len(set(merged)) == len(teams)
    assert len(merged) == min(max(len(a), len(b)), len(set(a) | set(b)))
    assert team_draft({"prod": a, "cand": b}, seed) == (merged, teams)  # seeded
    for team, ranking in (("prod", a), ("cand", b)):
        picked = [x for x, t in zip(merged, teams, strict=True) if t == team]
        assert picked == [x for x in ranking if x in picked]  # in the team's own order
        # A team only ever picks its best item not yet taken.
        for x in picked:
            before = merged[: merged.index(x)]
            assert all(y in before for y in ranking[: ranking.index(x)])


@given(st.integers(1, 30), st.integers(0, 2**64 - 1))
def test_team_draft_takes_turns(length: int, seed: int) -> None:
    a, b = [f"a{i}" for i in range(length)], [f"b{i}" for i in range(length)]
    merged, teams = team_draft({"prod": a, "cand": b}, seed)
    assert len(merged) == length
    # Every round both teams pick once: by any position neither is two picks ahead
    # of the other at the end of a round, so overall counts differ by at most one.
    for end in range(0, length + 1, 2):
        counts = Counter(teams[:end])
        assert counts["prod"] == counts["cand"] == end // 2


def test_team_draft_of_identical_rankings_serves_that_ranking_and_credits_fairly() -> None:
    ranking = [f"d{i}" for i in range(10)]
    first = Counter()
    for i in range(4000):
        merged, teams = team_draft({"prod": ranking, "cand": list(ranking)}, seed_for(f"r{i}"))
        assert merged == ranking
        assert Counter(teams)["prod"] == Counter(teams)["cand"] == 5
        first[teams[0]] += 1
    # The first position is a coin flip: 2,000 +- 4 standard deviations (126).
    assert abs(first["prod"] - 2000) < 126


def test_three_teams_multileave() -> None:
    merged, teams = team_draft(
        {"prod": list("abcdef"), "x": list("fedcba"), "y": list("cabfed")}, seed=7
    )
    assert sorted(merged) == list("abcdef")
    assert Counter(teams) == {"prod": 2, "x": 2, "y": 2}


def test_returns_the_controls_output_and_mirrors_every_candidate(tmp_path: Path) -> None:
    rec = Recorder()
    config = _config(tmp_path)
    with Interleave(
        config, "inter", control=lambda x: {"label": x["v"]},
        candidates={"a": lambda x: {"label": x["v"] + 1}, "b": lambda x: {"label": 0}},
        mirror=rec,  # type: ignore[arg-type]
    ) as inter:  # fmt: skip
        outs = [inter({"v": i}, request_id=f"r{i}") for i in range(50)]
        _wait(lambda: len(rec.predictions) == 100, "100 candidate predictions")
    assert outs == [{"label": i} for i in range(50)]
    assert [r["request_id"] for r in rec.requests] == [f"r{i}" for i in range(50)]
    assert all(r["model"] == "prod" and r.get("error") is None for r in rec.requests)
    by = {(p["request_id"], p["model"]): p for p in rec.predictions}
    assert by[("r7", "a")]["output"] == {"label": 8} and by[("r7", "b")]["output"] == {"label": 0}
    assert all(p["role"] == "candidate" and p["latency_ms"] >= 0 for p in rec.predictions)
    # Candidates share the request's event time, so the joiner windows them together.
    times = {r["request_id"]: r["event_time"] for r in rec.requests}
    assert all(p["event_time"] == times[p["request_id"]] for p in rec.predictions)


def test_a_raising_hanging_or_mutating_candidate_never_reaches_the_caller(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    release = threading.Event()

    def hangs(x: dict) -> dict:
        release.wait()
        return {"label": 1}

    def raises_and_mutates(x: dict) -> dict:
        x["v"] = "clobbered"
        x["nested"]["tags"].append("clobbered")
        raise RuntimeError("candidate bug")

    config = _config(tmp_path, timeout_ms=50)
    inputs = {"v": 1, "nested": {"tags": ["a"]}}
    inter = Interleave(
        config, "inter", control=lambda x: {"label": x["v"]},
        candidates={"a": hangs, "b": raises_and_mutates}, mirror=rec,  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        # Returns while candidate a is still blocked: the call cannot be waiting for it.
        assert inter(inputs, request_id="r1") == {"label": 1}
        _wait(lambda: inter.counters.candidate_errors == 1, "b's error")
        assert inputs == {"v": 1, "nested": {"tags": ["a"]}}  # b mutated its own copy
        _wait(lambda: inter.counters.timeouts == 1, "a's timeout")
        _wait(lambda: inter.counters.candidate_errors == 1, "b's error")
        preds = {p["model"]: p for p in rec.predictions}
        assert preds["a"]["error"].startswith("TimeoutError: candidate 'a' did not answer within")
        assert preds["a"]["latency_ms"] == 50 and preds["a"]["output"] is None
        assert preds["b"]["error"] == "RuntimeError: candidate bug"
        release.set()
        _wait(lambda: inter.counters.late_results == 1, "a's late result to be dropped")
        assert len(rec.predictions) == 2  # the late answer is not mirrored twice
    finally:
        release.set()
        inter.close()


def test_a_hung_candidate_holds_at_most_max_in_flight_threads(tmp_path: Path) -> None:
    rec = Recorder()
    release = threading.Event()
    config = _config(tmp_path, timeout_ms=20)
    inter = Interleave(
        config, "inter", control=lambda x: x,
        candidates={"a": lambda x: release.wait(), "b": lambda x: x},
        mirror=rec, max_in_flight=3,  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        for i in range(20):
            assert inter({"i": i}) == {"i": i}
            _wait(lambda i=i: inter.counters.candidate_runs >= i + 1, "b to finish")
        assert inter.counters.skipped_overloaded == 17  # a: 3 running, 17 not started
        busy = [t for t in threading.enumerate() if t.name.startswith("shadowline-interleave_")]
        assert len(busy) <= 3 * 2
        _wait(lambda: inter.counters.timeouts == 3, "a's three running calls to time out")
        # Every request has a's outcome as what it is: 3 timeouts, 17 refused calls
        # (an error naming the saturation), none left to read as a lost prediction.
        a_errors = Counter(p["error"].split(":")[0] for p in rec.predictions if p["model"] == "a")
        assert a_errors == {"TimeoutError": 3, "shadowline.calls.SaturatedError": 17}
        refused = next(p for p in rec.predictions if "Saturated" in (p["error"] or ""))
        assert "all 3 of its call slots are held" in refused["error"]
    finally:
        release.set()
        inter.close()


def test_the_controls_own_exception_is_the_callers_and_is_mirrored(tmp_path: Path) -> None:
    rec = Recorder()

    def control(x: dict) -> dict:
        raise ValueError("bad input")

    inter = Interleave(
        _config(tmp_path), "inter", control=control,
        candidates={"a": lambda x: 1, "b": lambda x: 2}, mirror=rec,  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        with pytest.raises(ValueError, match="bad input"):
            inter({"v": 1}, request_id="r1")
        assert isinstance(rec.requests[0]["error"], ValueError)
        assert rec.requests[0]["output"] is None
    finally:
        inter.close()


def test_rank_serves_the_team_draft_merge_and_mirrors_the_teams(tmp_path: Path) -> None:
    rec = Recorder()
    config = _config(tmp_path, output="ranking", timeout_ms=2000)
    prod = [f"p{i}" for i in range(6)]
    with Interleave(
        config, "inter", control=lambda x: prod,
        candidates={"a": lambda x: [{"id": f"a{i}"} for i in range(6)], "b": lambda x: "oops"},
        mirror=rec,  # type: ignore[arg-type]
    ) as inter:  # fmt: skip
        served = inter.rank({"q": "shoes"}, request_id="q1")
        _wait(lambda: len(rec.predictions) == 3, "a, b and the interleaved record")
    merged, teams = team_draft(
        {"prod": prod, "a": [{"id": f"a{i}"} for i in range(6)]}, seed_for("q1"), 6
    )
    assert served == merged
    assert Counter(teams) == {"prod": 3, "a": 3}
    (record,) = [p for p in rec.predictions if p["role"] == "interleaved"]
    assert record["output"] == {
        "seed": seed_for("q1"),
        "items": [x["id"] if isinstance(x, dict) else x for x in merged],
        "teams": teams,
    }
    assert inter.counters.merge_exclusions == 1  # b's "oops" is not a ranking
    assert rec.requests[0]["output"] == prod  # production's own ranking, for divergence


def test_rank_serves_the_controls_ranking_when_every_candidate_is_late(tmp_path: Path) -> None:
    rec = Recorder()
    release = threading.Event()
    config = _config(tmp_path, output="ranking", timeout_ms=30)
    inter = Interleave(
        config, "inter", control=lambda x: ["x", "y"],
        candidates={"a": lambda x: release.wait(), "b": lambda x: release.wait()},
        mirror=rec,  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        assert inter.rank({}, request_id="q") == ["x", "y"]
        assert inter.counters.merge_exclusions == 2 and inter.counters.merged == 0
    finally:
        release.set()
        inter.close()


def test_configuration_mistakes_are_named(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with pytest.raises(ConfigError, match=r"missing \['b'\], not configured \['c'\]"):
        Interleave(config, "inter", control=len, candidates={"a": len, "c": len})
    with pytest.raises(ConfigError, match=r"'nope' is not in .*c\.toml \(configured: inter\)"):
        Interleave(config, "nope", control=len, candidates={})
    with pytest.raises(ConfigError, match="configures no"):
        Interleave(config, "inter", control=len, candidates={"a": len, "b": len}, secondary=len)
    shadow = load_config(_write(tmp_path, mode="shadow"))
    with pytest.raises(ConfigError, match="mode 'shadow'; set mode = \"interleave\""):
        Interleave(shadow, "inter", control=len, candidates={"a": len, "b": len})


def test_the_secondary_defaults_to_calling_the_control_again(tmp_path: Path) -> None:
    rec = Recorder()
    calls = Counter()

    def control(x: dict) -> int:
        calls[threading.current_thread().name.startswith("shadowline")] += 1
        return 1

    config = _config(tmp_path, secondary={"name": "again", "model": "tests.fixtures.models:E"})
    with Interleave(
        config, "inter", control=control, candidates={"a": len, "b": len}, mirror=rec,  # type: ignore[arg-type]
    ) as inter:  # fmt: skip
        inter({"v": 1}, request_id="r")
        _wait(lambda: len(rec.predictions) == 3, "a, b and the secondary")
    assert calls == {False: 1, True: 1}  # once for the caller, once as the secondary
    assert {p["model"]: p["role"] for p in rec.predictions}["again"] == "secondary"


def _write(tmp_path: Path, mode: str) -> Path:
    data = {
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},
        "experiments": [
            {
                "name": "inter",
                "mode": mode,
                "production_model": "prod",
                "candidates": [
                    {"name": "a", "model": "m:A"},
                    {"name": "b", "model": "m:B"},
                ],
            }
        ],
    }
    path = tmp_path / f"{mode}.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def test_aa_team_draft_with_sequential_sign_test_rarely_declares_a_winner() -> None:
    """200 simulated A/A experiments (the same ranker twice, position-biased clicks),
    the sign test looked at after every 50 requests up to 1,000: a false win (or
    loss) must stay within alpha = 0.05 per direction, as the gates promise."""
    from shadowline.stats import rate_test

    rng = random.Random(11)
    ranking = [f"d{i}" for i in range(10)]
    false_wins = false_losses = 0
    for run in range(200):
        wins = losses = 0
        outcome = "inconclusive"
        for n in range(1, 1001):
            merged, teams = team_draft({"prod": ranking, "cand": ranking}, seed_for(f"{run}-{n}"))
            credit = Counter(
                teams[i] for i in range(10) if rng.random() < 0.3 / (1 + i)
            )  # position-biased clicks, independent of the team
            wins += credit["cand"] > credit["prod"]
            losses += credit["cand"] < credit["prod"]
            if n % 50 == 0 and wins + losses:
                outcome = rate_test(wins, wins + losses, 0.5, 0.05, fail_when="below").outcome
                if outcome != "inconclusive":
                    break
        false_wins += outcome == "pass"
        false_losses += outcome == "fail"
    print(f"A/A: {false_wins} false wins, {false_losses} false losses in 200 runs")
    assert false_wins <= 10 and false_losses <= 10, (false_wins, false_losses)


def test_counters_export_to_prometheus(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from shadowline.metrics import register_interleave

    rec = Recorder()

    def broken(x: Any) -> Any:
        raise KeyError("f3")

    registry = CollectorRegistry()
    with Interleave(
        _config(tmp_path), "inter", control=len, candidates={"a": len, "b": broken},
        mirror=rec,  # type: ignore[arg-type]
    ) as inter:  # fmt: skip
        register_interleave(inter, registry)
        for i in range(5):
            inter({"v": i})
        _wait(lambda: inter.counters.candidate_runs == 10, "10 candidate runs")
        text = generate_latest(registry).decode()
    assert "shadowline_interleave_calls_total 5.0" in text
    assert "shadowline_interleave_candidate_errors_total 5.0" in text
    assert "shadowline_interleave_timeouts_total 0.0" in text


def test_arank_keeps_the_event_loop_running_while_candidates_rank(tmp_path: Path) -> None:
    import asyncio

    rec = Recorder()
    config = _config(tmp_path, output="ranking", timeout_ms=2000)
    release = threading.Event()

    def slow_candidate(x: Any) -> list[str]:
        release.wait()
        return ["b1", "b2"]

    async def main(inter: Interleave) -> tuple[list[Any], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while not release.is_set():
                ticks += 1
                if ticks == 20:
                    release.set()  # the loop ran 20 times while rank() was waiting
                await asyncio.sleep(0.001)

        served, _ = await asyncio.gather(inter.arank({}, request_id="q"), ticker())
        return served, ticks

    with Interleave(
        config, "inter", control=lambda x: ["p1", "p2"],
        candidates={"a": slow_candidate, "b": slow_candidate}, mirror=rec,  # type: ignore[arg-type]
    ) as inter:  # fmt: skip
        served, ticks = asyncio.run(main(inter))
    assert ticks >= 20
    rankings = {"prod": ["p1", "p2"], "a": ["b1", "b2"], "b": ["b1", "b2"]}
    assert served == team_draft(rankings, seed_for("q"), 2)[0]
    assert inter.counters.merged == 1 and inter.counters.merge_exclusions == 0


def test_a_candidate_hung_forever_does_not_keep_the_process_from_exiting(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    config = _config(tmp_path)
    script = f"""
import threading
from shadowline import Interleave
from shadowline.config import load_config

class Quiet:
    def record(self, **kw): return True
    def record_prediction(self, **kw): return True
    def flush(self, timeout=0): return 0
    def close(self): pass

forever, started = threading.Event(), threading.Event()
inter = Interleave(load_config({config.source!r}), "inter", control=len,
                   candidates={{"a": lambda x: started.set() or forever.wait(), "b": len}},
                   mirror=Quiet())
print(inter({{"v": 1}}))
assert started.wait(10)
inter.close()
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


def test_candidates_run_only_for_sampled_requests(tmp_path: Path) -> None:
    from shadowline.tap import sampled

    rec = Recorder()
    config = _config(tmp_path, sampling=0.25)
    ran = Counter()

    def counted(x: dict) -> int:
        ran[x["i"]] += 1
        return 0

    rids = [f"r{i}" for i in range(400)]
    expected = {i for i, rid in enumerate(rids) if sampled(rid, 0.25)}
    with Interleave(
        config, "inter", control=lambda x: x["i"], candidates={"a": counted, "b": counted},
        mirror=rec,  # type: ignore[arg-type]
    ) as inter:  # fmt: skip
        assert [inter({"i": i}, request_id=rid) for i, rid in enumerate(rids)] == list(range(400))
        _wait(lambda: sum(ran.values()) == 2 * len(expected), "the sampled requests' candidates")
        inter.flush(5)
    assert 60 < len(expected) < 140  # about a quarter
    assert set(ran) == expected and all(n == 2 for n in ran.values())
    assert inter.counters.sampled_out == 400 - len(expected)
