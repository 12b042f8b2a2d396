"""RTP packets (RFC 3550 §5) and the sender/receiver bookkeeping around them.

Sans-IO, standard library only. :meth:`RtpPacket.parse` is on the media hot path (every
received packet of every call), so it is written for speed: one ``struct.unpack_from`` for
the fixed header, slicing for the rest, no validation beyond what RFC 3550 requires.

* :func:`is_rtcp` demultiplexes RTP and RTCP on one port (rtcp-mux, RFC 5761 §4).
* :func:`seq_diff` and :class:`SequenceExtender` handle 16-bit sequence wrap-around.
* :class:`RtpSender` holds the outgoing stream's SSRC, sequence and timestamp
  (random initial values, RFC 3550 §5.1).
* :class:`ReceiverStats` implements RFC 3550 A.1 (sequence validation with probation),
  A.3 (expected/lost/fraction lost) and A.8 (interarrival jitter) for one remote source,
  with time passed in as an argument.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from b2bua.wire.rtcp import ReportBlock, ntp_middle32

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32

_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_unpack_header = _HEADER.unpack_from
_pack_header = _HEADER.pack


class RtpError(ValueError):
    """Bytes that are not a valid RTP packet."""


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (version 2).

    ``padding`` is the number of padding octets (0: the P bit is clear); it counts the final
    count octet, as on the wire. ``extension`` is the raw header-extension data (without its
    4-byte profile/length header, a multiple of 4 octets) or None when the X bit is clear;
    ``extension_profile`` is its 16-bit "defined by profile" field.
    """

    payload_type: int = 0
    sequence: int = 0
    timestamp: int = 0
    ssrc: int = 0
    payload: bytes = b""
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    padding: int = 0
    extension_profile: int = 0
    extension: bytes | None = None

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet; raises :class:`RtpError` on anything malformed."""
        try:
            b0, b1, sequence, timestamp, ssrc = _unpack_header(data)
        except struct.error:
            raise RtpError("RTP packet too short: %d bytes, need at least 12" % len(data))
        if b0 == 0x80:  # version 2, no padding, no extension, no CSRC: the common case
            return cls(b1 & 0x7F, sequence, timestamp, ssrc, data[12:], b1 > 0x7F)
        if b0 >> 6 != RTP_VERSION:
            raise RtpError("RTP version %d, expected 2" % (b0 >> 6))
        end = len(data)
        pos = RTP_HEADER_SIZE
        cc = b0 & 0x0F
        csrc: list[int] = []
        if cc:
            pos += 4 * cc
            if pos > end:
                raise RtpError(
                    "RTP packet truncated in CSRC list: %d CSRCs need %d bytes, have %d" % (cc, pos, end)
                )
            csrc = list(struct.unpack_from("!%dI" % cc, data, RTP_HEADER_SIZE))
        extension_profile = 0
        extension = None
        if b0 & 0x10:
            if pos + 4 > end:
                raise RtpError("RTP packet truncated in header extension header at offset %d" % pos)
            extension_profile, words = _EXT_HEADER.unpack_from(data, pos)
            pos += 4
            if pos + 4 * words > end:
                raise RtpError(
                    "RTP header extension of %d words overruns the packet (%d bytes left)"
                    % (words, end - pos)
                )
            extension = bytes(data[pos : pos + 4 * words])
            pos += 4 * words
        padding = 0
        if b0 & 0x20:
            if end == pos:
                raise RtpError("RTP padding bit set but no payload octets")
            padding = data[end - 1]
            if padding == 0:
                raise RtpError("RTP padding count is 0")
            if padding > end - pos:
                raise RtpError(
                    "RTP padding count %d exceeds the %d octets after the header" % (padding, end - pos)
                )
            end -= padding
        return cls(
            b1 & 0x7F,
            sequence,
            timestamp,
            ssrc,
            bytes(data[pos:end]),
            b1 > 0x7F,
            csrc,
            padding,
            extension_profile,
            extension,
        )

    def serialize(self) -> bytes:
        """The packet on the wire. Padding octets are zeros followed by the count."""
        b1 = self.payload_type | (0x80 if self.marker else 0)
        if not self.csrc and self.extension is None and not self.padding:
            return _pack_header(0x80, b1, self.sequence, self.timestamp, self.ssrc) + self.payload
        if not 0 <= self.payload_type <= 127:
            raise RtpError("payload type %d out of range 0..127" % self.payload_type)
        if len(self.csrc) > 15:
            raise RtpError("%d CSRCs, at most 15 allowed" % len(self.csrc))
        b0 = 0x80 | len(self.csrc)
        parts = [b""]
        if self.csrc:
            parts.append(struct.pack("!%dI" % len(self.csrc), *self.csrc))
        if self.extension is not None:
            if len(self.extension) % 4:
                raise RtpError("header extension length %d is not a multiple of 4" % len(self.extension))
            b0 |= 0x10
            parts.append(_EXT_HEADER.pack(self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        parts.append(self.payload)
        if self.padding:
            if not 1 <= self.padding <= 255:
                raise RtpError("padding %d out of range 1..255" % self.padding)
            b0 |= 0x20
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        parts[0] = _pack_header(b0, b1, self.sequence, self.timestamp, self.ssrc)
        return b"".join(parts)

    __bytes__ = serialize


def is_rtcp(data: bytes) -> bool:
    """True when a datagram on an rtcp-mux port is RTCP rather than RTP (RFC 5761 §4).

    RTCP packet types 192..223 land, with the marker bit masked off, in RTP payload types
    64..95, which RFC 5761 forbids for RTP when RTP and RTCP share a port.
    """
    return len(data) >= 2 and 64 <= (data[1] & 0x7F) <= 95


def seq_diff(a: int, b: int) -> int:
    """``a - b`` for 16-bit sequence numbers, in -32768..32767 (positive: ``a`` is newer)."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def ts_diff(a: int, b: int) -> int:
    """``a - b`` for 32-bit RTP timestamps, as a signed 32-bit value."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


class SequenceExtender:
    """Turns 16-bit sequence numbers into monotonic extended ones around the newest seen.

    A packet up to 32767 behind the newest is an old (reordered) one, anything else ahead.
    """

    __slots__ = ("highest",)

    def __init__(self) -> None:
        self.highest: int | None = None

    def extend(self, seq: int) -> int:
        """The extended sequence number of ``seq``; advances ``highest`` when it is newer."""
        if self.highest is None:
            self.highest = seq
            return seq
        ext = self.highest + seq_diff(seq, self.highest & 0xFFFF)
        if ext > self.highest:
            self.highest = ext
        return ext


class RtpSender:
    """Outgoing stream state: SSRC, next sequence number and next timestamp.

    All three start random (RFC 3550 §5.1) unless given. ``packet()`` stamps the current
    sequence and timestamp, then advances the sequence by one and the timestamp by
    ``ts_increment`` (the samples the payload covers).
    """

    __slots__ = ("ssrc", "sequence", "timestamp", "packets_sent", "octets_sent", "last_timestamp")

    def __init__(
        self,
        ssrc: int | None = None,
        sequence: int | None = None,
        timestamp: int | None = None,
        rng: random.Random | None = None,
    ):
        r = rng or random.SystemRandom()
        self.ssrc: int = r.getrandbits(32) if ssrc is None else ssrc
        self.sequence: int = r.getrandbits(16) if sequence is None else sequence
        self.timestamp: int = r.getrandbits(32) if timestamp is None else timestamp
        self.packets_sent = 0
        self.octets_sent = 0
        self.last_timestamp = self.timestamp

    def packet(
        self, payload: bytes, pt: int, ts_increment: int, marker: bool = False, timestamp: int | None = None
    ) -> RtpPacket:
        """The next packet. ``timestamp`` overrides the stamped value (telephone events keep
        the timestamp of their start) without changing how the stream's clock advances."""
        ts = self.timestamp if timestamp is None else timestamp & 0xFFFFFFFF
        p = RtpPacket(pt, self.sequence, ts, self.ssrc, payload, marker)
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + ts_increment) & 0xFFFFFFFF
        self.packets_sent += 1
        self.octets_sent += len(payload)
        self.last_timestamp = ts
        return p

    def skip(self, ts_increment: int) -> None:
        """Advance the clock without sending (silence suppression, hold)."""
        self.timestamp = (self.timestamp + ts_increment) & 0xFFFFFFFF


