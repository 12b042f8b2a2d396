"""b2bua.rtmp.protocol and server: RtmpServerProtocol driven by StringTransport and fake time.

The client bytes are FFmpeg's own, captured in tests/data/rtmp/ (see tests/wire/test_rtmp.py for how
they were made: ``upkey123`` is published, ``downkey`` is played), or built with ChunkWriter.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from b2bua.metrics import Registry
from b2bua.rtmp.protocol import RtmpServerProtocol, normalise_app, stream_name_key
from b2bua.rtmp.server import LogLimiter, RtmpServerFactory
from b2bua.rtmp.streams import StreamRegistry
from b2bua.wire import amf0, flv, rtmp
from b2bua.wire.rtmp import ChunkReader, ChunkWriter, Message
from tests.rtmp.test_streams import AAC_HEADER, AVC_HEADER, INTER, KEY, Sink, Source

DATA = Path(__file__).resolve().parents[1] / "data" / "rtmp"
HS = 1 + 2 * rtmp.HANDSHAKE_SIZE
CLIENT_HELLO = b"\x03" + bytes(rtmp.HANDSHAKE_SIZE) * 2


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


class Conn:
    """One connection to the server under test, with a client-side reader of what it sends."""

    def __init__(self, factory: RtmpServerFactory, n: int) -> None:
        self.proto: RtmpServerProtocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000 + n))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.reader = ChunkReader()
        self.seen = 0
        self.handshake_seen = False
        self.writer = ChunkWriter()

    def feed(self, data: bytes, sizes: list[int] | None = None) -> None:
        if sizes is None:
            self.proto.dataReceived(data)
            return
        pos = i = 0
        while pos < len(data):
            n = sizes[i % len(sizes)]
            self.proto.dataReceived(data[pos : pos + n])
            pos += n
            i += 1

    def send(self, *messages: Message) -> None:
        self.feed(b"".join(self.writer.write(m) for m in messages))

    def command(self, name: str, tid: float, obj: Any = None, *args: Any, stream_id: int = 0) -> None:
        self.send(rtmp.command_message(name, tid, obj, *args, stream_id=stream_id))

    def hello(self, app: str = "mp") -> None:
        """Handshake and connect."""
        self.feed(CLIENT_HELLO)
        self.command("connect", 1.0, {"app": app, "tcUrl": f"rtmp://127.0.0.1/{app}"})

    def start_publish(self, key: str) -> None:
        self.hello()
        self.command("createStream", 2.0, None)
        self.command("publish", 0.0, None, key, "live", stream_id=1)

    def start_play(self, key: str) -> None:
        self.hello()
        self.command("createStream", 2.0, None)
        self.command("play", 0.0, None, key, -2000.0, stream_id=1)

    def messages(self) -> list[Message]:
        """The messages the server sent since the last call."""
        out = self.transport.value()
        new = out[self.seen :]
        self.seen = len(out)
        if not self.handshake_seen:
            if len(out) < 1 + 2 * rtmp.HANDSHAKE_SIZE:
                self.seen = 0
                return []
            new = out[HS:]
            self.handshake_seen = True
        return self.reader.feed(new)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


def describe(m: Message) -> Any:
    """A short form of a server message for assertions."""
    if m.type_id in (rtmp.COMMAND_AMF0, rtmp.DATA_AMF0):
        c = rtmp.parse_command(m)
        if c.name == "onStatus":
            return ("onStatus", c.args[0]["code"])
        if c.name in ("_result", "_error") and isinstance(c.args[0], dict):
            return (c.name, c.args[0].get("code"))
        return (c.name,)
    if m.type_id == rtmp.USER_CONTROL:
        uc = rtmp.parse_user_control(m.payload)
        return ("uc", uc.event, uc.value)
    if m.type_id in (rtmp.AUDIO, rtmp.VIDEO):
        return (m.type_id, m.timestamp, m.payload)
    return ("ctl", m.type_id, rtmp.parse_uint32(m.payload) if len(m.payload) >= 4 else m.payload)


class Server:
    def __init__(self, **kwargs: Any) -> None:
        self.clock = MemoryReactorClock()
        self.registry = StreamRegistry(self.clock)
        self.metrics = Registry()
        self.factory = RtmpServerFactory(self.registry, reactor=self.clock, metrics=self.metrics, **kwargs)
        self.n = 0

    def connect(self) -> Conn:
        self.n += 1
        return Conn(self.factory, self.n)

    def metric(self, name: str) -> str:
        lines = [line for line in self.metrics.render().decode().splitlines() if line.startswith(name)]
        return "\n".join(lines)


@pytest.fixture
def server() -> Server:
    return Server()


# --- publishing ----------------------------------------------------------------------------------------


def test_ffmpeg_publish_audio(server: Server) -> None:
    sink = Sink()
    server.registry.add("upkey123", "publish", sink)
    c = server.connect()
    c.feed(fixture("ffmpeg_publish_audio.bin"))
    assert [describe(m) for m in c.messages()] == [
        ("ctl", rtmp.WINDOW_ACK_SIZE, 2_500_000),
        ("ctl", rtmp.SET_PEER_BANDWIDTH, 2_500_000),
        ("ctl", rtmp.SET_CHUNK_SIZE, 4096),
        ("_result", "NetConnection.Connect.Success"),
        ("_result",),  # releaseStream
        ("onFCPublish",),
        ("_result",),  # FCPublish
        ("_result",),  # createStream
        ("uc", rtmp.STREAM_BEGIN, 1),
        ("onStatus", "NetStream.Publish.Start"),
        ("onFCUnpublish",),
        ("_result",),  # FCUnpublish
    ]
    assert not c.closed  # FFmpeg closes itself after deleteStream
    kinds = [e[0] for e in sink.events]
    assert kinds[0] == "started" and kinds[-1] == "stopped" and set(kinds[1:-1]) == {"audio"}
    _, publisher_id, meta = sink.events[0]
    assert publisher_id == c.proto.publisher_id and publisher_id.startswith("rtmp-1@127.0.0.1:")
    assert meta["audiocodecid"] == 10.0 and meta["audiosamplerate"] == 44100.0
    audio = sink.events[1:-1]
    first = flv.parse_audio(audio[0][2])
    assert first.aac_packet_type == flv.AAC_SEQUENCE_HEADER and audio[0][1] == 0
    assert flv.AudioSpecificConfig.parse(first.data).sample_rate == 44100
    assert all(flv.parse_audio(p).aac_packet_type == flv.AAC_RAW for _, _, p in audio[1:])
    stamps = [ts for _, ts, _ in audio[1:]]
    assert len(stamps) >= 60 and {b - a for a, b in zip(stamps, stamps[1:], strict=False)} <= {23, 24}
    assert sink.events[-1] == ("stopped", "unpublished")
    assert "mpb2bua_rtmp_publishers 0" in server.metric("mpb2bua_rtmp_publishers")
    c.proto.connectionLost()
    assert sink.events[-1] == ("stopped", "unpublished")  # once only
    assert "mpb2bua_rtmp_connections 0" in server.metric("mpb2bua_rtmp_connections")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_publish_split_anywhere(server: Server, seed: int) -> None:
    whole, split = Sink(), Sink()
    server.registry.add("upkey123", "publish", whole)
    data = fixture("ffmpeg_publish_av.bin")
    c = server.connect()
    c.feed(data)
    server.registry.remove("upkey123")
    server.registry.add("upkey123", "publish", split)
    rng = random.Random(seed)
    c2 = server.connect()
    c2.feed(data, [rng.randrange(1, 700) for _ in range(64)])
    assert [e for e in split.events if e[0] != "started"] == [e for e in whole.events if e[0] != "started"]
    assert c.transport.value()[HS:] == c2.transport.value()[HS:]


def test_ffmpeg_publish_video(server: Server) -> None:
    sink = Sink()
    server.registry.add("upkey123", "publish", sink)
    server.connect().feed(fixture("ffmpeg_publish_av.bin"))
    video = [e for e in sink.events if e[0] == "video"]
    assert len(video) == 12
    assert video[0][2] == fixture("x264_avc_sequence_header.bin")
    assert [ts for _, ts, _ in video[1:-1]] == list(range(0, 1000, 100))
    assert sink.events[0][2]["videocodecid"] == 7.0


def test_publish_name_with_query(server: Server) -> None:
    sink = Sink()
    server.registry.add("k123456789", "publish", sink)
    c = server.connect()
    c.start_publish("k123456789?txSecret=abc&txTime=1")
    assert ("onStatus", "NetStream.Publish.Start") in [describe(m) for m in c.messages()]
    c.send(Message(rtmp.AUDIO, 1, 0, AAC_HEADER))
    assert sink.events == [("started", c.proto.publisher_id, None), ("audio", 0, AAC_HEADER)]


@pytest.mark.parametrize("registered", [None, "play"])
def test_publish_bad_name(server: Server, registered: str | None) -> None:
    if registered:
        server.registry.add("thekey", registered)  # type: ignore[arg-type]
    c = server.connect()
    c.start_publish("thekey")
    got = [describe(m) for m in c.messages()]
    assert got[-1] == ("onStatus", "NetStream.Publish.BadName")
    assert c.closed
    reason = "wrong_direction" if registered else "unknown_key"
    assert f'mpb2bua_rtmp_refused_total{{reason="{reason}"}} 1' in server.metric("mpb2bua_rtmp_refused")
    c.send(Message(rtmp.AUDIO, 1, 0, AAC_HEADER))  # ignored after the refusal
    assert c.messages() == []


def test_wrong_app_is_rejected(server: Server) -> None:
    c = server.connect()
    c.hello(app="live")
    assert [describe(m) for m in c.messages()] == [("_error", "NetConnection.Connect.Rejected")]
    assert c.closed


@pytest.mark.parametrize("app,expected", [("mp", "mp"), ("mp/", "mp"), ("mp?vhost=x", "mp"), ("/mp/", "mp")])
def test_normalise_app(app: str, expected: str) -> None:
    assert normalise_app(app) == expected


def test_stream_name_key() -> None:
    assert stream_name_key("abc?x=1") == "abc" and stream_name_key("abc") == "abc"


def test_second_publisher_refused_while_live_then_takes_over_when_silent(server: Server) -> None:
    sink = Sink()
    server.registry.add("upkey", "publish", sink)
    first = server.connect()
    first.start_publish("upkey")
    first.send(Message(rtmp.AUDIO, 1, 0, AAC_HEADER))
    server.clock.advance(1.0)
    first.send(Message(rtmp.AUDIO, 1, 1000, b"\xaf\x01a"))
    server.clock.advance(2.0)
    second = server.connect()
    second.start_publish("upkey")
    assert [describe(m) for m in second.messages()][-1] == ("onStatus", "NetStream.Publish.BadName")
    assert second.closed and not first.closed
    assert 'reason="busy"' in server.metric("mpb2bua_rtmp_refused")
    # The first pusher's network goes away: nothing more from it. A reconnect takes over.
    server.clock.advance(3.5)
    third = server.connect()
    third.start_publish("upkey")
    assert ("onStatus", "NetStream.Publish.Start") in [describe(m) for m in third.messages()]
    assert first.closed and not third.closed
    third.send(Message(rtmp.AUDIO, 1, 0, AAC_HEADER))
    first.proto.connectionLost()  # the aborted connection goes; the new publisher is unaffected
    third.send(Message(rtmp.AUDIO, 1, 23, b"\xaf\x01b"))
    assert sink.events == [
        ("started", first.proto.publisher_id, None),
        ("audio", 0, AAC_HEADER),
        ("audio", 1000, b"\xaf\x01a"),
        ("stopped", "replaced"),
        ("started", third.proto.publisher_id, None),
        ("audio", 0, AAC_HEADER),
        ("audio", 23, b"\xaf\x01b"),
    ]
    assert "mpb2bua_rtmp_publishers 1" in server.metric("mpb2bua_rtmp_publishers")


def test_publisher_disconnect_and_remove(server: Server) -> None:
    sink = Sink()
    server.registry.add("upkey", "publish", sink)
    c = server.connect()
    c.start_publish("upkey")
    c.send(Message(rtmp.AUDIO, 1, 0, AAC_HEADER))
    c.proto.connectionLost()
    assert sink.events[-1] == ("stopped", "disconnected")
    c2 = server.connect()
    c2.start_publish("upkey")  # the key is free again
    c2.send(Message(rtmp.VIDEO, 1, 0, AVC_HEADER))
    server.registry.remove("upkey")  # the call ended: the pusher is dropped, no callback
    assert c2.closed and sink.events[-1] == ("video", 0, AVC_HEADER)


def test_sink_failure_does_not_close_the_publisher(server: Server) -> None:
    sink = Sink()

    def broken(ts: int, payload: bytes) -> None:
        raise RuntimeError("bridge bug")

    sink.audio = broken  # type: ignore[method-assign]
    server.registry.add("upkey", "publish", sink)
    c = server.connect()
    c.start_publish("upkey")
    c.send(Message(rtmp.AUDIO, 1, 0, AAC_HEADER), Message(rtmp.VIDEO, 1, 0, AVC_HEADER))
    assert not c.closed and sink.events[-1] == ("video", 0, AVC_HEADER)


def test_media_from_a_non_publisher_is_ignored(server: Server) -> None:
    c = server.connect()
    c.hello()
    c.send(
        Message(rtmp.AUDIO, 1, 0, AAC_HEADER),
        rtmp.data_message("@setDataFrame", "onMetaData", {}, stream_id=1),
    )
    assert not c.closed


def test_metadata_later_than_media_is_kept(server: Server) -> None:
    sink = Sink()
    server.registry.add("upkey", "publish", sink)
    c = server.connect()
    c.start_publish("upkey")
    c.send(rtmp.data_message("onMetaData", amf0.EcmaArray(width=320.0), stream_id=1))
    c.send(rtmp.data_message("@setDataFrame", "onMetaData", amf0.EcmaArray(width=640.0), stream_id=1))
    assert sink.events == [("started", c.proto.publisher_id, {"width": 320.0})]


# --- playing ---------------------------------------------------------------------------------------------


def test_ffmpeg_play_gets_headers_first(server: Server) -> None:
    source = Source()
    group = server.registry.add("downkey", "play", source).group
    assert group is not None
    group.set_audio_header(AAC_HEADER, 0)
    group.set_video_header(AVC_HEADER, 0)
    group.send_video(1000, KEY, True)
    group.send_video(1066, INTER, False)
    group.send_audio(1070, b"\xaf\x01A")
    c = server.connect()
    c.feed(fixture("ffmpeg_play.bin"))
    got = [describe(m) for m in c.messages()]
    assert got == [
        ("ctl", rtmp.WINDOW_ACK_SIZE, 2_500_000),
        ("ctl", rtmp.SET_PEER_BANDWIDTH, 2_500_000),
        ("ctl", rtmp.SET_CHUNK_SIZE, 4096),
        ("_result", "NetConnection.Connect.Success"),
        ("_result",),  # createStream
        ("_result",),  # getStreamLength
        ("uc", rtmp.STREAM_BEGIN, 1),
        ("onStatus", "NetStream.Play.Reset"),
        ("onStatus", "NetStream.Play.Start"),
        ("|RtmpSampleAccess",),
        ("onMetaData",),
        (rtmp.AUDIO, 1070, AAC_HEADER),
        (rtmp.VIDEO, 1000, AVC_HEADER),
        (rtmp.VIDEO, 1000, KEY),
        (rtmp.VIDEO, 1066, INTER),
    ]
    assert source.events == [("joined", c.proto.player_id)]
    meta = [rtmp.parse_command(m) for m in c.reader.feed(b"")]  # nothing buffered
    assert meta == []
    group.send_audio(1093, b"\xaf\x01B")
    group.send_video(1133, INTER, False)
    assert [describe(m) for m in c.messages()] == [(8, 1093, b"\xaf\x01B"), (9, 1133, INTER)]
    assert "mpb2bua_rtmp_players 1" in server.metric("mpb2bua_rtmp_players")
    c.proto.connectionLost()
    assert source.events[-1] == ("left", c.proto.player_id, "disconnected")
    assert "mpb2bua_rtmp_players 0" in server.metric("mpb2bua_rtmp_players")


def test_play_metadata(server: Server) -> None:
    group = server.registry.add("down", "play").group
    assert group is not None
    group.set_audio_header(AAC_HEADER)
    c = server.connect()
    c.start_play("down")
    (meta,) = [rtmp.parse_command(m) for m in c.messages() if m.type_id == rtmp.DATA_AMF0][1:]
    assert meta.name == "onMetaData" and meta.args == [{"audiocodecid": 10.0}]
    group.set_metadata({"audiocodecid": 10.0, "audiosamplerate": 44100.0})
    c2 = server.connect()
    c2.start_play("down")
    (meta,) = [rtmp.parse_command(m) for m in c2.messages() if m.type_id == rtmp.DATA_AMF0][1:]
    assert meta.args[0]["audiosamplerate"] == 44100.0


def test_player_joining_mid_gop_without_cache_waits_for_keyframe(server: Server) -> None:
    server.registry.add("down", "play")
    group = server.registry.group("down")
    assert group is not None
    group.send_video(0, INTER, False)  # no keyframe yet: nothing cached
    c = server.connect()
    c.start_play("down")
    c.messages()
    group.send_video(66, INTER, False)
    group.send_video(133, KEY, True)
    group.send_video(200, INTER, False)
    assert [describe(m) for m in c.messages()] == [(9, 133, KEY), (9, 200, INTER)]
    assert c.proto.video_dropped == 1


def test_play_unknown_key(server: Server) -> None:
    server.registry.add("upkey", "publish", Sink())
    for key in ("nope", "upkey"):
        c = server.connect()
        c.start_play(key)
        assert [describe(m) for m in c.messages()][-1] == ("onStatus", "NetStream.Play.StreamNotFound")
        assert c.closed


def test_end_sends_eof_and_closes(server: Server) -> None:
    source = Source()
    server.registry.add("down", "play", source)
    c = server.connect()
    c.start_play("down")
    c.messages()
    server.registry.remove("down")
    assert [describe(m) for m in c.messages()] == [
        ("onStatus", "NetStream.Play.UnpublishNotify"),
        ("uc", rtmp.STREAM_EOF, 1),
    ]
    assert c.closed
    c.proto.connectionLost()
    assert source.events == [("joined", c.proto.player_id)]  # no "left" for what the owner did


def test_delete_stream_stops_playing(server: Server) -> None:
    source = Source()
    server.registry.add("down", "play", source)
    c = server.connect()
    c.start_play("down")
    c.command("deleteStream", 0.0, None, 1.0)
    assert source.events[-1] == ("left", c.proto.player_id, "stopped")
    assert not c.closed
    server.clock.advance(15.1)  # back to idle: the idle timeout applies again
    assert c.closed


def test_one_stream_per_connection(server: Server) -> None:
    server.registry.add("down", "play")
    server.registry.add("down2", "play")
    c = server.connect()
    c.start_play("down")
    c.command("play", 0.0, None, "down2", stream_id=1)
    assert [describe(m) for m in c.messages()][-1] == ("onStatus", "NetStream.Play.StreamNotFound")
    assert c.closed


# --- slow players ------------------------------------------------------------------------------------


def test_slow_player_drops_video_until_keyframe_and_keeps_audio(server: Server) -> None:
    server.registry.add("down", "play")
    group = server.registry.group("down")
    assert group is not None
    c = server.connect()
    c.start_play("down")
    group.send_video(0, KEY, True)
    c.messages()
    assert c.transport.producer is c.proto and c.transport.streaming
    c.proto.pauseProducing()  # the socket stopped draining
    group.send_video(66, INTER, False)
    group.send_audio(70, b"\xaf\x01a")
    server.clock.advance(1)
    c.proto.resumeProducing()
    group.send_video(133, INTER, False)  # still dropped: it refers to frames the player missed
    group.send_video(200, KEY, True)
    group.send_video(266, INTER, False)
    assert [describe(m) for m in c.messages()] == [(8, 70, b"\xaf\x01a"), (9, 200, KEY), (9, 266, INTER)]
    assert c.proto.video_dropped == 2 and not c.closed


def test_stuck_player_is_closed(server: Server) -> None:
    source = Source()
    server.registry.add("down", "play", source)
    group = server.registry.group("down")
    assert group is not None
    c, other = server.connect(), server.connect()
    c.start_play("down")
    other.start_play("down")
    c.proto.pauseProducing()
    for i in range(50):
        server.clock.advance(0.1)
        group.send_audio(i * 100, b"\xaf\x01" + bytes(300))
    assert not c.closed
    server.clock.advance(0.1)
    group.send_audio(5100, b"\xaf\x01" + bytes(300))  # paused for more than 5 s
    assert c.closed and not other.closed
    assert ("left", c.proto.player_id, "slow") in source.events
    assert group.players == (other.proto,)
    assert 'reason="slow_player"' in server.metric("mpb2bua_rtmp_refused")


def test_player_far_behind_is_closed(server: Server) -> None:
    server = Server(max_backlog=10_000)
    server.registry.add("down", "play")
    group = server.registry.group("down")
    assert group is not None
    c = server.connect()
    c.start_play("down")
    c.proto.pauseProducing()
    before = len(c.transport.value())
    for i in range(100):
        group.send_audio(i, b"\xaf\x01" + bytes(1000))
    assert c.closed
    assert len(c.transport.value()) - before < 12_000  # bounded


# --- control messages, acknowledgements, timeouts ---------------------------------------------------


def test_ping_and_acknowledgement() -> None:
    server = Server(window_ack_size=5000)
    server.registry.add("upkey", "publish", Sink())
    c = server.connect()
    c.start_publish("upkey")
    c.messages()
    c.send(rtmp.ping_request(1234))
    assert [describe(m) for m in c.messages()] == [("uc", rtmp.PING_RESPONSE, 1234)]
    for i in range(20):
        c.send(Message(rtmp.AUDIO, 1, i * 23, b"\xaf\x01" + bytes(400)))
    acks = [describe(m) for m in c.messages()]
    total = c.proto.bytes_received
    assert total > 10_000 and len(acks) == total // 5000
    assert all(a[:2] == ("ctl", rtmp.ACKNOWLEDGEMENT) for a in acks)
    sequence = [0] + [a[2] for a in acks]  # bytes received so far, handshake included
    assert all(b - a >= 5000 for a, b in zip(sequence, sequence[1:], strict=False))
    assert total - sequence[-1] < 5000
    c.send(rtmp.window_ack_size(100_000))  # the peer's window wins
    for i in range(20):
        c.send(Message(rtmp.AUDIO, 1, 500 + i * 23, b"\xaf\x01" + bytes(400)))
    assert c.messages() == []


def test_handshake_timeout(server: Server) -> None:
    c = server.connect()
    c.feed(b"\x03" + bytes(100))
    server.clock.advance(4.9)
    assert not c.closed
    server.clock.advance(0.2)
    assert c.closed
    assert 'reason="handshake_timeout"' in server.metric("mpb2bua_rtmp_refused")


def test_idle_timeout_and_publish_cancels_it(server: Server) -> None:
    server.registry.add("upkey", "publish", Sink())
    idle, busy = server.connect(), server.connect()
    idle.hello()
    busy.start_publish("upkey")
    server.clock.advance(15.1)
    assert idle.closed and not busy.closed
    server.clock.advance(600)
    assert not busy.closed
    assert server.clock.getDelayedCalls() == []


# --- bad input --------------------------------------------------------------------------------------


def chunked(*messages: Message, chunk_size: int = 128) -> bytes:
    w = ChunkWriter(chunk_size)
    return b"".join(w.write(m) for m in messages)


def _amf_garbage() -> bytes:
    return chunked(Message(rtmp.COMMAND_AMF0, 0, 0, b"\x02\x00\x05pub\xff\xff"))


BAD_INPUTS = {
    "rtmpe": (b"\x06" + bytes(1536), False),
    "http": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(2000), False),
    "fmt3 first": (CLIENT_HELLO + b"\xc3" + bytes(200), False),
    "absurd chunk size": (CLIENT_HELLO + chunked(Message(1, 0, 0, b"\x7f\xff\xff\xff")), False),
    "chunk size 0": (CLIENT_HELLO + chunked(Message(1, 0, 0, b"\x00\x00\x00\x00")), False),
    "huge message": (CLIENT_HELLO + b"\x03\x00\x00\x00\xff\xff\xff\x14\x00\x00\x00\x00", False),
    "bad amf": (CLIENT_HELLO + _amf_garbage(), False),
    "not connect first": (CLIENT_HELLO + chunked(rtmp.command_message("play", 0.0, None, "k")), False),
    "connect without object": (CLIENT_HELLO + chunked(rtmp.command_message("connect", 1.0, None)), False),
    "connect app number": (CLIENT_HELLO + chunked(rtmp.command_message("connect", 1.0, {"app": 3.0})), False),
    "publish number": (chunked(rtmp.command_message("publish", 0.0, None, 5.0, stream_id=1)), True),
    "publish no name": (chunked(rtmp.command_message("publish", 0.0, None, stream_id=1)), True),
    "second connect": (chunked(rtmp.command_message("connect", 1.0, {"app": "mp"})), True),
    "short user control": (chunked(Message(rtmp.USER_CONTROL, 0, 0, b"\x00\x06\x00")), True),
    "short window": (chunked(Message(rtmp.WINDOW_ACK_SIZE, 0, 0, b"\x00")), True),
    "amf3 command": (chunked(Message(rtmp.COMMAND_AMF3, 0, 0, b"\x11\x06\x03")), True),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_closes_only_that_connection(server: Server, name: str) -> None:
    sink = Sink()
    server.registry.add("upkey", "publish", sink)
    good = server.connect()
    good.start_publish("upkey")
    data, after_connect = BAD_INPUTS[name]
    bad = server.connect()
    if after_connect:
        bad.hello()
    bad.feed(data)
    assert bad.closed, name
    bad.feed(data)  # more after closing: ignored
    good.send(Message(rtmp.AUDIO, 1, 0, AAC_HEADER))
    assert not good.closed and sink.events[-1] == ("audio", 0, AAC_HEADER)
    assert 'reason="bad_input"' in server.metric("mpb2bua_rtmp_refused")


def test_bad_input_while_publishing_stops_the_publisher(server: Server) -> None:
    sink = Sink()
    server.registry.add("upkey", "publish", sink)
    c = server.connect()
    c.start_publish("upkey")
    c.send(Message(rtmp.AUDIO, 1, 0, AAC_HEADER))
    c.feed(_amf_garbage())
    assert c.closed and sink.events[-1] == ("stopped", "error")
    c.proto.connectionLost()
    assert sink.events[-1] == ("stopped", "error") and len(sink.events) == 3


@pytest.mark.parametrize("seed", range(20))
def test_random_garbage_never_raises(server: Server, seed: int) -> None:
    rng = random.Random(seed)
    c = server.connect()
    c.hello()
    for _ in range(50):
        c.feed(rng.randbytes(rng.randrange(1, 300)))
    c.proto.connectionLost()
    assert "mpb2bua_rtmp_connections 0" in server.metric("mpb2bua_rtmp_connections")


def test_unknown_commands(server: Server) -> None:
    c = server.connect()
    c.hello()
    c.messages()
    c.command("someCall", 5.0, None)
    c.command("someNotification", 0.0, None)
    c.command("receiveAudio", 0.0, None, True)
    c.send(Message(rtmp.AGGREGATE, 1, 0, b"xx"), Message(rtmp.ACKNOWLEDGEMENT, 0, 0, b"\x00\x00\x00\x01"))
    assert [describe(m) for m in c.messages()] == [("_error", "NetConnection.Call.Failed")]
    assert not c.closed


def test_log_limiter() -> None:
    clock = MemoryReactorClock()
    limiter = LogLimiter(clock, burst=3, period=3.0)
    assert [limiter.allow() for _ in range(5)] == [True, True, True, False, False]
    clock.advance(1.0)
    assert limiter.allow() and not limiter.allow()
    assert limiter.suppressed == 3


def test_factory_without_metrics() -> None:
    clock = MemoryReactorClock()
    factory = RtmpServerFactory(StreamRegistry(clock), app="/mp/", reactor=clock)
    assert factory.app == "mp"
    c = Conn(factory, 1)
    c.hello()
    c.proto.connectionLost()


# --- send_now: straight to the socket when nothing is queued ---------------------------------------


class SocketTransport:
    """What send_now reads of a twisted.internet.tcp.Connection, over a real socketpair."""

    TLS = False
    connected = 1
    disconnecting = False

    def __init__(self, sock) -> None:
        self.socket = sock
        self.dataBuffer = b""
        self._tempDataBuffer: list[bytes] = []
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self._tempDataBuffer.append(data)


def test_send_now_goes_to_the_socket_and_keeps_order_behind_a_queue() -> None:
    import socket

    from b2bua.rtmp.protocol import send_now

    ours, peer = socket.socketpair()
    ours.setblocking(False)
    try:
        t = SocketTransport(ours)
        send_now(t, b"first")
        assert peer.recv(100) == b"first" and t.written == []
        t._tempDataBuffer.append(b"queued")  # something waits in Twisted's buffer:
        send_now(t, b"second")  # ...so this one must queue behind it
        assert t.written == [b"second"]
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.recv(100)
        # a send the kernel takes only in part: the rest is queued, nothing lost or reordered
        t2 = SocketTransport(ours)
        big = bytes(range(256)) * 40_000
        send_now(t2, big)
        assert len(t2.written) == 1 and big.endswith(t2.written[0]) and len(t2.written[0]) < len(big)
        t2.TLS = True
        t2._tempDataBuffer.clear()
        send_now(t2, b"tls")  # TLS connections always go through Twisted
        assert t2.written[-1] == b"tls"
    finally:
        ours.close()
        peer.close()
    st = StringTransport()  # no socket at all (tests, other transports)
    send_now(st, b"x")
    assert st.value() == b"x"


# --- memory and connection limits (issue 12) ----------------------------------------------------------


def _partial(streams: int, length: int, chunk_size: int, chunks: int) -> bytes:
    """Set Chunk Size, then partial messages on ``streams`` chunk streams (issue 12's probe)."""
    data = chunked(rtmp.set_chunk_size(chunk_size))
    for i in range(chunks):
        for s in range(streams):
            csid = 4 + s
            if i == 0:
                lt = (length << 8 | 9).to_bytes(4, "big")
                header = bytes((csid,)) + b"\x00\x00\x00" + lt + b"\x01\0\0\0"
            else:
                header = bytes((0xC0 | csid,))
            data += header + b"z" * chunk_size
    return data


def test_chunk_size_below_128_closes_the_connection(server: Server) -> None:
    c = server.connect()
    c.feed(CLIENT_HELLO + _partial(streams=24, length=100_000, chunk_size=2, chunks=10))
    assert c.closed and c.proto._reader is not None
    assert c.proto._reader.reserved == 0
    assert 'reason="bad_input"' in server.metric("mpb2bua_rtmp_refused")


def test_partial_messages_before_publish_are_bounded(server: Server) -> None:
    """The probe of issue 12 at the allowed chunk size: partial messages on 24 chunk streams
    before connect. The connection is closed once 64 KiB would be held."""
    c = server.connect()
    data = CLIENT_HELLO + _partial(streams=23, length=60_000, chunk_size=128, chunks=100)
    sent = 0
    for i in range(0, len(data), 4096):
        c.feed(data[i : i + 4096])
        sent = i
        reader = c.proto._reader
        assert reader is None or reader.reserved + reader.buffered <= 2 * 64 * 1024
        if c.closed:
            break
    assert c.closed and sent < 20_000
    assert 'mpb2bua_rtmp_refused_total{reason="buffer_limit"} 1' in server.metric("mpb2bua_rtmp_refused")
    assert server.clock.getDelayedCalls() == []  # nothing left armed for it


def test_big_message_before_publish_is_refused(server: Server) -> None:
    c = server.connect()
    c.hello()
    c.send(Message(rtmp.VIDEO, 1, 0, bytes(70_000)))
    assert c.closed


def test_publisher_limits_apply_from_the_accepted_publish(server: Server) -> None:
    """A keyframe pipelined right behind `publish` is read under the publisher's limits."""
    sink = Sink()
    server.registry.add("upkey", "publish", sink)
    c = server.connect()
    c.hello()
    c.command("createStream", 2.0, None)
    key = b"\x17\x01\x00\x00\x00" + bytes(300_000)
    c.send(
        rtmp.command_message("publish", 0.0, None, "upkey", "live", stream_id=1),
        Message(rtmp.AUDIO, 1, 0, AAC_HEADER),
        Message(rtmp.VIDEO, 1, 0, key),
    )
    assert not c.closed
    assert [e[0] for e in sink.events] == ["started", "audio", "video"] and sink.events[2][2] == key
    # once the stream stops, the anonymous limits are back
    c.command("deleteStream", 0.0, None, 1.0)
    c.send(Message(rtmp.VIDEO, 1, 0, key))
    assert c.closed


def test_every_refused_key_gets_the_same_answer(server: Server) -> None:
    """Unknown key, key of the other direction, ended call, busy key: one code and one text per
    command, so that a client cannot learn whether a key exists."""
    server.registry.add("pubkey", "publish", Sink())
    server.registry.add("playkey", "play")
    server.registry.add("ended", "play")
    group = server.registry.group("ended")
    assert group is not None
    group.end()
    live = server.connect()
    live.start_publish("pubkey")
    live.send(Message(rtmp.AUDIO, 1, 0, AAC_HEADER))

    def answer(c: Conn) -> tuple[str, str]:
        last = [m for m in c.messages() if m.type_id == rtmp.COMMAND_AMF0][-1]
        info = rtmp.parse_command(last).args[0]
        assert c.closed
        return info["code"], info["description"]

    published, played = set(), set()
    for key in ("nosuchkey", "playkey", "pubkey"):
        c = server.connect()
        c.start_publish(key)
        published.add(answer(c))
    for key in ("nosuchkey", "pubkey", "ended"):
        c = server.connect()
        c.start_play(key)
        played.add(answer(c))
    assert published == {("NetStream.Publish.BadName", "Stream key not accepted.")}
    assert played == {("NetStream.Play.StreamNotFound", "Stream key not accepted.")}
    text = server.metric("mpb2bua_rtmp_refused")
    for reason in ("unknown_key", "wrong_direction", "busy", "ended"):
        assert f'reason="{reason}"' in text  # the operator still sees why


def test_connection_caps() -> None:
    server = Server(max_connections=3, max_connections_per_address=2)
    f = server.factory
    a1 = f.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
    a2 = f.buildProtocol(IPv4Address("TCP", "10.0.0.1", 2))
    assert a1 is not None and a2 is not None
    a1.makeConnection(StringTransport())
    a2.makeConnection(StringTransport())
    assert f.buildProtocol(IPv4Address("TCP", "10.0.0.1", 3)) is None  # per address
    b1 = f.buildProtocol(IPv4Address("TCP", "10.0.0.2", 1))
    assert b1 is not None
    b1.makeConnection(StringTransport())
    assert f.buildProtocol(IPv4Address("TCP", "10.0.0.3", 1)) is None  # in total
    text = server.metric("mpb2bua_rtmp_refused")
    assert 'reason="too_many_from_address"} 1' in text and 'reason="too_many_connections"} 1' in text
    a1.connectionLost()
    a1.connectionLost()  # counted once
    assert f.per_address == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert f.buildProtocol(IPv4Address("TCP", "10.0.0.1", 4)) is not None
