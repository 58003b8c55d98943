"""Router assignment without a broker: stickiness, shares, ramps, and never raising."""

from __future__ import annotations

from pathlib import Path

import tomli_w

from shadowline.config import load_config
from shadowline.envelopes import Control
from shadowline.router import Router, bucket, pick


def _config(tmp_path: Path):
    data = {
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},
        "experiments": [
            {
                "name": "ramp",
                "mode": "canary",
                "production_model": "prod",
                "candidates": [{"name": "cand", "model": "tests.fixtures.models:EchoModel"}],
            }
        ],
    }
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(data))
    return load_config(path)


def test_bucket_is_stable_uniform_and_independent_between_experiments() -> None:
    assert bucket("e", "user-1") == bucket("e", "user-1")
    values = [bucket("e", f"user-{i}") for i in range(20_000)]
    assert all(0 <= v < 1 for v in values)
    # Uniform: each tenth of [0, 1) holds 10 % of units, within 1 point.
    for k in range(10):
        share = sum(1 for v in values if k / 10 <= v < (k + 1) / 10) / len(values)
        assert abs(share - 0.1) < 0.01
    other = [bucket("f", f"user-{i}") for i in range(20_000)]
    both = sum(1 for a, b in zip(values, other, strict=True) if a < 0.1 and b < 0.1)
    assert abs(both / 20_000 - 0.01) < 0.004  # 10 % x 10 %: no correlation


def test_shares_follow_the_weights_and_a_ramp_only_adds_units() -> None:
    units = [f"user-{i}" for i in range(20_000)]
    at = {w: {u for u in units if pick("prod", {"cand": w}, bucket("e", u)).candidate}
          for w in (0.01, 0.05, 0.25, 0.5)}  # fmt: skip
    for w, chosen in at.items():
        assert abs(len(chosen) / len(units) - w) < 0.01
    assert at[0.01] <= at[0.05] <= at[0.25] <= at[0.5]  # sticky while ramping up


def test_pick_reports_the_arm_weight_and_treats_production_in_weights_as_the_rest() -> None:
    assert pick("prod", {"cand": 0.05, "prod": 0.95}, 0.01).arm == "cand"
    a = pick("prod", {"cand": 0.05, "prod": 0.95}, 0.5)
    assert (a.arm, a.candidate) == ("prod", False)
    assert abs(a.weight - 0.95) < 1e-12
    assert pick("prod", {"cand": 0.0}, 0.0).arm == "prod"
    b = pick("prod", {"a": 0.2, "b": 0.3}, 0.45)
    assert (b.arm, b.weight) == ("b", 0.3)


def test_assign_never_raises_and_serves_production_until_control_is_read(tmp_path) -> None:
    router = Router(_config(tmp_path), start=False)
    a = router.assign("ramp", "user-1")
    assert (a.arm, a.weight, a.candidate) == ("prod", 1.0, False)
    assert router.counters.control_unavailable == 1
    assert router.assign("nope", "user-1").arm == ""
    assert router.counters.unknown_experiment == 1
    # Once weights are in force, units follow them; garbage unit ids are still served.
    router._readable = True
    router._weights["ramp"] = Control("ramp", {"cand": 1.0}, 1, 1795700000000)
    assert router.assign("ramp", "user-1").arm == "cand"
    assert router.assign("ramp", object()).arm == "cand"  # type: ignore[arg-type]
    router._weights["ramp"] = Control("ramp", None, 2, 1795700000000)  # type: ignore[arg-type]
    assert router.assign("ramp", "user-1").arm == "prod"
    assert router.counters.errors == 1
