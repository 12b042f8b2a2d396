"""RTCP packets (RFC 3550 §6) and payload-specific feedback (RFC 4585 §6, RFC 5104 §4.3.1).

Sans-IO, standard library only. One class per packet type, each with ``serialize()``
(also ``bytes(packet)``) and a ``parse`` classmethod taking the whole RTCP packet;
:func:`parse_compound` splits a compound datagram into a list of them and
:func:`serialize_compound` joins them. APP packets (PT 204) and packet types this gateway
does not use (XR, …) are skipped, not rejected. Bad input raises :class:`RtcpError`.

Also here: NTP timestamp helpers and the round-trip time from a report block's LSR/DLSR
(RFC 3550 §6.4.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
RTCP_RTPFB = 205
RTCP_PSFB = 206

RTPFB_NACK = 1
PSFB_PLI = 1
PSFB_FIR = 4

SDES_END = 0
SDES_CNAME = 1

NTP_UNIX_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01

_HEADER = struct.Struct("!BBH")
_REPORT_BLOCK = struct.Struct("!IBBHIIII")  # ssrc, fraction, lost (24 bits as 8+16), ...
_SR_INFO = struct.Struct("!IQIII")
_II = struct.Struct("!II")


class RtcpError(ValueError):
    """Bytes that are not a valid RTCP packet."""


def _header(packet_type: int, count: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise RtcpError("RTCP packet body of %d bytes is not a multiple of 4" % len(body))
    if not 0 <= count <= 31:
        raise RtcpError("RTCP count/format %d out of range 0..31" % count)
    return _HEADER.pack(0x80 | count, packet_type, len(body) // 4) + body


def _split_header(data: bytes, packet_type: int) -> tuple[int, bytes]:
    """(count, body) of one RTCP packet of the given type, padding removed."""
    if len(data) < 4:
        raise RtcpError("RTCP packet too short: %d bytes, need at least 4" % len(data))
    b0, pt, words = _HEADER.unpack_from(data)
    if b0 >> 6 != 2:
        raise RtcpError("RTCP version %d, expected 2" % (b0 >> 6))
    if pt != packet_type:
        raise RtcpError("RTCP packet type %d, expected %d" % (pt, packet_type))
    end = 4 + 4 * words
    if end > len(data):
        raise RtcpError("RTCP length field says %d bytes, only %d present" % (end, len(data)))
    if b0 & 0x20:
        if end == 4:
            raise RtcpError("RTCP padding bit set on an empty packet")
        pad = data[end - 1]
        if pad == 0 or pad > end - 4:
            raise RtcpError("RTCP padding count %d invalid for a %d-byte body" % (pad, end - 4))
        end -= pad
    return b0 & 0x1F, bytes(data[4:end])


@dataclass(slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1). ``cumulative_lost`` is signed 24-bit."""

    ssrc: int
    fraction_lost: int = 0
    cumulative_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    SIZE = 24

    @classmethod
    def parse(cls, data: bytes, offset: int = 0) -> ReportBlock:
        if len(data) - offset < 24:
            raise RtcpError("report block truncated: %d bytes, need 24" % (len(data) - offset))
        ssrc, fraction, lost_hi, lost_lo, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        lost = (lost_hi << 16) | lost_lo
        if lost & 0x800000:
            lost -= 0x1000000
        return cls(ssrc, fraction, lost, highest, jitter, lsr, dlsr)

    def serialize(self) -> bytes:
        if not -0x800000 <= self.cumulative_lost <= 0x7FFFFF:
            raise RtcpError("cumulative lost %d does not fit 24 signed bits" % self.cumulative_lost)
        lost = self.cumulative_lost & 0xFFFFFF
        try:
            return _REPORT_BLOCK.pack(
                self.ssrc,
                self.fraction_lost,
                lost >> 16,
                lost & 0xFFFF,
                self.highest_sequence,
                self.jitter,
                self.lsr,
                self.dlsr,
            )
        except struct.error as e:
            raise RtcpError("report block field out of range: %s" % e)

    __bytes__ = serialize


