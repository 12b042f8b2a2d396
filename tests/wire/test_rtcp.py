"""b2bua.wire.rtcp: SR, RR, SDES, BYE, PLI, FIR, NACK, compound packets, NTP and RTT helpers."""

from __future__ import annotations

import random

import pytest

from b2bua.wire.rtcp import (
    NTP_UNIX_OFFSET,
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
    ntp_from_unix,
    ntp_middle32,
    ntp_to_unix,
    parse_compound,
    rtt_seconds,
    serialize_compound,
)

SSRC = 0x5F3A0B11

# Built from the RFC 3550 §6.4.1 layout, as Wireshark would show it.
SR = bytes.fromhex(
    "80c80006"  # V=2, P=0, RC=0, PT=200, length 6 (28 bytes)
    "5f3a0b11"  # sender SSRC
    "e45b7a5c8d4fdf3b"  # NTP timestamp
    "0003e800"  # RTP timestamp 256000
    "000000c8"  # sender's packet count 200
    "00007d00"  # sender's octet count 32000
)
BLOCK = bytes.fromhex(
    "11223344"  # SSRC of source
    "19"  # fraction lost 25/256
    "000005"  # cumulative lost 5
    "00010064"  # extended highest sequence number: 1 cycle, seq 100
    "00000023"  # interarrival jitter 35
    "7a5c8d4f"  # LSR
    "00010000"  # DLSR: 1 s
)
SR_WITH_BLOCK = bytes.fromhex("81c8000c") + SR[4:] + BLOCK
RR = bytes.fromhex("81c90007") + bytes.fromhex("5f3a0b11") + BLOCK
SDES = bytes.fromhex("81ca0004 5f3a0b11 0109") + b"user@host" + b"\x00"
BYE = bytes.fromhex("81cb0002 5f3a0b11 03") + b"bye"
APP = bytes.fromhex("80cc0002 5f3a0b11") + b"NAME"
PLI = bytes.fromhex("81ce0002 5f3a0b11 11223344")
FIR = bytes.fromhex("84ce0004 5f3a0b11 00000000 11223344 07000000")
NACK = bytes.fromhex("81cd0003 5f3a0b11 11223344 0064 0005")


def test_sender_report() -> None:
    sr = RtcpSenderReport.parse(SR)
    assert sr == RtcpSenderReport(SSRC, 0xE45B7A5C8D4FDF3B, 256000, 200, 32000, [])
    assert sr.serialize() == SR
    assert bytes(sr) == SR


def test_sender_report_with_block() -> None:
    sr = RtcpSenderReport.parse(SR_WITH_BLOCK)
    assert sr.reports == [ReportBlock(0x11223344, 25, 5, 0x10064, 35, 0x7A5C8D4F, 0x10000)]
    assert sr.serialize() == SR_WITH_BLOCK


def test_receiver_report_and_negative_loss() -> None:
    rr = RtcpReceiverReport.parse(RR)
    assert rr.ssrc == SSRC and rr.reports[0].cumulative_lost == 5
    assert rr.serialize() == RR
    neg = RtcpReceiverReport(1, [ReportBlock(2, cumulative_lost=-3)])
    data = neg.serialize()
    assert data[12:16] == bytes.fromhex("00fffffd")  # fraction 0, then -3 in 24 bits
    assert RtcpReceiverReport.parse(data) == neg
    assert RtcpReceiverReport.parse(bytes.fromhex("80c90001 00000009")) == RtcpReceiverReport(9, [])


def test_report_block_limits() -> None:
    with pytest.raises(RtcpError, match="24 signed bits"):
        ReportBlock(1, cumulative_lost=0x800000).serialize()
    with pytest.raises(RtcpError, match="out of range"):
        ReportBlock(1, fraction_lost=256).serialize()
    with pytest.raises(RtcpError, match="at most 31"):
        RtcpReceiverReport(1, [ReportBlock(1)] * 32).serialize()


