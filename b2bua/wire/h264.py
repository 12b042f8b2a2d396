"""H.264 over RTP, packetization mode 1 (RFC 6184 §5.6-§5.8), and the byte-stream forms.

Sans-IO, standard library only. Video passes through the gateway without transcoding, so
this module only moves NAL units between framings:

* RTP (RFC 6184): :func:`packetize` turns one access unit into RTP payloads (single NAL
  unit packets, STAP-A for runs of small NAL units such as SPS+PPS, FU-A for NAL units
  larger than the MTU); :class:`Depacketizer` reassembles access units from RTP payloads.
* Annex B byte stream (start codes, what encoders and ``.h264`` files produce):
  :func:`annexb_split`, :func:`to_annexb`.
* AVCC (length-prefixed, what FLV/RTMP carries): :func:`to_avcc`, :func:`avcc_split`, and
  :class:`AvcConfig`, the AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.2.4.1) an FLV
  "AVC sequence header" carries.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
STAP_A = 24
STAP_B = 25
MTAP16 = 26
MTAP24 = 27
FU_A = 28
FU_B = 29

_FU_START = 0x80
_FU_END = 0x40

# RTP payload bytes one access unit may take (a 1080p key frame is well under 1 MiB); beyond it
# the unit is dropped, so that a peer never ending an FU-A or an access unit cannot grow memory.
MAX_ACCESS_UNIT_SIZE = 4 * 1024 * 1024


class H264Error(ValueError):
    """A NAL unit, RTP payload or byte stream that cannot be used."""


def nal_type(nalu: bytes) -> int:
    """``nal_unit_type``: the low five bits of the first octet."""
    if not nalu:
        raise H264Error("empty NAL unit has no type")
    return nalu[0] & 0x1F


def nal_ref_idc(nalu: bytes) -> int:
    """``nal_ref_idc`` (NRI): 0 means no other picture depends on this NAL unit."""
    if not nalu:
        raise H264Error("empty NAL unit has no NRI")
    return (nalu[0] >> 5) & 0x03


def is_keyframe(nalus: list[bytes]) -> bool:
    """True when the access unit holds an IDR slice (type 5)."""
    return any(n and n[0] & 0x1F == NAL_IDR for n in nalus)


def packetize(nalus: list[bytes], mtu: int = 1200) -> list[bytes]:
    """RTP payloads for one access unit; the caller sets the marker bit on the last one.

    Consecutive NAL units that fit together within ``mtu`` go into one STAP-A, a NAL unit
    larger than ``mtu`` is split into FU-A fragments, any other is sent as it is.
    """
    if mtu < 3:
        raise H264Error("MTU %d too small: an FU-A needs 2 header octets and 1 of data" % mtu)
    out: list[bytes] = []
    group: list[bytes] = []
    group_size = 1  # the STAP-A header octet

    def flush() -> None:
        if len(group) == 1:
            out.append(group[0])
        elif group:
            f = 0
            nri = 0
            parts = []
            for n in group:
                f |= n[0] & 0x80
                nri = max(nri, n[0] & 0x60)
                parts.append(struct.pack("!H", len(n)))
                parts.append(n)
            out.append(bytes((f | nri | STAP_A,)) + b"".join(parts))
        group.clear()

    for i, nalu in enumerate(nalus):
        if not nalu:
            raise H264Error("NAL unit %d is empty" % i)
        if not 1 <= nalu[0] & 0x1F <= 23:
            raise H264Error("NAL unit %d has type %d, not a single NAL unit type 1..23" % (i, nalu[0] & 0x1F))
        if len(nalu) > mtu:
            flush()
            group_size = 1
            indicator = bytes(((nalu[0] & 0xE0) | FU_A,))
            kind = nalu[0] & 0x1F
            step = mtu - 2
            last = len(nalu) - 1 - step  # offset in the payload where the final fragment may start
            for pos in range(1, len(nalu), step):
                header = kind | (_FU_START if pos == 1 else 0) | (_FU_END if pos > last else 0)
                out.append(indicator + bytes((header,)) + nalu[pos : pos + step])
        elif group and group_size + 2 + len(nalu) <= mtu:
            group.append(nalu)
            group_size += 2 + len(nalu)
        else:
            flush()
            group.append(nalu)
            group_size = 3 + len(nalu)
    flush()
    return out


@dataclass(slots=True)
class AccessUnit:
    """The NAL units of one picture (one RTP timestamp). ``damaged`` is set when packets
    were lost around it or a NAL unit of it was dropped: ask the sender for a key frame."""

    timestamp: int
    nalus: list[bytes] = field(default_factory=list)
    damaged: bool = False


class Depacketizer:
    """RTP payloads (in sequence order) to access units, for packetization mode 1.

    An access unit is complete when the marker bit is set or the timestamp changes. A gap
    in sequence numbers drops the FU-A being reassembled (and marks the access unit damaged);
    FU-A fragments whose start was lost are dropped; other NAL units of the same access
    unit are kept. Reordered packets count as loss: reorder video upstream if needed.
    A malformed payload raises :class:`H264Error` after marking the access unit damaged; so does
    a packet that takes the access unit beyond ``max_access_unit`` payload bytes, after dropping
    what was gathered of it.
    """

    def __init__(self, max_access_unit: int = MAX_ACCESS_UNIT_SIZE) -> None:
        self.max_access_unit = max_access_unit
        self._size = 0  # payload bytes received for the access unit in progress
        self._ts: int | None = None
        self._nalus: list[bytes] = []
        self._damaged = False
        self._fu: bytearray | None = None
        self._fu_dropped = False  # the FU-A in progress was dropped: discard its remaining fragments
        self._last_seq: int | None = None
        self.lost_packets = 0
        self.dropped_nalus = 0
        self.duplicates = 0

    def _drop_fu(self) -> None:
        if self._fu is not None:
            self._fu = None
            self._fu_dropped = True
            self.dropped_nalus += 1
            self._damaged = True

    def _flush(self) -> list[AccessUnit]:
        self._drop_fu()
        au = AccessUnit(self._ts or 0, self._nalus, self._damaged)
        self._nalus = []
        self._size = 0
        self._damaged = False
        self._ts = None
        return [au] if au.nalus else []

    def flush(self) -> list[AccessUnit]:
        """Whatever is pending (end of stream); an unfinished FU-A is dropped."""
        return self._flush()

    def push(self, payload: bytes, sequence: int, timestamp: int, marker: bool) -> list[AccessUnit]:
        """Feed one RTP packet; returns the access units it completes (0, 1 or 2)."""
        out: list[AccessUnit] = []
        gap = False
        if self._last_seq is not None:
            delta = (sequence - self._last_seq) & 0xFFFF
            if delta == 0:
                self.duplicates += 1
                return out
            if delta != 1:
                gap = True
                if delta < 0x8000:
                    self.lost_packets += delta - 1
                self._drop_fu()
                self._damaged = True
        self._last_seq = sequence
        if self._ts is not None and timestamp != self._ts:
            out.extend(self._flush())
            self._damaged = gap
        self._ts = timestamp
        self._size += len(payload)
        if self._size > self.max_access_unit:
            self._drop_fu()
            self.dropped_nalus += len(self._nalus)
            self._nalus = []
            self._size = 0
            self._damaged = True
            raise H264Error("access unit larger than %d bytes: dropped" % self.max_access_unit)
        try:
            self._add(payload)
        except H264Error:
            self._drop_fu()
            self._damaged = True
            raise
        if marker:
            out.extend(self._flush())
        return out

    def _add(self, payload: bytes) -> None:
        if not payload:
            raise H264Error("empty RTP payload")
        kind = payload[0] & 0x1F
        if 1 <= kind <= 23:
            self._drop_fu()  # a single NAL unit in the middle of an FU-A: its end is gone
            self._nalus.append(bytes(payload))
        elif kind == STAP_A:
            self._drop_fu()
            nalus = []
            pos = 1
            while pos < len(payload):
                if pos + 2 > len(payload):
                    raise H264Error("STAP-A truncated in a NAL unit size at offset %d" % pos)
                (size,) = struct.unpack_from("!H", payload, pos)
                pos += 2
                if size == 0:
                    raise H264Error("STAP-A holds a zero-length NAL unit at offset %d" % (pos - 2))
                if pos + size > len(payload):
                    raise H264Error(
                        "STAP-A NAL unit of %d bytes at offset %d overruns the %d-byte payload"
                        % (size, pos, len(payload))
                    )
                nalus.append(bytes(payload[pos : pos + size]))
                pos += size
            if not nalus:
                raise H264Error("STAP-A with no NAL units")
            self._nalus.extend(nalus)
        elif kind == FU_A:
            if len(payload) < 3:
                raise H264Error("FU-A payload of %d bytes, need at least 3" % len(payload))
            header = payload[1]
            start = header & _FU_START
            end = header & _FU_END
            if start and end:
                raise H264Error("FU-A with both start and end bits set")
            inner = header & 0x1F
            if start:
                self._drop_fu()
                self._fu_dropped = False
                self._fu = bytearray(((payload[0] & 0xE0) | inner,))
                self._fu += payload[2:]
                return
            fu = self._fu
            if fu is None or fu[0] & 0x1F != inner:
                self._drop_fu()
                if end:
                    if not self._fu_dropped:  # a NAL unit whose start was lost: count it once, at its end
                        self.dropped_nalus += 1
                    self._fu_dropped = False
                self._damaged = True
                return
            fu += payload[2:]
            if end:
                self._nalus.append(bytes(fu))
                self._fu = None
        elif kind in (STAP_B, MTAP16, MTAP24, FU_B):
            raise H264Error("NAL unit type %d needs interleaved mode, not packetization mode 1" % kind)
        else:
            raise H264Error("undefined RTP payload NAL unit type %d" % kind)


def annexb_split(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (3- or 4-byte start codes; trailing zeros dropped)."""
    first = data.find(b"\x00\x00\x01")
    if first < 0:
        raise H264Error("no Annex B start code in %d bytes" % len(data))
    if data[:first].strip(b"\x00"):
        raise H264Error("%d bytes of garbage before the first start code" % first)
    nalus = []
    pos = first + 3
    while True:
        nxt = data.find(b"\x00\x00\x01", pos)
        chunk = data[pos:] if nxt < 0 else data[pos:nxt]
        chunk = chunk.rstrip(b"\x00")
        if chunk:
            nalus.append(bytes(chunk))
        if nxt < 0:
            return nalus
        pos = nxt + 3