def _parse_blocks(body: bytes, offset: int, count: int) -> list[ReportBlock]:
    if len(body) - offset < 24 * count:
        raise RtcpError("%d report blocks need %d bytes, have %d" % (count, 24 * count, len(body) - offset))
    return [ReportBlock.parse(body, offset + 24 * i) for i in range(count)]


def _check_blocks(reports: list[ReportBlock]) -> None:
    if len(reports) > 31:
        raise RtcpError("%d report blocks, at most 31 fit one packet" % len(reports))


@dataclass(slots=True)
class RtcpSenderReport:
    """SR, PT 200. ``ntp_timestamp`` is the full 64-bit NTP time."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> RtcpSenderReport:
        count, body = _split_header(data, RTCP_SR)
        if len(body) < 24:
            raise RtcpError("SR body truncated: %d bytes, need 24 before report blocks" % len(body))
        ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(body)
        return cls(ssrc, ntp, rtp_ts, packets, octets, _parse_blocks(body, 24, count))

    def serialize(self) -> bytes:
        _check_blocks(self.reports)
        try:
            info = _SR_INFO.pack(
                self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
            )
        except struct.error as e:
            raise RtcpError("SR field out of range: %s" % e)
        return _header(RTCP_SR, len(self.reports), info + b"".join(r.serialize() for r in self.reports))

    __bytes__ = serialize


@dataclass(slots=True)
class RtcpReceiverReport:
    """RR, PT 201."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> RtcpReceiverReport:
        count, body = _split_header(data, RTCP_RR)
        if len(body) < 4:
            raise RtcpError("RR body truncated: %d bytes, need 4 for the SSRC" % len(body))
        (ssrc,) = struct.unpack_from("!I", body)
        return cls(ssrc, _parse_blocks(body, 4, count))

    def serialize(self) -> bytes:
        _check_blocks(self.reports)
        body = struct.pack("!I", self.ssrc) + b"".join(r.serialize() for r in self.reports)
        return _header(RTCP_RR, len(self.reports), body)

    __bytes__ = serialize


@dataclass(slots=True)
class SdesChunk:
    """One SDES chunk: an SSRC and its (item type, value) pairs, in wire order."""

    ssrc: int
    items: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def cname(self) -> str | None:
        for kind, value in self.items:
            if kind == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(slots=True)
class RtcpSdes:
    """SDES, PT 202."""

    chunks: list[SdesChunk] = field(default_factory=list)

    @classmethod
    def cname_packet(cls, ssrc: int, cname: str) -> RtcpSdes:
        return cls([SdesChunk(ssrc, [(SDES_CNAME, cname.encode("utf-8"))])])

    @classmethod
    def parse(cls, data: bytes) -> RtcpSdes:
        count, body = _split_header(data, RTCP_SDES)
        chunks = []
        pos = 0
        for _ in range(count):
            if pos + 4 > len(body):
                raise RtcpError("SDES chunk %d truncated at its SSRC (offset %d)" % (len(chunks), pos))
            (ssrc,) = struct.unpack_from("!I", body, pos)
            pos += 4
            items = []
            while True:
                if pos >= len(body):
                    raise RtcpError("SDES chunk for SSRC %08x has no end item" % ssrc)
                kind = body[pos]
                if kind == SDES_END:
                    pos = (pos + 4) & ~3  # the end item and padding to the next 32-bit boundary
                    break
                if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
                    raise RtcpError("SDES item type %d truncated at offset %d" % (kind, pos))
                length = body[pos + 1]
                items.append((kind, body[pos + 2 : pos + 2 + length]))
                pos += 2 + length
            chunks.append(SdesChunk(ssrc, items))
        return cls(chunks)

    def serialize(self) -> bytes:
        if len(self.chunks) > 31:
            raise RtcpError("%d SDES chunks, at most 31 fit one packet" % len(self.chunks))
        parts = []
        for chunk in self.chunks:
            buf = bytearray(struct.pack("!I", chunk.ssrc))
            for kind, value in chunk.items:
                if not 1 <= kind <= 255 or len(value) > 255:
                    raise RtcpError("SDES item type %d with %d bytes is not encodable" % (kind, len(value)))
                buf += bytes((kind, len(value))) + value
            buf += bytes(4 - len(buf) % 4)  # at least one null octet ends the item list
            parts.append(bytes(buf))
        return _header(RTCP_SDES, len(self.chunks), b"".join(parts))

    __bytes__ = serialize