MAX_DROPOUT = 3000
MAX_MISORDER = 100
MIN_SEQUENTIAL = 2


class ReceiverStats:
    """Reception statistics for one remote source (RFC 3550 A.1, A.3, A.8).

    Call :meth:`update` for each received packet with its arrival time in milliseconds
    (any monotonic origin). A new SSRC restarts the statistics and counts ``ssrc_changes``
    (FreeSWITCH changes SSRC when it re-bridges a call). ``jitter`` is in timestamp units.
    """

    def __init__(self, clock_rate: int):
        if clock_rate <= 0:
            raise ValueError("clock rate must be positive, got %r" % (clock_rate,))
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self.ssrc_changes = 0
        self.last_sr_ntp_middle = 0
        self.last_sr_arrival_ms: float | None = None
        self._reset(0)

    def _reset(self, seq: int) -> None:
        self._init_seq(seq)
        self.max_seq = (seq - 1) & 0xFFFF
        self.probation = MIN_SEQUENTIAL
        self._transit: int | None = None
        self._jitter = 0.0

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def update(self, ssrc: int, seq: int, timestamp: int, arrival_ms: float) -> bool:
        """Account one packet; False when it fails validation (probation, or a big jump
        not yet confirmed) and should not be played."""
        if ssrc != self.ssrc:
            if self.ssrc is not None:
                self.ssrc_changes += 1
                self.last_sr_ntp_middle = 0
                self.last_sr_arrival_ms = None
            self.ssrc = ssrc
            self._reset(seq)
        if not self._update_seq(seq):
            return False
        # A.8: transit time in timestamp units; the 32-bit wrap of RTP timestamps is folded
        # out by taking the difference of transits modulo 2**32.
        arrival = int(arrival_ms * self.clock_rate / 1000.0)
        transit = (arrival - timestamp) & 0xFFFFFFFF
        if self._transit is not None:
            d = abs(ts_diff(transit, self._transit))
            self._jitter += (d - self._jitter) / 16.0
        self._transit = transit
        return True

    def _update_seq(self, seq: int) -> bool:
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self.probation = MIN_SEQUENTIAL - 1
                self.max_seq = seq
            return False
        if udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += SEQ_MOD
            self.max_seq = seq
        elif udelta <= SEQ_MOD - MAX_MISORDER:
            if seq == self.bad_seq:
                # Two sequential packets after a big jump: the source restarted. Keep the
                # SSRC; restart sequence accounting (jitter continues).
                self._init_seq(seq)
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        # else: duplicate or reordered packet, counted as received (RFC 3550 A.1)
        self.received += 1
        return True

    @property
    def extended_max(self) -> int:
        """Extended highest sequence number received."""
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1 if self.received else 0

    @property
    def cumulative_lost(self) -> int:
        """Packets lost, clamped to the signed 24-bit range of a report block."""
        lost = self.expected - self.received
        return max(-0x800000, min(0x7FFFFF, lost))

    @property
    def jitter(self) -> int:
        """Interarrival jitter estimate in timestamp units (RFC 3550 A.8)."""
        return int(self._jitter)

    def fraction_lost(self) -> int:
        """Loss since the previous call, as a fixed-point fraction of 256; advances the interval."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        self.expected_prior = expected
        received_interval = self.received - self.received_prior
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            return 0
        return (lost_interval << 8) // expected_interval

    def on_sender_report(self, ntp_timestamp: int, arrival_ms: float) -> None:
        """Remember an SR from this source for the LSR/DLSR fields of our next report."""
        self.last_sr_ntp_middle = ntp_middle32(ntp_timestamp)
        self.last_sr_arrival_ms = arrival_ms

    def report_block(self, now_ms: float) -> ReportBlock:
        """A report block about this source (advances the fraction-lost interval)."""
        if self.ssrc is None:
            raise ValueError("no packet received yet: no source to report on")
        dlsr = 0
        if self.last_sr_arrival_ms is not None:
            dlsr = max(0, int((now_ms - self.last_sr_arrival_ms) * 65.536))
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=self.fraction_lost(),
            cumulative_lost=self.cumulative_lost,
            highest_sequence=self.extended_max & 0xFFFFFFFF,
            jitter=min(self.jitter, 0xFFFFFFFF),
            lsr=self.last_sr_ntp_middle,
            dlsr=min(dlsr, 0xFFFFFFFF),
        )
