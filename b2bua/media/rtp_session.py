"""The RTP session of one leg: everything about the far end's RTP that outlives a re-INVITE.

One :class:`RtpSession` per leg, from its first negotiated media to its end. It owns what a
renegotiation must not reset (aiortc's transport/receiver split: the transport routes, the
receivers keep per-SSRC state):

* the sockets' handlers, the check that RTP and RTCP come from the negotiated host, and
  symmetric-RTP latching (RFC 4961), dropped at once when an SDP names a new address;
* our outgoing streams (:class:`RtpSender`: one SSRC, continuous sequence and timestamps);
* per remote SSRC, a :class:`RemoteSource` (RFC 3550 statistics, sequence and timestamp
  tracking, the last SR for our reports), which a change of SSRC does not disturb;
* the downlink jitter buffer (it remembers the SSRCs it left, so A→B→A plays A again), and
  the telephone-event receiver;
* RTCP: our SR/RR every 5 s with a report block per source heard, the far end's reports (RTT);
* SRTP and SRTCP (SDES keys, libsrtp through pylibsrtp): one :class:`SrtpStream` per stream,
  whose libsrtp contexts live as long as their keys, so the rollover counter follows the
  sequence numbers across their wrap in both directions.

:meth:`RtpSession.apply` takes each new negotiation and changes only what it changed: a
re-INVITE that changes nothing in the media changes nothing here (same keys: same contexts).
Codecs are not here (see ``pipeline.py``): packets go in and out as payloads.
"""

from __future__ import annotations

from collections.abc import Callable

import pylibsrtp
from twisted.logger import Logger

from b2bua.media.adaptive import AdaptiveTarget
from b2bua.media.jitterbuffer import Frame, Gap, JitterBuffer
from b2bua.media.stats import LegStats
from b2bua.wire.dtmf import DtmfReceiver
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
from b2bua.wire.sdp import NegotiatedStream, SrtpKeys

log = Logger()

JITTER_MIN_MS, JITTER_MAX_MS = 20, 160  # the downlink jitter buffer's adaptive target
RTCP_INTERVAL_MS = 5000
MAX_SOURCES = 8  # remote SSRCs kept (a PBX re-bridging many times keeps only the recent ones)
MAX_REPORT_BLOCKS = 31  # RFC 3550 §6.4: the 5-bit count of an SR/RR


SRTP_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}
# "authentication failure", and "unable to perform desired validation" (SRTCP that says it is
# not encrypted while the policy says it must be: not authenticated either)
_AUTH_FAILED = frozenset((pylibsrtp.ERRORS[7], pylibsrtp.ERRORS[14]))
_REPLAYED = frozenset(pylibsrtp.ERRORS[9:11])  # "replay check failed (bad index | index too old)"


