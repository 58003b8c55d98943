import dataclasses
import math

import orjson
import pytest

from shadowline import codec
from shadowline.envelopes import (
    Comparison,
    Control,
    DeadLetter,
    Feedback,
    Prediction,
    Request,
    now_ms,
)
from shadowline.errors import DecodeError, EncodeError, KeyDecodeError, ValueDecodeError


def test_crc64_avro_matches_the_spec_test_vector():
    # Avro spec / Java SchemaNormalization: fingerprint64("null") = 0x63dd24e7cc258f8a
    assert codec.crc64_avro(b'"null"') == 0x63DD24E7CC258F8A


def test_single_object_header_is_marker_plus_little_endian_fingerprint():
    sch = codec.schema("request")
    assert sch.header[:2] == b"\xc3\x01"
    assert int.from_bytes(sch.header[2:], "little") == sch.fingerprint
    # independent check: fastavro's fingerprint of the canonical form, hex of the LE bytes
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    assert sch.header[2:].hex() == fingerprint(to_parsing_canonical_form(sch.raw), "CRC-64-AVRO")


T = now_ms()
SAMPLES = [
    Request("r1", "exp", T, {"a": 1.5, "nested": {"b": [1, 2]}}, unit_id="u1", arm=None),
    Prediction("r1", "exp", "candidate", "m", {"label": 1}, 2.5, T),
    Prediction("r1", "exp", "production", "m", None, 0.0, T, error="builtins.ValueError: x"),
    Feedback("r1", "exp", "click", {"item": "a"}, T),
    Comparison(
        request_id="r1",
        experiment="exp",
        event_time=T,
        production_model="p",
        candidate_model="c",
        status="matched",
        revision=1,
        output_type="classification",
        joined_at=T,
        agree=True,
        divergence=0.25,
        metrics={"jsd": 0.25},
        production_output={"label": 1},
        candidate_output={"label": 1},
        production_latency_ms=1.0,
        candidate_latency_ms=3.0,
        latency_delta_ms=2.0,
    ),
]


@pytest.mark.parametrize("env", SAMPLES, ids=lambda e: type(e).__name__)
def test_avro_and_json_round_trip(env):
    cls = type(env)
    assert cls.from_message(env.key, env.encode()) == env
    assert cls.from_message(env.key, env.encode_json(), "application/json") == env
    # no header: recognised by the first bytes
    assert cls.from_message(env.key, env.encode_json()) == env


def test_control_and_dead_letter_round_trip():
    ctl = Control("exp", {"candidate": 0.05, "production": 0.95}, 3, T, verdict="pass")
    assert Control.from_message(b"exp", ctl.encode()) == ctl
    dl = DeadLetter.of(
        topic="t",
        partition=1,
        offset=7,
        reason="bad",
        component="worker",
        key=b"k",
        value=b"\x00\x01",
        headers=[("content-type", b"x")],
    )
    back = DeadLetter.from_message(b"k", dl.encode())
    assert (back.topic, back.offset, back.reason, back.value) == ("t", 7, "bad", b"\x00\x01")


def test_dead_letter_truncates_huge_values():
    dl = DeadLetter.of(
        topic="t",
        partition=0,
        offset=0,
        reason="r",
        component="sink",
        key=None,
        value=b"x" * (DeadLetter.MAX_VALUE + 10),
    )
    assert dl.value_truncated and len(dl.value) == DeadLetter.MAX_VALUE


def test_wrong_schema_is_named():
    req = SAMPLES[0]
    with pytest.raises(ValueDecodeError, match="got Request, expected Prediction"):
        Prediction.from_message(req.key, req.encode())


def test_corrupt_body_and_trailing_bytes_are_rejected():
    raw = SAMPLES[1].encode()
    with pytest.raises(ValueDecodeError, match="corrupt Avro body"):
        Prediction.from_message(b"r1", raw[:-3])
    with pytest.raises(ValueDecodeError, match="trailing bytes"):
        Prediction.from_message(b"r1", raw + b"\x00\x00")


def test_unknown_fingerprint():
    raw = b"\xc3\x01" + b"\xff" * 8 + b"\x00"
    with pytest.raises(ValueDecodeError, match="unknown writer schema fingerprint"):
        Request.from_message(b"r", raw)


def test_garbage_without_header_and_bad_content_type():
    with pytest.raises(ValueDecodeError, match="neither Avro"):
        Request.from_message(b"r", b"\x00garbage")
    with pytest.raises(ValueDecodeError, match="content-type header 'text/xml'"):
        Request.from_message(b"r", b"{}", "text/xml")
    with pytest.raises(ValueDecodeError, match="invalid JSON"):
        Request.from_message(b"r", b"{not json", "application/json")
    with pytest.raises(ValueDecodeError, match="tombstone"):
        Request.from_message(b"r", None)