@dataclass(slots=True)
class RtcpBye:
    """BYE, PT 203."""

    sources: list[int] = field(default_factory=list)
    reason: bytes | None = None

    @classmethod
    def parse(cls, data: bytes) -> RtcpBye:
        count, body = _split_header(data, RTCP_BYE)
        if len(body) < 4 * count:
            raise RtcpError("BYE lists %d SSRCs but has only %d bytes" % (count, len(body)))
        sources = list(struct.unpack_from("!%dI" % count, body))
        reason = None
        pos = 4 * count
        if pos < len(body):
            length = body[pos]
            if pos + 1 + length > len(body):
                raise RtcpError("BYE reason of %d bytes overruns the packet" % length)
            reason = body[pos + 1 : pos + 1 + length]
        return cls(sources, reason)

    def serialize(self) -> bytes:
        if len(self.sources) > 31:
            raise RtcpError("%d BYE sources, at most 31 fit one packet" % len(self.sources))
        body = struct.pack("!%dI" % len(self.sources), *self.sources)
        if self.reason is not None:
            if len(self.reason) > 255:
                raise RtcpError("BYE reason of %d bytes, at most 255" % len(self.reason))
            r = bytes((len(self.reason),)) + self.reason
            body += r + bytes(-len(r) % 4)
        return _header(RTCP_BYE, len(self.sources), body)

    __bytes__ = serialize


def _feedback_header(data: bytes, packet_type: int, fmt: int) -> bytes:
    count, body = _split_header(data, packet_type)
    if count != fmt:
        raise RtcpError("feedback format %d, expected %d" % (count, fmt))
    if len(body) < 8:
        raise RtcpError("feedback packet body of %d bytes, need 8 for the SSRCs" % len(body))
    return body


@dataclass(slots=True)
class RtcpPli:
    """Picture Loss Indication: PSFB (PT 206) FMT 1, no FCI (RFC 4585 §6.3.1)."""

    sender_ssrc: int
    media_ssrc: int

    @classmethod
    def parse(cls, data: bytes) -> RtcpPli:
        body = _feedback_header(data, RTCP_PSFB, PSFB_PLI)
        sender, media = _II.unpack_from(body)
        return cls(sender, media)

    def serialize(self) -> bytes:
        return _header(RTCP_PSFB, PSFB_PLI, _II.pack(self.sender_ssrc, self.media_ssrc))

    __bytes__ = serialize


@dataclass(slots=True)
class RtcpFir:
    """Full Intra Request: PSFB (PT 206) FMT 4 (RFC 5104 §4.3.1).

    ``entries`` are (media SSRC, command sequence number) pairs; the header's media-source
    field is always 0 for FIR.
    """

    sender_ssrc: int
    entries: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> RtcpFir:
        body = _feedback_header(data, RTCP_PSFB, PSFB_FIR)
        (sender,) = struct.unpack_from("!I", body)
        if (len(body) - 8) % 8:
            raise RtcpError("FIR FCI of %d bytes is not a multiple of 8" % (len(body) - 8))
        entries = []
        for pos in range(8, len(body), 8):
            ssrc, word = _II.unpack_from(body, pos)
            entries.append((ssrc, word >> 24))
        return cls(sender, entries)

    def serialize(self) -> bytes:
        body = _II.pack(self.sender_ssrc, 0)
        for ssrc, seq in self.entries:
            if not 0 <= seq <= 255:
                raise RtcpError("FIR sequence number %d out of range 0..255" % seq)
            body += _II.pack(ssrc, seq << 24)
        return _header(RTCP_PSFB, PSFB_FIR, body)

    __bytes__ = serialize


