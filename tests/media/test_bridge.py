"""The RTMP ⇄ RTP bridge of one leg, with fake sockets and players, proven by the audio it makes."""

from __future__ import annotations

import numpy as np

from b2bua.media.bridge import UPLINK_BURST_MAX_MS, UPLINK_TARGET_MS, AudioBridge
from b2bua.media.leg import RtpSocket
from b2bua.media.transcode import AacDecoder, AacEncoder, RtpAudioDecoder, RtpAudioEncoder
from b2bua.wire import flv
from b2bua.wire.rtp import RtpPacket, RtpSender
from b2bua.wire.sdp import NegotiatedMedia, NegotiatedStream
from tests.media.audio import dominant_frequency, sine_pcm

FAR = ("127.0.0.9", 40000)


class FakeSocket(RtpSocket):
    def __init__(self, kind):
        super().__init__(kind)
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def send(self, data, addr):
        self.sent.append((data, addr))


class FakeLeg:
    def __init__(self):
        self.audio_rtp, self.audio_rtcp = FakeSocket("audio-rtp"), FakeSocket("audio-rtcp")
        self.video_rtp, self.video_rtcp = FakeSocket("video-rtp"), FakeSocket("video-rtcp")


class Players:
    def __init__(self):
        self.header = None
        self.audio: list[tuple[int, bytes]] = []

    def set_audio_header(self, payload):
        self.header = payload

    def send_audio(self, ts, payload):
        self.audio.append((ts, payload))


def negotiated(codec="PCMU", pt=0, clock=8000):
    stream = NegotiatedStream(
        kind="audio",
        codec=codec,
        payload_type=pt,
        clock_rate=clock,
        channels=1,
        fmtp={},
        remote_addr=FAR[0],
        remote_port=FAR[1],
        remote_rtcp_port=FAR[1] + 1,
        rtcp_mux=False,
        direction="sendrecv",
        on_hold=False,
        dtmf_payload_type=101,
        dtmf_clock_rate=8000,
    )
    return NegotiatedMedia(audio=stream)


def make(codec="PCMU", pt=0, clock=8000):
    leg, players, digits = FakeLeg(), Players(), []
    now = [1000.0]
    bridge = AudioBridge(
        leg, negotiated(codec, pt, clock), players, digits.append, aac_rate=16000, clock=lambda: now[0]
    )
    return bridge, leg, players, digits, now


def pusher_tags(seconds=1.0, rate=44100):
    """What live-pusher sends: an AAC sequence header, then raw AAC frames of a 1 kHz tone."""
    encoder = AacEncoder(rate, 1)
    tags = [flv.build_aac_sequence_header(rate, 1)]
    for frame in encoder.encode(sine_pcm(1000, seconds, rate, amplitude=0.3)):
        tags.append(flv.build_aac_raw(frame.data))
    return tags


def test_silence_until_the_pusher_has_buffered_then_its_tone_in_rtp():
    bridge, leg, *_ = make()
    for i in range(3):
        bridge.tick_up(i * 20)
    packets = [RtpPacket.parse(data) for data, _ in leg.audio_rtp.sent]
    assert [p.payload for p in packets] == [b"\xff" * 160] * 3  # PCMU silence keeps the 20 ms grid
    assert [p.sequence - packets[0].sequence for p in packets] == [0, 1, 2]
    assert [p.timestamp - packets[0].timestamp for p in packets] == [0, 160, 320]
    assert all(addr == FAR for _, addr in leg.audio_rtp.sent)
    for i, tag in enumerate(pusher_tags(1.0)):
        bridge.publisher_audio(i * 23, tag)
    leg.audio_rtp.sent.clear()
    for i in range(40):
        bridge.tick_up(60 + i * 20)
    pcm = b"".join(RtpAudioDecoder("PCMU").decode(RtpPacket.parse(d).payload) for d, _ in leg.audio_rtp.sent)
    assert abs(dominant_frequency(pcm, 8000) - 1000) < 20
    # the pusher's burst is bounded: what exceeds the cap was dropped, not queued as delay
    assert bridge.fifo.level() <= 80 * 8
    assert bridge.stats.rtp_sent == 43 and UPLINK_TARGET_MS == 10