def to_annexb(nalus: list[bytes]) -> bytes:
    """An Annex B byte stream with 4-byte start codes."""
    return b"".join(b"\x00\x00\x00\x01" + n for n in nalus)


_LENGTH_FORMATS = {1: "!B", 2: "!H", 4: "!I"}


def to_avcc(nalus: list[bytes], length_size: int = 4) -> bytes:
    """Length-prefixed NAL units (the AVCC form of an FLV video tag body)."""
    try:
        fmt = struct.Struct(_LENGTH_FORMATS[length_size])
    except KeyError:
        raise H264Error("AVCC length size %r, expected 1, 2 or 4" % (length_size,))
    limit = 1 << (8 * length_size)
    parts = []
    for n in nalus:
        if len(n) >= limit:
            raise H264Error("NAL unit of %d bytes does not fit a %d-byte length" % (len(n), length_size))
        parts.append(fmt.pack(len(n)))
        parts.append(n)
    return b"".join(parts)


def avcc_split(data: bytes, length_size: int = 4) -> list[bytes]:
    """NAL units of length-prefixed (AVCC) data."""
    if length_size not in _LENGTH_FORMATS:
        raise H264Error("AVCC length size %r, expected 1, 2 or 4" % (length_size,))
    nalus = []
    pos = 0
    while pos < len(data):
        if pos + length_size > len(data):
            raise H264Error("AVCC data truncated in a length field at offset %d" % pos)
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if pos + size > len(data):
            raise H264Error(
                "AVCC NAL unit of %d bytes at offset %d overruns the %d-byte buffer" % (size, pos, len(data))
            )
        if size:
            nalus.append(bytes(data[pos : pos + size]))
        pos += size
    return nalus


