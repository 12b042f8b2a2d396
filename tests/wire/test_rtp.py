"""b2bua.wire.rtp: RTP packets, demux, sequence helpers, sender and receiver statistics."""

from __future__ import annotations

import random
import timeit

import pytest

from b2bua.wire.rtcp import ReportBlock
from b2bua.wire.rtp import (
    ReceiverStats,
    RtpError,
    RtpPacket,
    RtpSender,
    SequenceExtender,
    is_rtcp,
    seq_diff,
    ts_diff,
)

# RFC 3550 §5.1 fixed header, PT 0 (PCMU), seq 1234, ts 5678, SSRC 0xdeadbeef, 160 bytes of µ-law silence.
PCMU = bytes.fromhex("80 00 04d2 0000162e deadbeef") + b"\xff" * 160

# Marker, PT 96, 2 CSRCs, a one-word header extension with profile 0xBEDE (RFC 8285), 3 payload
# bytes and 4 octets of padding (the last one is the count).
FULL = (
    bytes.fromhex("b2 e0 ffff 12345678 0a0b0c0d")  # V=2 P=1 X=1 CC=2; M=1 PT=96
    + bytes.fromhex("00000001 00000002")  # CSRCs
    + bytes.fromhex("bede 0001 10ff0000")  # extension header, one word of data
    + b"abc"
    + bytes.fromhex("000000 04")  # padding
)


def test_parse_pcmu() -> None:
    p = RtpPacket.parse(PCMU)
    assert len(PCMU) == 172
    assert (p.payload_type, p.marker, p.sequence, p.timestamp, p.ssrc) == (0, False, 1234, 5678, 0xDEADBEEF)
    assert p.payload == b"\xff" * 160
    assert (p.csrc, p.padding, p.extension, p.extension_profile) == ([], 0, None, 0)
    assert p.serialize() == PCMU
    assert bytes(p) == PCMU


def test_parse_full_header() -> None:
    p = RtpPacket.parse(FULL)
    assert (p.payload_type, p.marker, p.sequence, p.timestamp, p.ssrc) == (
        96,
        True,
        0xFFFF,
        0x12345678,
        0x0A0B0C0D,
    )
    assert p.csrc == [1, 2]
    assert p.extension_profile == 0xBEDE
    assert p.extension == bytes.fromhex("10ff0000")
    assert p.padding == 4
    assert p.payload == b"abc"
    assert p.serialize() == FULL


def test_build_and_round_trip() -> None:
    p = RtpPacket(payload_type=8, sequence=1, timestamp=2, ssrc=3, payload=b"x" * 10, marker=True)
    data = p.serialize()
    assert data[:12] == bytes.fromhex("80 88 0001 00000002 00000003")
    assert RtpPacket.parse(data) == p
    q = RtpPacket(
        101, 7, 8, 9, b"\x01\x0a\x00\xa0", csrc=[5], extension_profile=0x1000, extension=b"", padding=1
    )
    assert RtpPacket.parse(q.serialize()) == q


def test_serialize_rejects_bad_fields() -> None:
    with pytest.raises(RtpError, match="multiple of 4"):
        RtpPacket(extension=b"abc").serialize()
    with pytest.raises(RtpError, match="at most 15"):
        RtpPacket(csrc=list(range(16))).serialize()
    with pytest.raises(RtpError, match="padding 256"):
        RtpPacket(padding=256).serialize()
    with pytest.raises(RtpError, match="payload type 128"):
        RtpPacket(payload_type=128, csrc=[1]).serialize()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "too short"),
        (PCMU[:11], "too short: 11 bytes"),
        (b"\x40" + PCMU[1:], "version 1"),
        (b"\x00" + PCMU[1:], "version 0"),
        (b"\x83" + PCMU[1:20], "CSRC"),
        (b"\x90" + PCMU[1:12] + b"\xbe\xde", "extension header"),
        (b"\x90" + PCMU[1:12] + b"\xbe\xde\x00\x05" + bytes(8), "overruns"),
        (b"\xa0" + PCMU[1:12], "no payload octets"),
        (b"\xa0" + PCMU[1:12] + b"ab\x00", "count is 0"),
        (b"\xa0" + PCMU[1:12] + b"ab\x04", "exceeds"),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


def test_rtp_error_is_value_error() -> None:
    assert issubclass(RtpError, ValueError)


@pytest.mark.parametrize("fixture", [PCMU, FULL])
def test_truncated_at_every_position(fixture: bytes) -> None:
    fixed = 12 + 8 + 8 if fixture is FULL else 12
    for n in range(len(fixture)):
        if n < fixed:
            with pytest.raises(RtpError):
                RtpPacket.parse(fixture[:n])
        else:
            try:
                p = RtpPacket.parse(fixture[:n])
            except RtpError:
                continue
            assert RtpPacket.parse(p.serialize()) == p


