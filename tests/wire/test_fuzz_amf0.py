"""Property-based fuzzing of b2bua.wire.amf0: decoding anything, encoding round trips, bounds.

Only :class:`Amf0Error` may come out of :func:`decode`/:func:`decode_all` (and of :func:`encode`
for values it cannot represent); lengths claiming more than the data never allocate it.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from b2bua.wire.amf0 import (
    MAX_DEPTH,
    Amf0Error,
    EcmaArray,
    TypedObject,
    Undefined,
    decode,
    decode_all,
    encode,
)
from tests.wire.fuzz_support import assert_bounded, fuzz, mutated

keys = st.text(max_size=8)
dates = st.integers(-62_135_596_800_000, 253_402_300_799_999).map(
    lambda ms: datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
)
scalars = (
    st.none()
    | st.just(Undefined)
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | dates
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(keys, children, max_size=4)
        | st.dictionaries(keys, children, max_size=4).map(EcmaArray)
        | st.tuples(st.text(max_size=8), st.dictionaries(keys, children, max_size=4)).map(
            lambda t: TypedObject(t[0], t[1])
        )
    ),
    max_leaves=20,
)


def _decode_or_error(data: bytes) -> None:
    try:
        decode_all(data)
    except Amf0Error:
        pass
    try:
        decode(data, 0, max_depth=4, max_items=50)
    except Amf0Error:
        pass


# --- (a) arbitrary input ---------------------------------------------------------------------------


@fuzz(180)
@given(st.binary(max_size=500))
def test_arbitrary_bytes(data: bytes) -> None:
    _decode_or_error(data)


@fuzz(180)
@given(st.lists(st.sampled_from(range(0x12)), max_size=6), st.binary(max_size=60))
def test_markers_followed_by_garbage(markers: list[int], tail: bytes) -> None:
    _decode_or_error(bytes(markers) + tail)


# --- (b) valid values, mutated ---------------------------------------------------------------------


@fuzz(90)
@given(st.data())
def test_mutated_values(data: st.DataObject) -> None:
    _decode_or_error(data.draw(mutated(encode(*data.draw(st.lists(values, min_size=1, max_size=3))))))


HOSTILE = [
    b"\x02\xff\xff",  # string claiming 65535 bytes
    b"\x0c\xff\xff\xff\xff" + b"a" * 10,  # long string claiming 4 GiB
    b"\x0a\xff\xff\xff\xff" + b"\x05" * 10,  # strict array claiming 4 G values
    b"\x08\xff\xff\xff\xff\x00\x01a\x05",  # ECMA array claiming 4 G entries, unterminated
    b"\x03" + b"\x00\x01a\x03" * 5000,  # objects nested 5000 deep
    b"\x0a\x00\x00\x00\x01" * 5000,  # arrays nested 5000 deep
    b"\x08\x00\x00\x00\x00" + b"\x00\x00\x08\x00\x00\x00\x00" * 3000,  # ECMA arrays nested via ""
    b"\x0a\x00\x01\x00\x00" + b"\x05" * 65536,  # 65536 nulls: more values than allowed
    b"\x03" + b"".join(struct.pack(">H", 5) + b"k%04d" % i + b"\x05" for i in range(9000)),
    b"\x0b\x7f\xf0\x00\x00\x00\x00\x00\x00\x00\x00",  # date: +inf
    b"\x0b\x7f\xef\xff\xff\xff\xff\xff\xff\x00\x00",  # date: 1.8e308 ms
    b"\x10\xff\xff",  # typed object whose class name claims 65535 bytes
]


def test_hostile_inputs_raise_amf0_error_within_bounded_memory() -> None:
    for data in HOSTILE:
        _decode_or_error(data)
        # a list slot or dict entry per value: bounded by MAX_ITEMS values per decode
        assert_bounded(_decode_or_error, data, factor=16, constant=2 * 1024 * 1024)


def test_claimed_lengths_are_never_allocated() -> None:
    for data in HOSTILE[:4]:
        assert_bounded(_decode_or_error, data, factor=4, constant=16 * 1024)


# --- (c) round trips -------------------------------------------------------------------------------


def _same(a: object, b: object) -> bool:
    """Equality that also checks the AMF0 type (EcmaArray vs object, TypedObject class names)."""
    if type(a) is not type(b) and not (isinstance(a, tuple) and isinstance(b, list)):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)  # type: ignore[attr-defined]
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    return a == b


@fuzz(70)
@given(st.lists(values, max_size=4))
def test_round_trip(items: list[object]) -> None:
    data = encode(*items)
    assert _same(decode_all(data), items)
    pos = 0
    for item in items:
        value, pos = decode(data, pos)
        assert _same(value, item)
    assert pos == len(data)


@fuzz(60)
@given(st.integers(1, MAX_DEPTH + 3))
def test_nesting_limit_is_the_same_both_ways(depth: int) -> None:
    value: object = None
    for _ in range(depth):
        value = [value]
    try:
        data = encode(value)
    except Amf0Error:
        assert depth > MAX_DEPTH
        return
    assert depth <= MAX_DEPTH
    assert decode_all(data) == [value]


@fuzz(120)
@given(
    st.integers() | st.integers(2**1000, 2**1100) | st.floats() | st.text() | st.binary()
    | st.complex_numbers() | st.datetimes()
)
def test_encode_raises_only_amf0_error(value: object) -> None:
    try:
        encode(value)
    except Amf0Error:
        pass
