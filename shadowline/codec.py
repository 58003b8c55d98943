"""Avro single-object encoding and JSON, the two wire formats of every topic.

Avro messages are ``C3 01`` + the writer schema's 8-byte CRC-64-AVRO fingerprint
(little-endian) + the Avro binary body, so readers find the writer schema by
fingerprint with no registry server. JSON messages are plain objects. The
``content-type`` header (``avro/binary`` or ``application/json``) says which; a
message without it is recognised by its first bytes.

This module works on plain dicts shaped like the schemas; ``envelopes`` turns
them into typed objects and checks their values.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
import orjson
from fastavro.schema import to_parsing_canonical_form

from shadowline import avrogen
from shadowline.errors import ValueDecodeError
from shadowline.resources import data_dir

SCHEMA_DIR = data_dir("shadowline.schemas", "request.avsc")
MAGIC = b"\xc3\x01"
AVRO = "avro/binary"
JSON = "application/json"
CONTENT_TYPE = "content-type"
KINDS = ("request", "prediction", "feedback", "control", "comparison", "deadletter")

_EMPTY = 0xC15D213AA4D7A795


def _fp_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_FP_TABLE = _fp_table()


def crc64_avro(data: bytes) -> int:
    """The Avro spec's 64-bit Rabin fingerprint (CRC-64-AVRO) of ``data``."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


def _strip_logical_types(node: Any) -> Any:
    # Timestamps travel as epoch milliseconds; reading them as ints spares a
    # datetime per field. The canonical form drops logicalType, so the
    # fingerprint is the same as the published schema's.
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


@dataclass(frozen=True)
class Schema:
    """One parsed schema with its single-object header."""

    kind: str
    name: str
    raw: dict[str, Any]
    parsed: Any
    fingerprint: int
    header: bytes
    fields: tuple[str, ...]
    # Generated from the schema (shadowline.avrogen); None where fastavro is kept.
    writer: Callable[[dict[str, Any], bytes], bytes] | None = None
    reader: Callable[[bytes, int], dict[str, Any]] | None = None


@cache
def schema(kind: str) -> Schema:
    """The published schema of ``kind`` (request, prediction, ...), parsed once."""
    if kind not in KINDS:
        raise ValueError(f"unknown schema kind {kind!r}; expected one of {KINDS}")
    return _load(kind, SCHEMA_DIR / f"{kind}.avsc")


def _load(kind: str, path: Path) -> Schema:
    raw = json.loads(path.read_text())
    # With the parse hint kept, fastavro does not parse the schema again on every call
    # (that re-parse was most of an encode: 26 µs of 30 for a comparison).
    parsed = fastavro.parse_schema(_strip_logical_types(raw))
    canonical = to_parsing_canonical_form(raw)
    fp = crc64_avro(canonical.encode())
    return Schema(
        kind=kind,
        name=raw["name"],
        raw=raw,
        parsed=parsed,
        fingerprint=fp,
        header=MAGIC + fp.to_bytes(8, "little"),
        fields=tuple(f["name"] for f in raw["fields"]),
        writer=avrogen.compile_writer(raw),
        reader=avrogen.compile_reader(raw),
    )


@cache
def _by_fingerprint() -> dict[bytes, Schema]:
    # Earlier versions of a schema (schemas/previous/KIND.N.avsc) stay readable, so
    # messages written before an upgrade still decode: their missing fields read as
    # absent, which every envelope treats as the field's default.
    known = {schema(k).header[2:]: schema(k) for k in KINDS}
    for path in sorted((SCHEMA_DIR / "previous").glob("*.avsc")):
        kind = path.name.split(".", 1)[0]
        if kind in KINDS:
            old = _load(kind, path)
            known.setdefault(old.header[2:], old)
    return known


def encode_avro(kind: str, record: dict[str, Any]) -> bytes:
    """Single-object encode ``record`` (a dict shaped like the schema)."""
    sch = schema(kind)
    if sch.writer is not None:
        try:
            return sch.writer(record, sch.header)
        except avrogen.AvroError:
            raise
        except KeyError as exc:
            raise avrogen.AvroError(f"{sch.name}: field {exc} has no value") from exc
        except (TypeError, AttributeError) as exc:
            raise avrogen.AvroError(f"{sch.name}: {exc}") from exc
    buf = io.BytesIO()
    buf.write(sch.header)
    fastavro.schemaless_writer(buf, sch.parsed, record)
    return buf.getvalue()