@dataclass(slots=True)
class AvcConfig:
    """AVCDecoderConfigurationRecord: the FLV "AVC sequence header" body.

    Built from the SPS and PPS seen on RTP (profile, compatibility and level come from the
    SPS's bytes 1-3); the high-profile extension fields are neither written nor required.
    """

    sps: list[bytes]
    pps: list[bytes]
    length_size: int = 4

    @classmethod
    def parse(cls, data: bytes) -> AvcConfig:
        if len(data) < 7:
            raise H264Error("AVC configuration record of %d bytes, need at least 7" % len(data))
        if data[0] != 1:
            raise H264Error("AVC configuration version %d, expected 1" % data[0])
        length_size = (data[4] & 0x03) + 1
        if length_size == 3:
            raise H264Error("AVC configuration length size 3 is not allowed")
        pos = 5
        lists: list[list[bytes]] = []
        for name, mask in (("SPS", 0x1F), ("PPS", 0xFF)):
            if pos >= len(data):
                raise H264Error("AVC configuration record truncated before the %s count" % name)
            count = data[pos] & mask
            pos += 1
            items = []
            for _ in range(count):
                if pos + 2 > len(data):
                    raise H264Error("AVC configuration record truncated in a %s length" % name)
                (size,) = struct.unpack_from("!H", data, pos)
                pos += 2
                if size == 0 or pos + size > len(data):
                    raise H264Error(
                        "AVC configuration %s of %d bytes at offset %d does not fit" % (name, size, pos)
                    )
                items.append(bytes(data[pos : pos + size]))
                pos += size
            lists.append(items)
        return cls(lists[0], lists[1], length_size)

    def serialize(self) -> bytes:
        if not self.sps or len(self.sps[0]) < 4:
            raise H264Error("an AVC configuration record needs an SPS of at least 4 bytes")
        if self.length_size not in _LENGTH_FORMATS:
            raise H264Error("AVC configuration length size %r, expected 1, 2 or 4" % (self.length_size,))
        if len(self.sps) > 31 or len(self.pps) > 255:
            raise H264Error("too many parameter sets: %d SPS, %d PPS" % (len(self.sps), len(self.pps)))
        sps0 = self.sps[0]
        out = bytearray((1, sps0[1], sps0[2], sps0[3], 0xFC | (self.length_size - 1), 0xE0 | len(self.sps)))
        for s in self.sps:
            out += struct.pack("!H", len(s)) + s
        out.append(len(self.pps))
        for p in self.pps:
            out += struct.pack("!H", len(p)) + p
        return bytes(out)

    __bytes__ = serialize
