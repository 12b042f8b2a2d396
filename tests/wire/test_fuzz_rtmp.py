"""Property-based fuzzing of b2bua.wire.rtmp (sans-IO chunk layer, handshake, control and command
messages), written against its public API only.

Only :class:`RtmpError` (``HandshakeError`` is one) may come out of the reader and the message
parsers; whatever :class:`ChunkWriter` writes, :class:`ChunkReader` reads back the same, however
the bytes are split; memory stays proportional to what the peer sent.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from b2bua.wire import amf0, rtmp
from b2bua.wire.rtmp import ChunkReader, ChunkWriter, Message, RtmpError, ServerHandshake
from tests.wire.fuzz_support import fuzz, mutated, peak_allocation
from tests.wire.test_fuzz_amf0 import values as amf0_values

u32 = st.integers(0, 0xFFFFFFFF)
# every type but Set Chunk Size and Abort, which change how the reader reads what follows
type_ids = st.integers(3, 255)
messages = st.builds(
    Message,
    type_id=type_ids,
    stream_id=st.integers(0, 3) | u32,
    timestamp=st.integers(0, 5000) | u32 | st.integers(0xFFFFF0, 0x1000010),
    payload=st.binary(max_size=600),
)


def _feed(reader: ChunkReader, data: bytes, sizes: list[int]) -> list[Message]:
    out: list[Message] = []
    pos = i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        out += reader.feed(data[pos : pos + n])
        pos += n
        i += 1
    return out


def _read(data: bytes, sizes: list[int]) -> None:
    reader = ChunkReader(max_message_size=4096, max_chunk_streams=8)
    try:
        for message in _feed(reader, data, sizes):
            _message(message)
    except RtmpError:
        pass
    assert reader.bytes_received <= len(data)


def _message(message: Message) -> None:
    """What the server does with a message it received (its type decides which parser)."""
    parsers = {
        rtmp.USER_CONTROL: lambda m: rtmp.parse_user_control(m.payload),
        rtmp.SET_PEER_BANDWIDTH: lambda m: rtmp.parse_set_peer_bandwidth(m.payload),
        rtmp.ACKNOWLEDGEMENT: lambda m: rtmp.parse_uint32(m.payload),
        rtmp.WINDOW_ACK_SIZE: lambda m: rtmp.parse_uint32(m.payload),
    }
    parse = parsers.get(message.type_id, rtmp.parse_command)
    try:
        parse(message)
    except RtmpError:
        pass


# --- (a) arbitrary input ---------------------------------------------------------------------------


@fuzz(240)
@given(st.binary(max_size=600), st.lists(st.integers(1, 200), min_size=1, max_size=4))
def test_chunk_reader_arbitrary_bytes(data: bytes, sizes: list[int]) -> None:
    _read(data, sizes)


@fuzz(180)
@given(st.sampled_from(range(256)), st.binary(max_size=200))
def test_message_parsers_arbitrary_payloads(type_id: int, payload: bytes) -> None:
    _message(Message(type_id, 0, 0, payload))
    for parse in (rtmp.parse_user_control, rtmp.parse_set_peer_bandwidth, rtmp.parse_uint32):
        try:
            parse(payload)
        except RtmpError:
            pass


@fuzz(60)
@given(st.binary(max_size=3200), st.lists(st.integers(1, 2000), min_size=1, max_size=3))
def test_handshake_arbitrary_bytes(data: bytes, sizes: list[int]) -> None:
    hs = ServerHandshake(random_bytes=bytes)
    pos = i = 0
    try:
        while pos < len(data) and not hs.done:
            n = sizes[i % len(sizes)]
            step = hs.feed(data[pos : pos + n])
            pos += n
            i += 1
            if step.done:
                assert pos - len(step.leftover) == 1 + 2 * rtmp.HANDSHAKE_SIZE
    except RtmpError:
        assert data[:1] != b"\x03"


# --- (b) valid streams, mutated --------------------------------------------------------------------


@fuzz(180)
@given(st.lists(messages, min_size=1, max_size=6), st.integers(1, 300), st.data())
def test_chunk_reader_mutated_streams(msgs: list[Message], chunk_size: int, data: st.DataObject) -> None:
    writer = ChunkWriter()
    stream = writer.set_chunk_size(chunk_size) + writer.write_many(msgs)
    _read(data.draw(mutated(stream)), data.draw(st.lists(st.integers(1, 500), min_size=1, max_size=3)))


@fuzz(60)
@given(st.text(max_size=12), st.floats(allow_nan=False), st.lists(amf0_values, max_size=3), st.data())
def test_commands_mutated(name: str, tid: float, args: list[object], data: st.DataObject) -> None:
    message = rtmp.command_message(name, tid, *args)
    message.payload = data.draw(mutated(message.payload))
    message.type_id = data.draw(st.sampled_from([rtmp.COMMAND_AMF0, rtmp.DATA_AMF0, rtmp.COMMAND_AMF3]))
    _message(message)


HOSTILE = [
    # fmt 0 header claiming a 16 MiB message
    b"\x03\x00\x00\x00\xff\xff\xff\x09\x00\x00\x00\x00",
    # Set Chunk Size 0x7fffffff, then 2^31 - 1
    b"\x02\x00\x00\x00\x00\x00\x04\x01\x00\x00\x00\x00\x7f\xff\xff\xff",
    b"\x02\x00\x00\x00\x00\x00\x04\x01\x00\x00\x00\x00\xff\xff\xff\xff",
    # fmt 3 / fmt 1 / fmt 2 with no previous header
    b"\xc5", b"\x45" + bytes(7), b"\x85" + bytes(3),
    # 3-byte basic header on the largest chunk stream id
    b"\x01\xff\xff\x00\x00\x00\x00\x00\x01\x09\x00\x00\x00\x00x",
    # Abort naming a chunk stream never used; Abort with a short payload
    b"\x02\x00\x00\x00\x00\x00\x04\x02\x00\x00\x00\x00\xff\xff\xff\xff",
    b"\x02\x00\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\xff",
    # extended timestamp announced, then cut
    b"\x03\xff\xff\xff\x00\x00\x01\x14\x00\x00\x00\x00\x00\x00",
]


@pytest.mark.parametrize("data", HOSTILE)
def test_hostile_headers(data: bytes) -> None:
    for sizes in ([len(data)], [1], [3, 5]):
        _read(data, sizes)


# --- (c) round trips -------------------------------------------------------------------------------


@fuzz(180)
@given(
    st.lists(messages, max_size=8),
    st.sampled_from([1, 2, 7, 128, 4096, rtmp.MAX_CHUNK_SIZE]),
    st.lists(st.integers(1, 700), min_size=1, max_size=4),
)
def test_writer_reader_round_trip(msgs: list[Message], chunk_size: int, sizes: list[int]) -> None:
    writer = ChunkWriter()
    stream = writer.set_chunk_size(chunk_size) + writer.write_many(msgs)
    got = _feed(ChunkReader(), stream, sizes)
    assert got[0].type_id == rtmp.SET_CHUNK_SIZE
    assert got[1:] == [Message(m.type_id, m.stream_id, m.timestamp & 0xFFFFFFFF, m.payload) for m in msgs]


@fuzz(60)
@given(st.text(max_size=20), st.floats(allow_nan=False), st.none() | st.dictionaries(
    st.text(max_size=5), amf0_values, max_size=3), st.lists(amf0_values, max_size=3))
def test_command_round_trip(name: str, tid: float, obj: object, args: list[object]) -> None:
    command = rtmp.parse_command(rtmp.command_message(name, tid, obj, *args, stream_id=1))
    assert (command.name, command.transaction_id) == (name, tid)
    assert amf0.encode(command.command_object, *command.args) == amf0.encode(obj, *args)
    data = rtmp.parse_command(rtmp.data_message(name, *args, stream_id=1))
    assert data.transaction_id is None and amf0.encode(*data.args) == amf0.encode(*args)


@fuzz(60)
@given(st.integers(0, 0xFFFF), u32, st.none() | u32)
def test_user_control_round_trip(event: int, value: int, buffer_length: int | None) -> None:
    if event == rtmp.SET_BUFFER_LENGTH and buffer_length is None:
        buffer_length = 0
    parsed = rtmp.parse_user_control(rtmp.user_control(event, value, buffer_length).payload)
    assert (parsed.event, parsed.value) == (event, value)
    if event == rtmp.SET_BUFFER_LENGTH:
        assert parsed.buffer_length == buffer_length


# --- (d) memory bounded by the input ---------------------------------------------------------------


def _partial_messages(chunk_size: int, streams: int, per_stream: int) -> bytes:
    """Set Chunk Size, then on each of ``streams`` chunk streams the first ``per_stream`` bytes of
    a message announced as 1 MiB - 1 (never completed): the issue 12 probe, scaled down."""
    data = bytearray(ChunkWriter().write(rtmp.set_chunk_size(chunk_size)))
    for csid in range(10, 10 + streams):
        data += bytes((csid,)) + bytes(3) + ((1 << 20) - 1).to_bytes(3, "big") + b"\x09" + bytes((1, 0, 0, 0))
        data += b"x" * chunk_size
        for _ in range(per_stream // chunk_size - 1):
            data += bytes((0xC0 | csid,)) + b"x" * chunk_size
    return bytes(data)


def _read_in_pieces(data: bytes) -> None:
    reader = ChunkReader()
    for pos in range(0, len(data), 4096):
        reader.feed(data[pos : pos + 4096])


def test_memory_huge_message_length_claimed() -> None:
    """A header claiming a 16 MiB message is refused before anything is allocated for it."""
    data = b"\x03\x00\x00\x00\xff\xff\xff\x09\x00\x00\x00\x00" + b"x" * 128
    assert peak_allocation(_read_in_pieces, data) < 16 * 1024


def test_memory_partial_messages_large_chunks() -> None:
    data = _partial_messages(chunk_size=4096, streams=24, per_stream=20_000)
    assert peak_allocation(_read_in_pieces, data) <= 2 * len(data) + 256 * 1024


def test_memory_partial_messages_tiny_chunks() -> None:
    data = _partial_messages(chunk_size=2, streams=24, per_stream=4000)
    peak = peak_allocation(_read_in_pieces, data)
    assert peak <= 2 * len(data) + 256 * 1024, f"{len(data)} bytes sent, {peak} bytes allocated"