def test_sdes_cname() -> None:
    sdes = RtcpSdes.parse(SDES)
    assert sdes.chunks == [SdesChunk(SSRC, [(1, b"user@host")])]
    assert sdes.chunks[0].cname == "user@host"
    assert RtcpSdes.cname_packet(SSRC, "user@host").serialize() == SDES
    # A value whose items end on a word boundary still gets a whole word of null octets.
    four = RtcpSdes.cname_packet(1, "ab")
    assert four.serialize() == bytes.fromhex("81ca0003 00000001 0102") + b"ab" + bytes(4)
    assert RtcpSdes.parse(four.serialize()) == four
    multi = RtcpSdes([SdesChunk(1, [(1, b"a"), (6, b"tool")]), SdesChunk(2, [])])
    assert RtcpSdes.parse(multi.serialize()) == multi
    assert SdesChunk(3, [(6, b"x")]).cname is None


def test_bye() -> None:
    bye = RtcpBye.parse(BYE)
    assert bye == RtcpBye([SSRC], b"bye")
    assert bye.serialize() == BYE
    assert RtcpBye([1, 2]).serialize() == bytes.fromhex("82cb0002 00000001 00000002")
    assert RtcpBye.parse(RtcpBye([1], b"").serialize()) == RtcpBye([1], b"")


def test_pli_exact() -> None:
    assert RtcpPli(SSRC, 0x11223344).serialize() == PLI
    assert RtcpPli.parse(PLI) == RtcpPli(SSRC, 0x11223344)


def test_fir_exact() -> None:
    assert RtcpFir(SSRC, [(0x11223344, 7)]).serialize() == FIR
    assert RtcpFir.parse(FIR) == RtcpFir(SSRC, [(0x11223344, 7)])
    with pytest.raises(RtcpError, match="0..255"):
        RtcpFir(1, [(2, 256)]).serialize()


def test_nack() -> None:
    nack = RtcpNack.parse(NACK)
    assert nack == RtcpNack(SSRC, 0x11223344, [100, 101, 103])
    assert nack.serialize() == NACK
    wrap = RtcpNack(1, 2, [65535, 0, 15, 40])
    assert sorted(RtcpNack.parse(wrap.serialize()).lost) == [0, 15, 40, 65535]


def test_compound_sr_sdes() -> None:
    packets = parse_compound(SR_WITH_BLOCK + SDES)
    assert [type(p) for p in packets] == [RtcpSenderReport, RtcpSdes]
    assert packets[1].chunks[0].cname == "user@host"
    assert serialize_compound(packets) == SR_WITH_BLOCK + SDES


def test_compound_skips_app_and_unknown() -> None:
    xr = bytes.fromhex("80cf0001 5f3a0b11")  # XR (207), not used here
    tmmbr = bytes.fromhex("83cd0002 5f3a0b11 11223344")  # RTPFB FMT 3
    packets = parse_compound(RR + APP + xr + tmmbr + PLI + FIR + NACK + BYE)
    assert [type(p) for p in packets] == [RtcpReceiverReport, RtcpPli, RtcpFir, RtcpNack, RtcpBye]


