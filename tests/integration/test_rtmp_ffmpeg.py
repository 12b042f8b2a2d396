"""The RTMP server against real FFmpeg publishers and players (the stand-ins for live-pusher and
live-player), listening in the test process. A test sink forwards what is published on one key to
the players of another, as the media bridge will; what comes out is measured (dominant frequency,
decoded video frames), never just "some bytes arrived"."""

from __future__ import annotations

import subprocess
import time
import wave
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from b2bua.metrics import Registry
from b2bua.rtmp import PlayerGroup, RtmpServerFactory, StreamRegistry
from tests.integration.helpers import wait_until
from tests.media.audio import dominant_frequency
from tests.peers import require_binary

pytestmark = pytest.mark.integration

TONE = 1000.0


class Forward:
    """A PublishSink that plays back to a PlayerGroup what it receives."""

    def __init__(self, group: PlayerGroup) -> None:
        self.group = group
        self.events: list[Any] = []
        self.audio_count = 0
        self.video_count = 0
        # FFmpeg as an audio-only RTMP player probes 5 s of media (analyzeduration) before it
        # outputs anything: its FLV demuxer only stops probing early once it has both an audio
        # and a video stream. A 4 s publication is therefore ended like a hangup would end it.
        self.end_on_unpublish = True

    def publisher_started(self, publisher_id: str, metadata: dict | None) -> None:
        self.events.append(("started", publisher_id, metadata))
        self.group.set_metadata(metadata)

    def audio(self, timestamp_ms: int, payload: bytes) -> None:
        self.audio_count += 1
        self.group.send_audio(timestamp_ms, payload)

    def video(self, timestamp_ms: int, payload: bytes) -> None:
        self.video_count += 1
        self.group.send_video(timestamp_ms, payload, payload[0] >> 4 == 1)

    def publisher_stopped(self, reason: str) -> None:
        self.events.append(("stopped", reason))
        if self.end_on_unpublish and reason == "unpublished":
            self.group.end()


class RtmpServer:
    def __init__(self) -> None:
        self.registry = StreamRegistry(reactor)
        self.metrics = Registry()
        self.factory = RtmpServerFactory(self.registry, app="mp", reactor=reactor, metrics=self.metrics)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.base = f"rtmp://127.0.0.1:{self.port.getHost().port}/mp"

    def bridge(self, push_key: str, play_key: str) -> Forward:
        group = self.registry.add(play_key, "play").group
        assert group is not None
        sink = Forward(group)
        self.registry.add(push_key, "publish", sink)
        return sink


@pytest.fixture
def ffmpeg() -> str:
    return require_binary("ffmpeg")


@pytest.fixture
def server():
    srv = RtmpServer()
    yield srv
    srv.port.stopListening()


@pytest.fixture
def run(tmp_path: Path, ffmpeg: str):
    """Start FFmpeg processes (never blocking the reactor); all are killed at teardown."""
    procs: list[tuple[subprocess.Popen, Path]] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen(
            [ffmpeg, "-hide_banner", "-nostdin", "-y", *args],
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        proc.log = log  # type: ignore[attr-defined]
        procs.append((proc, log))
        return proc

    yield start
    for proc, log in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        print(f"----- {log.name} (rc {proc.returncode}) -----\n{log.read_text(errors='replace')[-3000:]}")


def publish_args(url: str, *, video: bool = False, seconds: float = 4) -> list[str]:
    args = ["-re", "-f", "lavfi", "-i", f"sine=f={TONE:g}:sample_rate=44100"]
    if video:
        args += ["-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=15"]
        args += [
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-g",
            "15",
            "-pix_fmt",
            "yuv420p",
        ]
    return [*args, "-t", str(seconds), "-c:a", "aac", "-ar", "44100", "-f", "flv", url]


def exited(proc: subprocess.Popen):
    return lambda: proc.poll() is not None


@pytest_twisted.inlineCallbacks
def test_audio_round_trip_keeps_the_tone(server: RtmpServer, run, tmp_path: Path):
    sink = server.bridge("up-audio-key", "down-audio-key")
    out = tmp_path / "out.wav"
    player = run("player", "-i", f"{server.base}/down-audio-key", "-t", "3", "-vn", str(out))
    yield wait_until(lambda: server.metrics.render().count(b"mpb2bua_rtmp_players 1"), 10, what="player")
    publisher = run("publisher", *publish_args(f"{server.base}/up-audio-key"))
    yield wait_until(exited(publisher), 20, what="publisher exit")
    yield wait_until(exited(player), 15, what="player exit")
    assert publisher.returncode == 0 and player.returncode == 0
    assert sink.events[0][0] == "started" and sink.events[0][2]["audiocodecid"] == 10.0
    assert sink.events[-1] == ("stopped", "unpublished")
    assert sink.audio_count > 150  # 4 s of 1024-sample frames at 44.1 kHz, plus the header
    with wave.open(str(out)) as w:
        rate = w.getframerate()
        pcm = w.readframes(w.getnframes())
        assert w.getnchannels() == 1 and w.getnframes() >= 2.5 * rate
    freq = dominant_frequency(pcm, rate)
    assert abs(freq - TONE) <= 0.02 * TONE, freq


@pytest_twisted.inlineCallbacks
def test_video_reaches_a_late_player(server: RtmpServer, run, tmp_path: Path):
    sink = server.bridge("up-video-key", "down-video-key")
    publisher = run("publisher", *publish_args(f"{server.base}/up-video-key", video=True, seconds=6))
    yield wait_until(lambda: sink.video_count > 20, 15, what="video published")  # mid-GOP: the cache serves
    frames = tmp_path / "video.crc"
    player = run(
        "player", "-i", f"{server.base}/down-video-key", "-t", "2", "-an", "-f", "framecrc", str(frames)
    )
    yield wait_until(exited(player), 20, what="player exit")
    yield wait_until(exited(publisher), 20, what="publisher exit")
    assert player.returncode == 0 and publisher.returncode == 0
    decoded = [line for line in frames.read_text().splitlines() if line.startswith("0,")]
    assert len(decoded) >= 15, len(decoded)  # 2 s at 15 fps, allowing for the start
    log = player.log.read_text(errors="replace")  # type: ignore[attr-defined]
    assert "non-existing PPS" not in log and "no frame!" not in log


@pytest_twisted.inlineCallbacks
def test_wrong_key_fails_fast_and_others_keep_going(server: RtmpServer, run, tmp_path: Path):
    sink = server.bridge("good-key", "good-down")
    good = run("good", *publish_args(f"{server.base}/good-key", seconds=3))
    yield wait_until(lambda: sink.audio_count > 10, 10, what="good publisher")
    started = time.monotonic()
    bad = run("bad", *publish_args(f"{server.base}/not-a-key", seconds=3))
    yield wait_until(exited(bad), 10, what="bad publisher exit")
    assert bad.returncode != 0 and time.monotonic() - started < 3
    # a player of a key that does not exist fails too
    bad_player = run("bad_player", "-i", f"{server.base}/nope", "-t", "1", "-f", "null", "-")
    yield wait_until(exited(bad_player), 10, what="bad player exit")
    assert bad_player.returncode != 0
    before = sink.audio_count
    yield wait_until(exited(good), 10, what="good publisher exit")
    assert good.returncode == 0 and sink.audio_count > before
    assert sink.events[-1] == ("stopped", "unpublished") and len(sink.events) == 2
    text = server.metrics.render().decode()
    assert 'mpb2bua_rtmp_refused_total{reason="unknown_key"} 2' in text
