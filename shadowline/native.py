"""ClickHouse's Native format as a server sends it over HTTP to a given client revision.

chDB writes Native as for client revision 0: blocks of ``columns, rows`` and, per
column, ``name, type, data``. A ClickHouse server answering an HTTP request that
carries ``client_protocol_version`` (clickhouse-go v2 does: it is the driver inside
Grafana's ClickHouse data source) writes each block with a block-info header first
and, from revision 54454, one byte per column saying whether it uses a custom
(sparse) serialization. ``reframe`` turns the first form into the second; to find
where one column's data ends it walks the data by type (``data_size``). The data
itself is copied unchanged (always the default, dense serialization).
"""

from __future__ import annotations

import struct

CUSTOM_SERIALIZATION_REVISION = 54454

_FIXED = {
    "UInt8": 1, "Int8": 1, "Bool": 1, "UInt16": 2, "Int16": 2, "UInt32": 4, "Int32": 4,
    "UInt64": 8, "Int64": 8, "UInt128": 16, "Int128": 16, "UInt256": 32, "Int256": 32,
    "Float32": 4, "Float64": 8, "BFloat16": 2, "Date": 2, "Date32": 4, "DateTime": 4,
    "DateTime64": 8, "UUID": 16, "IPv4": 4, "IPv6": 16, "Enum8": 1, "Enum16": 2,
    "Decimal32": 4, "Decimal64": 8, "Decimal128": 16, "Decimal256": 32, "Time": 4,
    "Time64": 8, "Nothing": 1,
}  # fmt: skip
_INTERVALS = ("IntervalNanosecond", "IntervalMicrosecond", "IntervalMillisecond",
              "IntervalSecond", "IntervalMinute", "IntervalHour", "IntervalDay",
              "IntervalWeek", "IntervalMonth", "IntervalQuarter", "IntervalYear")  # fmt: skip


class NativeError(ValueError):
    """Native data this module cannot walk (a type it does not know, or truncated)."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        if pos >= len(buf):
            raise NativeError("truncated Native data (in a length)")
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, pos
        shift += 7
        if shift > 63:
            raise NativeError("malformed Native data (a length over 64 bits)")


def _string(buf: memoryview, pos: int) -> tuple[str, int]:
    n, pos = _varint(buf, pos)
    if pos + n > len(buf):
        raise NativeError("truncated Native data (in a name)")
    return bytes(buf[pos : pos + n]).decode("utf-8", "replace"), pos + n


def split_type(name: str) -> tuple[str, list[str]]:
    """``"Map(String, Array(UInt8))"`` -> ``("Map", ["String", "Array(UInt8)"])``; quoted
    parts (enum names, time zones) may hold commas and parentheses."""
    name = name.strip()
    open_at = name.find("(")
    if open_at < 0 or not name.endswith(")"):
        return name, []
    head, body = name[:open_at], name[open_at + 1 : -1]
    args, depth, start, quote, i = [], 0, 0, "", 0
    while i < len(body):
        c = body[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'`\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(body[start:i].strip())
            start = i + 1
        i += 1
    args.append(body[start:].strip())
    return head, [a for a in args if a]


def _tuple_element(arg: str) -> str:
    # Tuple(a String, b UInt8): a named element is "name Type"
    head, _ = split_type(arg)
    if " " in head.strip():
        return arg.split(None, 1)[1]
    return arg


def data_size(type_name: str, buf: memoryview, pos: int, rows: int) -> int:
    """Where the data of ``rows`` values of ``type_name`` starting at ``pos`` ends."""
    head, args = split_type(type_name)
    if head in _FIXED or head in _INTERVALS:
        width = _FIXED.get(head, 8)
        end = pos + width * rows
    elif head == "Decimal":
        precision = int(args[0]) if args else 10
        width = 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32
        end = pos + width * rows
    elif head == "FixedString":
        end = pos + int(args[0]) * rows
    elif head == "String":
        end = pos
        for _ in range(rows):
            n, end = _varint(buf, end)
            end += n
    elif head == "Nullable":
        end = data_size(args[0], buf, pos + rows, rows)
    elif head in ("Array", "Map"):
        total = 0
        if rows:
            if pos + 8 * rows > len(buf):
                raise NativeError("truncated Native data (in array offsets)")
            (total,) = struct.unpack_from("<Q", buf, pos + 8 * (rows - 1))
        inner = args[0] if head == "Array" else f"Tuple({args[0]}, {args[1]})"
        end = data_size(inner, buf, pos + 8 * rows, int(total))
    elif head == "LowCardinality":
        end = _low_cardinality(args[0], buf, pos, rows)
    elif head == "Tuple":
        end = pos
        for arg in args:
            end = data_size(_tuple_element(arg), buf, end, rows)
    else:
        raise NativeError(
            f"type {type_name} is not supported in Native output by the embedded endpoint "
            "(cast it, e.g. toString(...), or ask for another format)"
        )
    if end > len(buf):
        raise NativeError(f"truncated Native data (in a {head} column)")
    return end


_INDEX_WIDTH = (1, 2, 4, 8)
_HAS_ADDITIONAL_KEYS = 1 << 9


def _u64(buf: memoryview, pos: int) -> int:
    if pos + 8 > len(buf):
        raise NativeError("truncated Native data (in a LowCardinality column)")
    return int(struct.unpack_from("<Q", buf, pos)[0])


def _low_cardinality(inner: str, buf: memoryview, pos: int, rows: int) -> int:
    # the state prefix (key version), then parts of: index type and flags, the part's
    # dictionary keys (of the type without Nullable), the indexes into them
    head, args = split_type(inner)
    keys_type = args[0] if head == "Nullable" else inner
    pos += 8
    done = 0
    while done < rows:
        flags = _u64(buf, pos)
        pos += 8
        if flags & 0xFF > 3:
            raise NativeError("malformed Native data (a LowCardinality index type)")
        if flags & _HAS_ADDITIONAL_KEYS:
            keys = _u64(buf, pos)
            pos = data_size(keys_type, buf, pos + 8, keys)
        count = _u64(buf, pos)
        if count == 0:
            raise NativeError("malformed Native data (an empty LowCardinality part)")
        pos += 8 + _INDEX_WIDTH[flags & 0xFF] * count
        done += count
    return pos


def reframe(data: bytes, revision: int) -> bytes:
    """Native data written for revision 0 as a server writes it for ``revision``."""
    if revision <= 0:
        return data
    buf = memoryview(data)
    out = bytearray()
    custom = revision >= CUSTOM_SERIALIZATION_REVISION
    pos = 0
    while pos < len(buf):
        # block info: field 1 is_overflows (false), field 2 bucket_num (-1), end
        out += b"\x01\x00\x02\xff\xff\xff\xff\x00"
        start = pos
        columns, pos = _varint(buf, pos)
        rows, pos = _varint(buf, pos)
        out += buf[start:pos]
        for _ in range(columns):
            start = pos
            _, pos = _string(buf, pos)
            type_name, pos = _string(buf, pos)
            out += buf[start:pos]
            if custom:
                out += b"\x00"  # the default serialization, dense
            start = pos
            pos = data_size(type_name, buf, pos, rows) if rows else pos
            out += buf[start:pos]
    return bytes(out)
