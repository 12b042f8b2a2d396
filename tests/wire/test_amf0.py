"""b2bua.wire.amf0: AMF0 values, FFmpeg's connect command, malformed input."""

from __future__ import annotations

import math
import random
import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest

from b2bua.wire import amf0
from b2bua.wire.amf0 import Amf0Error, EcmaArray, TypedObject, Undefined, decode, decode_all, encode

DATA = Path(__file__).resolve().parents[1] / "data" / "rtmp"


def test_known_encodings() -> None:
    assert encode(1.0) == b"\x00" + struct.pack(">d", 1.0)
    assert encode(5) == b"\x00@\x14\x00\x00\x00\x00\x00\x00"
    assert encode(True, False) == b"\x01\x01\x01\x00"
    assert encode("abc") == b"\x02\x00\x03abc"
    assert encode("") == b"\x02\x00\x00"
    assert encode(None) == b"\x05"
    assert encode(Undefined) == b"\x06"
    assert encode({"a": 1.0}) == b"\x03\x00\x01a\x00" + struct.pack(">d", 1.0) + b"\x00\x00\x09"
    assert encode(EcmaArray(x=None)) == b"\x08\x00\x00\x00\x01\x00\x01x\x05\x00\x00\x09"
    assert encode([1, "b"]) == b"\x0a\x00\x00\x00\x02" + encode(1) + encode("b")
    assert (
        encode(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)) == b"\x0b" + struct.pack(">d", 1000.0) + b"\x00\x00"
    )
    assert encode(TypedObject("T", k=True)) == b"\x10\x00\x01T\x00\x01k\x01\x01\x00\x00\x09"
    assert encode() == b""


def test_long_string_chosen_by_length() -> None:
    short = "x" * 0xFFFF
    long = "y" * 0x10000
    assert encode(short)[:3] == b"\x02\xff\xff"
    assert encode(long)[:5] == b"\x0c\x00\x01\x00\x00"
    assert decode_all(encode(short, long)) == [short, long]
    assert decode(b"\x0c\x00\x00\x00\x02hi") == ("hi", 7)


ROUND_TRIP_VALUES = [
    0.0,
    -1.5,
    1e300,
    float("inf"),
    True,
    False,
    "",
    "héllo 你好 🎧",
    None,
    Undefined,
    {},
    {"": 1.0, "nested": {"deeper": [1.0, "two", None, {"k": Undefined}]}},
    EcmaArray(),
    EcmaArray({"duration": 0.0, "audiocodecid": 10.0, "stereo": False, "encoder": "Lavf59.27.100"}),
    [],
    [[[]]],
    datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=UTC),
    TypedObject("flex.messaging.io.ArrayCollection", source=[1.0]),
]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=lambda v: type(v).__name__)
def test_round_trip(value: object) -> None:
    data = encode(value)
    decoded, end = decode(data)
    assert end == len(data)
    assert decoded == value
    assert type(decoded) is (float if type(value) is int else type(value))
    assert encode(decoded) == data


def test_nan_round_trip_and_int_becomes_float() -> None:
    (v,) = decode_all(encode(float("nan")))
    assert math.isnan(v)
    assert decode_all(encode(7, -3)) == [7.0, -3.0]
    assert all(type(x) is float for x in decode_all(encode(7, -3)))


def test_decode_all_command_body() -> None:
    body = encode("createStream", 4.0, None)
    assert decode_all(body) == ["createStream", 4.0, None]
    assert decode_all(b"") == []


def test_ffmpeg_connect_fixture() -> None:
    data = (DATA / "ffmpeg_connect.amf0").read_bytes()
    values = decode_all(data)
    assert values == [
        "connect",
        1.0,
        {
            "app": "mp",
            "type": "nonprivate",
            "flashVer": "FMLE/3.0 (compatible; Lavf59.27.100)",
            "tcUrl": "rtmp://127.0.0.1:19353/mp",
        },
    ]
    # Dict order is kept, so re-encoding gives FFmpeg's exact bytes back.
    assert encode(*values) == data


def test_ecma_count_is_advisory() -> None:
    # FFmpeg and others write a count; some writers write 0. The end marker is what counts.
    data = b"\x08\x00\x00\x00\x00" + b"\x00\x01a\x05\x00\x01b\x06" + b"\x00\x00\x09"
    value, end = decode(data)
    assert value == EcmaArray(a=None, b=Undefined) and isinstance(value, EcmaArray) and end == len(data)


def test_empty_key_not_followed_by_end_is_a_property() -> None:
    data = b"\x03\x00\x00\x05\x00\x00\x09"
    assert decode(data) == ({"": None}, len(data))


def test_decode_at_offset() -> None:
    data = encode("a", 2.0)
    v, pos = decode(data)
    assert decode(data, pos) == (2.0, len(data))


