"""The media of one call leg: RTMP (live-pusher/live-player) ⇄ RTP toward the PBX.

:class:`AudioBridge` is the leg's whole media state, from its first negotiated media (early
media or answer) to its end, behind a small command/event interface that another process
could serve (see :class:`MediaEvents` and the command methods below). It is made of:

* the :class:`~b2bua.media.rtp_session.RtpSession` (sockets' handlers, latching, RTCP,
  per-SSRC receive state and the jitter buffer), kept across every renegotiation;
* the :class:`~b2bua.media.pipeline.CodecPipeline` (RTP encoder, decoder, uplink resampler),
  rebuilt only when the codec or the ptime changes;
* the long-lived ends toward RTMP: the publisher's AAC decoder, the uplink PCM FIFO and its
  adaptive target, the AAC encoder toward the players (never rebuilt: their stream stays
  unbroken across codec changes, holds and silences).

Uplink: FLV audio tags from the publisher → AAC decode → resample → a shallow PCM FIFO; the
node's media tick (20 ms) sends what falls due: one RTP packet of ``ptime`` (10 ms: two per
tick; 30 ms: two ticks out of three), or an RFC 4733 event.
Downlink: RTP → jitter buffer; each tick pulls what is due (or concealment), decodes, and feeds
the AAC encoder. When nothing is due from the far end (before its first packet, while held,
while rebuffering) the tick feeds 20 ms of silence instead, so the players receive AAC frames
at their normal rate from the first media to the hangup.
Video passes through: AVCC NAL units ⇄ RFC 6184 packets, no transcoding.
"""

from __future__ import annotations

import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Protocol

from twisted.logger import Logger

from b2bua.media.adaptive import AdaptiveTarget
from b2bua.media.jitterbuffer import Frame
from b2bua.media.pipeline import CodecPipeline, pipeline_key
from b2bua.media.rtp_session import RtpSession
from b2bua.media.stats import LegStats
from b2bua.media.transcode import AAC_FRAME_SAMPLES, AacDecoder, AacEncoder, PcmFifo
from b2bua.wire import flv, h264
from b2bua.wire.dtmf import DtmfSender
from b2bua.wire.rtp import RtpPacket
from b2bua.wire.sdp import NegotiatedMedia

__all__ = ["AudioBridge", "LegStats", "MediaEvents"]

log = Logger()

# Uplink FIFO: the adaptive target is the spare PCM left after the tick's packet at the FIFO's
# lowest point (b2bua/media/adaptive.py); the pusher's bursts are absorbed on top of it.
UPLINK_TARGET_MS = 10  # starting and lowest target (config media.uplink_buffer_ms)
UPLINK_MAX_MS = 100  # highest target (config media.uplink_buffer_max_ms)
UPLINK_BURST_MAX_MS = 60  # a larger delivery is a stall catching up, not the pusher's rhythm
UPLINK_CAP_ABOVE_TARGET_MS = 2 * UPLINK_BURST_MAX_MS  # the priming for the largest burst, and one more
TICK_MS = 20  # the media clock's period (b2bua/media/tick.py)
VIDEO_CLOCK = 90000
MAX_VIDEO_PAYLOAD = 1200


class MediaEvents(Protocol):
    """What a leg's media tells its owner (the Call). With media in a worker process these are
    the events coming back; the publisher's and players' comings and goings reach the owner from
    the RTMP side (b2bua.rtmp.streams), and the dead-call watchdog reads :attr:`AudioBridge.packets_in`."""

    def __call__(self, digit: str) -> None: ...  # a telephone-event digit from the far end


