"""The RTMP ⇄ RTP bridge of one leg, with fake sockets and players, proven by the audio it makes."""

from __future__ import annotations

import numpy as np
import pytest

from b2bua.media.bridge import UPLINK_BURST_MAX_MS, UPLINK_TARGET_MS, AudioBridge
from b2bua.media.leg import MediaLeg, RtpSocket
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
        leg.audio_rtp.datagramReceived(packet.serialize(), FAR)
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
        leg.audio_rtp.datagramReceived(far.packet(event, 101, 0, timestamp=12345).serialize(), FAR)
    assert digits == ["5"]


def test_rtp_from_another_host_is_counted_and_ignored():
    bridge, leg, *_ = make()
    packet = RtpSender().packet(b"\xff" * 160, 0, 160).serialize()
    leg.audio_rtp.datagramReceived(packet, ("10.9.9.9", 5000))
    leg.audio_rtp.datagramReceived(b"garbage", FAR)
    assert bridge.stats.rtp_foreign == 1 and bridge.stats.rtp_bad == 1 and bridge.stats.rtp_received == 0
    assert leg.audio_rtp.remote is None  # nothing latched: our RTP still goes to the SDP address
    # the dead-call watchdog's counter: the far end's datagrams only (even unparsable ones)
    assert bridge.packets_in == 1
    leg.audio_rtcp.datagramReceived(b"\x80\xc9\x00\x01\x00\x00\x00\x01", FAR)  # an empty receiver report
    leg.audio_rtcp.datagramReceived(b"\x80\xc9\x00\x01\x00\x00\x00\x01", ("10.9.9.9", 5001))
    assert bridge.packets_in == 2


def test_a_smaller_uplink_buffer_starts_sooner_and_keeps_less():
    levels = {}
    for floor in (10, 40):
        bridge = AudioBridge(FakeLeg(), negotiated(), Players(), lambda d: None, uplink_buffer_ms=floor)
        for i, tag in enumerate(pusher_tags(1.0)):  # a whole second at once: a stall catching up
            bridge.publisher_audio(i * 23, tag)
        bridge.tick_prepare(23 * 44)  # the tick decodes what came; the cap applies there
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
        if levels is not None:  # ms at 8 kHz, before the tick's take
            levels.append(bridge.uplink_buffered_samples / 8)
        bridge.tick_up(now)
        bridge.tick_prepare(now)
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


# -- a leg's media across renegotiations (issue 11) -----------------------------------------------------
def far_stream(bridge, leg, now, packets, *, ssrc=None, seq0=0, ts0=0, ptime=20, skip=(), sender=None):
    """The far end sends ``packets`` PCMU packets of a 1 kHz tone, one per ``ptime`` ms, while
    the media clock ticks every 20 ms; returns its RtpSender."""
    far = sender or RtpSender(ssrc=ssrc, sequence=seq0, timestamp=ts0)
    encoder = RtpAudioEncoder("PCMU", ptime=ptime)
    step = 8 * ptime
    pcm = sine_pcm(1000, packets * ptime / 1000 + 0.1, 8000, amplitude=0.3)
    sent = 0
    t_next = 20.0
    t = 0.0
    while sent < packets:
        now[0] += 0.020
        t += 20
        while sent < packets and t_next <= t:  # what was sent since the last tick is here
            packet = far.packet(encoder.encode(pcm[sent * 2 * step : (sent + 1) * 2 * step]), 0, step)
            if sent not in skip:
                leg.audio_rtp.datagramReceived(packet.serialize(), FAR)
            sent += 1
            t_next += ptime
        bridge.tick_up(now[0] * 1000)
        bridge.tick_down(now[0] * 1000)
    return far


def ticks(bridge, now, n):
    for _ in range(n):
        now[0] += 0.020
        bridge.tick_up(now[0] * 1000)
        bridge.tick_down(now[0] * 1000)


def with_(neg, **changes):
    audio = NegotiatedStream(**{**neg.audio.__dict__, **changes})
    return NegotiatedMedia(audio=audio)