def test_dtmf_digits_go_out_as_rfc4733_on_the_same_stream():
    bridge, leg, *_ = make()
    bridge.send_dtmf("1")
    for i in range(12):
        bridge.tick_up(i * 20)
    packets = [RtpPacket.parse(d) for d, _ in leg.audio_rtp.sent]
    events = [p for p in packets if p.payload_type == 101]
    assert events and events[0].marker and events[0].payload[0] == 1
    assert len({p.ssrc for p in packets}) == 1 and len({p.timestamp for p in events}) == 1


def test_far_end_rtp_becomes_aac_for_the_players_and_its_dtmf_digits():
    bridge, leg, players, digits, now = make()
    far = RtpSender()
    encoder = RtpAudioEncoder("PCMU")
    pcm = sine_pcm(1000, 2.0, 8000, amplitude=0.3)
    for i in range(100):
        chunk = pcm[i * 320 : (i + 1) * 320]
        packet = far.packet(encoder.encode(chunk), 0, 160)
        now[0] += 0.020
        bridge._rtp_in(packet.serialize(), FAR)
        bridge.tick_down(now[0] * 1000)
    assert players.header == flv.build_aac_sequence_header(16000, 1)
    assert len(players.audio) >= 25  # 2 s of 16 kHz AAC: 31 frames, minus the encoder's look-ahead
    stamps = [ts for ts, _ in players.audio]
    assert all(b - a == 64 for a, b in zip(stamps, stamps[1:], strict=False))
    assert leg.audio_rtp.remote == FAR  # symmetric RTP latched on the far end's valid packets
    # what the players get decodes to the far end's tone
    decoder = AacDecoder(flv.parse_audio(players.header).data)
    frames = [f for _, tag in players.audio for f in decoder.decode(flv.parse_audio(tag).data)]
    tone = np.concatenate([f.to_ndarray().reshape(-1).astype("float64") for f in frames])
    assert abs(dominant_frequency(tone, 16000) - 1000) < 20
    # a telephone-event from the far end is a digit, once, however many end packets repeat it
    event = bytes([5, 0x80, 0, 160])
    for _ in range(3):
        bridge._rtp_in(far.packet(event, 101, 0, timestamp=12345).serialize(), FAR)
    assert digits == ["5"]


def test_rtp_from_another_host_is_counted_and_ignored():
    bridge, leg, *_ = make()
    packet = RtpSender().packet(b"\xff" * 160, 0, 160).serialize()
    bridge._rtp_in(packet, ("10.9.9.9", 5000))
    bridge._rtp_in(b"garbage", FAR)
    assert bridge.stats.rtp_foreign == 1 and bridge.stats.rtp_bad == 1 and bridge.stats.rtp_received == 0
    assert leg.audio_rtp.remote is None  # nothing latched: our RTP still goes to the SDP address
    # the dead-call watchdog's counter: the far end's datagrams only (even unparsable ones)
    assert bridge.packets_in == 1
    bridge._rtcp_in(b"\x80\xc9\x00\x01\x00\x00\x00\x01", FAR)  # an empty receiver report
    bridge._rtcp_in(b"\x80\xc9\x00\x01\x00\x00\x00\x01", ("10.9.9.9", 5001))
    assert bridge.packets_in == 2


def test_a_smaller_uplink_buffer_starts_sooner_and_keeps_less():
    levels = {}
    for floor in (10, 40):
        bridge = AudioBridge(FakeLeg(), negotiated(), Players(), lambda d: None, uplink_buffer_ms=floor)
        for i, tag in enumerate(pusher_tags(1.0)):  # a whole second at once: a stall catching up
            bridge.publisher_audio(i * 23, tag)
        levels[floor] = bridge.fifo.level()
        # the cap: the priming level for the largest burst counted (60 ms) plus one such burst
        assert levels[floor] <= (floor + 60 + UPLINK_BURST_MAX_MS) * 8
        assert bridge.uplink_target_ms == floor and bridge.stats.added_delay_ms == 0  # nothing sent yet
    assert levels[10] < levels[40]