def test_padding_on_last_packet() -> None:
    padded = bytes.fromhex("a1cb0003 5f3a0b11 00000000 00000004")  # BYE, P=1, 4 octets of padding
    sr, bye = parse_compound(SR + padded)
    assert bye == RtcpBye([SSRC], b"")  # an empty reason, then the padding


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\xc8", "too short"),
        (bytes.fromhex("40c80006") + SR[4:], "version 1"),
        (SR[:20], "claims 28 bytes"),
        (SR + b"\x80", "trailing"),
        (bytes.fromhex("80c80001 00000000"), "SR body truncated"),
        (bytes.fromhex("81c80006") + SR[4:], "report blocks need 24"),
        (bytes.fromhex("81c90001 00000001"), "report blocks need 24"),
        (bytes.fromhex("80c90000"), "RR body truncated"),
        (bytes.fromhex("81ca0001 00000001"), "no end item"),
        (bytes.fromhex("82ca0002 00000001 00000000"), "chunk 1 truncated"),
        (bytes.fromhex("81ca0002 00000001 0110ffff"), "item type 1 truncated"),
        (bytes.fromhex("82cb0001 00000001"), "BYE lists 2"),
        (bytes.fromhex("81cb0002 00000001 09616263"), "reason of 9"),
        (bytes.fromhex("81ce0001 00000001"), "need 8"),
        (bytes.fromhex("84ce0003 00000001 00000000 00000001"), "multiple of 8"),
        (bytes.fromhex("81cd0003 00000001 00000002 0001"), "length field says|claims"),
        (bytes.fromhex("a1cb0001 00000000"), "padding count 0"),
        (bytes.fromhex("a1cb0001 00000009"), "padding count 9"),
        (bytes.fromhex("a0cb0000"), "padding bit set on an empty"),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RtcpError, match=message):
        parse_compound(data)


def test_parse_wrong_type_directly() -> None:
    with pytest.raises(RtcpError, match="type 201, expected 200"):
        RtcpSenderReport.parse(RR)
    with pytest.raises(RtcpError, match="format 4, expected 1"):
        RtcpPli.parse(FIR)
    assert issubclass(RtcpError, ValueError)


def test_truncated_at_every_position() -> None:
    data = SR_WITH_BLOCK + SDES + BYE + PLI + FIR + NACK
    boundaries = set()
    pos = 0
    for part in (SR_WITH_BLOCK, SDES, BYE, PLI, FIR, NACK):
        pos += len(part)
        boundaries.add(pos)
    for n in range(len(data)):
        if n in boundaries:
            assert serialize_compound(parse_compound(data[:n])) == data[:n]
        else:
            with pytest.raises(RtcpError):
                parse_compound(data[:n])


def test_random_garbage() -> None:
    rng = random.Random(4585)
    ok = 0
    for _ in range(2000):
        n = rng.randrange(0, 80)
        data = bytearray(rng.getrandbits(8) for _ in range(n))
        if n >= 4 and rng.random() < 0.7:  # plausible headers most of the time
            data[0] = 0x80 | data[0] & 0x3F
            data[1] = rng.choice([200, 201, 202, 203, 204, 205, 206])
            data[2] = 0
            data[3] = min(data[3] % 8, (n - 4) // 4)
            data = data[: 4 + 4 * data[3]]
            if rng.random() < 0.5:
                data[0] &= 0xC1  # count 0 or 1, no padding
        try:
            packets = parse_compound(bytes(data))
        except RtcpError:
            continue
        ok += 1
        for p in packets:
            again = type(p).parse(p.serialize())
            if isinstance(p, RtcpNack):  # re-encoding may group the sequence numbers differently
                assert sorted(again.lost) == sorted(p.lost)
            else:
                assert again == p
    assert ok > 100


def test_ntp_helpers() -> None:
    assert ntp_from_unix(0) == NTP_UNIX_OFFSET << 32
    assert ntp_from_unix(1.5) == ((NTP_UNIX_OFFSET + 1) << 32) | 0x80000000
    t = 1_700_000_000.25
    assert ntp_to_unix(ntp_from_unix(t)) == pytest.approx(t, abs=1e-6)
    assert ntp_middle32(0xE45B7A5C8D4FDF3B) == 0x7A5C8D4F


def test_rtt_rfc3550_example() -> None:
    # RFC 3550 §6.4.1, Figure 2: A = 0xb710:8000, LSR = 0xb705:2000, DLSR = 0x0005:4000 -> 6.125 s.
    arrival = 0xB7108000 << 16
    assert rtt_seconds(arrival, 0xB7052000, 0x00054000) == 6.125
    assert rtt_seconds(arrival, 0, 0x00054000) is None
    assert rtt_seconds(arrival, 0xB7108000, 0x10000) == 0.0  # clock skew: never negative
