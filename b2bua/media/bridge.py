"""The media bridge of one call leg: RTMP (live-pusher/live-player) ⇄ RTP toward the PBX.

Uplink: FLV audio tags from the publisher → AAC decode → resample → a shallow PCM FIFO; the
node's media tick takes 20 ms per call and sends one RTP packet (or an RFC 4733 event).
Downlink: RTP → jitter buffer; the tick pulls 20 ms (or concealment), decodes, and feeds the
AAC encoder, whose frames go out as FLV audio tags to every player of the leg.
Video passes through: AVCC NAL units ⇄ RFC 6184 packets, no transcoding.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.logger import Logger

from b2bua.media.adaptive import AdaptiveTarget
from b2bua.media.jitterbuffer import Frame, Gap, JitterBuffer
from b2bua.media.transcode import AacDecoder, AacEncoder, PcmFifo, Resampler, RtpAudioDecoder, RtpAudioEncoder
from b2bua.wire import flv, h264
from b2bua.wire.dtmf import DtmfReceiver, DtmfSender
from b2bua.wire.rtcp import (
    ReportBlock,
    RtcpFir,
    RtcpPli,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    ntp_from_unix,
    ntp_middle32,
    parse_compound,
    rtt_seconds,
    serialize_compound,
)
from b2bua.wire.rtp import ReceiverStats, RtpError, RtpPacket, RtpSender, is_rtcp
from b2bua.wire.sdp import NegotiatedMedia, NegotiatedStream

log = Logger()

# Uplink FIFO: the adaptive target is the spare PCM left after the tick's packet at the FIFO's
# lowest point (b2bua/media/adaptive.py); the pusher's bursts are absorbed on top of it.
UPLINK_TARGET_MS = 10  # starting and lowest target (config media.uplink_buffer_ms)
UPLINK_MAX_MS = 100  # highest target (config media.uplink_buffer_max_ms)
UPLINK_BURST_MAX_MS = 60  # a larger delivery is a stall catching up, not the pusher's rhythm
UPLINK_CAP_ABOVE_TARGET_MS = 2 * UPLINK_BURST_MAX_MS  # the priming for the largest burst, and one more
JITTER_MIN_MS, JITTER_MAX_MS = 20, 160  # the downlink jitter buffer's adaptive target
PTIME_MS = 20
RTCP_INTERVAL_MS = 5000
VIDEO_CLOCK = 90000
MAX_VIDEO_PAYLOAD = 1200


@dataclass
class LegStats:
    """What the `hangup` event and /metrics report about a leg's media."""

    rtp_sent: int = 0
    rtp_received: int = 0
    rtp_bad: int = 0
    rtp_foreign: int = 0
    lost: int = 0
    late: int = 0
    jitter_ms: float = 0.0
    rtt_ms: float | None = None
    uplink_underruns: int = 0
    uplink_dropped_ms: float = 0.0
    concealed_ms: float = 0.0
    video_sent: int = 0
    video_received: int = 0
    keyframe_requests: int = 0
    codec: str | None = None
    # the buffering we add, measured: mean spare of the uplink FIFO + of the jitter buffer, i.e.
    # the mean time audio waits in them beyond the packet being sent/played (the tick phase and
    # the pusher's own bursts come on top)
    added_delay_ms: float = 0.0
    uplink_target_ms: float = 0.0  # current adaptive targets (spare at the lowest point) ...
    jitter_target_ms: float = 0.0
    uplink_target_avg_ms: float = 0.0  # ... and their time-weighted means over the leg
    jitter_target_avg_ms: float = 0.0
    uplink_target_raises: int = 0
    jitter_target_raises: int = 0
    jitter_stretched: int = 0  # Gaps played to rebuffer to a raised target
    jitter_shrunk: int = 0  # packets dropped to give delay back
    extra: dict = field(default_factory=dict)

    def as_event(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "extra" and v not in (None, 0, 0.0)}
        out["jitter_ms"] = round(self.jitter_ms, 1)
        for k in ("added_delay_ms", "uplink_target_avg_ms", "jitter_target_avg_ms", "uplink_dropped_ms"):
            if k in out:
                out[k] = round(out[k], 1)
        if self.rtt_ms is not None:
            out["rtt_ms"] = round(self.rtt_ms, 1)
        return out