class SrtpError(Exception):
    """An SRTP or SRTCP packet refused: ``kind`` is ``auth`` (forged, damaged, wrong key),
    ``replay`` (seen already) or ``bad`` (anything else libsrtp refuses)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def _context(suite: str, key: bytes, direction: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=key, ssrc_type=direction, srtp_profile=SRTP_PROFILES[suite])
    return pylibsrtp.Session(policy)


class SrtpStream:
    """SRTP/SRTCP of one stream: our context (any SSRC we send) and the far end's (any SSRC it
    sends). A new key replaces only the context it belongs to; the far end's previous context
    is kept until a packet authenticates with the new one, for the packets in flight when it
    re-keyed (a re-INVITE's answer and the far end's switch are never simultaneous)."""

    def __init__(self, keys: SrtpKeys) -> None:
        self.keys = keys
        self._tx = _context(keys.suite, keys.local_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self._rx = _context(keys.suite, keys.remote_key, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self._rx_old: pylibsrtp.Session | None = None

    def rekey(self, keys: SrtpKeys) -> None:
        """New keys from a renegotiation: new contexts only where a key (or the suite) changed."""
        old = self.keys
        if keys == old:
            return
        if (keys.suite, keys.local_key) != (old.suite, old.local_key):
            self._tx = _context(keys.suite, keys.local_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        if (keys.suite, keys.remote_key) != (old.suite, old.remote_key):
            self._rx_old = self._rx
            self._rx = _context(keys.suite, keys.remote_key, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self.keys = keys

    def protect(self, packet: bytes) -> bytes:
        return self._tx.protect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._tx.protect_rtcp(packet)

    def unprotect(self, packet: bytes) -> bytes:
        return self._unprotect(packet, rtcp=False)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        return self._unprotect(packet, rtcp=True)

    def _unprotect(self, packet: bytes, rtcp: bool) -> bytes:
        try:
            out = self._rx.unprotect_rtcp(packet) if rtcp else self._rx.unprotect(packet)
        except pylibsrtp.Error as e:
            if self._rx_old is not None:
                try:
                    return self._rx_old.unprotect_rtcp(packet) if rtcp else self._rx_old.unprotect(packet)
                except pylibsrtp.Error:
                    pass
            text = str(e)
            kind = "auth" if text in _AUTH_FAILED else "replay" if text in _REPLAYED else "bad"
            raise SrtpError(kind, text) from None
        self._rx_old = None  # the far end uses its new key: the old one is done
        return out


def _srtp_for(keys: SrtpKeys | None, current: SrtpStream | None) -> SrtpStream | None:
    """The stream's SRTP after a negotiation: kept, re-keyed, started or stopped."""
    if keys is None:
        return None
    if current is None:
        return SrtpStream(keys)
    current.rekey(keys)
    return current


class RemoteSource:
    """What we know of one SSRC of the far end; kept when it stops and when it comes back."""

    __slots__ = ("ssrc", "stats", "heard")

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.stats = ReceiverStats(clock_rate)
        self.heard = True  # since our last report


