"""AMF0 (Adobe "Action Message Format — AMF 0", 2006): encode and decode values.

Sans-IO, standard library only. Used for RTMP command (type 20) and data (type 18) message
bodies. Python mapping:

============================  ==========================================
AMF0                          Python
============================  ==========================================
number (0x00)                 ``float`` (``int`` is accepted on encode)
boolean (0x01)                ``bool``
string (0x02) / long (0x0C)   ``str`` (long string chosen on encode when > 65535 bytes)
object (0x03)                 ``dict`` with ``str`` keys
null (0x05)                   ``None``
undefined (0x06)              :data:`Undefined`
ECMA array (0x08)             :class:`EcmaArray` (a ``dict``)
strict array (0x0A)           ``list`` (or ``tuple`` on encode)
date (0x0B)                   aware ``datetime`` in UTC
typed object (0x10)           :class:`TypedObject` (a ``dict`` with ``class_name``)
============================  ==========================================

Not supported (decoding raises :class:`Amf0Error`): reference (0x07), movieclip and recordset
(reserved), unsupported (0x0D), XML document (0x0F) and the switch to AMF3 (0x11).
Bounds: nesting depth, total number of values per decode, and every length is checked against
the data that remains.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

NUMBER = 0x00
BOOLEAN = 0x01
STRING = 0x02
OBJECT = 0x03
MOVIECLIP = 0x04
NULL = 0x05
UNDEFINED = 0x06
REFERENCE = 0x07
ECMA_ARRAY = 0x08
OBJECT_END = 0x09
STRICT_ARRAY = 0x0A
DATE = 0x0B
LONG_STRING = 0x0C
UNSUPPORTED = 0x0D
RECORDSET = 0x0E
XML_DOCUMENT = 0x0F
TYPED_OBJECT = 0x10
AVMPLUS_OBJECT = 0x11

MAX_DEPTH = 32
MAX_ITEMS = 10_000

_MARKER_NAMES = {
    MOVIECLIP: "movieclip (reserved)",
    REFERENCE: "reference",
    OBJECT_END: "object end outside an object",
    UNSUPPORTED: "unsupported",
    RECORDSET: "recordset (reserved)",
    XML_DOCUMENT: "XML document",
    AVMPLUS_OBJECT: "AVM+ (switch to AMF3)",
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class Amf0Error(ValueError):
    """Malformed, unsupported or oversized AMF0 data."""


class _UndefinedType:
    """The AMF0 ``undefined`` value (distinct from ``null``/``None``)."""

    _instance: _UndefinedType | None = None

    def __new__(cls) -> _UndefinedType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "Undefined"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "Undefined"


Undefined = _UndefinedType()


class EcmaArray(dict):
    """An AMF0 ECMA array (associative array), e.g. the body of ``onMetaData``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"EcmaArray({dict.__repr__(self)})"


class TypedObject(dict):
    """An AMF0 typed object: a ``dict`` of properties plus the registered class name."""

    __slots__ = ("class_name",)

    def __init__(self, class_name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.class_name = class_name

    def __repr__(self) -> str:
        return f"TypedObject({self.class_name!r}, {dict.__repr__(self)})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TypedObject) and other.class_name != self.class_name:
            return False
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]


# --- decoding ---------------------------------------------------------------------------------