class AudioBridge:
    """Runs while the leg has negotiated media (early media or answered) until it is closed."""

    def __init__(
        self,
        media,
        negotiated: NegotiatedMedia,
        players,
        on_dtmf: Callable[[str], None],
        aac_rate: int = 16000,
        clock: Callable[[], float] = time.time,
        uplink_buffer_ms: int = UPLINK_TARGET_MS,
        uplink_buffer_max_ms: int = UPLINK_MAX_MS,
    ) -> None:
        self.media = media  # MediaLeg: sockets
        self.players = players  # the play key's player group (FLV out), or None in tests
        self.on_dtmf = on_dtmf
        self.clock = clock
        self.stats = LegStats()
        self.closed = False
        # datagrams from the far end's address (RTP or RTCP, audio or video, even unparsable):
        # what the dead-call watchdog (b2bua/call/watchdog.py) reads
        self.packets_in = 0
        self.sender = RtpSender()  # kept across re-INVITEs: same SSRC and sequence (RFC 3550)
        self.uplink = AdaptiveTarget(
            uplink_buffer_ms,
            max(uplink_buffer_ms, uplink_buffer_max_ms),
            packet_ms=PTIME_MS,
            step_up_ms=10,
            step_down_ms=10,
            max_drop_ms=PTIME_MS,
            hysteresis_ms=5,  # PCM can be cut to the sample: give back any 5 ms unused for 2 s
        )
        self._configure(negotiated)
        self.aac_rate = aac_rate
        self.aac_encoder = AacEncoder(aac_rate, 1, in_rate=self.encoder.sample_rate)
        self._aac_header_sent = False
        # uplink
        self.aac_decoder: AacDecoder | None = None
        self._asc: bytes | None = None
        self.fifo = PcmFifo()
        self._ul_resampler: Resampler | None = None
        self._primed = False
        self._hold = 0  # silent ticks left to rebuffer after an underrun
        self._up_ticks = 0  # the uplink policy's time base: 20 ms per tick
        self._delivered = 0  # samples put since the last tick: the pusher's burst
        self._burst = [0, 0]  # largest delivery (samples) in the previous and the current 2 s
        self.dtmf_sender = DtmfSender(clock_rate=self.audio.dtmf_clock_rate or 8000)
        self.dtmf_receiver = DtmfReceiver()
        # video
        self._avc_record: flv.AVCDecoderConfigurationRecord | None = None
        self._video_sender = RtpSender()
        self._depacketizer = h264.Depacketizer()
        self._avc_out: flv.AVCDecoderConfigurationRecord | None = None  # the players' AVC header
        self._video_ts0: int | None = None
        self._video_base_ms = 0
        self._last_rtcp_ms = 0.0
        # players get audio and video on one timeline: milliseconds since this bridge started
        self._t0 = clock()
        self._audio_base_ms: int | None = None
        self._sr_sent: dict[int, float] = {}
        media.audio_rtp.handler = self._rtp_in
        media.audio_rtcp.handler = self._rtcp_in
        media.video_rtp.handler = self._video_in
        media.video_rtcp.handler = self._rtcp_in

    def _configure(self, negotiated: NegotiatedMedia) -> None:
        audio: NegotiatedStream = negotiated.audio
        self.audio = audio
        self.video = negotiated.video
        self.stats.codec = audio.codec
        self.encoder = RtpAudioEncoder(audio.codec, channels=audio.channels)
        self.decoder = RtpAudioDecoder(audio.codec)
        self.frame_samples = self.encoder.samples_per_frame
        old = self.__dict__.get("jitter")
        if old is not None:  # a re-INVITE keeps what the far end's jitter taught us
            policy = old.adaptive
        else:
            policy = AdaptiveTarget(JITTER_MIN_MS, JITTER_MAX_MS, packet_ms=PTIME_MS)
        self.jitter = JitterBuffer(
            audio.clock_rate, PTIME_MS, JITTER_MIN_MS, max_ms=JITTER_MAX_MS + 40, adaptive=policy
        )
        self.receiver_stats = ReceiverStats(audio.clock_rate)
        self.remote = (audio.remote_addr, audio.remote_port)
        self.remote_rtcp = (audio.remote_addr, audio.remote_rtcp_port)
        self._update_delay_stats()

    @property
    def uplink_target_ms(self) -> float:
        return self.uplink.target_ms

    def _update_delay_stats(self) -> None:
        """Refresh what LegStats says about our buffering (at each (re)configuration and at close)."""
        st, up, jb = self.stats, self.uplink, self.jitter.adaptive
        st.uplink_target_ms, st.jitter_target_ms = up.target_ms, jb.target_ms
        st.uplink_target_avg_ms, st.jitter_target_avg_ms = up.mean_target_ms, jb.mean_target_ms
        st.uplink_target_raises, st.jitter_target_raises = up.raises, jb.raises
        st.added_delay_ms = up.mean_spare_ms + jb.mean_spare_ms

    def renegotiated(self, negotiated: NegotiatedMedia) -> None:
        """A re-INVITE/UPDATE changed the codec or the far end's address: keep the RTP stream
        (same SSRC and sequence), rebuild only what the codec decides."""
        old = self.audio
        self._configure(negotiated)
        if old.codec != self.audio.codec:
            self.aac_encoder.set_input_rate(self.encoder.sample_rate)
            self._ul_resampler = None
            self.fifo.clear()
            self._primed = False

    def close(self) -> None:
        self.closed = True
        for sock in (
            self.media.audio_rtp,
            self.media.audio_rtcp,
            self.media.video_rtp,
            self.media.video_rtcp,
        ):
            sock.handler = None
        js = self.jitter.stats
        self.stats.lost = js.lost
        self.stats.late = js.late
        self.stats.jitter_stretched = js.stretched
        self.stats.jitter_shrunk = js.shrunk
        self._update_delay_stats()

    # -- uplink: RTMP publisher → RTP ---------------------------------------------------------------------
    def publisher_audio(self, timestamp_ms: int, payload: bytes) -> None:
        try:
            tag = flv.parse_audio(payload)
        except flv.FlvError as e:
            log.debug("bad FLV audio tag: {e}", e=e)
            return
        if tag.codec != flv.SOUND_AAC:
            return
        if tag.aac_packet_type == 0:
            if tag.data != self._asc:
                self._asc = tag.data
                self.aac_decoder = AacDecoder(tag.data)
                self._ul_resampler = None
            return
        if self.aac_decoder is None:
            return
        frames = self.aac_decoder.decode(tag.data)
        if not frames:
            return
        if self._ul_resampler is None:
            self._ul_resampler = Resampler(self.encoder.sample_rate)
        pcm = self._ul_resampler.resample(frames)
        self.fifo.put(pcm)
        self._delivered += len(pcm) // self.fifo.sample_bytes
        # the cap: a catching-up burst (after a stall, or a pusher clock faster than ours) is
        # dropped, oldest first, beyond the priming level for the largest burst plus one such
        # burst: far above the pusher's rhythm, whose jitter never hits it
        rate = self.encoder.sample_rate
        dropped = self.fifo.trim_to(int((self.uplink.target_ms + UPLINK_CAP_ABOVE_TARGET_MS) * rate // 1000))
        if dropped:
            self.stats.uplink_dropped_ms += dropped * 1000 / rate

    def _burst_ms(self) -> float:
        """The pusher's rhythm: its largest delivery between two ticks over the last 2-4 s (at
        least a packet, at most UPLINK_BURST_MAX_MS)."""
        ms = max(self._burst[0], self._burst[1], self._delivered) * 1000 / self.encoder.sample_rate
        return min(max(ms, PTIME_MS), UPLINK_BURST_MAX_MS)

    def send_dtmf(self, digits: str) -> None:
        self.dtmf_sender.send(digits)

    def tick_up(self, now_ms: float) -> None:
        """Every 20 ms, first: one RTP packet toward the PBX (audio or a DTMF event)."""
        if not self.closed:
            self._tick_up()

    def tick_down(self, now_ms: float) -> None:
        """Every 20 ms, after every call's uplink: 20 ms of PCM down to the players' AAC."""
        if self.closed:
            return
        self._tick_down(now_ms)
        if now_ms - self._last_rtcp_ms >= RTCP_INTERVAL_MS:
            self._last_rtcp_ms = now_ms
            self._send_rtcp(now_ms)

    def _tick_up(self) -> None:
        audio = self.audio
        if not audio.sends:
            return
        if self.audio.dtmf_payload_type is not None and self.dtmf_sender.busy:
            # RFC 4733 events run on the 8 kHz clock of telephone-event; audio advances the same span
            event = self.dtmf_sender.tick(self.sender.timestamp)
            if event is not None:
                packet = self.sender.packet(
                    event.payload,
                    self.audio.dtmf_payload_type,
                    self.encoder.timestamp_step,
                    marker=event.marker,
                    timestamp=event.timestamp,
                )
                self._send(packet)
                self.fifo.take(self.frame_samples)
                return
        samples = self.frame_samples
        rate = self.encoder.sample_rate
        level = self.fifo.level()
        self._up_ticks += 1
        now = self._up_ticks * PTIME_MS
        delivered, self._delivered = self._delivered, 0
        burst = self._burst
        if delivered > burst[1]:
            burst[1] = delivered
        if self._up_ticks % 100 == 0:  # every 2 s: the pusher's rhythm of the last 2-4 s
            burst[0], burst[1] = burst[1], 0
        if self._primed and not self._hold and level < samples:
            # underrun: this is the FIFO's lowest point. Keep what is left and send silence for
            # as many ticks as lift this lowest point to the raised target above a packet.
            self.stats.uplink_underruns += 1
            self.uplink.underrun(now)
            need = (self.uplink.target_ms + PTIME_MS) * rate / 1000 - level
            self._hold = max(1, -int(-need // samples))
        if self._hold or not self._primed:
            if self._hold:
                self._hold -= 1
                ready = False
            else:  # start (or new codec): prime to the target above the pusher's burst
                ready = level > 0 and level * 1000 >= self.uplink.prime_level_ms(self._burst_ms()) * rate
                self._primed = ready
            if not ready:
                pcm = bytes(2 * samples)  # silence until the pusher's audio is buffered
                self._send(
                    self.sender.packet(
                        self.encoder.encode(pcm), audio.payload_type, self.encoder.timestamp_step
                    )
                )
                return
        pcm = self.fifo.take(samples)
        self._send(
            self.sender.packet(self.encoder.encode(pcm), audio.payload_type, self.encoder.timestamp_step)
        )
        drop_ms = self.uplink.observe(now, (level - samples) * 1000 / rate)
        if drop_ms:
            self._drop_quietest(int(drop_ms * rate // 1000))

    def _drop_quietest(self, n: int) -> None:
        """Give back ``n`` samples of delay where the buffered PCM is quietest (a pause between
        words rather than a syllable), in 1 ms steps."""
        level = self.fifo.level()
        if n <= 0 or n > level:
            return
        pcm = array("h", self.fifo.take(level))
        step = max(1, self.encoder.sample_rate // 1000)
        blocks = [sum(map(abs, pcm[i : i + step])) for i in range(0, level, step)]
        width = max(1, n // step)
        best, best_at = None, 0
        run = sum(blocks[:width])
        for b in range(0, len(blocks) - width + 1):
            if b:
                run += blocks[b + width - 1] - blocks[b - 1]
            if best is None or run < best:
                best, best_at = run, b
        at = min(best_at * step, level - n)
        del pcm[at : at + n]
        self.fifo.put(pcm.tobytes())
        self.stats.uplink_dropped_ms += n * 1000 / self.encoder.sample_rate

    def _send(self, packet: RtpPacket) -> None:
        self.media.audio_rtp.send(packet.serialize(), self._rtp_target())
        self.stats.rtp_sent += 1

    def _rtp_target(self) -> tuple[str, int]:
        # symmetric RTP: once the far end's packets arrive, answer to where they come from
        return self.media.audio_rtp.remote or self.remote

    # -- downlink: RTP → RTMP players ---------------------------------------------------------------------
    def _accept(self, addr: tuple[str, int], host: str) -> bool:
        """Only the negotiated far end may feed this leg: nobody else can inject or steal media."""
        if addr[0] != host:
            self.stats.rtp_foreign += 1
            return False
        return True

    @staticmethod
    def _latch(sock, addr: tuple[str, int]) -> None:
        """Symmetric RTP (RFC 4961): answer to the port valid RTP really comes from (NAT)."""
        if sock.remote != addr:
            sock.remote = addr

    def _rtp_in(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self._accept(addr, self.audio.remote_addr):
            return
        if is_rtcp(data):  # rtcp-mux
            self._rtcp_in(data, addr)
            return
        self.packets_in += 1
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self.stats.rtp_bad += 1
            return
        self.stats.rtp_received += 1
        now_ms = self.clock() * 1000.0
        if packet.payload_type in (self.audio.payload_type, self.audio.dtmf_payload_type):
            self._latch(self.media.audio_rtp, addr)
        if packet.payload_type == self.audio.dtmf_payload_type:
            digit = self.dtmf_receiver.receive(packet.payload, packet.timestamp)
            if digit is not None:
                self.on_dtmf(digit)
            return
        if packet.payload_type != self.audio.payload_type:
            self.stats.rtp_foreign += 1
            return
        self.receiver_stats.update(packet.ssrc, packet.sequence, packet.timestamp, now_ms)
        self.jitter.put(packet, now_ms)

    def _tick_down(self, now_ms: float) -> None:
        if not self.audio.receives:
            return
        item = self.jitter.get(now_ms)
        if item is None:
            return
        if isinstance(item, Frame):
            pcm = self.decoder.decode(item.payload)
        elif isinstance(item, Gap):
            samples = self.decoder_rate() // 50
            pcm = self.decoder.conceal(samples)
            self.stats.concealed_ms += 20
        else:
            return
        self.pcm_to_players(pcm)

    def decoder_rate(self) -> int:
        return self.encoder.sample_rate  # decoders output at the codec's own sample rate

    def pcm_to_players(self, pcm: bytes) -> None:
        if self.players is None:
            return
        if not self._aac_header_sent:
            self._aac_header_sent = True
            self.players.set_audio_header(flv.build_aac_sequence_header(self.aac_rate, 1))
        if self._audio_base_ms is None:
            self._audio_base_ms = self._elapsed_ms()
        for frame in self.aac_encoder.encode(pcm):
            ts = self._audio_base_ms + frame.pts * 1000 // self.aac_rate
            self.players.send_audio(ts, flv.build_aac_raw(frame.data))

    def _elapsed_ms(self) -> int:
        return int((self.clock() - self._t0) * 1000)

    # -- RTCP -----------------------------------------------------------------------------------------------
    def _send_rtcp(self, now_ms: float) -> None:
        now = self.clock()
        ntp = ntp_from_unix(now)
        packets: list = []
        reports = []
        if self.receiver_stats.received:
            reports.append(self.receiver_stats.report_block(now_ms))
        if self.stats.rtp_sent:
            packets.append(
                RtcpSenderReport(
                    ssrc=self.sender.ssrc,
                    ntp_timestamp=ntp,
                    rtp_timestamp=self.sender.timestamp,
                    packet_count=self.sender.packets_sent,
                    octet_count=self.sender.octets_sent,
                    reports=reports,
                )
            )
            self._sr_sent[ntp_middle32(ntp)] = now
            if len(self._sr_sent) > 8:
                self._sr_sent.pop(next(iter(self._sr_sent)))
        else:
            packets.append(RtcpReceiverReport(ssrc=self.sender.ssrc, reports=reports))
        packets.append(RtcpSdes.cname_packet(self.sender.ssrc, "mpb2bua"))
        target = self.media.audio_rtcp.remote or self.remote_rtcp
        sock = self.media.audio_rtp if self.audio.rtcp_mux else self.media.audio_rtcp
        sock.send(serialize_compound(packets), target)
        self.stats.jitter_ms = self.receiver_stats.jitter * 1000 / self.audio.clock_rate

    def _rtcp_in(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[0] != self.audio.remote_addr:
            self.stats.rtp_foreign += 1
            return
        self.packets_in += 1
        if self.media.audio_rtcp.remote != addr and not self.audio.rtcp_mux:
            self.media.audio_rtcp.remote = addr
        try:
            packets = parse_compound(data)
        except ValueError:
            self.stats.extra["rtcp_bad"] = self.stats.extra.get("rtcp_bad", 0) + 1
            return
        for packet in packets:
            if isinstance(packet, RtcpSenderReport | RtcpReceiverReport):
                if isinstance(packet, RtcpSenderReport):
                    self.receiver_stats.on_sender_report(packet.ntp_timestamp, self.clock() * 1000.0)
                for block in packet.reports:
                    self._on_report_block(block)
            elif isinstance(packet, RtcpPli | RtcpFir):
                self.stats.keyframe_requests += 1
                log.info(
                    "keyframe requested by the PBX ({kind}): the next keyframe from the pusher will serve it",
                    kind=type(packet).__name__,
                )

    def _on_report_block(self, block: ReportBlock) -> None:
        if block.ssrc != self.sender.ssrc or not block.lsr:
            return
        rtt = rtt_seconds(ntp_middle32(ntp_from_unix(self.clock())), block.lsr, block.dlsr)
        if rtt is not None:
            self.stats.rtt_ms = rtt * 1000

    # -- video: H.264 passes through ------------------------------------------------------------------------
    def publisher_video(self, timestamp_ms: int, payload: bytes) -> None:
        if self.video is None or not self.video.sends:
            return
        try:
            tag = flv.parse_video(payload)
        except flv.FlvError:
            return
        if tag.avc_packet_type == 0:
            try:
                self._avc_record = flv.AVCDecoderConfigurationRecord.parse(tag.data)
            except flv.FlvError:
                pass
            return
        if tag.avc_packet_type != 1 or self._avc_record is None:
            return
        try:
            nalus = flv.split_avcc_nalus(tag.data, self._avc_record.length_size)
        except flv.FlvError:
            return
        if tag.keyframe:  # parameter sets first, so a decoder can start at any keyframe
            nalus = [*self._avc_record.sps, *self._avc_record.pps, *nalus]
        ts = (timestamp_ms + tag.composition_time) * (VIDEO_CLOCK // 1000)
        payloads = h264.packetize(nalus, MAX_VIDEO_PAYLOAD)
        target = self.media.video_rtp.remote or (self.video.remote_addr, self.video.remote_port)
        for i, data in enumerate(payloads):
            packet = self._video_sender.packet(
                data, self.video.payload_type, 0, marker=i == len(payloads) - 1, timestamp=ts
            )
            self.media.video_rtp.send(packet.serialize(), target)
            self.stats.video_sent += 1

    def _video_in(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.video is None or not self._accept(addr, self.video.remote_addr):
            return
        if is_rtcp(data):
            self._rtcp_in(data, addr)
            return
        self.packets_in += 1
        try:
            packet = RtpPacket.parse(data)
        except RtpError:
            self.stats.rtp_bad += 1
            return
        if packet.payload_type != self.video.payload_type:
            return
        self._latch(self.media.video_rtp, addr)
        self.stats.video_received += 1
        try:
            units = self._depacketizer.push(packet.payload, packet.sequence, packet.timestamp, packet.marker)
        except h264.H264Error:
            return
        for unit in units:
            if not unit.damaged:
                self._video_to_players(unit)

    def _video_to_players(self, unit) -> None:
        if self.players is None:
            return
        sps = [n for n in unit.nalus if h264.nal_type(n) == 7]
        pps = [n for n in unit.nalus if h264.nal_type(n) == 8]
        if sps and pps:
            record = flv.AVCDecoderConfigurationRecord.from_sps_pps(sps, pps)
            if record != self._avc_out:
                self._avc_out = record
                self.players.set_video_header(flv.build_avc_sequence_header(record))
        if self._avc_out is None:
            return  # no parameter sets yet: a player could not decode anything
        nalus = [n for n in unit.nalus if h264.nal_type(n) not in (7, 8, 9)]
        if not nalus:
            return
        keyframe = h264.is_keyframe(nalus)
        if self._video_ts0 is None:
            self._video_ts0, self._video_base_ms = unit.timestamp, self._elapsed_ms()
        delta = (unit.timestamp - self._video_ts0) & 0xFFFFFFFF
        ts_ms = self._video_base_ms + delta // (VIDEO_CLOCK // 1000)
        self.players.send_video(ts_ms, flv.build_avc_nalus(nalus, keyframe), keyframe)