class RtpSession:
    """One leg's RTP/RTCP toward the far end. ``sockets`` has ``audio_rtp``, ``audio_rtcp``,
    ``video_rtp``, ``video_rtcp`` (b2bua.media.leg.RtpSocket); ``stats`` is the leg's live
    :class:`LegStats`, written here for what the session sees."""

    def __init__(
        self,
        sockets,
        audio: NegotiatedStream,
        video: NegotiatedStream | None,
        stats: LegStats,
        clock: Callable[[], float],
        on_dtmf: Callable[[str], None],
        on_video: Callable[[RtpPacket], None] | None = None,
    ) -> None:
        self.sockets = sockets
        self.stats = stats
        self.clock = clock
        self.on_dtmf = on_dtmf
        self.on_video = on_video
        self.audio = audio
        self.video = video
        # datagrams from the far end's address (RTP or RTCP, audio or video, even unparsable):
        # what the dead-call watchdog (b2bua/call/watchdog.py) reads
        self.packets_in = 0
        self.sender = RtpSender()  # one SSRC, sequence and timestamp for the leg's life (RFC 3550)
        self.video_sender = RtpSender()
        self.sources: dict[int, RemoteSource] = {}
        self.jitter = JitterBuffer(
            audio.clock_rate,
            audio.ptime,
            JITTER_MIN_MS,
            max_ms=JITTER_MAX_MS + max(40, audio.ptime),
            adaptive=AdaptiveTarget(JITTER_MIN_MS, JITTER_MAX_MS, packet_ms=20),
        )
        self.dtmf_receiver = DtmfReceiver()
        self._last_rtcp_ms: float | None = None
        self._sr_sent: dict[int, float] = {}
        self.closed = False
        self.srtp = _srtp_for(audio.srtp, None)
        self.video_srtp = _srtp_for(video.srtp, None) if video is not None else None
        stats.srtp = audio.srtp.suite if audio.srtp is not None else None
        sockets.audio_rtp.handler = self._rtp_in
        sockets.audio_rtcp.handler = self._rtcp_in
        sockets.video_rtp.handler = self._video_in
        sockets.video_rtcp.handler = self._video_rtcp_in

    # -- negotiation ------------------------------------------------------------------------------------
    def apply(self, audio: NegotiatedStream, video: NegotiatedStream | None) -> None:
        """A new offer/answer. Only what it changed changes: a new far-end address drops the
        latch at once (we send to the SDP's address until the new one sends); a new codec
        flushes the jitter buffer; a new SRTP key replaces that key's context (unchanged keys
        keep theirs, and with them the rollover counters). Statistics, SSRCs, sequence numbers
        and the buffer's learnt target stay."""
        old = self.audio
        socks = self.sockets
        if (old.remote_addr, old.remote_port) != (audio.remote_addr, audio.remote_port):
            socks.audio_rtp.remote = None
        if (old.remote_addr, old.remote_rtcp_port) != (audio.remote_addr, audio.remote_rtcp_port):
            socks.audio_rtcp.remote = None
        oldv = self.video
        if oldv is None or video is None or (oldv.remote_addr, oldv.remote_port) != (
            video.remote_addr,
            video.remote_port,
        ):
            socks.video_rtp.remote = None
        if (old.codec.lower(), old.clock_rate) != (audio.codec.lower(), audio.clock_rate):
            self.jitter.reconfigure(audio.clock_rate, audio.ptime)
        elif old.ptime != audio.ptime:
            self.jitter.expect_ptime(audio.ptime)
        self.srtp = _srtp_for(audio.srtp, self.srtp)
        self.video_srtp = _srtp_for(video.srtp, self.video_srtp) if video is not None else None
        self.stats.srtp = audio.srtp.suite if audio.srtp is not None else None
        self.audio, self.video = audio, video

    # -- sending ----------------------------------------------------------------------------------------
    def send_audio(
        self, payload: bytes, pt: int, ts_step: int, marker: bool = False, timestamp: int | None = None
    ) -> None:
        packet = self.sender.packet(payload, pt, ts_step, marker=marker, timestamp=timestamp)
        sock = self.sockets.audio_rtp
        data = packet.serialize()
        if self.srtp is not None:
            data = self.srtp.protect(data)
        # symmetric RTP: once the far end's packets arrive, answer to where they come from
        sock.send(data, sock.remote or (self.audio.remote_addr, self.audio.remote_port))
        self.stats.rtp_sent += 1

    def send_video(self, payloads: list[bytes], timestamp: int) -> None:
        video = self.video
        if video is None:
            return
        sock = self.sockets.video_rtp
        target = sock.remote or (video.remote_addr, video.remote_port)
        last = len(payloads) - 1
        for i, data in enumerate(payloads):
            packet = self.video_sender.packet(
                data, video.payload_type, 0, marker=i == last, timestamp=timestamp
            )
            data = packet.serialize()
            if self.video_srtp is not None:
                data = self.video_srtp.protect(data)
            sock.send(data, target)
            self.stats.video_sent += 1

    # -- receiving --------------------------------------------------------------------------------------
    def _accept(self, addr: tuple[str, int], host: str) -> bool:
        """Only the negotiated far end may feed this leg: nobody else can inject or steal media."""
        if addr[0] != host:
            self.stats.rtp_foreign += 1
            return False
        return True

    def _rtp_in(self, data: bytes, addr: tuple[str, int]) -> None:
        audio = self.audio
        if addr[0] != audio.remote_addr:
            self.stats.rtp_foreign += 1
            return
        if is_rtcp(data):  # rtcp-mux
            self._rtcp_in(data, addr)
            return
        packet = self._packet_in(data, self.srtp)
        if packet is None:
            return
        self.stats.rtp_received += 1
        pt = packet.payload_type
        if pt != audio.payload_type and pt != audio.dtmf_payload_type:
            self.stats.rtp_foreign += 1
            return
        sock = self.sockets.audio_rtp
        if sock.remote != addr:  # symmetric RTP (RFC 4961): answer to where valid RTP comes from
            sock.remote = addr
        now_ms = self.clock() * 1000.0
        source = self.sources.get(packet.ssrc)
        if source is None:
            source = self._new_source(packet.ssrc)
        source.heard = True
        if pt == audio.dtmf_payload_type:
            digit = self.dtmf_receiver.receive(packet.payload, packet.timestamp)
            if digit is not None:
                self.on_dtmf(digit)
            return
        source.stats.update(packet.ssrc, packet.sequence, packet.timestamp, now_ms)
        self.jitter.put(packet, now_ms)

    def _packet_in(self, data: bytes, srtp: SrtpStream | None) -> RtpPacket | None:
        """An RTP datagram from the far end, counted (the dead-call watchdog), unprotected and
        parsed; None when it fails authentication or parsing (counted)."""
        self.packets_in += 1
        if srtp is not None:
            data = self._unprotect(srtp, data, rtcp=False)
            if data is None:
                return None
        try:
            return RtpPacket.parse(data)
        except RtpError:
            self.stats.rtp_bad += 1
            return None

    def _new_source(self, ssrc: int) -> RemoteSource:
        while len(self.sources) >= MAX_SOURCES:
            self.sources.pop(next(iter(self.sources)))
        source = self.sources[ssrc] = RemoteSource(ssrc, self.audio.clock_rate)
        return source

    def pull(self, now_ms: float, tick_ms: float) -> list[Frame | Gap] | None:
        """The downlink audio due for one tick (see :meth:`JitterBuffer.pull`)."""
        return self.jitter.pull(now_ms, tick_ms)

    def _video_in(self, data: bytes, addr: tuple[str, int]) -> None:
        video = self.video
        if video is None or not self._accept(addr, video.remote_addr):
            return
        if is_rtcp(data):
            self._rtcp_packets(data, addr, self.video_srtp, None)
            return
        packet = self._packet_in(data, self.video_srtp)
        if packet is None:
            return
        if packet.payload_type != video.payload_type:
            return
        sock = self.sockets.video_rtp
        if sock.remote != addr:
            sock.remote = addr
        self.stats.video_received += 1
        if self.on_video is not None:
            self.on_video(packet)

    # -- RTCP -------------------------------------------------------------------------------------------
    def tick(self, now_ms: float) -> None:
        """Called every media tick: our RTCP report every RTCP_INTERVAL_MS."""
        if self._last_rtcp_ms is None or now_ms - self._last_rtcp_ms >= RTCP_INTERVAL_MS:
            self._last_rtcp_ms = now_ms
            self.send_rtcp(now_ms)

    def _report_blocks(self, now_ms: float) -> list[ReportBlock]:
        blocks = []
        for source in self.sources.values():
            if source.heard and source.stats.received and len(blocks) < MAX_REPORT_BLOCKS:
                blocks.append(source.stats.report_block(now_ms))
            source.heard = False
        return blocks

    def send_rtcp(self, now_ms: float) -> None:
        now = self.clock()
        ntp = ntp_from_unix(now)
        packets: list = []
        reports = self._report_blocks(now_ms)
        sender = self.sender
        if self.stats.rtp_sent:
            packets.append(
                RtcpSenderReport(
                    ssrc=sender.ssrc,
                    ntp_timestamp=ntp,
                    rtp_timestamp=sender.timestamp,
                    packet_count=sender.packets_sent,
                    octet_count=sender.octets_sent,
                    reports=reports,
                )
            )
            self._sr_sent[ntp_middle32(ntp)] = now
            if len(self._sr_sent) > 8:
                self._sr_sent.pop(next(iter(self._sr_sent)))
        else:
            packets.append(RtcpReceiverReport(ssrc=sender.ssrc, reports=reports))
        packets.append(RtcpSdes.cname_packet(sender.ssrc, "mpb2bua"))
        audio = self.audio
        socks = self.sockets
        target = socks.audio_rtcp.remote or (audio.remote_addr, audio.remote_rtcp_port)
        sock = socks.audio_rtp if audio.rtcp_mux else socks.audio_rtcp
        data = serialize_compound(packets)
        if self.srtp is not None:
            data = self.srtp.protect_rtcp(data)
        sock.send(data, target)
        self.update_jitter()

    def update_jitter(self) -> None:
        """The interarrival jitter of the source playing now, in ms, into the stats."""
        source = self.sources.get(self.jitter.ssrc) if self.jitter.ssrc is not None else None
        if source is not None:
            self.stats.jitter_ms = source.stats.jitter * 1000 / source.stats.clock_rate

    def _unprotect(self, srtp: SrtpStream, data: bytes, rtcp: bool) -> bytes | None:
        """The packet in clear, or None (counted) when SRTP refuses it: dropped, the call goes on."""
        try:
            return srtp.unprotect_rtcp(data) if rtcp else srtp.unprotect(data)
        except SrtpError as e:
            st = self.stats
            if e.kind == "auth":
                st.srtp_auth_failed += 1
                if st.srtp_auth_failed in (1, 100, 10000):
                    log.info("SRTP: {n} packet(s) failed authentication (dropped)", n=st.srtp_auth_failed)
            elif e.kind == "replay":
                st.srtp_replayed += 1
            else:
                st.rtp_bad += 1
            return None

    def _rtcp_in(self, data: bytes, addr: tuple[str, int]) -> None:
        audio = self.audio
        if addr[0] != audio.remote_addr:
            self.stats.rtp_foreign += 1
            return
        self._rtcp_packets(data, addr, self.srtp, None if audio.rtcp_mux else self.sockets.audio_rtcp)

    def _video_rtcp_in(self, data: bytes, addr: tuple[str, int]) -> None:
        video = self.video
        if video is None or not self._accept(addr, video.remote_addr):
            return
        self._rtcp_packets(data, addr, self.video_srtp, None)

    def _rtcp_packets(self, data: bytes, addr: tuple[str, int], srtp: SrtpStream | None, latch) -> None:
        """A datagram of (S)RTCP from the far end's host; ``latch``: the socket that answers
        where it comes from once it proved genuine."""
        self.packets_in += 1
        if srtp is not None:
            data = self._unprotect(srtp, data, rtcp=True)
            if data is None:
                return
        if latch is not None and latch.remote != addr:
            latch.remote = addr
        try:
            packets = parse_compound(data)
        except ValueError:
            self.stats.extra["rtcp_bad"] = self.stats.extra.get("rtcp_bad", 0) + 1
            return
        for packet in packets:
            if isinstance(packet, RtcpSenderReport | RtcpReceiverReport):
                if isinstance(packet, RtcpSenderReport):
                    source = self.sources.get(packet.ssrc)
                    if source is not None:
                        source.stats.on_sender_report(packet.ntp_timestamp, self.clock() * 1000.0)
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
        rtt = rtt_seconds(ntp_from_unix(self.clock()), block.lsr, block.dlsr)  # it takes the 64-bit time
        if rtt is not None:
            self.stats.rtt_ms = rtt * 1000

    # -- end --------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Detach from the sockets (the leg closes them) and settle the statistics."""
        if self.closed:
            return
        self.closed = True
        socks = self.sockets
        for sock in (socks.audio_rtp, socks.audio_rtcp, socks.video_rtp, socks.video_rtcp):
            sock.handler = None
        js = self.jitter.stats
        st = self.stats
        st.lost, st.late, st.jitter_stretched, st.jitter_shrunk = js.lost, js.late, js.stretched, js.shrunk
        self.update_jitter()