class AudioBridge:
    """One leg's media, from its first negotiated media to its end.

    Commands: construct (with the first :class:`NegotiatedMedia`), :meth:`apply` (every later
    offer/answer: hold, unhold, a session refresh, a new codec or address), :meth:`send_dtmf`,
    :meth:`close` (returns the :class:`LegStats`). Media in: :meth:`publisher_audio` and
    :meth:`publisher_video` (the RTMP publish sink), RTP on the leg's sockets. Media out: RTP,
    and FLV tags to ``players`` (the play key's PlayerGroup). Driven by the media clock
    (:meth:`tick_up`, :meth:`tick_down`).
    """

    def __init__(
        self,
        media,
        negotiated: NegotiatedMedia,
        players,
        on_dtmf: MediaEvents | Callable[[str], None],
        aac_rate: int = 16000,
        clock: Callable[[], float] = time.time,
        uplink_buffer_ms: int = UPLINK_TARGET_MS,
        uplink_buffer_max_ms: int = UPLINK_MAX_MS,
    ) -> None:
        self.media = media  # MediaLeg: sockets, SDP
        self.players = players  # the play key's player group (FLV out), or None in tests
        self.clock = clock
        self.stats = LegStats()
        self.closed = False
        self.audio = negotiated.audio
        self.video = negotiated.video
        self.stats.codec = self.audio.codec
        self.session = RtpSession(
            media, self.audio, self.video, self.stats, clock, on_dtmf, on_video=self._video_in
        )
        self.pipeline = CodecPipeline.for_stream(self.audio)
        self.pipeline_builds = 1
        self.uplink = AdaptiveTarget(
            uplink_buffer_ms,
            max(uplink_buffer_ms, uplink_buffer_max_ms),
            packet_ms=self.pipeline.ptime,
            step_up_ms=10,
            step_down_ms=10,
            max_drop_ms=20,
            hysteresis_ms=5,  # PCM can be cut to the sample: give back any 5 ms unused for 2 s
        )
        self.aac_rate = aac_rate
        self.aac_encoder = AacEncoder(aac_rate, 1, in_rate=self.pipeline.sample_rate)
        self._aac_header_sent = False
        self._aac_lead_in = 0  # AAC-rate samples of silence before the first PCM: the frames' phase
        # uplink
        self.aac_decoder: AacDecoder | None = None
        self._asc: bytes | None = None
        self.fifo = PcmFifo()
        self._aac_pending: deque[bytes] = deque()  # raw AAC frames received, decoded when due
        self._reset_frame_samples()
        self._drop_due = 0  # samples of delay to give back, at the next tick_prepare
        self._primed = False
        self._hold = 0  # silent packets left to rebuffer after an underrun
        self._ticks = 0  # the uplink's time base: TICK_MS per tick
        self._next_send_ms = 0  # where the next RTP packet starts, on that time base
        self._delivered = 0  # samples put since the last tick: the pusher's burst
        self._burst = [0, 0]  # largest delivery (samples) in the previous and the current 2 s
        self.dtmf_sender = self._dtmf_sender()
        # video
        self._avc_record: flv.AVCDecoderConfigurationRecord | None = None
        self._depacketizer = h264.Depacketizer()
        self._avc_out: flv.AVCDecoderConfigurationRecord | None = None  # the players' AVC header
        self._video_ts0: int | None = None
        self._video_base_ms = 0
        # players get audio and video on one timeline: milliseconds since this bridge started
        self._t0 = clock()
        self._audio_base_ms: int | None = None
        self._update_delay_stats()

    # -- state seen from outside ------------------------------------------------------------------------
    @property
    def packets_in(self) -> int:
        """Datagrams from the far end so far: what the dead-call watchdog reads."""
        return self.session.packets_in

    @property
    def uplink_buffered_samples(self) -> int:
        """The publisher's audio waiting to be sent: PCM in the FIFO and AAC frames not yet decoded."""
        return self.fifo.level() + self._pending_samples()

    @property
    def jitter(self):
        return self.session.jitter

    @property
    def encoder(self):
        return self.pipeline.encoder

    @property
    def decoder(self):
        return self.pipeline.decoder

    @property
    def uplink_target_ms(self) -> float:
        return self.uplink.target_ms

    def _dtmf_sender(self) -> DtmfSender:
        return DtmfSender(clock_rate=self.audio.dtmf_clock_rate or 8000, ptime_ms=self.pipeline.ptime)

    def _update_delay_stats(self) -> None:
        """Refresh what LegStats says about our buffering (at each (re)configuration and at close)."""
        st, up, jb = self.stats, self.uplink, self.session.jitter.adaptive
        st.uplink_target_ms, st.jitter_target_ms = up.target_ms, jb.target_ms
        st.uplink_target_avg_ms, st.jitter_target_avg_ms = up.mean_target_ms, jb.mean_target_ms
        st.uplink_target_raises, st.jitter_target_raises = up.raises, jb.raises
        st.added_delay_ms = up.mean_spare_ms + jb.mean_spare_ms

    # -- commands ---------------------------------------------------------------------------------------
    def apply(self, negotiated: NegotiatedMedia) -> None:
        """A new offer/answer (re-INVITE, UPDATE, an answer to our hold): change what it
        changed. Same codec and ptime: the pipeline stays (a hold, an unhold, a session-timer
        refresh touch only directions). The RTP session keeps its streams and receive state
        whatever changes; the players' AAC stream goes on."""
        audio = negotiated.audio
        self.session.apply(audio, negotiated.video)
        old_ptime, old_dtmf_clock = self.pipeline.ptime, self.audio.dtmf_clock_rate
        self.audio, self.video = audio, negotiated.video
        self.stats.codec = audio.codec
        key = pipeline_key(audio)
        if key != self.pipeline.key:
            old = self.pipeline
            self.pipeline = CodecPipeline(key)
            self.pipeline_builds += 1
            self.uplink.packet_ms = key.ptime
            if self.pipeline.sample_rate != old.sample_rate:  # buffered PCM is at the old rate
                self.aac_encoder.set_input_rate(self.pipeline.sample_rate)
                self.fifo.clear()
                self._drop_due = 0
                self._reset_frame_samples()  # frames make another count of samples now
                self._primed = False
        if (old_ptime, old_dtmf_clock) != (self.pipeline.ptime, audio.dtmf_clock_rate):
            if not self.dtmf_sender.busy:
                self.dtmf_sender = self._dtmf_sender()
        self._update_delay_stats()

    renegotiated = apply

    def send_dtmf(self, digits: str) -> None:
        self.dtmf_sender.send(digits)

    def close(self) -> LegStats:
        if not self.closed:
            self.closed = True
            self.session.close()
            self._update_delay_stats()
        return self.stats

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
                self._decode_until(None)  # what came before the new header, with its decoder
                self._asc = tag.data
                self.aac_decoder = AacDecoder(tag.data)
                self._reset_frame_samples()
            return
        if self.aac_decoder is None:
            return
        # decoding waits until the audio is needed: what the next tick sends is decoded now
        # (the tick's RTP then leaves without waiting for it), the rest a frame per tick in
        # tick_prepare, so a burst of frames from many pushers never makes one long tick
        self._aac_pending.append(tag.data)
        self._delivered += self._frame_samples
        self._decode_until(self._tick_samples())
        # the cap: a catching-up burst (after a stall, or a pusher clock faster than ours) is
        # dropped, oldest first, beyond the priming level for the largest burst plus one such
        # burst: far above the pusher's rhythm, whose jitter never hits it
        rate = self.pipeline.sample_rate
        cap = int((self.uplink.target_ms + UPLINK_CAP_ABOVE_TARGET_MS) * rate // 1000)
        if self.uplink_buffered_samples > cap:
            self._decode_until(None)
            dropped = self.fifo.trim_to(cap)
            if dropped:
                self.stats.uplink_dropped_ms += dropped * 1000 / rate

    def _reset_frame_samples(self) -> None:
        """The PCM samples one AAC frame makes at the pipeline's rate: estimated from the rates
        (AAC-LC: 1024 per frame) until frames are decoded, then their mean (HE-AAC makes more)."""
        decoder = self.aac_decoder
        rate = decoder.sample_rate if decoder is not None else 0
        self._frame_samples = AAC_FRAME_SAMPLES * self.pipeline.sample_rate // rate if rate else 0
        self._decoded = [0, 0]  # frames, samples

    def _tick_samples(self) -> int:
        """The PCM samples one tick's packets take: one packet, two of 10 ms."""
        p = self.pipeline
        return p.frame_samples * max(1, TICK_MS // p.ptime)

    def _pending_samples(self) -> int:
        """PCM samples (at the pipeline's rate) the queued AAC frames will make, about."""
        return len(self._aac_pending) * self._frame_samples

    def _decode_until(self, need: int | None) -> None:
        """Decode queued AAC frames, oldest first, into the uplink FIFO until it holds ``need``
        samples (``None``: all of them)."""
        pending, decoder, fifo = self._aac_pending, self.aac_decoder, self.fifo
        if decoder is None:
            return
        resampler, decoded = self.pipeline.resampler, self._decoded
        while pending and (need is None or fifo.level() < need):
            frames = decoder.decode(pending.popleft())
            if frames:
                pcm = resampler.resample(frames)
                fifo.put(pcm)
                decoded[0] += 1
                if decoded[0] > 1:  # the first frame is short by the resampler's delay
                    decoded[1] += len(pcm) // fifo.sample_bytes
                    self._frame_samples = decoded[1] // (decoded[0] - 1)

    def _burst_ms(self) -> float:
        """The pusher's rhythm: its largest delivery between two ticks over the last 2-4 s (at
        least a packet, at most UPLINK_BURST_MAX_MS)."""
        ms = max(self._burst[0], self._burst[1], self._delivered) * 1000 / self.pipeline.sample_rate
        return min(max(ms, self.pipeline.ptime), UPLINK_BURST_MAX_MS)

    def tick_up(self, now_ms: float) -> None:
        """Every 20 ms, first: the RTP packets toward the PBX that fall due (audio or DTMF)."""
        if self.closed:
            return
        self._ticks += 1
        t = self._ticks * TICK_MS
        delivered, self._delivered = self._delivered, 0
        burst = self._burst
        if delivered > burst[1]:
            burst[1] = delivered
        if self._ticks % 100 == 0:  # every 2 s: the pusher's rhythm of the last 2-4 s
            burst[0], burst[1] = burst[1], 0
        if not self.audio.sends:
            self._next_send_ms = t  # resume on the grid, without a burst of catch-up
            return
        while self._next_send_ms < t:  # the packets that start within this tick's 20 ms
            self._send_packet(self._next_send_ms)
            self._next_send_ms += self.pipeline.ptime

    def _send_packet(self, now: float) -> None:
        audio, p, session = self.audio, self.pipeline, self.session
        samples = p.frame_samples
        level = self.fifo.level()
        if level < samples and self._aac_pending:  # this packet needs what is still queued
            self._decode_until(samples)
            level = self.fifo.level()
        if audio.dtmf_payload_type is not None and self.dtmf_sender.busy:
            # RFC 4733 events run on the 8 kHz clock of telephone-event; audio advances the same span
            event = self.dtmf_sender.tick(session.sender.timestamp)
            if event is not None:
                session.send_audio(
                    event.payload,
                    audio.dtmf_payload_type,
                    p.timestamp_step,
                    marker=event.marker,
                    timestamp=event.timestamp,
                )
                self.fifo.take(p.frame_samples)
                return
        rate = p.sample_rate
        buffered = level + self._pending_samples()
        if self._primed and not self._hold and level < samples:
            # underrun: this is the FIFO's lowest point. Keep what is left and send silence for
            # as many packets as lift this lowest point to the raised target above a packet.
            self.stats.uplink_underruns += 1
            self.uplink.underrun(now)
            need = (self.uplink.target_ms + p.ptime) * rate / 1000 - level
            self._hold = max(1, -int(-need // samples))
        if self._hold or not self._primed:
            if self._hold:
                self._hold -= 1
                ready = False
            else:  # start (or new codec rate): prime to the target above the pusher's burst
                prime_ms = self.uplink.prime_level_ms(self._burst_ms())
                ready = buffered > 0 and buffered * 1000 >= prime_ms * rate
                self._primed = ready
            if not ready:  # silence until the pusher's audio is buffered
                session.send_audio(p.encoder.encode(p.silence), audio.payload_type, p.timestamp_step)
                return
        pcm = self.fifo.take(samples)
        session.send_audio(p.encoder.encode(pcm), audio.payload_type, p.timestamp_step)
        drop_ms = self.uplink.observe(now, (buffered - samples) * 1000 / rate)
        if drop_ms:  # done in tick_prepare: the search would delay the other calls' RTP
            self._drop_due += int(drop_ms * rate // 1000)

    def _drop_quietest(self, n: int) -> None:
        """Give back ``n`` samples of delay where the buffered PCM is quietest (a pause between
        words rather than a syllable), in 1 ms steps, among the decoded PCM (decoding all that
        is queued would cost one long tick when many calls give delay back together)."""
        self._decode_until(n + self._tick_samples())
        level = self.fifo.level()
        if n <= 0 or n > level:
            return
        rate = self.pipeline.sample_rate
        pcm = array("h", self.fifo.take(level))
        step = max(1, rate // 1000)
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
        self.stats.uplink_dropped_ms += n * 1000 / rate

    def tick_prepare(self, now_ms: float) -> None:
        """Every 20 ms, after every call's RTP and players' audio: decode enough of the
        publisher's audio for the next tick's packets (the rest waits for later ticks)."""
        if self.closed:
            return
        if self._drop_due:
            self._drop_quietest(self._drop_due)
            self._drop_due = 0
        if self._aac_pending:
            self._decode_until(self._tick_samples())

    def place(self, phase: float, first_tick: int) -> None:
        """Where this leg's AAC frames fall among the media clock's ticks (MediaClock.add): its
        first tick is ``first_tick``, and frames should end ``phase`` of a frame after those of
        a leg whose frames end on tick 0's boundary. Done with a lead-in of silence (under one
        frame) before the first PCM; what each sample waits for its frame is unchanged on average."""
        per_tick = self.aac_rate * TICK_MS // 1000
        self._aac_lead_in = int(phase * AAC_FRAME_SAMPLES + (first_tick - 1) * per_tick) % AAC_FRAME_SAMPLES

    # -- downlink: RTP → RTMP players ---------------------------------------------------------------------
    def tick_down(self, now_ms: float) -> None:
        """Every 20 ms, after every call's uplink: the far end's audio due now (or silence) to
        the players' AAC; RTCP when due."""
        if self.closed:
            return
        session, p = self.session, self.pipeline
        items = session.pull(now_ms, TICK_MS)
        if items is None or not self.audio.receives:  # nothing due from the far end: silence
            pcm = p.tick_silence
        elif not items:  # the last packet still covers this tick (ptime > 20 ms)
            pcm = b""
        else:
            parts = []
            for item in items:
                if isinstance(item, Frame):
                    parts.append(p.decoder.decode(item.payload))
                else:
                    parts.append(p.conceal(item.samples))
                    self.stats.concealed_ms += item.samples * 1000 / p.clock_rate
            pcm = b"".join(parts)
        if pcm:
            self.pcm_to_players(pcm)
        session.tick(now_ms)

    def pcm_to_players(self, pcm: bytes) -> None:
        if self.players is None:
            return
        if not self._aac_header_sent:
            self._aac_header_sent = True
            self.players.set_audio_header(flv.build_aac_sequence_header(self.aac_rate, 1))
        if self._audio_base_ms is None:
            self._audio_base_ms = self._elapsed_ms()
            if self._aac_lead_in:
                in_rate = self.aac_encoder.in_rate
                pcm = bytes(2 * (self._aac_lead_in * in_rate // self.aac_rate)) + pcm
        for frame in self.aac_encoder.encode(pcm):
            ts = self._audio_base_ms + frame.pts * 1000 // self.aac_rate
            self.players.send_audio(ts, flv.build_aac_raw(frame.data))

    def _elapsed_ms(self) -> int:
        return int((self.clock() - self._t0) * 1000)

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
        self.session.send_video(h264.packetize(nalus, MAX_VIDEO_PAYLOAD), ts)

    def _video_in(self, packet: RtpPacket) -> None:
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
            try:
                record = flv.AVCDecoderConfigurationRecord.from_sps_pps(sps, pps)
                header = flv.build_avc_sequence_header(record) if record != self._avc_out else None
            except flv.FlvError:
                # parameter sets no AVC record can hold (a truncated SPS, 32 of them): the far
                # end's garbage, counted like other bad RTP, never a traceback per packet
                self.stats.rtp_bad += 1
                return
            if header is not None:
                self._avc_out = record
                self.players.set_video_header(header)
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

