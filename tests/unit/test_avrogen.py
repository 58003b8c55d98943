"""The generated Avro codec against fastavro, the reference: same bytes, same records,
and corrupt input refused rather than misread."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadowline import avrogen, codec
from shadowline.errors import ValueDecodeError
from tests.fixtures.rows import comparison

SCHEMAS = {k: codec.schema(k) for k in codec.KINDS}
PREVIOUS = sorted((codec.SCHEMA_DIR / "previous").glob("*.avsc"))


def values(t):
    """A strategy for values of Avro type ``t`` (as our schemas use them)."""
    if isinstance(t, list):
        return st.one_of(*[values(x) for x in t])
    if isinstance(t, dict) and t["type"] not in ("enum", "map", "array", "record"):
        t = t["type"]
    if isinstance(t, str):
        return {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "double": st.floats(allow_nan=False),
            "float": st.floats(width=32, allow_nan=False),
            "string": st.text(max_size=40),
            "bytes": st.binary(max_size=40),
        }[t]
    if t["type"] == "enum":
        return st.sampled_from(t["symbols"])
    if t["type"] == "map":
        return st.dictionaries(st.text(max_size=10), values(t["values"]), max_size=4)
    if t["type"] == "array":
        return st.lists(values(t["items"]), max_size=4)
    return st.fixed_dictionaries({f["name"]: values(f["type"]) for f in t["fields"]})


def fastavro_bytes(sch, record):
    buf = io.BytesIO()
    buf.write(sch.header)
    fastavro.schemaless_writer(buf, sch.parsed, record)
    return buf.getvalue()


def fastavro_record(sch, data):
    buf = io.BytesIO(data)
    buf.seek(10)
    return fastavro.schemaless_reader(buf, sch.parsed, None)


def test_every_published_and_previous_schema_is_compiled():
    for sch in SCHEMAS.values():
        assert sch.writer is not None and sch.reader is not None, sch.name
    for path in PREVIOUS:
        raw = json.loads(path.read_text())
        assert avrogen.compile_writer(raw) and avrogen.compile_reader(raw), path.name


@pytest.mark.parametrize("kind", codec.KINDS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_writer_and_reader_agree_with_fastavro(kind, data):
    sch = SCHEMAS[kind]
    record = data.draw(values(sch.raw))
    ours = sch.writer(record, sch.header)
    assert ours == fastavro_bytes(sch, record)
    assert sch.reader(ours, 10) == fastavro_record(sch, ours)


@pytest.mark.parametrize("kind", codec.KINDS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_corrupt_bodies_are_refused_or_read_as_fastavro_reads_them(kind, data):
    sch = SCHEMAS[kind]
    good = sch.writer(data.draw(values(sch.raw)), sch.header)
    cut = data.draw(st.integers(10, len(good)))
    noise = data.draw(st.binary(max_size=20))
    bad = good[:cut] + noise
    try:
        got = codec.decode_avro(kind, bad)
    except ValueDecodeError as exc:
        assert "corrupt Avro body" in str(exc)
        return
    assert got == fastavro_record(sch, bad)  # it really was a valid record


def test_a_value_that_does_not_fit_is_an_error_naming_the_problem():
    rec = comparison("r-1")._avro_record()
    with pytest.raises(avrogen.AvroError, match="32-bit"):
        codec.encode_avro("comparison", rec | {"revision": 2**40})
    with pytest.raises(avrogen.AvroError, match="expected a string"):
        codec.encode_avro("comparison", rec | {"request_id": 7})
    with pytest.raises(avrogen.AvroError, match="has no value"):
        codec.encode_avro("comparison", {k: v for k, v in rec.items() if k != "request_id"})
    with pytest.raises(avrogen.AvroError, match="'no-such-status' is not one of"):
        codec.encode_avro("comparison", rec | {"status": "no-such-status"})


def test_shapes_not_compiled_fall_back_to_none():
    union3 = {"type": "record", "name": "U", "fields": [
        {"name": "x", "type": ["null", "string", "long"]}]}  # fmt: skip
    assert avrogen.compile_writer(union3) is None and avrogen.compile_reader(union3) is None
    fixed = {"type": "record", "name": "F", "fields": [
        {"name": "x", "type": {"type": "fixed", "name": "h", "size": 4}}]}  # fmt: skip
    assert avrogen.compile_writer(fixed) is None


def test_schema_files_are_where_the_codec_reads_them():
    assert Path(codec.SCHEMA_DIR, "comparison.avsc").is_file()