@dataclass(slots=True)
class RtcpNack:
    """Generic NACK: RTPFB (PT 205) FMT 1 (RFC 4585 §6.2.1); ``lost`` lists sequence numbers."""

    sender_ssrc: int
    media_ssrc: int
    lost: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes) -> RtcpNack:
        body = _feedback_header(data, RTCP_RTPFB, RTPFB_NACK)
        sender, media = _II.unpack_from(body)
        if (len(body) - 8) % 4:
            raise RtcpError("NACK FCI of %d bytes is not a multiple of 4" % (len(body) - 8))
        lost = []
        for pos in range(8, len(body), 4):
            pid, blp = struct.unpack_from("!HH", body, pos)
            lost.append(pid)
            lost.extend((pid + i + 1) & 0xFFFF for i in range(16) if blp >> i & 1)
        return cls(sender, media, lost)

    def serialize(self) -> bytes:
        fci = b""
        pending = list(self.lost)
        while pending:
            pid = pending.pop(0)
            blp = 0
            rest = []
            for seq in pending:
                d = (seq - pid - 1) & 0xFFFF
                if d < 16:
                    blp |= 1 << d
                else:
                    rest.append(seq)
            pending = rest
            fci += struct.pack("!HH", pid & 0xFFFF, blp)
        return _header(RTCP_RTPFB, RTPFB_NACK, _II.pack(self.sender_ssrc, self.media_ssrc) + fci)

    __bytes__ = serialize


RtcpPacket = RtcpSenderReport | RtcpReceiverReport | RtcpSdes | RtcpBye | RtcpPli | RtcpFir | RtcpNack


def _parse_one(pt: int, fmt: int, data: bytes) -> RtcpPacket | None:
    if pt == RTCP_SR:
        return RtcpSenderReport.parse(data)
    if pt == RTCP_RR:
        return RtcpReceiverReport.parse(data)
    if pt == RTCP_SDES:
        return RtcpSdes.parse(data)
    if pt == RTCP_BYE:
        return RtcpBye.parse(data)
    if pt == RTCP_PSFB and fmt == PSFB_PLI:
        return RtcpPli.parse(data)
    if pt == RTCP_PSFB and fmt == PSFB_FIR:
        return RtcpFir.parse(data)
    if pt == RTCP_RTPFB and fmt == RTPFB_NACK:
        return RtcpNack.parse(data)
    return None  # APP, XR, other feedback: skipped


def parse_compound(data: bytes) -> list[RtcpPacket]:
    """Every packet of a compound RTCP datagram that this module knows, in order."""
    if len(data) < 4:
        raise RtcpError("RTCP datagram too short: %d bytes, need at least 4" % len(data))
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise RtcpError("%d trailing bytes after RTCP packet at offset %d" % (len(data) - pos, pos))
        b0, pt, words = _HEADER.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise RtcpError("RTCP version %d at offset %d, expected 2" % (b0 >> 6, pos))
        end = pos + 4 + 4 * words
        if end > len(data):
            raise RtcpError(
                "RTCP packet at offset %d claims %d bytes, only %d remain" % (pos, end - pos, len(data) - pos)
            )
        packet = _parse_one(pt, b0 & 0x1F, data[pos:end])
        if packet is not None:
            packets.append(packet)
        pos = end
    return packets


def serialize_compound(packets: list[RtcpPacket]) -> bytes:
    return b"".join(p.serialize() for p in packets)


def ntp_from_unix(seconds: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point since 1900) of a Unix time in seconds."""
    return int(round((seconds + NTP_UNIX_OFFSET) * (1 << 32))) & 0xFFFFFFFFFFFFFFFF


def ntp_to_unix(ntp: int) -> float:
    """Unix time in seconds of a 64-bit NTP timestamp (era 0: until 2036)."""
    return ntp / (1 << 32) - NTP_UNIX_OFFSET


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp: the LSR field of a report block."""
    return (ntp >> 16) & 0xFFFFFFFF


def rtt_seconds(arrival_ntp: int, lsr: int, dlsr: int) -> float | None:
    """Round-trip time from a report block received at ``arrival_ntp`` (64-bit NTP wall time).

    RFC 3550 §6.4.1: RTT = A - LSR - DLSR in units of 1/65536 s. None when the block carries
    no LSR (the peer has not received an SR from us yet); clock skew that makes it negative
    gives 0.
    """
    if lsr == 0:
        return None
    rtt = (ntp_middle32(arrival_ntp) - lsr - dlsr) & 0xFFFFFFFF
    if rtt & 0x80000000:
        return 0.0
    return rtt / 65536.0