def test_random_garbage() -> None:
    rng = random.Random(3550)
    parsed = 0
    for _ in range(2000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        if rng.random() < 0.5 and data:
            data = bytes((0x80 | data[0] & 0x3F,)) + data[1:]  # version 2 half the time
        try:
            p = RtpPacket.parse(data)
        except RtpError:
            continue
        parsed += 1
        assert RtpPacket.parse(p.serialize()) == p
    assert parsed > 100


def test_is_rtcp() -> None:
    sr = bytes.fromhex("80c80006") + bytes(24)
    assert is_rtcp(sr)
    assert is_rtcp(bytes.fromhex("81ce0002") + bytes(8))  # PSFB 206
    assert is_rtcp(bytes.fromhex("80c0"))  # 192: legacy FIR, still in the RTCP range
    assert is_rtcp(bytes.fromhex("80df"))  # 223: top of the range
    assert not is_rtcp(PCMU)
    assert not is_rtcp(bytes.fromhex("80e0"))  # marker + PT 96
    assert not is_rtcp(bytes.fromhex("8080"))  # marker + PT 0
    assert not is_rtcp(bytes.fromhex("80e5"))  # marker + PT 101 (telephone-event)
    assert not is_rtcp(b"\x80")


def test_seq_diff_and_ts_diff() -> None:
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(100, 50) == 50
    assert seq_diff(50, 100) == -50
    assert seq_diff(32767, 0) == 32767
    assert seq_diff(32768, 0) == -32768
    assert ts_diff(0, 0xFFFFFFFF) == 1
    assert ts_diff(160, 0xFFFFFF60) == 320
    assert ts_diff(0, 160) == -160


def test_sequence_extender_wraps_and_reorders() -> None:
    e = SequenceExtender()
    assert [e.extend(s) for s in (65534, 65535, 0, 1)] == [65534, 65535, 65536, 65537]
    assert e.extend(65535) == 65535  # a late one from before the wrap
    assert e.highest == 65537
    assert e.extend(3) == 65539
    for _ in range(3):  # several full cycles
        for s in range(0, 65536, 1000):
            e.extend(s)
    assert e.highest == 3 * 65536 + 65000  # the last value seen, 65000, three wraps on


def test_sender_random_and_advancing() -> None:
    a = RtpSender(rng=random.Random(1))
    b = RtpSender(rng=random.Random(2))
    assert (a.ssrc, a.sequence, a.timestamp) != (b.ssrc, b.sequence, b.timestamp)
    s = RtpSender(ssrc=7, sequence=65535, timestamp=0xFFFFFFA0)
    p1 = s.packet(b"a" * 160, 0, 160, marker=True)
    p2 = s.packet(b"b" * 160, 0, 160)
    assert (p1.sequence, p1.timestamp, p1.marker, p1.ssrc) == (65535, 0xFFFFFFA0, True, 7)
    assert (p2.sequence, p2.timestamp, p2.marker) == (0, 0x40, False)
    event = s.packet(b"\x01\x0a\x00\xa0", 101, 160, timestamp=0x40)
    assert (event.sequence, event.timestamp, event.payload_type) == (1, 0x40, 101)
    assert s.timestamp == 0x180
    s.skip(320)
    assert s.timestamp == 0x2C0
    assert (s.packets_sent, s.octets_sent) == (3, 324)


def test_sender_default_is_random() -> None:
    seen = {(s.ssrc, s.sequence, s.timestamp) for s in (RtpSender() for _ in range(5))}
    assert len(seen) == 5


def _feed(stats: ReceiverStats, seqs: list[int], ssrc: int = 1, start_ms: float = 0.0) -> list[bool]:
    return [
        stats.update(ssrc, s & 0xFFFF, (s * 160) & 0xFFFFFFFF, start_ms + i * 20) for i, s in enumerate(seqs)
    ]


def test_receiver_probation_and_counts() -> None:
    st = ReceiverStats(8000)
    ok = _feed(st, list(range(100, 200)))
    assert ok[0] is False and all(ok[1:])  # MIN_SEQUENTIAL = 2: the first packet is on probation
    assert st.base_seq == 101
    assert st.extended_max == 199
    assert (st.expected, st.received, st.cumulative_lost) == (99, 99, 0)
    assert st.fraction_lost() == 0


def test_receiver_probation_restarts_on_non_sequential() -> None:
    st = ReceiverStats(8000)
    assert st.update(1, 10, 0, 0) is False
    assert st.update(1, 20, 0, 20) is False  # not sequential: probation restarts at 20
    assert st.update(1, 21, 0, 40) is True
    assert st.received == 1


def test_receiver_loss_and_fraction() -> None:
    st = ReceiverStats(8000)
    seqs = [s for s in range(0, 101) if s not in (10, 11, 50, 77)]
    _feed(st, seqs)
    assert st.extended_max == 100
    assert st.expected == 100  # base 1 .. 100
    assert st.cumulative_lost == 4
    assert st.fraction_lost() == (4 << 8) // 100
    _feed(st, list(range(101, 201)), start_ms=3000)
    assert st.fraction_lost() == 0  # nothing lost in the second interval
    assert st.cumulative_lost == 4


def test_receiver_wrap_extends() -> None:
    st = ReceiverStats(8000)
    _feed(st, list(range(65530, 65546)))
    assert st.cycles == 65536
    assert st.extended_max == 65545
    assert st.cumulative_lost == 0


def test_receiver_duplicates_make_negative_loss() -> None:
    st = ReceiverStats(8000)
    _feed(st, [0, 1, 2, 3, 3, 3])
    assert st.cumulative_lost == -2  # RFC 3550 §6.4.1: duplicates can make it negative


def test_receiver_big_jump_needs_confirmation() -> None:
    st = ReceiverStats(8000)
    _feed(st, list(range(0, 10)))
    assert st.update(1, 5000, 0, 300) is False  # a jump > MAX_DROPOUT, not believed yet
    assert st.update(1, 5001, 0, 320) is True  # two in a row: the source restarted
    assert st.base_seq == 5001 and st.received == 1
    assert st.update(1, 9, 0, 340) is False  # the old sequence is now the jump


def test_receiver_ssrc_change_resets() -> None:
    st = ReceiverStats(8000)
    _feed(st, list(range(0, 50)))
    st.on_sender_report(0x0001_0002_0003_0004, 1000)
    _feed(st, list(range(7000, 7010)), ssrc=2)
    assert st.ssrc == 2 and st.ssrc_changes == 1
    assert st.base_seq == 7001 and st.received == 9
    assert st.last_sr_ntp_middle == 0
    _feed(st, list(range(10, 20)), ssrc=1)
    assert st.ssrc_changes == 2


def _rfc3550_jitter(delays_ms: list[float], clock_rate: int) -> float:
    """RFC 3550 A.8 reference: J += (|D| - J) / 16 with D the transit difference in timestamp units."""
    j = 0.0
    for prev, cur in zip(delays_ms, delays_ms[1:], strict=False):
        d = abs((cur - prev) * clock_rate / 1000)
        j += (d - j) / 16
    return j


def test_jitter_constant_delay_is_zero() -> None:
    st = ReceiverStats(8000)
    for i in range(50):
        st.update(1, i, 1000 + i * 160, 73.0 + i * 20)
    assert st.jitter == 0


def test_jitter_synthetic_schedule() -> None:
    rng = random.Random(8)
    delays = [rng.choice([0, 5, 10, 30]) for _ in range(200)]
    st = ReceiverStats(8000)
    base_ts = 0xFFFFF000  # crosses the 32-bit timestamp wrap on the way
    for i, delay in enumerate(delays):
        st.update(9, i, (base_ts + i * 160) & 0xFFFFFFFF, 1000 + i * 20 + delay)
    # The first packet is on probation (A.1) and is not part of the jitter estimate.
    assert st.jitter == int(_rfc3550_jitter(delays[1:], 8000))
    assert st.jitter > 0


def test_jitter_alternating() -> None:
    st = ReceiverStats(8000)
    for i in range(1, 1000):
        st.update(1, i, i * 160, i * 20 + (5 if i % 2 else 0))
    assert st.jitter == 39  # converges to |D| = 5 ms = 40 timestamp units from below


def test_report_block() -> None:
    st = ReceiverStats(8000)
    with pytest.raises(ValueError, match="no packet"):
        st.report_block(0)
    _feed(st, [s for s in range(0, 101) if s != 40])
    st.on_sender_report(0xAAAA_BBBB_CCCC_DDDD, 5000)
    rb = st.report_block(6000)
    assert rb == ReportBlock(
        ssrc=1,
        fraction_lost=(1 << 8) // 100,
        cumulative_lost=1,
        highest_sequence=100,
        jitter=0,
        lsr=0xBBBBCCCC,
        dlsr=65536,
    )
    assert st.report_block(7000).fraction_lost == 0


def test_receiver_rejects_bad_clock() -> None:
    with pytest.raises(ValueError):
        ReceiverStats(0)


def test_parse_speed() -> None:
    n = 20000
    best = min(timeit.repeat(lambda: RtpPacket.parse(PCMU), number=n, repeat=3)) / n
    assert best < 20e-6  # ~0.5 µs measured; a generous bound so slow CI machines pass
