"""Minimal RTMP publisher and player clients (Twisted) on b2bua/wire/rtmp.py, for the load generator.

Client handshake (simple, non-digest): C0+C1 → S0+S1+S2 → C2 (= S1). Then Set Chunk Size 4096,
``connect {app}``, ``createStream``, then ``publish KEY live`` or ``play KEY``.

Publisher: sends the AAC sequence header, then pre-encoded raw AAC frames with exact
timestamps (frame i at i·1024/rate s), several frames per TCP write (``burst``) as live-pusher
does; the pacing loop lives in the caller (``due(now)`` / ``send_due(now)``).
Player: counts audio messages and records their arrival times (time.monotonic) for gap checks.
"""

from __future__ import annotations

import os
import time
from fractions import Fraction

from twisted.internet import defer, protocol, reactor

from b2bua.wire import flv, rtmp

AAC_FRAME = 1024


def encode_tone(
    seconds: float = 10.0, rate: int = 44100, freq: float = 1000.0, signal: str = "tone"
) -> tuple[bytes, list[bytes]]:
    """A 1 kHz tone (or, with ``signal="speech"``, a speech-like signal: two partials and noise
    under a 3 Hz envelope) encoded once with PyAV (AAC-LC mono): (AudioSpecificConfig, raw
    frames). A pure tone costs FFmpeg's AAC encoder about three times what speech does."""
    import av
    import numpy as np

    ctx = av.CodecContext.create("aac", "w")
    ctx.format, ctx.layout, ctx.sample_rate = "fltp", "mono", rate
    ctx.time_base = Fraction(1, rate)
    ctx.bit_rate = 64000
    ctx.open()
    n = int(seconds * rate) // AAC_FRAME * AAC_FRAME
    t = np.arange(n) / rate
    if signal == "speech":
        noise = np.random.default_rng(7).normal(0, 0.05, n)
        x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.15 * np.sin(2 * np.pi * 1300 * t) + noise)
        x = (x * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    else:
        x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    out: list[bytes] = []
    for start in range(0, n, AAC_FRAME):
        frame = av.AudioFrame.from_ndarray(x[None, start : start + AAC_FRAME], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        out += [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    return bytes(ctx.extradata), out


class _Client(protocol.Protocol):
    def __init__(self, app: str, key: str, tc_url: str) -> None:
        self.app, self.key, self.tc_url = app, key, tc_url
        self.writer = rtmp.ChunkWriter()
        self.reader: rtmp.ChunkReader | None = None
        self._hs = bytearray()
        self.sid = 1
        self.ready = defer.Deferred()
        self.closed = False
        self.error: str | None = None

    def connectionMade(self) -> None:  # noqa: N802
        c1 = int(time.monotonic() * 1000 % 2**32).to_bytes(4, "big") + b"\0\0\0\0" + os.urandom(1528)
        self.transport.write(b"\x03" + c1)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if self.reader is None:
            self._hs += data
            if len(self._hs) < 1 + 2 * rtmp.HANDSHAKE_SIZE:
                return
            s1 = bytes(self._hs[1 : 1 + rtmp.HANDSHAKE_SIZE])
            rest = bytes(self._hs[1 + 2 * rtmp.HANDSHAKE_SIZE :])
            self.reader = rtmp.ChunkReader()
            w = self.writer
            self.transport.write(
                s1
                + w.set_chunk_size(4096)
                + w.write(
                    rtmp.command_message(
                        "connect",
                        1.0,
                        {"app": self.app, "type": "nonprivate", "flashVer": "FMLE/3.0", "tcUrl": self.tc_url},
                    )
                )
                + w.write(rtmp.command_message("createStream", 2.0, None))
            )
            data = rest
            if not data:
                return
        for m in self.reader.feed(data):
            self.on_message(m)

    def on_message(self, m: rtmp.Message) -> None:
        if m.type_id == rtmp.COMMAND_AMF0:
            cmd = rtmp.parse_command(m)
            if cmd.name == "_result" and cmd.transaction_id == 2.0:
                self.sid = int(cmd.args[0]) if cmd.args else 1
                self.start_stream()
            elif cmd.name == "onStatus":
                info = cmd.args[0] if cmd.args else {}
                code = info.get("code", "") if isinstance(info, dict) else ""
                if code in ("NetStream.Publish.Start", "NetStream.Play.Start"):
                    if not self.ready.called:
                        self.ready.callback(self)
                elif info.get("level") == "error" and not self.ready.called:
                    self.error = code
                    self.ready.errback(ConnectionError(code))
            elif cmd.name == "_error" and not self.ready.called:
                self.ready.errback(ConnectionError(f"_error {cmd.args}"))

    def start_stream(self) -> None:
        raise NotImplementedError

    def connectionLost(self, reason=None) -> None:  # noqa: N802
        self.closed = True
        if not self.ready.called:
            self.ready.errback(ConnectionError(f"closed: {reason}"))


class Publisher(_Client):
    def __init__(self, app, key, tc_url, asc: bytes, frames: list[bytes], rate: int = 44100, burst: int = 2):
        super().__init__(app, key, tc_url)
        self.asc, self.frames, self.rate, self.burst = asc, frames, rate, burst
        self.sent = 0
        self.t0: float | None = None
        self.bytes_sent = 0

    def start_stream(self) -> None:
        self.transport.write(
            self.writer.write(
                rtmp.command_message("publish", 3.0, None, self.key, "live", stream_id=self.sid)
            )
        )

    def begin(self, now: float) -> None:
        self.t0 = now
        self.transport.write(self.writer.write(rtmp.Message(rtmp.AUDIO, self.sid, 0, b"\xaf\x00" + self.asc)))

    def send_due(self, now: float) -> int:
        """Send every frame whose time has come, once ``burst`` of them are due (one write)."""
        if self.t0 is None or self.closed:
            return 0
        due = int((now - self.t0) * self.rate / AAC_FRAME) + 1
        if due - self.sent < self.burst:
            return 0
        w, sid, frames, n = self.writer, self.sid, self.frames, len(self.frames)
        parts = []
        for i in range(self.sent, due):
            ts = i * AAC_FRAME * 1000 // self.rate
            parts.append(w.write(rtmp.Message(rtmp.AUDIO, sid, ts, flv.build_aac_raw(frames[i % n]))))
        data = b"".join(parts)
        self.transport.write(data)
        self.bytes_sent += len(data)
        k = due - self.sent
        self.sent = due
        return k


class Player(_Client):
    def __init__(self, app, key, tc_url):
        super().__init__(app, key, tc_url)
        self.arrivals: list[float] = []
        self.audio = 0
        self.bytes = 0

    def start_stream(self) -> None:
        w = self.writer
        self.transport.write(
            w.write(rtmp.command_message("play", 3.0, None, self.key, -1000.0, stream_id=self.sid))
            + w.write(rtmp.set_buffer_length(self.sid, 100))
        )

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.bytes += len(data)
        super().dataReceived(data)

    def on_message(self, m: rtmp.Message) -> None:
        if m.type_id == rtmp.AUDIO:
            if len(m.payload) > 1 and m.payload[1] == 1:
                self.audio += 1
                self.arrivals.append(time.monotonic())
            return
        super().on_message(m)

    def take_gaps(self) -> tuple[int, float]:
        """(frames, largest gap in ms) since the last call."""
        a, self.arrivals = self.arrivals, self.arrivals[-1:]
        if len(a) < 2:
            return len(a), float("inf")
        return len(a) - 1, max(y - x for x, y in zip(a, a[1:], strict=False)) * 1000


def connect(url: str, client: _Client) -> defer.Deferred:
    """rtmp://host:port/app/key → connect, wait for Publish.Start / Play.Start."""
    rest = url.split("//", 1)[1]
    hostport, _, path = rest.partition("/")
    host, port = hostport.rsplit(":", 1)
    creator = protocol.ClientCreator(reactor, lambda: client)
    d = creator.connectTCP(host, int(port), timeout=30)
    d.addCallback(lambda _: client.ready)
    return d


def publisher_for(url: str, asc: bytes, frames: list[bytes], burst: int) -> Publisher:
    app, key = url.rsplit("/", 2)[-2:]
    return Publisher(app, key, url.rsplit("/", 1)[0], asc, frames, burst=burst)


def player_for(url: str) -> Player:
    app, key = url.rsplit("/", 2)[-2:]
    return Player(app, key, url.rsplit("/", 1)[0])