def _json(**fields):
    base = {"request_id": "r1", "experiment": "exp", "event_time": T, "inputs": {"a": 1}}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"request_id": ...}, "field 'request_id' is missing"),
        ({"request_id": ""}, "field 'request_id' is empty"),
        ({"request_id": "x" * 10_000_000}, "field 'request_id' is 10000000 characters"),
        ({"experiment": 5}, "field 'experiment' must be a string, got int"),
        ({"inputs": [1, 2]}, "field 'inputs' must be a JSON object"),
        ({"event_time": -5}, "field 'event_time' = -5 is not a plausible"),
        ({"event_time": "yesterday"}, "field 'event_time' must be epoch milliseconds"),
    ],
)
def test_request_validation_names_the_field(fields, message):
    key = b"r1" if fields.get("request_id", "r1") == "r1" else None
    with pytest.raises(ValueDecodeError, match=message):
        Request.from_message(key, _json(**fields), "application/json")


def test_non_finite_values_are_refused_not_rewritten():
    # orjson would write NaN as null; the envelope refuses instead of changing the data
    with pytest.raises(EncodeError, match="'inputs' contains a non-finite number"):
        Request("r1", "exp", T, {"a": math.nan}).encode()
    with pytest.raises(ValueDecodeError, match="invalid JSON"):
        Request.from_message(b"r1", _json().replace(b'"a":1', b'"a":NaN'), "application/json")
    # Decoding relies on orjson refusing what would be infinite (no second walk).
    with pytest.raises(ValueDecodeError, match="invalid JSON: number is infinity"):
        Request.from_message(b"r1", _json().replace(b'"a":1', b'"a":1e400'), "application/json")
    sch = codec.schema("request")
    rec = {f: None for f in sch.fields} | {"request_id": "r1", "experiment": "exp",
           "event_time": T, "inputs": '{"a": -1e309}'}  # fmt: skip
    with pytest.raises(ValueDecodeError, match="'inputs' is not valid JSON: number is infinity"):
        Request.from_message(b"r1", codec.encode_avro("request", rec))
    pred = {f: None for f in codec.schema("prediction").fields} | {
        "request_id": "r1", "experiment": "exp", "role": "candidate", "model": "m",
        "output": '[1, 2e308]', "latency_ms": 1.0, "event_time": T, "timing": "request",
    }  # fmt: skip
    with pytest.raises(ValueDecodeError, match="'output' is not valid JSON: number is infinity"):
        Prediction.from_message(b"r1", codec.encode_avro("prediction", pred))


@pytest.mark.parametrize("latency", [-1.0, math.inf, math.nan, 1e12])
def test_absurd_latency_is_rejected(latency):
    pred = Prediction("r1", "exp", "candidate", "m", 1, latency, T)
    with pytest.raises(ValueDecodeError, match="latency_ms"):
        Prediction.from_message(b"r1", pred.encode())


def test_prediction_needs_output_or_error_and_a_known_role():
    with pytest.raises(ValueDecodeError, match="needs an 'output' or an 'error'"):
        Prediction.from_message(b"r1", Prediction("r1", "e", "candidate", "m", None, 1, T).encode())
    body = orjson.dumps(
        {
            "request_id": "r1",
            "experiment": "e",
            "role": "judge",
            "model": "m",
            "output": 1,
            "latency_ms": 1,
            "event_time": T,
        }
    )
    with pytest.raises(ValueDecodeError, match="field 'role' = 'judge' is not one of"):
        Prediction.from_message(b"r1", body, "application/json")


def test_key_must_be_the_request_id():
    raw = SAMPLES[0].encode()
    with pytest.raises(KeyDecodeError, match="no key"):
        Request.from_message(None, raw)
    with pytest.raises(KeyDecodeError, match="does not match request_id"):
        Request.from_message(b"other", raw)


def test_messages_written_with_an_earlier_schema_version_still_decode():
    # A request as the tap wrote it before `arm_weight` existed: bytes made with the
    # old schema file, independently of the current code's encoder.
    import io
    import json

    import fastavro

    old_raw = json.loads((codec.SCHEMA_DIR / "previous" / "request.1.avsc").read_text())
    old = fastavro.parse_schema(codec._strip_logical_types(old_raw))
    fp = codec.crc64_avro(fastavro.schema.to_parsing_canonical_form(old_raw).encode())
    assert fp != codec.schema("request").fingerprint
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + fp.to_bytes(8, "little"))
    fastavro.schemaless_writer(
        buf,
        old,
        {"request_id": "r-1", "experiment": "e", "unit_id": None, "event_time": 1795700000000,
         "inputs": '{"x": 1}', "arm": "b"},
    )  # fmt: skip
    req = Request.from_message(b"r-1", buf.getvalue(), "avro/binary")
    assert (req.arm, req.arm_weight, req.inputs) == ("b", None, {"x": 1})


def _old_bytes(path: str, record: dict) -> bytes:
    import io
    import json

    import fastavro

    raw = json.loads((codec.SCHEMA_DIR / "previous" / path).read_text())
    fp = codec.crc64_avro(fastavro.schema.to_parsing_canonical_form(raw).encode())
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + fp.to_bytes(8, "little"))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(codec._strip_logical_types(raw)), record)
    return buf.getvalue()


