"""b2bua.rtmp.streams: the stream key registry, publisher takeover and the player fan-out."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from b2bua.rtmp.streams import (
    BUSY,
    ENDED,
    UNKNOWN_KEY,
    WRONG_DIRECTION,
    PlayerGroup,
    StreamRefused,
    StreamRegistry,
    key_prefix,
)

AAC_HEADER = b"\xaf\x00\x12\x08"
AAC_HEADER_2 = b"\xaf\x00\x11\x90"
AVC_HEADER = b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f"
KEY = b"\x17\x01\x00\x00\x00KEY"
INTER = b"\x27\x01\x00\x00\x00P"


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def publisher_started(self, publisher_id: str, metadata: dict | None) -> None:
        self.events.append(("started", publisher_id, metadata))

    def audio(self, timestamp_ms: int, payload: bytes) -> None:
        self.events.append(("audio", timestamp_ms, payload))

    def video(self, timestamp_ms: int, payload: bytes) -> None:
        self.events.append(("video", timestamp_ms, payload))

    def publisher_stopped(self, reason: str) -> None:
        self.events.append(("stopped", reason))


class FakePublisher:
    def __init__(self, publisher_id: str, last_received: float = 0.0) -> None:
        self.publisher_id = publisher_id
        self.last_received = last_received
        self.kicked: list[str] = []

    def kick(self, reason: str) -> None:
        self.kicked.append(reason)


class FakePlayer:
    def __init__(self, player_id: str = "p1") -> None:
        self.player_id = player_id
        self.got: list[tuple[Any, ...]] = []
        self.ended: str | None = None

    def send_config(self, type_id: int, timestamp_ms: int, payload: bytes) -> None:
        self.got.append(("config", type_id, timestamp_ms, payload))

    def send_audio(self, timestamp_ms: int, payload: bytes) -> None:
        self.got.append(("audio", timestamp_ms, payload))

    def send_video(self, timestamp_ms: int, payload: bytes, keyframe: bool) -> None:
        self.got.append(("video", timestamp_ms, payload, keyframe))

    def end(self, reason: str) -> None:
        self.ended = reason


class Source:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def player_joined(self, player_id: str) -> None:
        self.events.append(("joined", player_id))

    def player_left(self, player_id: str, reason: str) -> None:
        self.events.append(("left", player_id, reason))


def test_add_lookup_remove() -> None:
    reg = StreamRegistry(Clock())
    sink = Sink()
    up = reg.add("up-key-123", "publish", sink)
    down = reg.add("down-key-456", "play")
    assert reg.lookup("up-key-123", "publish") is up and up.sink is sink and up.group is None
    assert reg.lookup("up-key-123", "play") is None
    assert reg.lookup("down-key-456", "play") is down and isinstance(down.group, PlayerGroup)
    assert reg.group("down-key-456") is down.group and reg.group("up-key-123") is None
    assert reg.lookup("nope", "play") is None
    assert len(reg) == 2 and "up-key-123" in reg
    assert "up-key-123" not in repr(up) and "up-key" in repr(up)
    reg.remove("up-key-123")
    reg.remove("up-key-123")  # unknown: ignored
    assert reg.lookup("up-key-123", "publish") is None and len(reg) == 1


@pytest.mark.parametrize(
    "key,direction,sink,match",
    [
        ("", "play", None, "non-empty"),
        ("k", "record", None, "direction"),
        ("k", "publish", None, "needs a sink"),
    ],
)
def test_add_validates(key: str, direction: Any, sink: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StreamRegistry(Clock()).add(key, direction, sink)


def test_add_twice_refused() -> None:
    reg = StreamRegistry(Clock())
    reg.add("k", "play")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("k", "publish", Sink())


def test_key_prefix_hides_the_key() -> None:
    assert key_prefix("abcdefghijkl") == "abcdef…"


def test_publish_refusals() -> None:
    reg = StreamRegistry(Clock())
    reg.add("down", "play")
    with pytest.raises(StreamRefused) as e:
        reg.publish("nope", FakePublisher("a"))
    assert e.value.reason == UNKNOWN_KEY
    with pytest.raises(StreamRefused) as e:
        reg.publish("down", FakePublisher("a"))
    assert e.value.reason == WRONG_DIRECTION
    reg.add("up", "publish", Sink())
    with pytest.raises(StreamRefused) as e:
        reg.play("up")
    assert e.value.reason == WRONG_DIRECTION


def test_publication_pairs_started_and_stopped() -> None:
    clock = Clock()
    reg = StreamRegistry(clock)
    sink = Sink()
    reg.add("up", "publish", sink)
    pub = reg.publish("up", FakePublisher("a"))
    pub.stop("disconnected")  # never started: the sink hears nothing
    assert sink.events == []
    pub = reg.publish("up", FakePublisher("b"))
    pub.metadata = {"audiocodecid": 10.0}
    assert pub.start() is sink and pub.start() is sink
    pub.stop("unpublished")
    pub.stop("disconnected")
    assert sink.events == [("started", "b", {"audiocodecid": 10.0}), ("stopped", "unpublished")]
    assert reg.lookup("up", "publish").publication is None  # type: ignore[union-attr]


def test_second_publisher_refused_while_first_is_live_then_takes_over() -> None:
    clock = Clock()
    reg = StreamRegistry(clock, takeover_after=3.0)
    sink = Sink()
    reg.add("up", "publish", sink)
    first = FakePublisher("first", last_received=0.0)
    pub1 = reg.publish("up", first)
    pub1.start()
    clock.advance(2.9)
    with pytest.raises(StreamRefused) as e:
        reg.publish("up", FakePublisher("second", last_received=2.9))
    assert e.value.reason == BUSY and first.kicked == []
    first.last_received = 2.9  # still sending
    clock.advance(2.9)
    with pytest.raises(StreamRefused):
        reg.publish("up", FakePublisher("second"))
    clock.advance(0.2)  # silent for 3.1 s: a reconnect takes over
    second = FakePublisher("second", last_received=clock.seconds())
    pub2 = reg.publish("up", second)
    assert first.kicked == ["replaced"] and pub1.stopped
    assert sink.events == [("started", "first", None), ("stopped", "replaced")]
    pub2.start()
    pub1.stop("disconnected")  # the old connection's late connectionLost changes nothing
    assert sink.events[-1] == ("started", "second", None)
    assert reg.lookup("up", "publish").publication is pub2  # type: ignore[union-attr]


def test_remove_kicks_publisher_and_ends_players_without_callbacks() -> None:
    reg = StreamRegistry(Clock())
    sink, source = Sink(), Source()
    reg.add("up", "publish", sink)
    reg.add("down", "play", source)
    publisher = FakePublisher("a")
    reg.publish("up", publisher).start()
    group = reg.play("down")
    player = FakePlayer()
    group.attach(player)
    reg.remove("up")
    reg.remove("down")
    assert publisher.kicked == ["removed"]
    assert sink.events == [("started", "a", None)]
    assert player.ended == "removed" and group.ended and group.players == ()
    group.detach(player, "disconnected")
    assert source.events == [("joined", "p1")]
    with pytest.raises(StreamRefused) as e:
        group.attach(FakePlayer("late"))
    assert e.value.reason == ENDED


def test_play_of_an_ended_group_is_refused() -> None:
    reg = StreamRegistry(Clock())
    reg.add("down", "play")
    reg.play("down").end()
    with pytest.raises(StreamRefused) as e:
        reg.play("down")
    assert e.value.reason == ENDED


def test_late_joiner_gets_headers_then_gop_then_live() -> None:
    group = PlayerGroup("down")
    group.send_audio(0, AAC_HEADER)  # recognised as the sequence header
    group.send_video(0, AVC_HEADER, True)
    assert group.audio_header == AAC_HEADER and group.video_header == AVC_HEADER
    group.send_video(1000, INTER, False)  # before any keyframe: not cached
    assert group.cached_keyframe is None
    group.send_video(1066, KEY, True)
    group.send_audio(1070, b"\xaf\x01A")
    group.send_video(1133, INTER, False)
    group.send_audio(1093, b"\xaf\x01B")
    assert group.cached_keyframe == (1066, KEY)
    player = FakePlayer()
    group.attach(player)
    assert player.got == [
        ("config", 8, 1093, AAC_HEADER),
        ("config", 9, 1066, AVC_HEADER),
        ("video", 1066, KEY, True),
        ("video", 1133, INTER, False),
    ]
    group.send_audio(1116, b"\xaf\x01C")
    assert player.got[-1] == ("audio", 1116, b"\xaf\x01C")


def test_joiner_without_anything_gets_only_live() -> None:
    group = PlayerGroup("down")
    player = FakePlayer()
    group.attach(player)
    assert player.got == []
    group.set_audio_header(AAC_HEADER, 5)
    group.send_audio(10, b"\xaf\x01x")
    assert player.got == [("config", 8, 5, AAC_HEADER), ("audio", 10, b"\xaf\x01x")]


def test_changed_headers_are_resent_to_everyone() -> None:
    group = PlayerGroup("down")
    a, b = FakePlayer("a"), FakePlayer("b")
    group.attach(a)
    group.attach(b)
    group.set_audio_header(AAC_HEADER)
    group.set_audio_header(AAC_HEADER)  # unchanged: not re-sent
    group.send_audio(500, AAC_HEADER_2)
    for p in (a, b):
        assert p.got == [("config", 8, 0, AAC_HEADER), ("config", 8, 500, AAC_HEADER_2)]
    group.send_video(600, KEY, True)
    group.set_video_header(AVC_HEADER)  # new parameter sets: the cached GOP is obsolete
    assert group.cached_keyframe is None
    assert a.got[-1] == ("config", 9, 600, AVC_HEADER)


def test_gop_cache_is_bounded() -> None:
    group = PlayerGroup("down", gop_cache_bytes=100)
    group.send_video(0, KEY, True)
    for i in range(1, 20):
        group.send_video(i * 66, INTER * 3, False)
    assert group.cached_keyframe is None  # too big: late joiners wait for the next keyframe
    group.send_video(2000, KEY, True)
    assert group.cached_keyframe == (2000, KEY)


def test_player_callbacks_and_detach() -> None:
    joined: list[str] = []
    left: list[tuple[str, str]] = []
    group = PlayerGroup(
        "down", on_player_joined=joined.append, on_player_left=lambda p, r: left.append((p, r))
    )
    a, b = FakePlayer("a"), FakePlayer("b")
    group.attach(a)
    group.attach(b)
    group.detach(a, "disconnected")
    group.detach(a, "disconnected")  # twice: once only
    group.send_audio(1, b"\xaf\x01x")
    assert joined == ["a", "b"] and left == [("a", "disconnected")]
    assert a.got == [] and b.got == [("audio", 1, b"\xaf\x01x")]
    assert group.players == (b,)
    group.end()
    assert b.ended == "ended" and left == [("a", "disconnected")]


def test_failing_callbacks_are_contained() -> None:
    def boom(*args: Any) -> None:
        raise RuntimeError("bridge bug")

    group = PlayerGroup("down", on_player_joined=boom, on_player_left=boom)
    player = FakePlayer()
    group.attach(player)
    group.detach(player, "x")
    reg = StreamRegistry(Clock())
    sink = Sink()
    sink.publisher_started = boom  # type: ignore[method-assign]
    reg.add("up", "publish", sink)
    assert reg.publish("up", FakePublisher("a")).start() is sink
