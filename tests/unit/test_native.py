"""shadowline.native: Native blocks reframed for a client revision, walked by type."""

from __future__ import annotations

import struct

import pytest

from shadowline.native import NativeError, data_size, reframe, split_type


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text: str) -> bytes:
    raw = text.encode()
    return varint(len(raw)) + raw


def block(rows: int, columns: list[tuple[str, str, bytes]]) -> bytes:
    out = varint(len(columns)) + varint(rows)
    for name, type_name, data in columns:
        out += s(name) + s(type_name) + data
    return out


# three rows of each type, encoded as ClickHouse's Native format does (revision 0)
COLUMNS = [
    ("n", "UInt8", bytes([1, 2, 3])),
    ("t", "DateTime64(3, 'UTC')", struct.pack("<3q", 1, 2, 3)),
    ("s", "String", s("a") + s("") + s("ccc")),
    ("ns", "Nullable(String)", bytes([0, 1, 0]) + s("x") + s("") + s("z")),
    ("arr", "Array(UInt32)", struct.pack("<3Q", 2, 2, 5) + struct.pack("<5I", 1, 2, 3, 4, 5)),
    ("as", "Array(String)", struct.pack("<3Q", 1, 1, 2) + s("p") + s("q")),
    ("tup", "Tuple(a String, b Float64)", s("a") + s("b") + s("c") + struct.pack("<3d", 1, 2, 3)),
    ("m", "Map(String, UInt8)", struct.pack("<3Q", 1, 1, 1) + s("k") + bytes([9])),
    ("e", "Enum8('a,b' = 1, 'c)' = 2)", bytes([1, 2, 1])),
    ("d", "Decimal(18, 4)", struct.pack("<3q", 1, 2, 3)),
    # LowCardinality: key version, then one part: flags (UInt8 indexes, additional keys),
    # the keys, the indexes
    (
        "lc",
        "LowCardinality(Nullable(String))",
        struct.pack("<Q", 1)
        + struct.pack("<Q", (1 << 9) | 0)
        + struct.pack("<Q", 3)
        + s("")
        + s("v")
        + s("w")
        + struct.pack("<Q", 3)
        + bytes([1, 0, 2]),
    ),  # fmt: skip
]


def test_every_column_is_walked_to_its_end():
    for _, type_name, data in COLUMNS:
        buf = memoryview(data + b"tail")
        assert data_size(type_name, buf, 0, 3) == len(data), type_name


def test_blocks_get_block_info_and_a_serialization_byte_per_column():
    two = block(3, COLUMNS) + block(3, COLUMNS[:2])
    out = reframe(two, 54460)
    info = b"\x01\x00\x02\xff\xff\xff\xff\x00"
    assert out.startswith(info + varint(len(COLUMNS)) + varint(3) + s("n") + s("UInt8") + b"\x00")
    assert out.count(info) == 2
    assert len(out) == len(two) + 2 * len(info) + len(COLUMNS) + 2
    # removing what was inserted gives the original back
    stripped = out.replace(info, b"", 2)
    for name, type_name, _ in COLUMNS:
        stripped = stripped.replace(s(name) + s(type_name) + b"\x00", s(name) + s(type_name), 2)
    assert stripped == two


def test_old_revisions_get_no_serialization_byte_and_revision_0_is_untouched():
    data = block(3, COLUMNS[:1])
    assert reframe(data, 0) == data
    assert reframe(data, 54400) == b"\x01\x00\x02\xff\xff\xff\xff\x00" + data


def test_unknown_types_and_truncated_data_are_errors():
    with pytest.raises(NativeError, match="type JSON is not supported"):
        reframe(block(1, [("j", "JSON", b"{}")]), 54460)
    with pytest.raises(NativeError, match="truncated"):
        reframe(block(3, [("s", "String", s("a"))]), 54460)
    with pytest.raises(NativeError, match="truncated"):
        reframe(block(2, [("a", "Array(UInt8)", struct.pack("<Q", 1))]), 54460)


def test_types_split_outside_quotes():
    assert split_type("Map(String, Array(Tuple(a UInt8, b String)))") == (
        "Map", ["String", "Array(Tuple(a UInt8, b String))"],
    )  # fmt: skip
    assert split_type("Enum8('a,b' = 1, 'c)' = 2)") == ("Enum8", ["'a,b' = 1", "'c)' = 2"])
    assert split_type("UInt8") == ("UInt8", [])
