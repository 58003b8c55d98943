"""Property-based tests: random inputs to every decoder and divergence function.

No input crashes them with anything but their own typed error, and nothing invalid is
silently accepted."""

from __future__ import annotations

import math

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowline.divergence import Divergence, OutputError, compare
from shadowline.envelopes import (
    MAX_LATENCY_MS,
    Comparison,
    Control,
    DeadLetter,
    Feedback,
    Prediction,
    Request,
    now_ms,
)
from shadowline.errors import DecodeError

ENVELOPES = [Request, Prediction, Feedback, Control, Comparison, DeadLetter]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(key=st.none() | st.binary(max_size=16), value=st.binary(max_size=300),
       ctype=st.sampled_from([None, "avro/binary", "application/json", "text/plain"]))  # fmt: skip
def test_random_bytes_never_crash_a_decoder(key, value, ctype):
    for cls in ENVELOPES:
        try:
            cls.from_message(key, value, ctype)
        except DecodeError as exc:
            assert exc.reason  # every rejection says why


@FAST
@given(
    key=st.binary(max_size=8), header=st.sampled_from([b"\xc3\x01"]), body=st.binary(max_size=200)
)
def test_random_avro_bodies_behind_real_fingerprints(key, header, body):
    from shadowline import codec

    for kind, cls in zip(("request", "prediction", "feedback", "control"),
                         (Request, Prediction, Feedback, Control), strict=True):  # fmt: skip
        raw = codec.schema(kind).header + body
        try:
            env = cls.from_message(key, raw, "avro/binary")
        except DecodeError:
            continue
        # whatever got through is valid by the contract's rules
        _assert_valid(env)


@FAST
@given(obj=st.dictionaries(
    st.sampled_from(["request_id", "experiment", "event_time", "inputs", "role", "model", "output",
                     "latency_ms", "error", "kind", "value", "unit_id", "weights", "version"]),
    json_values, max_size=10))  # fmt: skip
def test_random_json_objects_are_accepted_only_when_valid(obj):
    raw = orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    key = str(obj.get("request_id", "")).encode()
    for cls in (Request, Prediction, Feedback):
        try:
            env = cls.from_message(key, raw, "application/json")
        except DecodeError:
            continue
        _assert_valid(env)


def _assert_valid(env: object) -> None:
    now = now_ms()
    if hasattr(env, "request_id"):
        assert isinstance(env.request_id, str) and 0 < len(env.request_id) <= 256
    if hasattr(env, "event_time"):
        assert 946_684_800_000 <= env.event_time <= now + 86_400_000
    if isinstance(env, Prediction):
        assert math.isfinite(env.latency_ms) and 0 <= env.latency_ms <= MAX_LATENCY_MS
        assert env.output is not None or env.error is not None
        orjson.dumps(env.output)  # finite, encodable
    if isinstance(env, Request):
        assert isinstance(env.inputs, dict)
        env.encode()  # round-trips: nothing non-finite slipped in


@FAST
@given(output_type=st.sampled_from(["classification", "regression", "probabilities"]),
       prod=json_values, cand=json_values)  # fmt: skip
def test_divergence_never_crashes_and_stays_in_range(output_type, prod, cand):
    try:
        d = compare(output_type, prod, cand)
    except OutputError as exc:
        assert exc.side in ("production", "candidate")
        return
    assert isinstance(d, Divergence)
    for name, value in d.metrics.items():
        assert math.isfinite(value), name
    if output_type != "regression":
        assert 0.0 <= d.divergence <= 1.0
        for name in ("tvd", "jsd", "hellinger", "top1_flip"):
            if name in d.metrics:
                assert 0.0 <= d.metrics[name] <= 1.0


@FAST
@given(st.lists(st.floats(0.001, 1.0), min_size=1, max_size=6),
       st.lists(st.floats(0.001, 1.0), min_size=1, max_size=6))  # fmt: skip
def test_distribution_metrics_are_symmetric_and_bounded(a, b):
    p = {str(i): x / sum(a) for i, x in enumerate(a)}
    q = {str(i): x / sum(b) for i, x in enumerate(b)}
    fwd = compare("probabilities", p, q).metrics
    back = compare("probabilities", q, p).metrics
    for name in ("tvd", "jsd", "hellinger"):
        assert math.isclose(fwd[name], back[name], abs_tol=1e-9)
        assert 0.0 <= fwd[name] <= 1.0
    assert compare("probabilities", p, p).metrics["jsd"] <= 1e-9