def uplink_run(bridge, leg, deliveries, ticks, tick_phase=7.0, levels=None):
    """Synthetic schedule: ``deliveries`` is [(arrival ms, [tags])]; the tick runs every 20 ms
    (at ``tick_phase`` + 20 k). Returns the underrun count after each second."""
    pending = sorted(deliveries, key=lambda d: d[0])
    per_second = []
    for k in range(ticks):
        now = tick_phase + 20 * k
        while pending and pending[0][0] <= now:
            t, tags = pending.pop(0)
            for tag in tags:
                bridge.publisher_audio(int(t), tag)
        if levels is not None:
            levels.append(bridge.fifo.level() / 8)  # ms at 8 kHz, before the tick's take
        bridge.tick_up(now)
        if k % 50 == 49:
            per_second.append(bridge.stats.uplink_underruns)
    return per_second


def pusher_schedule(seconds, burst, jitter=None):
    tags = pusher_tags(seconds)
    out = [(0.0, tags[:1])]
    frames = tags[1:]
    frame_ms = 1024 / 44.1
    for i in range(0, len(frames), burst):
        t = (i + burst) * frame_ms  # a burst leaves when its last frame is encoded
        if jitter is not None:
            t += jitter(i)
        out.append((t, frames[i : i + burst]))
    return out


def test_uplink_steady_pusher_settles_low():
    bridge, leg, *_ = make()
    levels = []
    per_second = uplink_run(bridge, leg, pusher_schedule(20, 1), 20 * 50, levels=levels)
    assert per_second[-1] == per_second[2] <= 1  # at most one underrun, at the start
    assert bridge.uplink_target_ms == UPLINK_TARGET_MS
    # settled: in the last 5 s the FIFO's lowest point keeps the 20 ms packet + 10-15 ms spare
    assert 29 <= min(levels[-250:]) <= 35 + 1


def test_uplink_bursty_pusher_settles_without_repeated_underruns():
    """live-pusher / ffmpeg style: two 23 ms AAC frames in one write every 46 ms."""
    bridge, leg, *_ = make()
    levels = []
    per_second = uplink_run(bridge, leg, pusher_schedule(20, 2), 20 * 50, levels=levels)
    assert per_second[-1] == per_second[2] <= 1
    assert bridge.uplink_target_ms == UPLINK_TARGET_MS
    # the burst is absorbed on top of the target: 46 ms in at once, 20 ms out per tick
    assert 29 <= min(levels[-250:]) <= 35 + 1
    assert max(levels[-250:]) <= 30 + 5 + 46 + 1
    sent = [RtpPacket.parse(d) for d, _ in leg.audio_rtp.sent]
    pcm = b"".join(RtpAudioDecoder("PCMU").decode(p.payload) for p in sent[-200:])
    assert abs(dominant_frequency(pcm, 8000) - 1000) < 20


def test_uplink_jitter_spikes_raise_the_target_and_calm_gives_it_back():
    bridge, leg, *_ = make()

    # 5 s steady, then 5 s where every 10th frame comes 45 ms late, then 40 s steady again
    def jitter(i):
        return 45.0 if 217 <= i < 434 and i % 10 == 0 else 0.0

    uplink_run(bridge, leg, pusher_schedule(10, 1, jitter), 10 * 50)
    raised = bridge.uplink_target_ms
    assert raised > UPLINK_TARGET_MS and bridge.stats.uplink_underruns >= 1
    assert bridge.uplink.raises <= 5  # once raised enough, the spikes are absorbed
    before = bridge.stats.uplink_underruns
    bridge2 = bridge  # keep the learned state; continue with a calm pusher
    later = [(t + 10_000, tags) for t, tags in pusher_schedule(40, 1)[1:]]
    uplink_run(bridge2, leg, later, 40 * 50, tick_phase=10_007.0)
    assert bridge.uplink_target_ms < raised and bridge.stats.uplink_dropped_ms > 0
    assert bridge.stats.uplink_underruns - before <= 2