def test_a_reinvite_that_changes_nothing_changes_nothing():
    """FreeSWITCH's session-timer refresh (same SDP), and a hold/unhold: the jitter buffer keeps
    what it buffered and learnt, the counters go on, the codecs are not rebuilt."""
    bridge, leg, players, _, now = make()
    far_stream(bridge, leg, now, 50, skip=(10, 11))  # two packets lost before the refresh
    jitter, decoder, encoder, aac = bridge.jitter, bridge.decoder, bridge.encoder, bridge.aac_encoder
    depth = jitter.depth_ms
    assert depth > 0 and jitter.stats.lost == 2
    for change in ({}, {"direction": "sendonly"}, {"direction": "sendrecv"}):  # refresh, hold, unhold
        bridge.renegotiated(with_(negotiated(), **change))
        assert bridge.jitter is jitter and jitter.depth_ms == depth  # nothing flushed
        assert bridge.decoder is decoder and bridge.encoder is encoder and bridge.aac_encoder is aac
    far_stream(bridge, leg, now, 50, sender=None, seq0=50, ts0=50 * 160, ssrc=jitter.ssrc)
    stats = bridge.close()
    assert stats.lost == 2 and stats.late == 0  # the loss before the refresh is still reported
    assert stats.rtp_received == 98


def test_a_returning_ssrc_plays_again():
    """A→B→A: the PBX plays a prompt (B), then bridges the first party (A) again."""
    bridge, leg, players, _, now = make()
    a = far_stream(bridge, leg, now, 30, ssrc=111)
    far_stream(bridge, leg, now, 30, ssrc=222, seq0=9000, ts0=5_000_000)
    far_stream(bridge, leg, now, 30, sender=a)  # A continues where it stopped
    bridge.close()
    stats = bridge.stats
    assert stats.late == 0 and stats.rtp_received == 90  # none of A's returning packets dropped
    assert bridge.jitter.ssrc == 111
    assert set(bridge.session.sources) == {111, 222}  # per-SSRC receive state kept for both


def test_a_new_remote_address_is_followed_at_once():
    bridge, leg, *_ , now = make()
    far_stream(bridge, leg, now, 10)
    assert leg.audio_rtp.remote == FAR  # latched
    moved = ("127.0.0.9", 41000)
    bridge.renegotiated(with_(negotiated(), remote_port=moved[1], remote_rtcp_port=moved[1] + 1))
    leg.audio_rtp.sent.clear()
    ticks(bridge, now, 3)
    assert [addr for _, addr in leg.audio_rtp.sent] == [moved] * 3  # not to the old latched port
    # and it latches again to where the new far end's RTP comes from (NAT)
    packet = RtpSender().packet(b"\xff" * 160, 0, 160).serialize()
    leg.audio_rtp.datagramReceived(packet, ("127.0.0.9", 42000))
    ticks(bridge, now, 1)
    assert leg.audio_rtp.sent[-1][1] == ("127.0.0.9", 42000)


