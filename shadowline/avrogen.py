"""Avro binary writers and readers generated per schema, as straight-line Python.

fastavro interprets the schema on every record: a comparison (24 fields, most of
them ``["null", X]`` unions) took 27 µs to write and 20 µs to read, more than the
join itself, and every stage encodes or decodes each message it handles. A function
compiled from the schema does the same work with no lookups per field. Only the
shapes our schemas use are compiled (primitives, enums, maps, arrays, records and
unions of null with one type); for anything else ``compile_writer`` and
``compile_reader`` return None and the caller keeps fastavro. The unit tests hold
both sides to fastavro's bytes and records.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1
_SMALL = [bytes([z]) for z in range(128)]
_pack_double = struct.Struct("<d").pack
_unpack_double = struct.Struct("<d").unpack_from
_pack_float = struct.Struct("<f").pack
_unpack_float = struct.Struct("<f").unpack_from


class AvroError(ValueError):
    """A value that does not fit its schema, or bytes that are not a record of it."""


def write_long(n: int) -> bytes:
    """Zig-zag varint of a 64-bit integer."""
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise AvroError(f"{n} does not fit in a 64-bit long")
    z = (n << 1) ^ (n >> 63)
    if z < 0x80:
        return _SMALL[z]
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def write_int(n: int) -> bytes:
    if not _INT_MIN <= n <= _INT_MAX:
        raise AvroError(f"{n} does not fit in a 32-bit int")
    return write_long(n)


def read_long(b: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint at ``pos``: (value, next position)."""
    c = b[pos]
    pos += 1
    if c < 0x80:
        return (c >> 1) ^ -(c & 1), pos
    z = c & 0x7F
    shift = 7
    while True:
        c = b[pos]
        pos += 1
        z |= (c & 0x7F) << shift
        if c < 0x80:
            # a 10th byte can carry bits past 64; Avro's readers (fastavro, Java) wrap them
            z &= 0xFFFF_FFFF_FFFF_FFFF
            return (z >> 1) ^ -(z & 1), pos
        shift += 7
        if shift > 63:
            raise AvroError("varint longer than 10 bytes")


def _bool(v: Any) -> bytes:
    if v is True:
        return b"\x01"
    if v is False:
        return b"\x00"
    raise AvroError(f"expected a boolean, got {type(v).__name__}")


def _bad_enum(v: Any, table: dict[str, bytes]) -> bytes:
    raise AvroError(f"{v!r} is not one of {sorted(table)}")


def _string(v: Any) -> list[bytes]:
    if type(v) is not str:
        raise AvroError(f"expected a string, got {type(v).__name__}")
    b = v.encode()
    return [write_long(len(b)), b]


def _bytes(v: Any) -> list[bytes]:
    if not isinstance(v, bytes | bytearray):
        raise AvroError(f"expected bytes, got {type(v).__name__}")
    return [write_long(len(v)), bytes(v)]


def _double(v: Any) -> bytes:
    if type(v) is bool or not isinstance(v, int | float):
        raise AvroError(f"expected a number, got {type(v).__name__}")
    return _pack_double(v)


def _float(v: Any) -> bytes:
    if type(v) is bool or not isinstance(v, int | float):
        raise AvroError(f"expected a number, got {type(v).__name__}")
    return _pack_float(v)


def _integer(v: Any, fn: Callable[[int], bytes]) -> bytes:
    if type(v) is bool or not isinstance(v, int):
        raise AvroError(f"expected an integer, got {type(v).__name__}")
    return fn(v)


def _read_string(b: bytes, pos: int) -> tuple[str, int]:
    n, pos = read_long(b, pos)
    end = pos + n
    if n < 0 or end > len(b):
        raise AvroError(f"string of {n} bytes at {pos} runs past the end")
    return b[pos:end].decode(), end


