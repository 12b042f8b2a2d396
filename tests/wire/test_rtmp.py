"""b2bua.wire.rtmp: handshake, chunk streams, control messages and commands.

Fixtures in tests/data/rtmp/ are the bytes FFmpeg 5.1 (Lavf59.27.100) sent to a throwaway
capture server built on these classes:

* ffmpeg_publish_audio.bin — ``ffmpeg -re -f lavfi -i sine=f=1000:d=1.5 -c:a aac -ar 44100 -ac 1
  -f flv rtmp://127.0.0.1:19351/mp/upkey123``: handshake, connect, releaseStream, FCPublish,
  createStream, publish, @setDataFrame, AAC sequence header, AAC frames, FCUnpublish, deleteStream.
* ffmpeg_publish_av.bin — the same with ``-f lavfi -i testsrc=size=320x240:rate=10:d=1 -c:v libx264``.
* ffmpeg_play.bin — ``ffmpeg -i rtmp://127.0.0.1:19354/mp/downkey out.wav`` (the player side).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from b2bua.wire import amf0, flv, rtmp
from b2bua.wire.rtmp import ChunkReader, ChunkWriter, HandshakeError, Message, RtmpError, ServerHandshake

DATA = Path(__file__).resolve().parents[1] / "data" / "rtmp"
HS = 1 + 2 * rtmp.HANDSHAKE_SIZE  # C0 + C1 + C2


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def chunk_bytes(name: str) -> bytes:
    """The bytes after the handshake (C0, C1, C2) of a capture."""
    return fixture(name)[HS:]


def read_all(data: bytes, sizes: list[int] | None = None, **kwargs: int) -> tuple[list[Message], ChunkReader]:
    reader = ChunkReader(**kwargs)
    messages: list[Message] = []
    if sizes is None:
        messages += reader.feed(data)
    else:
        pos = 0
        i = 0
        while pos < len(data):
            n = sizes[i % len(sizes)]
            messages += reader.feed(data[pos : pos + n])
            pos += n
            i += 1
    return messages, reader


def chunk(
    fmt: int,
    csid: int,
    body: bytes = b"",
    *,
    ts: int = 0,
    length: int = 0,
    type_id: int = 0,
    stream_id: int = 0,
    ext: int | None = None,
) -> bytes:
    """An independent chunk encoder for hand-made streams."""
    if csid < 64:
        out = bytes([fmt << 6 | csid])
    elif csid < 320:
        out = bytes([fmt << 6, csid - 64])
    else:
        out = bytes([fmt << 6 | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])
    field = 0xFFFFFF if ext is not None and fmt < 3 else ts
    if fmt <= 2:
        out += field.to_bytes(3, "big")
    if fmt <= 1:
        out += length.to_bytes(3, "big") + bytes([type_id])
    if fmt == 0:
        out += stream_id.to_bytes(4, "little")
    if ext is not None:
        out += ext.to_bytes(4, "big")
    return out + body


# --- handshake --------------------------------------------------------------------------------------


def fixed_random(n: int) -> bytes:
    return bytes(i & 0xFF for i in range(n))


def test_handshake_with_ffmpeg_bytes() -> None:
    data = fixture("ffmpeg_publish_audio.bin")
    hs = ServerHandshake(random_bytes=fixed_random, uptime_ms=1234)
    step = hs.feed(data[:1537])
    assert not step.done and step.leftover == b""
    c1 = data[1:1537]
    assert len(step.send) == 1 + 2 * 1536
    assert step.send[0] == 3
    s1, s2 = step.send[1:1537], step.send[1537:]
    assert s1[:4] == struct.pack(">I", 1234)
    assert s1[4:8] == b"\x00\x00\x00\x00"  # zero version: FFmpeg/librtmp then skip digest checks
    assert s1[8:] == fixed_random(1528)
    assert s2[:4] == c1[:4] and s2[4:8] == struct.pack(">I", 1234) and s2[8:] == c1[8:]
    # FFmpeg sends a digest ("complex") C1 carrying Flash Player version 9.0.124.2 and time 0.
    assert hs.client_version == bytes([9, 0, 124, 2]) and c1[:4] == b"\x00\x00\x00\x00"
    step = hs.feed(data[1537:])
    assert step.done and step.send == b"" and hs.done
    assert step.leftover == data[HS:]
    assert hs.s1 == s1 and hs.c1 == c1


def test_handshake_byte_by_byte() -> None:
    data = fixture("ffmpeg_play.bin")
    hs = ServerHandshake(random_bytes=fixed_random)
    sent = b""
    for i in range(HS - 1):
        step = hs.feed(data[i : i + 1])
        sent += step.send
        assert not step.done and step.leftover == b""
        if i < 1536:
            assert step.send == b""
    assert len(sent) == 3073
    step = hs.feed(data[HS - 1 : HS + 5])
    assert step.done and step.leftover == data[HS : HS + 5]
    with pytest.raises(HandshakeError, match="already complete"):
        hs.feed(b"x")


@pytest.mark.parametrize(
    "c0,message",
    [(6, "RTMPE"), (8, "RTMPE"), (0, "unsupported RTMP version 0"), (0x47, "version 71")],
)
def test_handshake_bad_version(c0: int, message: str) -> None:
    with pytest.raises(HandshakeError, match=message):
        ServerHandshake().feed(bytes([c0]))
    assert issubclass(HandshakeError, RtmpError) and issubclass(RtmpError, ValueError)


def test_handshake_random_by_default() -> None:
    a = ServerHandshake().feed(b"\x03" + bytes(1536)).send
    b = ServerHandshake().feed(b"\x03" + bytes(1536)).send
    assert a[9:1537] != b[9:1537]


# --- FFmpeg publish session -------------------------------------------------------------------------


def commands(messages: list[Message]) -> list[str]:
    return [rtmp.parse_command(m).name for m in messages if m.type_id in (rtmp.COMMAND_AMF0, rtmp.DATA_AMF0)]


def test_ffmpeg_publish_session() -> None:
    data = chunk_bytes("ffmpeg_publish_audio.bin")
    messages, reader = read_all(data)
    assert commands(messages) == [
        "connect",
        "releaseStream",
        "FCPublish",
        "createStream",
        "publish",
        "@setDataFrame",
        "FCUnpublish",
        "deleteStream",
    ]
    assert reader.bytes_received == len(data) and reader.buffered == 0
    # FFmpeg sends connect (136 bytes: two chunks at 128), then Set Chunk Size 4096.
    connect = messages[0]
    assert (connect.type_id, connect.stream_id, len(connect.payload)) == (20, 0, 136)
    assert connect.payload == fixture("ffmpeg_connect.amf0").replace(b"19353", b"19351")
    assert messages[1] == Message(rtmp.SET_CHUNK_SIZE, 0, 0, b"\x00\x00\x10\x00")
    assert reader.chunk_size == 4096
    cmd = rtmp.parse_command(connect)
    assert cmd.transaction_id == 1.0 and cmd.command_object["app"] == "mp" and cmd.args == []
    publish = next(m for m in messages if m.type_id == 20 and rtmp.parse_command(m).name == "publish")
    assert publish.stream_id == 1
    assert rtmp.parse_command(publish).args == ["upkey123", "live"]
    meta = rtmp.parse_command(next(m for m in messages if m.type_id == rtmp.DATA_AMF0))
    assert meta.transaction_id is None and meta.args[0] == "onMetaData"
    assert isinstance(meta.args[1], amf0.EcmaArray)
    assert meta.args[1]["audiocodecid"] == 10.0 and meta.args[1]["audiosamplerate"] == 44100.0
    audio = [m for m in messages if m.type_id == rtmp.AUDIO]
    assert all(m.stream_id == 1 for m in audio)
    first = flv.parse_audio(audio[0].payload)
    assert first.codec == flv.SOUND_AAC and first.aac_packet_type == flv.AAC_SEQUENCE_HEADER
    asc = flv.AudioSpecificConfig.parse(first.data)
    assert (asc.object_type, asc.sample_rate, asc.channels) == (2, 44100, 1)
    raw = audio[1:]
    assert len(raw) >= 60
    assert all(flv.parse_audio(m.payload).aac_packet_type == flv.AAC_RAW for m in raw)
    stamps = [m.timestamp for m in raw]
    steps = {b - a for a, b in zip(stamps, stamps[1:], strict=False)}
    assert steps <= {23, 24}  # 1024 samples at 44.1 kHz = 23.2 ms
    deletes = rtmp.parse_command(messages[-1])
    assert deletes.name == "deleteStream" and deletes.args == [1.0]


@pytest.mark.parametrize("name", ["ffmpeg_publish_audio.bin", "ffmpeg_publish_av.bin", "ffmpeg_play.bin"])
def test_split_anywhere_gives_identical_messages(name: str) -> None:
    data = chunk_bytes(name)
    whole, _ = read_all(data)
    assert read_all(data, [1])[0] == whole
    assert read_all(data, [7, 1, 300, 2, 4096])[0] == whole
    rng = random.Random(name)
    assert read_all(data, [rng.randrange(1, 600) for _ in range(50)])[0] == whole


def test_ffmpeg_publish_with_video() -> None:
    messages, _ = read_all(chunk_bytes("ffmpeg_publish_av.bin"))
    video = [m for m in messages if m.type_id == rtmp.VIDEO]
    audio = [m for m in messages if m.type_id == rtmp.AUDIO]
    assert len(video) == 12 and len(audio) > 40
    tags = [flv.parse_video(m.payload) for m in video]
    assert tags[0].avc_packet_type == flv.AVC_SEQUENCE_HEADER and tags[0].keyframe
    assert video[0].payload == fixture("x264_avc_sequence_header.bin")
    assert tags[1].avc_packet_type == flv.AVC_NALU and tags[1].keyframe
    assert tags[-1].avc_packet_type == flv.AVC_END_OF_SEQUENCE
    assert [m.timestamp for m in video[1:-1]] == list(range(0, 1000, 100))
    # Audio and video interleave in time order.
    media = [m for m in messages if m.type_id in (8, 9)]
    assert [m.timestamp for m in media][:6] == [0, 0, 0, 100, 177, 200]


def test_ffmpeg_play_session() -> None:
    messages, _ = read_all(chunk_bytes("ffmpeg_play.bin"))
    assert commands(messages) == ["connect", "createStream", "getStreamLength", "play"]
    connect = rtmp.parse_command(messages[0])
    assert connect.command_object["flashVer"] == "LNX 9,0,124,2"
    assert connect.command_object["audioCodecs"] == 4071.0
    win = messages[1]
    assert win.type_id == rtmp.WINDOW_ACK_SIZE and rtmp.parse_uint32(win.payload) == 2_500_000
    play = rtmp.parse_command(messages[4])
    assert play.args == ["downkey", -2000.0] and messages[4].stream_id == 1
    buf = messages[5]
    assert buf.type_id == rtmp.USER_CONTROL and buf.timestamp == 1  # FFmpeg stamps it 1
    assert rtmp.parse_user_control(buf.payload) == rtmp.UserControl(rtmp.SET_BUFFER_LENGTH, 1, 3000)


@pytest.mark.parametrize("name", ["ffmpeg_publish_audio.bin", "ffmpeg_publish_av.bin"])
def test_every_prefix_only_waits(name: str) -> None:
    """A stream cut anywhere never raises: the reader waits for the rest of the chunk."""
    data = chunk_bytes(name)
    whole, _ = read_all(data)
    for cut in range(0, len(data), 7 if len(data) > 17000 else 1):
        reader = ChunkReader()
        first = reader.feed(data[:cut])
        assert first == whole[: len(first)]
        assert first + reader.feed(data[cut:]) == whole


# --- writer → reader ---------------------------------------------------------------------------------

SIZES = [0, 1, 2, 127, 128, 129, 255, 256, 257, 1000, 4095, 4096, 4097, 70_000]
STAMPS = [0, 1, 23, 0xFFFFFE, 0xFFFFFF, 0x1000000, 0x7FFFFFFF, 0xFFFFFFFF]


@pytest.mark.parametrize("chunk_size", [1, 2, 100, 128, 129, 4096, 65536])
def test_writer_reader_round_trip(chunk_size: int) -> None:
    rng = random.Random(chunk_size)
    msgs = []
    for size in SIZES:
        for ts in STAMPS:
            type_id = rng.choice([rtmp.AUDIO, rtmp.VIDEO, rtmp.COMMAND_AMF0, rtmp.DATA_AMF0, 22])
            msgs.append(Message(type_id, rng.choice([0, 1, 5, 0xFFFFFFFF]), ts, rng.randbytes(size)))
    # Plus runs that exercise fmt 1/2/3: equal sizes and deltas, on several chunk streams.
    for i in range(40):
        msgs.append(Message(rtmp.AUDIO, 1, 1000 + 23 * i, bytes([i]) * (200 + i % 2)))
        msgs.append(Message(rtmp.VIDEO, 1, 1000 + 0x1000000 * (i // 10) + i, bytes([i]) * 300))
    writer = ChunkWriter(128)
    data = writer.set_chunk_size(chunk_size) + b"".join(writer.write(m) for m in msgs)
    assert writer.bytes_sent == len(data)
    got, reader = read_all(data)
    assert got[0] == rtmp.set_chunk_size(chunk_size)
    assert got[1:] == msgs
    assert reader.chunk_size == chunk_size
    if chunk_size >= 128:
        assert read_all(data, [rng.randrange(1, 3000) for _ in range(20)])[0][1:] == msgs


def test_writer_header_compression() -> None:
    w = ChunkWriter()
    a = w.write(Message(rtmp.AUDIO, 1, 0, b"x" * 10))
    assert a[0] == 0x00 | rtmp.CSID_AUDIO and len(a) == 12 + 10
    b = w.write(Message(rtmp.AUDIO, 1, 23, b"x" * 10))
    assert b[0] == 0x80 | rtmp.CSID_AUDIO and len(b) == 4 + 10  # after fmt 0: fmt 2, not fmt 3
    c = w.write(Message(rtmp.AUDIO, 1, 46, b"y" * 10))
    assert c == bytes([0xC0 | rtmp.CSID_AUDIO]) + b"y" * 10  # same delta: fmt 3
    d = w.write(Message(rtmp.AUDIO, 1, 70, b"y" * 11))
    assert d[0] == 0x40 | rtmp.CSID_AUDIO and len(d) == 8 + 11  # new length: fmt 1
    e = w.write(Message(rtmp.AUDIO, 2, 90, b"y" * 11))
    assert e[0] == rtmp.CSID_AUDIO  # other message stream: fmt 0
    f = w.write(Message(rtmp.AUDIO, 2, 50, b"y" * 11))
    assert f[0] == rtmp.CSID_AUDIO  # timestamp going back: fmt 0
    msgs, _ = read_all(a + b + c + d + e + f)
    assert [m.timestamp for m in msgs] == [0, 23, 46, 70, 90, 50]


def test_writer_extended_timestamp_on_continuations() -> None:
    w = ChunkWriter(100)
    data = w.write(Message(rtmp.VIDEO, 1, 0x01020304, b"v" * 250))
    ext = b"\x01\x02\x03\x04"
    assert data[1:4] == b"\xff\xff\xff" and data[12:16] == ext
    assert data[116:121] == bytes([0xC0 | rtmp.CSID_VIDEO]) + ext
    assert data[221:226] == bytes([0xC0 | rtmp.CSID_VIDEO]) + ext
    assert len(data) == 16 + 100 + 5 + 100 + 5 + 50


def test_writer_chooses_csid_by_type() -> None:
    w = ChunkWriter()
    cases = [
        (rtmp.set_chunk_size(4096), 2),
        (rtmp.stream_begin(1), 2),
        (rtmp.window_ack_size(1), 2),
        (rtmp.connect_result(), 3),
        (rtmp.on_status(1, "status", "NetStream.Play.Start", "x"), 5),
        (rtmp.data_message("onMetaData", amf0.EcmaArray(), stream_id=1), 5),
        (Message(rtmp.AUDIO, 1, 0, b"a"), 6),
        (Message(rtmp.VIDEO, 1, 0, b"v"), 7),
    ]
    for m, csid in cases:
        assert w.write(m)[0] & 0x3F == csid


@pytest.mark.parametrize("csid", [2, 63, 64, 65, 319, 320, 321, 65599])
def test_wide_chunk_stream_ids(csid: int) -> None:
    w = ChunkWriter(64)
    msgs = [Message(rtmp.AUDIO, 1, 10 * i, bytes([i]) * 150) for i in range(3)]
    data = b"".join(w.write(m, csid) for m in msgs)
    assert data == (
        chunk(0, csid, b"\x00" * 64, ts=0, length=150, type_id=8, stream_id=1)
        + chunk(3, csid, b"\x00" * 64)
        + chunk(3, csid, b"\x00" * 22)
        + chunk(2, csid, b"\x01" * 64, ts=10)
        + chunk(3, csid, b"\x01" * 64)
        + chunk(3, csid, b"\x01" * 22)
        + chunk(3, csid, b"\x02" * 64)
        + chunk(3, csid, b"\x02" * 64)
        + chunk(3, csid, b"\x02" * 22)
    )
    got, _ = read_all(rtmp.ChunkWriter().write(rtmp.set_chunk_size(64)) + data)
    assert got[1:] == msgs


def test_writer_bad_arguments() -> None:
    with pytest.raises(ValueError, match="chunk stream id 1"):
        ChunkWriter().write(Message(8, 1, 0, b""), 1)
    with pytest.raises(ValueError, match="chunk size 0"):
        ChunkWriter(0)
    with pytest.raises(ValueError, match="chunk size"):
        rtmp.set_chunk_size(1 << 25)


def test_writer_reset() -> None:
    w = ChunkWriter()
    w.write(Message(8, 1, 0, b"a"))
    w.reset(rtmp.CSID_AUDIO)
    assert w.write(Message(8, 1, 0, b"a"))[0] == rtmp.CSID_AUDIO
    assert w.write_many([Message(8, 1, 5, b"a"), Message(8, 1, 10, b"a")]) == b"\x86\x00\x00\x05a\xc6a"


# --- reader details ----------------------------------------------------------------------------------


def test_interleaved_chunk_streams() -> None:
    """Messages split over chunks of different chunk streams interleaved, as the spec allows."""
    video = bytes(range(256)) + b"V" * 44  # 300 bytes: 128 + 128 + 44
    audio = b"A" * 200
    data = (
        chunk(0, 7, video[:128], ts=1000, length=300, type_id=9, stream_id=1)
        + chunk(0, 6, audio[:128], ts=1001, length=200, type_id=8, stream_id=1)
        + chunk(3, 7, video[128:256])
        + chunk(0, 3, amf0.encode("ping", 0.0, None), length=17, type_id=20)
        + chunk(3, 6, audio[128:])
        + chunk(3, 7, video[256:])
    )
    got, _ = read_all(data)
    assert got == [
        Message(20, 0, 0, amf0.encode("ping", 0.0, None)),
        Message(8, 1, 1001, audio),
        Message(9, 1, 1000, video),
    ]


def test_timestamp_deltas_and_fmt3_new_message() -> None:
    data = (
        chunk(0, 4, b"a", ts=40, length=1, type_id=8, stream_id=1)
        + chunk(3, 4, b"b")  # new message, delta = the fmt 0 timestamp (spec §5.3.1.2.4)
        + chunk(2, 4, b"c", ts=20)
        + chunk(3, 4, b"d")
        + chunk(1, 4, b"ee", ts=5, length=2, type_id=8)
        + chunk(3, 4, b"ff")
        + chunk(1, 4, b"g", length=1, type_id=8, ext=0xFFFFFFFF - 139)  # wraps modulo 2**32
    )
    got, _ = read_all(data)
    assert [(m.timestamp, m.payload) for m in got] == [
        (40, b"a"),
        (80, b"b"),
        (100, b"c"),
        (120, b"d"),
        (125, b"ee"),
        (130, b"ff"),
        ((130 + 0xFFFFFFFF - 139) % 2**32, b"g"),
    ]


def test_extended_timestamps_read() -> None:
    body = b"z" * 200
    data = (
        chunk(0, 5, body[:128], length=200, type_id=9, stream_id=1, ext=0x12345678)
        + chunk(3, 5, body[128:], ext=0x12345678)  # repeated on the continuation, as FFmpeg does
        + chunk(2, 5, body[:128], ext=0x01000000)  # extended delta
        + chunk(3, 5, body[128:], ext=0x01000000)
        + chunk(3, 5, body[:128], ext=0x01000000)  # fmt 3 new message: the extended delta again
        + chunk(3, 5, body[128:], ext=0x01000000)
        + chunk(1, 5, b"s", ts=7, length=1, type_id=9)  # back to a 24-bit delta: no more ext fields
        + chunk(3, 5, b"t")
    )
    got, _ = read_all(data)
    assert [m.timestamp for m in got] == [
        0x12345678,
        0x13345678,
        0x14345678,
        0x1434567F,
        0x14345686,
    ]
    assert got[0].payload == body and got[3].payload == b"s"


def test_set_chunk_size_applies_to_the_next_chunk_in_the_same_feed() -> None:
    big = bytes(range(200)) * 3
    data = (
        chunk(0, 2, b"\x00\x00\x01\x2c", length=4, type_id=1)  # 300
        + chunk(0, 3, big[:300], length=600, type_id=20)
        + chunk(3, 3, big[300:])
    )
    got, reader = read_all(data)
    assert reader.chunk_size == 300 and got[1].payload == big


def test_abort_drops_the_partial_message() -> None:
    data = (
        chunk(0, 6, b"x" * 128, length=300, type_id=8, stream_id=1)
        + chunk(0, 2, b"\x00\x00\x00\x06", length=4, type_id=rtmp.ABORT)
        + chunk(0, 6, b"fresh", ts=9, length=5, type_id=8, stream_id=1)
        + chunk(0, 2, b"\x00\x00\x00\x30", length=4, type_id=rtmp.ABORT)  # unknown csid: ignored
    )
    got, _ = read_all(data)
    assert [m.type_id for m in got] == [rtmp.ABORT, 8, rtmp.ABORT]
    assert got[1] == Message(8, 1, 9, b"fresh")


def test_zero_length_message() -> None:
    got, _ = read_all(chunk(0, 3, b"", length=0, type_id=20) + chunk(3, 3, b""))
    assert got == [Message(20, 0, 0, b""), Message(20, 0, 0, b"")]


def test_bytes_received_counts_everything() -> None:
    reader = ChunkReader()
    reader.feed(b"\x03")
    reader.feed(b"\x00\x00")
    assert reader.bytes_received == 3 and reader.buffered == 3


# --- malformed input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,message",
    [
        (chunk(1, 4, b"a", length=1, type_id=8), "fmt 1 on chunk stream 4 with no previous header"),
        (chunk(2, 4, b"a"), "fmt 2 on chunk stream 4 with no previous header"),
        (b"\xc4", "fmt 3 on chunk stream 4 with no previous header"),
        (
            b"\x03" + b"\x00\x00\x00" + b"\xff\xff\xff\x14" + bytes(4),
            "16777215 bytes on chunk stream 3 exceeds",
        ),
        (chunk(0, 2, b"\x00\x00\x00\x00", length=4, type_id=1), "Set Chunk Size 0"),
        (chunk(0, 2, b"\x01\x00\x00\x01", length=4, type_id=1), "exceeds 16777216"),
        (chunk(0, 2, b"\x80\x00\x00\x80", length=4, type_id=1), "reserved top bit"),
        (chunk(0, 2, b"\x00\x10", length=2, type_id=1), "Set Chunk Size payload of 2 bytes"),
        (chunk(0, 2, b"\x00", length=1, type_id=2), "Abort payload of 1 bytes"),
        (
            chunk(0, 5, b"x" * 128, length=200, type_id=9) + chunk(1, 5, b"y", length=1, type_id=9),
            "fmt 1 on chunk stream 5 in the middle of a message \\(72 of 200 bytes missing\\)",
        ),
    ],
)
def test_malformed_chunks(data: bytes, message: str) -> None:
    with pytest.raises(RtmpError, match=message):
        ChunkReader().feed(data)


def test_max_message_size_configurable() -> None:
    data = chunk(0, 3, b"x" * 100, length=100, type_id=20)
    assert len(ChunkReader(max_message_size=100).feed(data)) == 1
    with pytest.raises(RtmpError, match="message of 100 bytes on chunk stream 3 exceeds the limit of 99"):
        ChunkReader(max_message_size=99).feed(data)


def test_max_chunk_size_accepted() -> None:
    got, reader = read_all(chunk(0, 2, b"\x01\x00\x00\x00", length=4, type_id=1))
    assert reader.chunk_size == 1 << 24


def test_too_many_chunk_streams() -> None:
    data = b"".join(chunk(0, 3 + i, b"", type_id=20) for i in range(65))
    with pytest.raises(RtmpError, match="more than 64 chunk streams"):
        ChunkReader().feed(data)
    assert len(ChunkReader(max_chunk_streams=65).feed(data)) == 65


def test_random_garbage_raises_only_rtmp_error() -> None:
    rng = random.Random(1935)
    valid = chunk_bytes("ffmpeg_publish_audio.bin")[:3000]
    for i in range(2000):
        reader = ChunkReader(max_message_size=1 << 16)
        if i % 2:
            data = rng.randbytes(rng.randrange(1, 400))
        else:
            mutated = bytearray(valid)
            for _ in range(rng.randrange(1, 8)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            data = bytes(mutated)
        try:
            step = rng.randrange(1, 500)
            for pos in range(0, len(data), step):
                for m in reader.feed(data[pos : pos + step]):
                    if m.type_id in (17, 18, 20):
                        rtmp.parse_command(m)
                    elif m.type_id == rtmp.USER_CONTROL:
                        rtmp.parse_user_control(m.payload)
        except RtmpError:
            pass


# --- control messages --------------------------------------------------------------------------------


def test_protocol_control_builders() -> None:
    assert rtmp.set_chunk_size(4096) == Message(1, 0, 0, b"\x00\x00\x10\x00")
    assert rtmp.abort(6) == Message(2, 0, 0, b"\x00\x00\x00\x06")
    assert rtmp.acknowledgement(2**32 + 5) == Message(3, 0, 0, b"\x00\x00\x00\x05")
    assert rtmp.window_ack_size(2_500_000) == Message(5, 0, 0, b"\x00\x26\x25\xa0")
    assert rtmp.set_peer_bandwidth(2_500_000, rtmp.LIMIT_DYNAMIC) == Message(6, 0, 0, b"\x00\x26\x25\xa0\x02")
    assert rtmp.parse_set_peer_bandwidth(b"\x00\x26\x25\xa0\x02") == (2_500_000, 2)
    assert rtmp.parse_uint32(b"\x00\x00\x10\x00") == 4096
    with pytest.raises(RtmpError, match="limit type 3"):
        rtmp.parse_set_peer_bandwidth(b"\x00\x00\x00\x01\x03")
    with pytest.raises(RtmpError, match="Set Peer Bandwidth payload of 4 bytes"):
        rtmp.parse_set_peer_bandwidth(b"\x00\x00\x00\x01")
    with pytest.raises(ValueError, match="limit type 7"):
        rtmp.set_peer_bandwidth(1, 7)


def test_user_control_round_trips() -> None:
    cases = [
        (rtmp.stream_begin(1), rtmp.UserControl(rtmp.STREAM_BEGIN, 1), b"\x00\x00\x00\x00\x00\x01"),
        (rtmp.stream_eof(1), rtmp.UserControl(rtmp.STREAM_EOF, 1), b"\x00\x01\x00\x00\x00\x01"),
        (rtmp.stream_dry(2), rtmp.UserControl(rtmp.STREAM_DRY, 2), b"\x00\x02\x00\x00\x00\x02"),
        (
            rtmp.set_buffer_length(1, 3000),
            rtmp.UserControl(rtmp.SET_BUFFER_LENGTH, 1, 3000),
            b"\x00\x03\x00\x00\x00\x01\x00\x00\x0b\xb8",
        ),
        (
            rtmp.stream_is_recorded(1),
            rtmp.UserControl(rtmp.STREAM_IS_RECORDED, 1),
            b"\x00\x04\x00\x00\x00\x01",
        ),
        (rtmp.ping_request(2**32 + 9), rtmp.UserControl(rtmp.PING_REQUEST, 9), b"\x00\x06\x00\x00\x00\x09"),
        (rtmp.ping_response(9), rtmp.UserControl(rtmp.PING_RESPONSE, 9), b"\x00\x07\x00\x00\x00\x09"),
    ]
    for message, parsed, payload in cases:
        assert message.type_id == rtmp.USER_CONTROL and message.stream_id == 0
        assert message.payload == payload
        assert rtmp.parse_user_control(payload) == parsed


def test_user_control_malformed_and_unknown() -> None:
    with pytest.raises(RtmpError, match="at least 2"):
        rtmp.parse_user_control(b"\x00")
    with pytest.raises(RtmpError, match="SetBufferLength payload of 6 bytes"):
        rtmp.parse_user_control(b"\x00\x03\x00\x00\x00\x01")
    with pytest.raises(RtmpError, match="event 0 payload of 3 bytes"):
        rtmp.parse_user_control(b"\x00\x00\x00")
    assert rtmp.parse_user_control(b"\x00\x1a") == rtmp.UserControl(26)  # SWF verification request
    assert rtmp.parse_user_control(b"\x00\x1b" + b"\x01\x02\x03\x04" + b"x" * 38).value == 0x01020304


# --- commands ----------------------------------------------------------------------------------------


def test_command_builders() -> None:
    m = rtmp.connect_result(1.0)
    assert (m.type_id, m.stream_id) == (20, 0)
    c = rtmp.parse_command(m)
    assert c.name == "_result" and c.transaction_id == 1.0
    assert c.command_object == {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0, "mode": 1.0}
    assert c.args == [
        {
            "level": "status",
            "code": "NetConnection.Connect.Success",
            "description": "Connection succeeded.",
            "objectEncoding": 0.0,
        }
    ]
    assert rtmp.parse_command(rtmp.result(4.0, None, 1.0)) == rtmp.Command("_result", 4.0, None, [1.0])
    assert rtmp.parse_command(rtmp.error(2.0, None, {"code": "x"})).name == "_error"
    s = rtmp.on_status(1, "error", "NetStream.Publish.BadName", "no such key", details="k")
    assert s.stream_id == 1
    assert s.payload == amf0.encode(
        "onStatus",
        0.0,
        None,
        {"level": "error", "code": "NetStream.Publish.BadName", "description": "no such key", "details": "k"},
    )
    d = rtmp.data_message("|RtmpSampleAccess", True, True, stream_id=1)
    assert d.type_id == 18 and rtmp.parse_command(d) == rtmp.Command(
        "|RtmpSampleAccess", None, None, [True, True]
    )
    m = rtmp.command_message("play", 0.0, None, "key", -2000.0, stream_id=1, timestamp=5)
    assert (m.stream_id, m.timestamp) == (1, 5)
    assert rtmp.parse_command(m).args == ["key", -2000.0]


def test_amf3_wrapped_command() -> None:
    body = amf0.encode("connect", 1.0, {"app": "mp"})
    assert rtmp.parse_command(Message(17, 0, 0, b"\x00" + body)).command_object == {"app": "mp"}
    assert rtmp.parse_command(Message(15, 1, 0, b"\x00" + amf0.encode("onMetaData"))).name == "onMetaData"
    with pytest.raises(RtmpError, match="AMF3-encoded message type 17"):
        rtmp.parse_command(Message(17, 0, 0, b"\x11" + body))


@pytest.mark.parametrize(
    "message,error",
    [
        (Message(8, 0, 0, b"\xaf\x01"), "message type 8 is not a command"),
        (Message(20, 0, 0, b""), "does not start with a name"),
        (Message(20, 0, 0, amf0.encode(1.0, 2.0)), "does not start with a name"),
        (Message(20, 0, 0, amf0.encode("connect")), "command 'connect' has no transaction id"),
        (Message(20, 0, 0, amf0.encode("connect", "1")), "no transaction id"),
        (Message(20, 0, 0, b"\x02\x00\x07conn"), "bad AMF0 in message type 20: truncated string"),
    ],
)
def test_parse_command_errors(message: Message, error: str) -> None:
    with pytest.raises(RtmpError, match=error):
        rtmp.parse_command(message)


def test_command_without_object() -> None:
    c = rtmp.parse_command(Message(20, 0, 0, amf0.encode("closeStream", 0.0)))
    assert c == rtmp.Command("closeStream", 0.0, None, [])


def test_extended_timestamp_omitted_on_continuations() -> None:
    """Some encoders do not repeat the extended timestamp on continuation chunks."""
    body = bytes(range(200))
    data = (
        chunk(0, 5, body[:128], length=200, type_id=9, stream_id=1, ext=0x12345678)
        + chunk(3, 5, body[128:])
        + chunk(1, 5, b"x" * 128, length=130, type_id=9, ext=0x01000000)
        + chunk(3, 5, b"yy")  # < 4 bytes: decided only once the next bytes arrive
        + chunk(0, 3, b"", type_id=20)
    )
    got, _ = read_all(data)
    assert got == [
        Message(9, 1, 0x12345678, body),
        Message(9, 1, 0x13345678, b"x" * 128 + b"yy"),
        Message(20, 0, 0, b""),
    ]
    assert read_all(data, [1])[0] == got


# --- memory bounds (issue 12) ------------------------------------------------------------------------


def _partial_messages(streams: int, length: int, chunk_size: int, chunks: int) -> bytes:
    """Set Chunk Size, then ``chunks`` chunks of a ``length``-byte message on each of ``streams``
    chunk streams, round-robin: every message stays incomplete (the abuse probe of issue 12)."""
    data = chunk(0, 2, struct.pack(">I", chunk_size), length=4, type_id=1)
    for i in range(chunks):
        for s in range(streams):
            csid = 4 + s
            if i == 0:
                data += chunk(0, csid, b"x" * chunk_size, length=length, type_id=9, stream_id=1)
            else:
                data += bytes((0xC0 | csid,)) + b"y" * chunk_size
    return data


def test_partial_messages_cost_about_their_size() -> None:
    """Chunk size 2, 24 chunk streams of messages each one chunk short of complete: one buffer per
    message, so the memory held is about the payload received (a list of 2-byte pieces cost ~21
    bytes of memory per payload byte)."""
    import tracemalloc

    chunks = 1000
    data = _partial_messages(streams=24, length=2 * chunks + 2, chunk_size=2, chunks=chunks)
    reader = ChunkReader(max_chunk_streams=25)  # 24 + the control stream
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(0, len(data), 4096):
            assert reader.feed(data[i : i + 4096]) == [] or i == 0
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    payload = 24 * chunks * 2
    assert held < 1.5 * payload, held
    assert reader.reserved == 24 * (2 * chunks + 2)


def test_buffered_messages_beyond_the_budget_are_refused() -> None:
    reader = ChunkReader(max_chunk_streams=25, max_buffered=64 * 1024, min_chunk_size=128)
    data = _partial_messages(streams=24, length=4000, chunk_size=128, chunks=2)
    with pytest.raises(rtmp.BufferLimitError, match=r"limit 65536"):
        reader.feed(data)
    assert reader.reserved <= 64 * 1024
    # within the budget: fine, and completing messages gives the budget back
    reader = ChunkReader(max_buffered=10_000)
    body = bytes(range(256)) * 20
    got = reader.feed(
        chunk(0, 4, body[:128], length=5000, type_id=9, stream_id=1)
        + chunk(0, 5, body[:128], length=5000, type_id=9, stream_id=1)
    )
    assert got == [] and reader.reserved == 10_000
    with pytest.raises(rtmp.BufferLimitError):
        ChunkReader(max_buffered=9_999).feed(chunk(0, 4, body[:128], length=10_000, type_id=9))
    rest = b"".join(bytes((0xC4,)) + body[i : min(i + 128, 5000)] for i in range(128, 5000, 128))
    got = reader.feed(rest)
    assert got == [Message(9, 1, 0, body[:5000])] and reader.reserved == 5000


def test_abort_gives_the_budget_back() -> None:
    reader = ChunkReader(max_buffered=300)
    reader.feed(chunk(0, 6, b"x" * 128, length=300, type_id=8, stream_id=1))
    assert reader.reserved == 300
    reader.feed(chunk(0, 2, b"\x00\x00\x00\x06", length=4, type_id=rtmp.ABORT))
    assert reader.reserved == 0
    reader.feed(chunk(0, 7, b"x" * 128, length=300, type_id=8, stream_id=1))  # fits again


def test_minimum_chunk_size() -> None:
    for size, ok in ((127, False), (2, False), (128, True), (4096, True)):
        data = chunk(0, 2, struct.pack(">I", size), length=4, type_id=1)
        if ok:
            assert ChunkReader(min_chunk_size=128).feed(data)[0].type_id == 1
        else:
            with pytest.raises(RtmpError, match=f"Set Chunk Size {size} is below the minimum of 128"):
                ChunkReader(min_chunk_size=128).feed(data)


def test_pause_after_command() -> None:
    """The reader stops after each command, so the caller can change the limits before the
    message pipelined behind it is read."""
    w = ChunkWriter()
    big = bytes(200_000)
    data = (
        w.write(rtmp.command_message("publish", 0.0, None, "k", stream_id=1))
        + w.write(Message(rtmp.AUDIO, 1, 0, b"a"))
        + w.write(Message(rtmp.VIDEO, 1, 0, big))
    )
    reader = ChunkReader(max_message_size=1000, pause_after_command=True)
    got = reader.feed(data)
    assert [m.type_id for m in got] == [rtmp.COMMAND_AMF0] and reader.paused
    reader.max_message_size = 512 * 1024
    reader.max_buffered = 1 << 20
    reader.pause_after_command = False
    got = reader.feed(b"")
    assert [m.type_id for m in got] == [rtmp.AUDIO, rtmp.VIDEO] and not reader.paused
    assert got[1].payload == big and reader.bytes_received == len(data)