RICH = encode(
    {
        "app": "mp",
        "list": [1.0, True, None, Undefined, "s" * 5],
        "ecma": EcmaArray(k=datetime(2000, 1, 1, tzinfo=UTC)),
        "typed": TypedObject("C", x="y"),
    }
)


@pytest.mark.parametrize("cut", range(len(RICH)))
def test_truncated_everywhere(cut: int) -> None:
    with pytest.raises(Amf0Error):
        decode(RICH[:cut])


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\x07\x00\x01", "reference"),
        (b"\x04", "movieclip"),
        (b"\x0d", "unsupported"),
        (b"\x0e", "recordset"),
        (b"\x0f\x00\x00\x00\x00", "XML"),
        (b"\x11\x01", "AMF3"),
        (b"\x09", "object end"),
        (b"\x12", "unknown AMF0 type marker 0x12"),
        (b"\xff", "unknown AMF0 type marker 0xff"),
        (b"\x03\x00\x01a\x13", "0x13"),
    ],
)
def test_wrong_markers(data: bytes, message: str) -> None:
    with pytest.raises(Amf0Error, match=message):
        decode_all(data)


def _nested(depth: int) -> bytes:
    return b"\x03\x00\x01k" * depth + b"\x05" + b"\x00\x00\x09" * depth


def test_depth_limit() -> None:
    value, _ = decode(_nested(amf0.MAX_DEPTH))
    for _ in range(amf0.MAX_DEPTH):
        value = value["k"]
    assert value is None
    with pytest.raises(Amf0Error, match="nesting deeper than 32"):
        decode(_nested(amf0.MAX_DEPTH + 1))
    with pytest.raises(Amf0Error, match="nesting"):
        decode(b"\x0a\x00\x00\x00\x01" * 100 + b"\x05")
    with pytest.raises(Amf0Error, match="nesting"):
        decode(_nested(5), max_depth=4)
    deep: object = None
    for _ in range(amf0.MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(Amf0Error, match="nesting"):
        encode(deep)


def test_item_limit() -> None:
    data = encode([None] * 100)
    assert len(decode(data)[0]) == 100
    with pytest.raises(Amf0Error, match="more than 50 AMF0 values"):
        decode(data, max_items=50)
    with pytest.raises(Amf0Error, match="more than"):
        decode_all(b"\x05" * (amf0.MAX_ITEMS + 1))


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\x0a\xff\xff\xff\xff\x05", "strict array of 4294967295 values"),
        (b"\x02\xff\xff" + b"a" * 10, "truncated string"),
        (b"\x0c\xff\xff\xff\xff" + b"a" * 10, "truncated long string"),
        (b"\x02\x00\x02\xc3\x28", "not valid UTF-8"),
        (b"\x03\x00\x02\xff\xfe\x05\x00\x00\x09", "property name .* not valid UTF-8"),
        (b"\x0b" + struct.pack(">d", float("nan")) + b"\x00\x00", "not finite"),
        (b"\x0b" + struct.pack(">d", 1e300) + b"\x00\x00", "out of range"),
        (b"\x03\x00\x01a", "has no value"),
        (b"\x08\x00\x00", "truncated ECMA array count"),
        (b"\x00\x00\x00", "truncated number"),
        (b"\x01", "truncated boolean"),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(Amf0Error, match=message):
        decode_all(data)


def test_encode_errors() -> None:
    with pytest.raises(Amf0Error, match="property names must be str"):
        encode({1: 2})
    with pytest.raises(Amf0Error, match="cannot encode set"):
        encode({1, 2})
    with pytest.raises(Amf0Error, match="timezone-aware"):
        encode(datetime(2020, 1, 1))
    with pytest.raises(Amf0Error, match="exceeds 65535"):
        encode({"k" * 70000: None})
    # found by fuzzing: an int beyond a double's range raised OverflowError
    with pytest.raises(Amf0Error, match="does not fit"):
        encode(10**400)
    assert encode(2**1023) == b"\x00" + struct.pack(">d", 2.0**1023)


def test_undefined_sentinel() -> None:
    assert Undefined is amf0._UndefinedType()
    assert repr(Undefined) == "Undefined" and not Undefined
    assert decode(b"\x06") == (Undefined, 1)


def test_typed_object_equality() -> None:
    assert TypedObject("A", x=1.0) == {"x": 1.0}
    assert TypedObject("A", x=1.0) != TypedObject("B", x=1.0)
    assert "TypedObject('A'" in repr(TypedObject("A"))
    assert repr(EcmaArray(a=1)) == "EcmaArray({'a': 1})"


def test_random_garbage_raises_only_amf0_error() -> None:
    rng = random.Random(20240229)
    seeds = [RICH, (DATA / "ffmpeg_connect.amf0").read_bytes()]
    for i in range(2000):
        if i % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        else:
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        try:
            decode_all(data)
        except Amf0Error:
            pass
