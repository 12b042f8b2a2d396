"""Video from the far end that no AVC record can describe is dropped and counted, not raised."""

from __future__ import annotations

from types import SimpleNamespace

from tests.media.test_bridge import make


class VideoPlayers:
    def __init__(self) -> None:
        self.headers: list[bytes] = []
        self.video: list[tuple[int, bytes, bool]] = []

    def set_video_header(self, payload: bytes) -> None:
        self.headers.append(payload)

    def send_video(self, ts: int, payload: bytes, keyframe: bool) -> None:
        self.video.append((ts, payload, keyframe))


def unit(*nalus: bytes) -> SimpleNamespace:
    return SimpleNamespace(nalus=list(nalus), timestamp=0, damaged=False)


SPS = b"\x67\x42\xc0\x1e\x8c\x8d\x40\x50"
PPS = b"\x68\xce\x3c\x80"
IDR = b"\x65\x88\x84\x00"


def test_parameter_sets_no_record_can_hold_are_dropped_and_counted():
    bridge, *_ = make()
    players = VideoPlayers()
    bridge.players = players
    bad = bridge.stats.rtp_bad
    bridge._video_to_players(unit(b"\x67", PPS, IDR))  # a 1-byte SPS
    bridge._video_to_players(unit(*([SPS] * 32), PPS, IDR))  # more SPS than a record holds
    assert bridge.stats.rtp_bad == bad + 2
    assert players.headers == [] and players.video == []
    bridge._video_to_players(unit(SPS, PPS, IDR))  # good parameter sets still work after
    assert len(players.headers) == 1 and len(players.video) == 1 and players.video[0][2]