def _read_bytes(b: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = read_long(b, pos)
    end = pos + n
    if n < 0 or end > len(b):
        raise AvroError(f"bytes of {n} at {pos} run past the end")
    return b[pos:end], end


def _read_double(b: bytes, pos: int) -> tuple[float, int]:
    if pos + 8 > len(b):
        raise AvroError("double runs past the end")
    return _unpack_double(b, pos)[0], pos + 8


def _read_float(b: bytes, pos: int) -> tuple[float, int]:
    if pos + 4 > len(b):
        raise AvroError("float runs past the end")
    return _unpack_float(b, pos)[0], pos + 4


def _read_boolean(b: bytes, pos: int) -> tuple[bool, int]:
    c = b[pos]
    if c > 1:
        raise AvroError(f"boolean byte {c} is neither 0 nor 1")
    return c == 1, pos + 1


def _read_int(b: bytes, pos: int) -> tuple[int, int]:
    v, pos = read_long(b, pos)
    if not _INT_MIN <= v <= _INT_MAX:
        raise AvroError(f"int {v} out of 32-bit range")
    return v, pos


_WRITE_PRIMITIVE = {
    "boolean": "_bool({v})",
    "double": "_double({v})",
    "float": "_float({v})",
    "int": "_integer({v}, write_int)",
    "long": "_integer({v}, write_long)",
}
_READ_PRIMITIVE = {
    "boolean": "_read_boolean",
    "double": "_read_double",
    "float": "_read_float",
    "int": "_read_int",
    "long": "read_long",
    "string": "_read_string",
    "bytes": "_read_bytes",
}


class _Unsupported(Exception):
    pass


class _Gen:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.n = 0

    def var(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, value: Any) -> str:
        name = self.var("_c")
        self.consts[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)


def _type_name(t: Any) -> Any:
    return t["type"] if isinstance(t, dict) and t["type"] in _READ_PRIMITIVE else t


def _null_union(t: list[Any]) -> tuple[int, Any]:
    """(index of the null branch, the other branch) of a union of null and one type."""
    branches = [_type_name(x) for x in t]
    if len(branches) != 2 or "null" not in branches:
        raise _Unsupported("only unions of null and one type are compiled")
    i = branches.index("null")
    return i, t[1 - i]


def _write(g: _Gen, t: Any, v: str, depth: int) -> None:
    t = _type_name(t)
    if isinstance(t, list):
        i, other = _null_union(t)
        g.emit(depth, f"if {v} is None:")
        g.emit(depth + 1, f"out({_SMALL[2 * i]!r})")
        g.emit(depth, "else:")
        g.emit(depth + 1, f"out({_SMALL[2 * (1 - i)]!r})")
        _write(g, other, v, depth + 1)
        return
    if isinstance(t, str):
        if t == "null":
            g.emit(depth, f"if {v} is not None: raise AvroError('expected null')")
        elif t in ("string", "bytes"):
            g.emit(depth, f"out_extend(_{t}({v}))")
        elif t in _WRITE_PRIMITIVE:
            g.emit(depth, f"out({_WRITE_PRIMITIVE[t].format(v=v)})")
        else:
            raise _Unsupported(f"named type reference {t!r}")
        return
    kind = t["type"]
    if kind == "enum":
        table = g.const({s: write_long(i) for i, s in enumerate(t["symbols"])})
        g.emit(depth, f"out({table}.get({v}) or _bad_enum({v}, {table}))")
    elif kind in ("map", "array"):
        g.emit(depth, f"if {v}:")
        g.emit(depth + 1, f"out(write_long(len({v})))")
        item = g.var("_x")
        if kind == "map":
            key = g.var("_k")
            g.emit(depth + 1, f"for {key}, {item} in {v}.items():")
            g.emit(depth + 2, f"out_extend(_string({key}))")
            _write(g, t["values"], item, depth + 2)
        else:
            g.emit(depth + 1, f"for {item} in {v}:")
            _write(g, t["items"], item, depth + 2)
        g.emit(depth, "out(b'\\x00')")
    elif kind == "record":
        for f in t["fields"]:
            fv = g.var("_f")
            if "default" in f:
                g.emit(depth, f"{fv} = {v}.get({f['name']!r}, {g.const(f['default'])})")
            else:
                g.emit(depth, f"{fv} = {v}[{f['name']!r}]")
            _write(g, f["type"], fv, depth)
    else:
        raise _Unsupported(f"type {kind!r}")


def _read(g: _Gen, t: Any, target: str, depth: int) -> None:
    """Emit code that reads one value of ``t`` at ``pos`` into ``target``."""
    t = _type_name(t)
    if isinstance(t, list):
        i, other = _null_union(t)
        idx = g.var("_i")
        g.emit(depth, f"{idx} = b[pos]")
        g.emit(depth, "pos += 1")
        g.emit(depth, f"if {idx} == {2 * i}:")
        g.emit(depth + 1, f"{target} = None")
        g.emit(depth, f"elif {idx} == {2 * (1 - i)}:")
        _read(g, other, target, depth + 1)
        g.emit(depth, "else:")
        g.emit(depth + 1, f"raise AvroError('union branch byte %d out of range' % {idx})")
        return
    if isinstance(t, str):
        if t == "null":
            g.emit(depth, f"{target} = None")
        elif t in _READ_PRIMITIVE:
            g.emit(depth, f"{target}, pos = {_READ_PRIMITIVE[t]}(b, pos)")
        else:
            raise _Unsupported(f"named type reference {t!r}")
        return
    kind = t["type"]
    if kind == "enum":
        syms = g.const(tuple(t["symbols"]))
        idx = g.var("_e")
        g.emit(depth, f"{idx}, pos = read_long(b, pos)")
        g.emit(depth, f"if not 0 <= {idx} < {len(t['symbols'])}:")
        g.emit(depth + 1, f"raise AvroError('enum index %d out of range' % {idx})")
        g.emit(depth, f"{target} = {syms}[{idx}]")
    elif kind in ("map", "array"):
        acc, count, item = g.var("_m"), g.var("_n"), g.var("_x")
        g.emit(depth, f"{acc} = {{}}" if kind == "map" else f"{acc} = []")
        g.emit(depth, f"{count}, pos = read_long(b, pos)")
        g.emit(depth, f"while {count}:")
        g.emit(depth + 1, f"if {count} < 0:")
        g.emit(depth + 2, f"{count} = -{count}")
        g.emit(depth + 2, "_, pos = read_long(b, pos)")
        g.emit(depth + 1, f"if {count} > len(b) - pos:")
        g.emit(depth + 2, f"raise AvroError('block of %d items runs past the end' % {count})")
        g.emit(depth + 1, f"for _ in range({count}):")
        if kind == "map":
            key = g.var("_k")
            g.emit(depth + 2, f"{key}, pos = _read_string(b, pos)")
            _read(g, t["values"], item, depth + 2)
            g.emit(depth + 2, f"{acc}[{key}] = {item}")
        else:
            _read(g, t["items"], item, depth + 2)
            g.emit(depth + 2, f"{acc}.append({item})")
        g.emit(depth + 1, f"{count}, pos = read_long(b, pos)")
        g.emit(depth, f"{target} = {acc}")
    elif kind == "record":
        rec = g.var("_r")
        g.emit(depth, f"{rec} = {{}}")
        for f in t["fields"]:
            _read(g, f["type"], f"{rec}[{f['name']!r}]", depth)
        g.emit(depth, f"{target} = {rec}")
    else:
        raise _Unsupported(f"type {kind!r}")


def _namespace(g: _Gen) -> dict[str, Any]:
    ns: dict[str, Any] = {
        name: obj
        for name, obj in globals().items()
        if name.startswith(("_read", "_bool", "_string", "_bytes", "_double", "_float", "_int"))
        or name == "_bad_enum"
        or name in ("write_long", "write_int", "read_long", "AvroError")
    }
    ns.update(g.consts)
    return ns


def compile_writer(schema: dict[str, Any]) -> Callable[[dict[str, Any], bytes], bytes] | None:
    """``write(record, prefix) -> prefix + Avro body`` for a record schema, or None if the
    schema uses a shape this module does not compile. Raises AvroError (or KeyError,
    TypeError) on a record that does not fit."""
    g = _Gen()
    try:
        g.emit(0, "def write(rec, prefix):")
        g.emit(1, "parts = [prefix]")
        g.emit(1, "out = parts.append")
        g.emit(1, "out_extend = parts.extend")
        _write(g, schema, "rec", 1)
        g.emit(1, "return b''.join(parts)")
    except _Unsupported:
        return None
    ns = _namespace(g)
    exec("\n".join(g.lines), ns)  # noqa: S102  code generated from our own schema files
    return ns["write"]  # type: ignore[no-any-return]


def compile_reader(schema: dict[str, Any]) -> Callable[[bytes, int], dict[str, Any]] | None:
    """``read(data, start) -> record`` for a record schema, or None if not compiled.
    Raises AvroError, IndexError or UnicodeDecodeError on bytes that are not exactly
    one record of the schema."""
    g = _Gen()
    try:
        g.emit(0, "def read(b, pos):")
        _read(g, schema, "rec", 1)
        g.emit(1, "if pos != len(b):")
        g.emit(2, "raise AvroError('%d trailing bytes' % (len(b) - pos))")
        g.emit(1, "return rec")
    except _Unsupported:
        return None
    ns = _namespace(g)
    exec("\n".join(g.lines), ns)  # noqa: S102  code generated from our own schema files
    return ns["read"]  # type: ignore[no-any-return]