def test_predictions_and_comparisons_from_before_timing_still_decode():
    # Written before latencies said how they were measured: a prediction reads as timed
    # on its request (what the tap and other clients always measured), a comparison as
    # of unknown timing (the latency rules skip it).
    pred = Prediction.from_message(
        b"r-1",
        _old_bytes(
            "prediction.2.avsc",
            {
                "request_id": "r-1",
                "experiment": "e",
                "role": "candidate",
                "model": "m",
                "output": "1",
                "latency_ms": 2.5,
                "error": None,
                "event_time": 1795700000000,
            },
        ),  # fmt: skip
        "avro/binary",
    )
    assert (pred.timing, pred.latency_ms, pred.output) == ("request", 2.5, 1)
    t = 1795700000000
    old = {
        "request_id": "r-1", "experiment": "e", "event_time": t, "production_model": "p",
        "candidate_model": "c", "status": "matched", "revision": 1, "output_type": "regression",
        "agree": True, "divergence": 0.0, "metrics": {}, "production_output": "1",
        "candidate_output": "1", "production_latency_ms": 1.0, "candidate_latency_ms": 2.0,
        "latency_delta_ms": 1.0, "production_error": None, "candidate_error": None,
        "unit_id": None, "arm": None, "joined_at": t,
    }  # fmt: skip
    comp = Comparison.from_message(b"r-1", _old_bytes("comparison.1.avsc", old), "avro/binary")
    assert comp.candidate_timing is None and comp.candidate_latency_ms == 2.0
    # and the current encoding carries the timing through
    assert Prediction.from_message(b"r-1", pred.encode(), "avro/binary").timing == "request"
    batched = Prediction("r-1", "e", "candidate", "m", 1, 0.1, t, timing="batch_share")
    assert Prediction.from_message(b"r-1", batched.encode_json(), "application/json").timing == (
        "batch_share"
    )


def test_the_sinks_stored_record_equals_decoding_then_re_encoding():
    from shadowline.envelopes import Comparison
    from tests.fixtures.rows import comparison

    out = {"label": 1, "probabilities": {"0": 0.25, "1": 0.75}, "text": "é \u2028"}
    for c in (
        comparison("r-1", metrics={"js": 0.1}, production_output=out, candidate_output=out),
        comparison(
            "r-2",
            status="missing_candidate",
            revision=0,
            candidate_output=None,
            agree=None,
            divergence=None,
            unit_id="u",
            arm="a",
        ),  # fmt: skip
    ):
        for value, ctype in ((c.encode(), "avro/binary"), (c.encode_json(), "application/json")):
            expected = Comparison.from_message(c.key, value, ctype)._avro_record()
            assert Comparison.stored_record(c.key, value, ctype) == expected


def test_the_sinks_stored_record_refuses_what_from_message_refuses():
    from shadowline import codec
    from shadowline.envelopes import Comparison
    from tests.fixtures.rows import comparison

    good = comparison("r-1")._avro_record()
    cases = {
        "is not valid JSON": good | {"candidate_output": "{not json"},
        "more than": good | {"experiment": "x" * 10_000},
        "plausible": good | {"event_time": 5},
        "is empty": good | {"candidate_model": ""},
    }
    for reason, rec in cases.items():
        value = codec.encode_avro("comparison", rec)
        with pytest.raises(ValueDecodeError, match=reason):
            Comparison.from_message(b"r-1", value, "avro/binary")
        with pytest.raises(ValueDecodeError, match=reason):
            Comparison.stored_record(b"r-1", value, "avro/binary")
    with pytest.raises(DecodeError, match="does not match request_id"):
        Comparison.stored_record(b"other", codec.encode_avro("comparison", good), "avro/binary")


def test_the_joiners_view_of_a_request_skips_only_the_inputs():
    from shadowline.envelopes import Request

    req = Request("r-1", "e", 1_790_000_000_000, {"x": [1, 2]}, unit_id="u", arm="a")
    for value, ctype in ((req.encode(), "avro/binary"), (req.encode_json(), "application/json")):
        light = Request.without_inputs(req.key, value, ctype)
        assert light == dataclasses.replace(req, inputs={})
    rec = req._avro_record() | {"inputs": "{not json"}
    broken = codec.encode_avro("request", rec)
    with pytest.raises(ValueDecodeError, match="not valid JSON"):
        Request.from_message(req.key, broken, "avro/binary")
    assert Request.without_inputs(req.key, broken, "avro/binary").unit_id == "u"
    with pytest.raises(KeyDecodeError):
        Request.without_inputs(b"other", req.encode(), "avro/binary")
    with pytest.raises(ValueDecodeError, match="plausible"):
        Request.without_inputs(req.key, codec.encode_avro("request", rec | {"event_time": 3}))