def encode_json(record: dict[str, Any]) -> bytes:
    """JSON-encode a natural-shaped record (inputs and outputs as JSON values)."""
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


def sniff(value: bytes, content_type: str | None) -> str:
    """Which format ``value`` is in, from its header or else its first bytes."""
    if content_type:
        ct = content_type.split(";", 1)[0].strip().lower()
        if ct in (AVRO, "avro/binary-single-object", "application/avro"):
            return AVRO
        if ct in (JSON, "text/json"):
            return JSON
        raise ValueDecodeError(
            f"content-type header {content_type!r} is not one of '{AVRO}', '{JSON}'"
        )
    if value[:2] == MAGIC:
        return AVRO
    if value.lstrip()[:1] == b"{":
        return JSON
    raise ValueDecodeError(
        "no content-type header and the value is neither Avro single-object (C3 01) "
        "nor a JSON object"
    )


def decode_avro(kind: str, value: bytes) -> dict[str, Any]:
    """Decode a single-object Avro message that must be of ``kind``."""
    if len(value) < 10 or value[:2] != MAGIC:
        raise ValueDecodeError("not Avro single-object encoding (missing C3 01 marker)")
    writer = _by_fingerprint().get(value[2:10])
    if writer is None:
        raise ValueDecodeError(f"unknown writer schema fingerprint {value[2:10].hex()}")
    if writer.kind != kind:
        raise ValueDecodeError(f"wrong schema: got {writer.name}, expected {schema(kind).name}")
    if writer.reader is not None:
        try:
            return writer.reader(value, 10)
        except avrogen.AvroError as exc:
            raise ValueDecodeError(f"corrupt Avro body for {writer.name}: {exc}") from exc
        except (IndexError, UnicodeDecodeError, struct.error) as exc:
            raise ValueDecodeError(
                f"corrupt Avro body for {writer.name}: {type(exc).__name__}"
            ) from exc
    buf = io.BytesIO(value)
    buf.seek(10)
    try:
        record = fastavro.schemaless_reader(buf, writer.parsed, None)
    except Exception as exc:  # fastavro raises many types on corrupt bodies
        raise ValueDecodeError(
            f"corrupt Avro body for {writer.name}: {type(exc).__name__}"
        ) from exc
    if buf.tell() != len(value):
        raise ValueDecodeError(
            f"corrupt Avro body for {writer.name}: {len(value) - buf.tell()} trailing bytes"
        )
    return record  # type: ignore[return-value]


_ROLES = ("production", "candidate", "secondary", "arm", "interleaved")


def peek_prediction(value: bytes, content_type: str | None) -> tuple[str, str] | None:
    """``(experiment, role)`` of an Avro prediction in today's schema, read from its first
    fields without decoding the rest (a replay skips other experiments' and candidates'
    predictions this way). None when it cannot be read so: decode it in full, which
    also reports whatever is wrong with it."""
    if content_type not in (None, AVRO) or value[:10] != schema("prediction").header:
        return None
    try:
        _, pos = avrogen._read_string(value, 10)
        experiment, pos = avrogen._read_string(value, pos)
        role, _ = avrogen.read_long(value, pos)
    except (avrogen.AvroError, IndexError, UnicodeDecodeError):
        return None
    if not 0 <= role < len(_ROLES):
        return None
    return experiment, _ROLES[role]


def peek_request(value: bytes, content_type: str | None) -> str | None:
    """The experiment of an Avro request in today's schema, from its first fields; None
    when it cannot be read so (decode it in full)."""
    if content_type not in (None, AVRO) or value[:10] != schema("request").header:
        return None
    try:
        _, pos = avrogen._read_string(value, 10)
        return avrogen._read_string(value, pos)[0]
    except (avrogen.AvroError, IndexError, UnicodeDecodeError):
        return None


def decode_json(value: bytes) -> dict[str, Any]:
    """Parse a JSON object; anything else is a decode error."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueDecodeError(f"invalid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueDecodeError(f"JSON value must be an object, got {type(obj).__name__}")
    return obj