class _Decoder:
    __slots__ = ("data", "end", "items", "max_depth", "max_items")

    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.end = len(data)
        self.items = 0
        self.max_depth = max_depth
        self.max_items = max_items

    def need(self, pos: int, n: int, what: str) -> None:
        if pos + n > self.end:
            raise Amf0Error(f"truncated {what} at offset {pos}: need {n} bytes, {self.end - pos} left")

    def utf8(self, pos: int, n: int, what: str) -> str:
        self.need(pos, n, what)
        try:
            return self.data[pos : pos + n].decode("utf-8")
        except UnicodeDecodeError as e:
            raise Amf0Error(f"{what} at offset {pos} is not valid UTF-8: {e.reason}")

    def short_string(self, pos: int, what: str) -> tuple[str, int]:
        self.need(pos, 2, what + " length")
        (n,) = _U16.unpack_from(self.data, pos)
        pos += 2
        return self.utf8(pos, n, what), pos + n

    def properties(self, pos: int, target: dict, depth: int, what: str) -> int:
        """Read ``name value`` pairs up to the empty name followed by the object end marker."""
        data = self.data
        while True:
            start = pos
            key, pos = self.short_string(pos, what + " property name")
            if pos >= self.end:
                raise Amf0Error(f"truncated {what}: property {key!r} at offset {start} has no value")
            if not key and data[pos] == OBJECT_END:
                return pos + 1
            # (An empty name not followed by the end marker is an ordinary property.)
            target[key], pos = self.value(pos, depth + 1)

    def value(self, pos: int, depth: int) -> tuple[Any, int]:
        if depth > self.max_depth:
            raise Amf0Error(f"AMF0 nesting deeper than {self.max_depth} at offset {pos}")
        self.items += 1
        if self.items > self.max_items:
            raise Amf0Error(f"more than {self.max_items} AMF0 values")
        data = self.data
        self.need(pos, 1, "type marker")
        marker = data[pos]
        pos += 1
        if marker == STRING:
            return self.short_string(pos, "string")
        if marker == NUMBER:
            self.need(pos, 8, "number")
            return _DOUBLE.unpack_from(data, pos)[0], pos + 8
        if marker == OBJECT:
            obj: dict[str, Any] = {}
            return obj, self.properties(pos, obj, depth, "object")
        if marker == NULL:
            return None, pos
        if marker == BOOLEAN:
            self.need(pos, 1, "boolean")
            return data[pos] != 0, pos + 1
        if marker == UNDEFINED:
            return Undefined, pos
        if marker == ECMA_ARRAY:
            self.need(pos, 4, "ECMA array count")
            arr = EcmaArray()
            # The associative count is advisory (writers disagree); the end marker terminates.
            return arr, self.properties(pos + 4, arr, depth, "ECMA array")
        if marker == STRICT_ARRAY:
            self.need(pos, 4, "strict array count")
            (count,) = _U32.unpack_from(data, pos)
            pos += 4
            if count > self.end - pos:
                raise Amf0Error(f"strict array of {count} values at offset {pos - 5} exceeds the data left")
            items = []
            for _ in range(count):
                item, pos = self.value(pos, depth + 1)
                items.append(item)
            return items, pos
        if marker == LONG_STRING:
            self.need(pos, 4, "long string length")
            (n,) = _U32.unpack_from(data, pos)
            pos += 4
            return self.utf8(pos, n, "long string"), pos + n
        if marker == DATE:
            self.need(pos, 10, "date")
            (ms,) = _DOUBLE.unpack_from(data, pos)
            if not math.isfinite(ms):
                raise Amf0Error(f"date at offset {pos - 1} is not finite")
            try:
                when = _EPOCH + timedelta(milliseconds=ms)
            except OverflowError:
                raise Amf0Error(f"date at offset {pos - 1} is out of range: {ms} ms")
            return when, pos + 10  # the 16-bit time zone is reserved and ignored
        if marker == TYPED_OBJECT:
            name, pos = self.short_string(pos, "typed object class name")
            tobj = TypedObject(name)
            return tobj, self.properties(pos, tobj, depth, "typed object")
        name = _MARKER_NAMES.get(marker)
        if name is None:
            raise Amf0Error(f"unknown AMF0 type marker 0x{marker:02x} at offset {pos - 1}")
        raise Amf0Error(f"AMF0 {name} (marker 0x{marker:02x}) at offset {pos - 1} is not supported")


def decode(
    data: bytes, offset: int = 0, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS
) -> tuple[Any, int]:
    """Decode one value at ``offset``; return it and the offset just past it."""
    return _Decoder(bytes(data), max_depth, max_items).value(offset, 0)


def decode_all(data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> list[Any]:
    """Decode every value in ``data`` (e.g. a command body: name, transaction id, object, args)."""
    dec = _Decoder(bytes(data), max_depth, max_items)
    values = []
    pos = 0
    end = dec.end
    while pos < end:
        value, pos = dec.value(pos, 0)
        values.append(value)
    return values


# --- encoding ---------------------------------------------------------------------------------


def _encode_key(key: object, out: list[bytes]) -> None:
    if not isinstance(key, str):
        raise Amf0Error(f"AMF0 property names must be str, not {type(key).__name__}")
    raw = key.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise Amf0Error(f"AMF0 property name of {len(raw)} bytes exceeds 65535")
    out.append(_U16.pack(len(raw)))
    out.append(raw)


def _encode_properties(obj: dict, out: list[bytes], depth: int) -> None:
    for key, value in obj.items():
        _encode_key(key, out)
        _encode(value, out, depth + 1)
    out.append(b"\x00\x00\x09")


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise Amf0Error(f"AMF0 nesting deeper than {MAX_DEPTH}")
    if value is None:
        out.append(b"\x05")
    elif value is Undefined:
        out.append(b"\x06")
    elif value is True or value is False:
        out.append(b"\x01\x01" if value else b"\x01\x00")
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        n = len(raw)
        if n <= 0xFFFF:
            out.append(b"\x02" + _U16.pack(n))
        else:
            if n > 0xFFFFFFFF:
                raise Amf0Error(f"AMF0 string of {n} bytes is too long")
            out.append(b"\x0c" + _U32.pack(n))
        out.append(raw)
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            raise Amf0Error(f"integer of {value.bit_length()} bits does not fit an AMF0 number (a double)")
        out.append(b"\x00" + _DOUBLE.pack(number))
    elif isinstance(value, TypedObject):
        out.append(b"\x10")
        _encode_key(value.class_name, out)
        _encode_properties(value, out, depth)
    elif isinstance(value, EcmaArray):
        out.append(b"\x08" + _U32.pack(len(value)))
        _encode_properties(value, out, depth)
    elif isinstance(value, dict):
        out.append(b"\x03")
        _encode_properties(value, out, depth)
    elif isinstance(value, list | tuple):
        out.append(b"\x0a" + _U32.pack(len(value)))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, datetime):
        if value.tzinfo is None:
            raise Amf0Error("AMF0 dates must be timezone-aware datetimes")
        ms = (value - _EPOCH) / timedelta(milliseconds=1)
        out.append(b"\x0b" + _DOUBLE.pack(ms) + b"\x00\x00")
    else:
        raise Amf0Error(f"cannot encode {type(value).__name__} as AMF0")


def encode(*values: Any) -> bytes:
    """Encode each value in turn (a command body is ``encode(name, tid, obj, *args)``)."""
    out: list[bytes] = []
    for value in values:
        _encode(value, out, 0)
    return b"".join(out)
