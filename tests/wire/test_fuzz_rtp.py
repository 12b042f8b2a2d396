"""Property-based fuzzing of b2bua.wire.rtp, b2bua.wire.rtcp and b2bua.wire.dtmf.

Only :class:`RtpError` / :class:`RtcpError` / :class:`DtmfError` may come out of the parsers
(and of the receiver-side state that consumes parsed packets); packets round-trip.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from b2bua.wire.dtmf import DtmfError, DtmfReceiver, DtmfSender, TelephoneEvent
from b2bua.wire.rtcp import (
    ReportBlock,
    RtcpBye,
    RtcpError,
    RtcpFir,
    RtcpNack,
    RtcpPli,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    SdesChunk,
    parse_compound,
    rtt_seconds,
    serialize_compound,
)
from b2bua.wire.rtp import ReceiverStats, RtpError, RtpPacket, is_rtcp
from tests.wire.fuzz_support import assert_bounded, fuzz, mutated

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)

@st.composite
def rtp_packets(draw: st.DrawFn) -> RtpPacket:
    extension = draw(st.none() | st.binary(max_size=40).map(lambda b: b + bytes(-len(b) % 4)))
    return RtpPacket(
        payload_type=draw(st.integers(0, 127)),
        sequence=draw(u16),
        timestamp=draw(u32),
        ssrc=draw(u32),
        payload=draw(st.binary(max_size=200)),
        marker=draw(st.booleans()),
        csrc=draw(st.lists(u32, max_size=15)),
        padding=draw(st.integers(0, 255)),
        extension_profile=draw(u16) if extension is not None else 0,  # meaningless without the X bit
        extension=extension,
    )


report_blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=u8,
    cumulative_lost=st.integers(-0x800000, 0x7FFFFF),
    highest_sequence=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)
rtcp_packets = st.one_of(
    st.builds(
        RtcpSenderReport, u32, st.integers(0, 2**64 - 1), u32, u32, u32, st.lists(report_blocks, max_size=4)
    ),
    st.builds(RtcpReceiverReport, u32, st.lists(report_blocks, max_size=4)),
    st.builds(RtcpSdes, st.lists(st.builds(SdesChunk, u32, st.lists(
        st.tuples(st.integers(1, 255), st.binary(max_size=40)), max_size=3)), max_size=4)),
    st.builds(RtcpBye, st.lists(u32, max_size=5), st.none() | st.binary(max_size=40)),
    st.builds(RtcpPli, u32, u32),
    st.builds(RtcpFir, u32, st.lists(st.tuples(u32, u8), max_size=4)),
    st.builds(RtcpNack, u32, u32, st.lists(u16, max_size=20)),
)


def _rtp(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except RtpError:
        return
    stats = ReceiverStats(8000)
    stats.update(packet.ssrc, packet.sequence, packet.timestamp, 0.0)
    stats.report_block(20.0).serialize()
    assert RtpPacket.parse(packet.serialize()) == packet


def _rtcp(data: bytes) -> None:
    is_rtcp(data)
    try:
        packets = parse_compound(data)
    except RtcpError:
        return
    for packet in packets:
        for block in getattr(packet, "reports", ()):
            rtt_seconds(0, block.lsr, block.dlsr)
        for chunk in getattr(packet, "chunks", ()):
            chunk.cname  # noqa: B018
    again = parse_compound(serialize_compound(packets)) if packets else []
    assert len(again) == len(packets)


def _dtmf(data: bytes) -> None:
    receiver = DtmfReceiver()
    for timestamp in (0, 160, 0, 2**32 - 1):
        try:
            receiver.receive(data, timestamp)
        except DtmfError:
            pass


# --- (a) arbitrary input ---------------------------------------------------------------------------


@fuzz(300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    _rtp(data)
    _rtcp(data)
    _dtmf(data)


@fuzz(180)
@given(st.integers(0x80, 0xBF), u8, st.binary(max_size=120))
def test_version_2_headers_with_garbage(b0: int, b1: int, rest: bytes) -> None:
    data = bytes((b0, b1)) + rest
    _rtp(data)
    _rtcp(data)


@fuzz(120)
@given(st.text(max_size=20))
def test_dtmf_digits(digits: str) -> None:
    sender = DtmfSender()
    try:
        packets = sender.packets(digits)
    except DtmfError:
        return
    receiver = DtmfReceiver()
    got = [receiver.receive(p.payload, p.timestamp) for p in packets if p is not None]
    assert "".join(d for d in got if d) == digits.upper()


# --- (b) valid packets, mutated --------------------------------------------------------------------


@fuzz(120)
@given(st.data())
def test_mutated_packets(data: st.DataObject) -> None:
    _rtp(data.draw(mutated(data.draw(rtp_packets()).serialize())))
    _rtcp(data.draw(mutated(serialize_compound(data.draw(st.lists(rtcp_packets, min_size=1, max_size=4))))))
    _dtmf(data.draw(mutated(TelephoneEvent(data.draw(u8), True, 10, data.draw(u16)).serialize())))


def test_hostile_lengths() -> None:
    for data in (
        b"\x90\x00\x00\x00" + bytes(8) + b"\x00\x00\xff\xff",  # header extension claiming 256 KiB
        b"\x8f\x00" + bytes(10),  # 15 CSRCs, none present
        b"\xa0\x00" + bytes(10) + b"\xff",  # padding of 255 octets in a 13-byte packet
        b"\x80\xc8\xff\xff" + bytes(24),  # SR claiming 256 KiB
        b"\x9f\xc9\x00\x01" + bytes(4),  # RR with 31 report blocks in 4 bytes
        b"\x81\xca\x00\x02" + bytes(4) + b"\x01\xff" + bytes(2),  # SDES item claiming 255 bytes
        b"\x9f\xcb\x00\x00",  # BYE with 31 sources, none present
        b"\x80\xcb\x00\x01\xff\x00\x00\x00",  # BYE reason claiming 255 bytes
        b"\xa0\xc9\x00\x01" + b"\x00\x00\x00\xff",  # RR padding larger than the packet
    ):
        _rtp(data)
        _rtcp(data)
        assert_bounded(_rtp, data, factor=4, constant=8 * 1024)
        assert_bounded(_rtcp, data, factor=4, constant=8 * 1024)


# --- (c) round trips -------------------------------------------------------------------------------


@fuzz(120)
@given(rtp_packets())
def test_rtp_round_trip(packet: RtpPacket) -> None:
    raw = packet.serialize()
    assert RtpPacket.parse(raw) == packet
    assert RtpPacket.parse(raw).serialize() == raw


@fuzz(90)
@given(st.lists(rtcp_packets, min_size=1, max_size=5))
def test_rtcp_round_trip(packets: list) -> None:
    raw = serialize_compound(packets)
    parsed = parse_compound(raw)
    for a, b in zip(parsed, packets, strict=True):
        if isinstance(b, RtcpNack):  # the lost list comes back in the order the FCI encodes it
            assert sorted(set(a.lost)) == sorted(set(b.lost))
        else:
            assert a == b
    assert serialize_compound(parsed) == raw


@fuzz(120)
@given(u8, st.booleans(), st.integers(0, 63), u16)
def test_telephone_event_round_trip(event: int, end: bool, volume: int, duration: int) -> None:
    te = TelephoneEvent(event, end, volume, duration)
    assert TelephoneEvent.parse(te.serialize()) == te