@pytest.mark.parametrize("ptime", [10, 30, 40, 60])
def test_ptime_is_honoured_both_ways(ptime):
    bridge, leg, players, _, now = make()
    bridge.renegotiated(with_(negotiated(), ptime=ptime))
    leg.audio_rtp.sent.clear()
    ticks(bridge, now, 60)  # 1.2 s
    sent = [RtpPacket.parse(d) for d, _ in leg.audio_rtp.sent]
    assert len(sent) == 1200 // ptime
    assert {len(p.payload) for p in sent} == {8 * ptime}
    steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in zip(sent, sent[1:], strict=False)}
    assert steps == {8 * ptime}
    # received at that ptime: played at the pace it comes, no concealment once it runs
    players.audio.clear()
    concealed = bridge.stats.concealed_ms
    far_stream(bridge, leg, now, 3000 // ptime, ptime=ptime)
    assert bridge.stats.concealed_ms == concealed
    assert bridge.jitter.stats.late == 0 and bridge.jitter.stats.lost == 0
    assert abs(len(players.audio) - 3000 * 16 / 1024) <= 2  # AAC at real-time pace
    decoder = AacDecoder(flv.parse_audio(players.header).data)
    frames = [f for _, tag in players.audio for f in decoder.decode(flv.parse_audio(tag).data)]
    tone = np.concatenate([f.to_ndarray().reshape(-1).astype("float64") for f in frames])
    assert abs(dominant_frequency(tone[8000:], 16000) - 1000) < 20


def test_the_players_get_aac_all_the_time_even_held_or_silent():
    """Before the far end's first packet, while held, after it fell silent: AAC frames at their
    normal rate, timestamps continuous."""
    bridge, leg, players, _, now = make()
    ticks(bridge, now, 50)  # answered, the far end sends nothing yet
    far_stream(bridge, leg, now, 50)
    bridge.renegotiated(with_(negotiated(), direction="sendonly"))  # we hold
    ticks(bridge, now, 100)
    bridge.renegotiated(negotiated())
    ticks(bridge, now, 50)  # unheld, the far end silent
    stamps = [ts for ts, _ in players.audio]
    assert players.header is not None and stamps[0] <= 200
    assert all(b - a == 64 for a, b in zip(stamps, stamps[1:], strict=False))
    assert abs(len(stamps) - 5000 * 16 / 1024) <= 3  # 5 s of ticks: every frame there


def test_a_new_codec_rebuilds_the_pipeline_only_and_the_aac_stream_goes_on():
    bridge, leg, players, _, now = make()
    far_stream(bridge, leg, now, 25)
    session, aac = bridge.session, bridge.aac_encoder
    bridge.renegotiated(with_(negotiated(), codec="G722", payload_type=9))
    assert bridge.pipeline_builds == 2 and bridge.session is session and bridge.aac_encoder is aac
    ticks(bridge, now, 25)
    stamps = [ts for ts, _ in players.audio]
    assert all(b - a == 64 for a, b in zip(stamps, stamps[1:], strict=False))


def test_our_answer_keeps_the_offered_ptime():
    leg = MediaLeg(None, None, "127.0.0.1", ["PCMU"], False, "rtmp://x/live")
    leg._pairs = [30000]
    offer = (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:30\r\n"
    )
    answer, _ = leg.answer_offer(offer.encode())
    assert b"a=ptime:30" in answer
    assert b"a=ptime:30" in leg.make_offer(hold=True)


def test_a_socket_read_decodes_only_what_the_next_tick_sends():
    """A pusher's burst (many pushers' bursts at once, in a worker) is decoded a frame per tick
    inside the ticks: the socket read decodes only what the next tick's packet needs."""
    bridge, leg, *_ = make()
    tags = pusher_tags(1.0)
    bridge.publisher_audio(0, tags[0])
    decoder, decodes = bridge.aac_decoder, []
    real = decoder.decode
    decoder.decode = lambda data: decodes.append(data) or real(data)
    for i, tag in enumerate(tags[1:6]):  # five frames in one write
        bridge.publisher_audio(i * 23, tag)
    assert len(decodes) == 1  # one frame is 185 samples at 8 kHz: the next tick's 160
    # the other four are counted as buffered (the first is short by the resampler's delay)
    assert 4 * 185 + 90 <= bridge.uplink_buffered_samples <= 5 * 186
    for k in range(4):
        bridge.tick_up(k * 20)
        bridge.tick_prepare(k * 20)
        assert len(decodes) == 2 + k  # one more frame per tick, as the FIFO drains
    assert decodes == [flv.parse_audio(tag).data for tag in tags[1:6]]  # in order, none lost


def test_calls_that_start_together_spread_their_aac_frames_over_the_ticks():
    """32 calls set up in the same tick: each makes a 64 ms AAC frame every 3.2 ticks; placed by
    the media clock they make them in different ticks, not 32 in one tick and none in the next two."""
    from twisted.internet.task import Clock

    from b2bua.media.tick import MediaClock

    clock = Clock()
    media = MediaClock(clock)
    clock.advance(0.020 * 7)  # the clock's tick count is not where it starts
    bridges = [make()[0] for _ in range(32)]
    for bridge in bridges:
        media.add(bridge)
    per_tick = []
    for _ in range(64):
        before = sum(len(b.players.audio) for b in bridges)
        clock.advance(0.020)
        per_tick.append(sum(len(b.players.audio) for b in bridges) - before)
    steady = per_tick[16:]  # past the encoder's look-ahead
    assert sum(steady) == pytest.approx(32 * 48 * 320 / 1024, abs=32)
    assert max(steady) <= 12, per_tick  # 10 per tick on average
    # each player's stream is unbroken: one frame per 64 ms of timestamps
    for bridge in bridges:
        stamps = [ts for ts, _ in bridge.players.audio]
        assert all(b - a == 64 for a, b in zip(stamps, stamps[1:], strict=False))


def test_delay_is_given_back_after_the_rtp_not_in_the_send_phase():
    """The search for the quietest place to cut runs in tick_prepare: in tick_up it would delay
    the RTP of every call after this one (calls set up together give delay back together)."""
    bridge, leg, *_ = make()
    for i, tag in enumerate(pusher_tags(0.5)):
        bridge.publisher_audio(i * 23, tag)
    for k in range(3):
        bridge.tick_up(k * 20)
        bridge.tick_prepare(k * 20)
    bridge.uplink.observe = lambda now, spare_ms: 10  # the adaptive target asks for 10 ms back
    dropped = bridge.stats.uplink_dropped_ms
    bridge.tick_up(60)
    assert bridge.stats.uplink_dropped_ms == dropped
    bridge.tick_prepare(60)
    assert bridge.stats.uplink_dropped_ms == dropped + 10
