"""b2bua.wire.h264: RFC 6184 mode 1 packetizer/depacketizer, Annex B and AVCC helpers."""

from __future__ import annotations

import random

import pytest

from b2bua.wire.h264 import (
    FU_A,
    NAL_IDR,
    NAL_PPS,
    NAL_SPS,
    STAP_A,
    AccessUnit,
    AvcConfig,
    Depacketizer,
    H264Error,
    annexb_split,
    avcc_split,
    is_keyframe,
    nal_ref_idc,
    nal_type,
    packetize,
    to_annexb,
    to_avcc,
)

SPS = bytes.fromhex("6742c01e da0280bf e5c04400 00030004 00000300 c83c58b9 20")
PPS = bytes.fromhex("68ce3c80")


def _nal(rng: random.Random, size: int, kind: int | None = None) -> bytes:
    kind = kind if kind is not None else rng.choice([1, 5, 6])
    nri = 0 if kind == 6 else rng.choice([1, 2, 3])
    return bytes(((nri << 5) | kind,)) + bytes(rng.getrandbits(8) for _ in range(size - 1))


def _rtp(au: list[bytes], ts: int, seq: int, mtu: int = 1200) -> list[tuple[bytes, int, int, bool]]:
    payloads = packetize(au, mtu)
    return [(p, (seq + i) & 0xFFFF, ts, i == len(payloads) - 1) for i, p in enumerate(payloads)]


def _depacketize(
    packets: list[tuple[bytes, int, int, bool]], d: Depacketizer | None = None
) -> list[AccessUnit]:
    d = d or Depacketizer()
    out: list[AccessUnit] = []
    for payload, seq, ts, marker in packets:
        out.extend(d.push(payload, seq, ts, marker))
    return out + d.flush()


def test_nal_helpers() -> None:
    assert nal_type(SPS) == NAL_SPS and nal_type(PPS) == NAL_PPS
    assert nal_ref_idc(SPS) == 3 and nal_ref_idc(b"\x06") == 0
    assert is_keyframe([SPS, PPS, b"\x65\x88"]) and not is_keyframe([b"\x41\x9a"])
    assert not is_keyframe([])
    for f in (nal_type, nal_ref_idc):
        with pytest.raises(H264Error):
            f(b"")


def test_single_nal_unit_packet() -> None:
    nal = b"\x41\x9a" + bytes(100)
    assert packetize([nal]) == [nal]


def test_stap_a_exact() -> None:
    idr = b"\x65\x88\x84\x00"
    (stap,) = packetize([SPS, PPS, idr])
    assert stap[0] == 0x60 | STAP_A  # F=0, NRI = the highest of the aggregated units (3), type 24
    assert stap == (b"\x78" + len(SPS).to_bytes(2, "big") + SPS + b"\x00\x04" + PPS + b"\x00\x04" + idr)
    d = Depacketizer()
    (au,) = d.push(stap, 1, 90000, True)
    assert au == AccessUnit(90000, [SPS, PPS, idr], False)


def test_stap_a_nri_and_f_bits() -> None:
    (stap,) = packetize([b"\x06\x05", b"\x21\x00", b"\x81\x00"])  # NRI 0, NRI 1, F=1 NRI 0
    assert stap[0] == 0x80 | 0x20 | STAP_A


def test_fu_a_exact() -> None:
    nal = b"\x65" + bytes(range(256)) * 11 + bytes(3000 - 1 - 2816)
    assert len(nal) == 3000
    frags = packetize([nal], mtu=1200)
    assert [len(f) for f in frags] == [1200, 1200, 2 + 2999 - 2 * 1198]
    assert [f[:2] for f in frags] == [b"\x7c\x85", b"\x7c\x05", b"\x7c\x45"]  # NRI 3, FU-A; S / - / E; type 5
    assert b"".join(f[2:] for f in frags) == nal[1:]
    (au,) = _depacketize([(f, 10 + i, 3000, i == 2) for i, f in enumerate(frags)])
    assert au.nalus == [nal] and not au.damaged


def test_fu_a_boundary_sizes() -> None:
    for mtu in (3, 4, 100):
        for size in (mtu, mtu + 1, 2 * mtu, 3 * mtu - 4, 3 * mtu + 7):
            nal = b"\x41" + bytes(range(1, size)) if size < 256 else b"\x41" + bytes(size - 1)
            payloads = packetize([nal], mtu)
            assert all(len(p) <= mtu for p in payloads)
            if size > mtu:
                assert all(p[0] & 0x1F == FU_A for p in payloads)
                assert payloads[0][1] & 0xC0 == 0x80 and payloads[-1][1] & 0xC0 == 0x40
            (au,) = _depacketize([(p, i, 0, i == len(payloads) - 1) for i, p in enumerate(payloads)])
            assert au.nalus == [nal]


def test_packetize_rejects() -> None:
    with pytest.raises(H264Error, match="MTU 2"):
        packetize([b"\x41"], mtu=2)
    with pytest.raises(H264Error, match="NAL unit 1 is empty"):
        packetize([b"\x41", b""])
    with pytest.raises(H264Error, match="type 28"):
        packetize([b"\x7c\x85"])
    with pytest.raises(H264Error, match="type 0"):
        packetize([b"\x00\x85"])


def test_round_trip_random_sizes() -> None:
    rng = random.Random(6184)
    aus = []
    for _ in range(40):
        au = [
            _nal(rng, rng.randint(1, 20000) if rng.random() < 0.5 else rng.randint(1, 300))
            for _ in range(rng.randint(1, 6))
        ]
        aus.append(au)
    for mtu in (1200, 500):
        packets = []
        seq = 65500  # cross the sequence wrap
        for i, au in enumerate(aus):
            pk = _rtp(au, (0xFFFF0000 + i * 3000) & 0xFFFFFFFF, seq, mtu)
            assert all(len(p[0]) <= mtu for p in pk)
            packets.extend(pk)
            seq += len(pk)
        got = _depacketize(packets)
        assert [a.nalus for a in got] == aus
        assert not any(a.damaged for a in got)
        assert [a.timestamp for a in got] == [(0xFFFF0000 + i * 3000) & 0xFFFFFFFF for i in range(40)]


def test_access_unit_ends_on_timestamp_change_without_marker() -> None:
    d = Depacketizer()
    assert d.push(b"\x41\x01", 1, 100, False) == []
    assert d.push(b"\x41\x02", 2, 100, False) == []
    (au,) = d.push(b"\x41\x03", 3, 200, False)
    assert au == AccessUnit(100, [b"\x41\x01", b"\x41\x02"], False)
    assert d.flush() == [AccessUnit(200, [b"\x41\x03"], False)]
    assert d.flush() == []


def test_loss_of_fu_a_fragment_drops_only_that_nal() -> None:
    rng = random.Random(1)
    small1, big, small2 = _nal(rng, 50, 6), _nal(rng, 5000, 5), _nal(rng, 40, 1)
    before, after = [_nal(rng, 3000, 1)], [_nal(rng, 3000, 1)]
    packets = _rtp(before, 0, 100) + _rtp([small1, big, small2], 3000, 103) + _rtp(after, 6000, 110)
    middle = [i for i, p in enumerate(packets) if p[1] == 105]
    assert (
        packets[middle[0]][0][0] & 0x1F == FU_A and packets[middle[0]][0][1] & 0xC0 == 0
    )  # a middle fragment
    lossy = [p for p in packets if p[1] != 105]
    d = Depacketizer()
    got = _depacketize(lossy, d)
    assert [a.nalus for a in got] == [before, [small1, small2], after]
    assert [a.damaged for a in got] == [False, True, False]
    assert (d.lost_packets, d.dropped_nalus) == (1, 1)


def test_loss_of_fu_a_start_and_end() -> None:
    rng = random.Random(2)
    big = _nal(rng, 4000, 5)
    packets = _rtp([big], 0, 0) + _rtp([b"\x41\x01"], 3000, 4)
    # Start lost: the rest of the NAL is dropped, the AU is empty and not emitted.
    d = Depacketizer()
    assert _depacketize(packets[1:], d) == [AccessUnit(3000, [b"\x41\x01"], False)]
    assert d.dropped_nalus == 1
    # End lost (it carried the marker): the timestamp change ends the AU and drops the FU-A.
    d = Depacketizer()
    got = _depacketize(packets[:3] + packets[4:], d)
    assert got == [AccessUnit(3000, [b"\x41\x01"], True)]  # the loss might have been this AU's head
    assert (d.lost_packets, d.dropped_nalus) == (1, 1)


def test_loss_between_access_units_marks_next_damaged() -> None:
    d = Depacketizer()
    assert d.push(b"\x41\x01", 1, 0, True) == [AccessUnit(0, [b"\x41\x01"], False)]
    assert d.push(b"\x41\x03", 3, 3000, True) == [AccessUnit(3000, [b"\x41\x03"], True)]
    assert d.push(b"\x41\x03", 3, 3000, True) == []  # duplicate
    assert d.duplicates == 1
    assert d.push(b"\x41\x04", 4, 6000, True) == [AccessUnit(6000, [b"\x41\x04"], False)]


def test_fu_a_interrupted_by_new_start() -> None:
    d = Depacketizer()
    d.push(b"\x7c\x85\x01", 1, 0, False)
    d.push(b"\x7c\x85\x02", 2, 0, False)  # a second start: the first NAL is incomplete
    d.push(b"\x7c\x45\x03", 3, 0, True)
    assert d.flush() == []
    d2 = Depacketizer()
    d2.push(b"\x7c\x85\x01", 1, 0, False)
    (au,) = d2.push(b"\x7c\x45\x02", 2, 0, True)
    assert au.nalus == [b"\x65\x01\x02"]
    assert d.dropped_nalus == 1


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "empty RTP payload"),
        (b"\x18\x00", "truncated in a NAL unit size"),
        (b"\x18\x00\x05\x41", "overruns"),
        (b"\x18\x00\x00", "zero-length"),
        (b"\x18", "no NAL units"),
        (b"\x7c\x85", "need at least 3"),
        (b"\x7c\xc5\x00", "both start and end"),
        (b"\x19\x00\x00", "interleaved"),
        (b"\x1a\x00\x00", "interleaved"),
        (b"\x1b\x00\x00", "interleaved"),
        (b"\x1d\x80\x00", "interleaved"),
        (b"\x00\x00", "undefined"),
        (b"\x1e\x00", "undefined"),
        (b"\x1f\x00", "undefined"),
    ],
)
def test_malformed_payloads(payload: bytes, message: str) -> None:
    d = Depacketizer()
    d.push(b"\x41\x01", 1, 0, False)
    with pytest.raises(H264Error, match=message):
        d.push(payload, 2, 0, False)
    assert d.flush() == [AccessUnit(0, [b"\x41\x01"], True)]


def test_stap_a_truncated_everywhere() -> None:
    (stap,) = packetize([SPS, PPS, b"\x65\x01\x02"])
    whole = {1 + 2 + len(SPS): [SPS], 1 + 2 + len(SPS) + 2 + len(PPS): [SPS, PPS]}
    for n in range(len(stap)):
        d = Depacketizer()
        if n in whole:  # a prefix that ends between NAL units is itself a valid STAP-A
            assert d.push(stap[:n], 0, 0, True) == [AccessUnit(0, whole[n], False)]
            continue
        with pytest.raises(H264Error):
            d.push(stap[:n], 0, 0, True)


def test_random_garbage_depacketizer() -> None:
    rng = random.Random(99)
    d = Depacketizer()
    for i in range(2000):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
        try:
            aus = d.push(payload, i & 0xFFFF, i // 3, rng.random() < 0.2)
        except H264Error:
            continue
        for au in aus:
            assert au.nalus and all(au.nalus)


def test_access_unit_size_is_bounded() -> None:
    # found by fuzzing for memory: an FU-A without its end, or NAL units of one timestamp without
    # a marker, were kept for as long as the peer kept sending (memory grew without bound)
    d = Depacketizer(max_access_unit=10_000)
    start, middle = packetize([bytes((0x65,)) + b"\xab" * 3000], mtu=1000)[:2]
    d.push(start, 0, 7, False)
    with pytest.raises(H264Error, match="access unit"):
        for seq in range(1, 20):
            d.push(middle, seq, 7, False)
    assert d.dropped_nalus == 1 and seq < 12
    # the next access unit (new timestamp) is whole again; the dropped one never comes out
    units = d.push(bytes((0x41, 1, 2)), seq + 1, 8, True)
    assert [u.nalus for u in units] == [[bytes((0x41, 1, 2))]] and not units[0].damaged
    d = Depacketizer(max_access_unit=10_000)
    with pytest.raises(H264Error, match="access unit"):
        for seq in range(20):
            d.push(bytes((0x41,)) + b"\xab" * 999, seq, 9, False)
    assert d.dropped_nalus == 10
    assert d.flush() == []


def test_annexb() -> None:
    data = b"\x00\x00\x00\x01" + SPS + b"\x00\x00\x01" + PPS + b"\x00\x00\x00\x01\x65\x88\x00\x00"
    assert annexb_split(data) == [SPS, PPS, b"\x65\x88"]
    assert annexb_split(to_annexb([SPS, PPS])) == [SPS, PPS]
    assert to_annexb([b"\x41"]) == b"\x00\x00\x00\x01\x41"
    assert annexb_split(b"\x00\x00\x01\x00\x00\x01\x41") == [b"\x41"]  # empty NAL between codes skipped
    with pytest.raises(H264Error, match="no Annex B start code"):
        annexb_split(b"\x41\x00\x01")
    with pytest.raises(H264Error, match="garbage"):
        annexb_split(b"\x12\x00\x00\x01\x41")


def test_avcc() -> None:
    nalus = [SPS, PPS, b"\x65" + bytes(300)]
    for size in (2, 4):
        assert avcc_split(to_avcc(nalus, size), size) == nalus
    assert avcc_split(to_avcc([SPS, PPS], 1), 1) == [SPS, PPS]
    assert to_avcc([b"\x41\x02"]) == b"\x00\x00\x00\x02\x41\x02"
    assert to_avcc([b"\x41"], 1) == b"\x01\x41"
    with pytest.raises(H264Error, match="does not fit a 1-byte length"):
        to_avcc([bytes(256)], 1)
    with pytest.raises(H264Error, match="length size 3"):
        to_avcc([b"\x41"], 3)
    with pytest.raises(H264Error, match="length size 3"):
        avcc_split(b"", 3)
    data = to_avcc(nalus)
    for n in range(1, len(data)):
        if n in (4 + len(SPS), 8 + len(SPS) + len(PPS)):
            assert avcc_split(data[:n]) == nalus[: 1 if n == 4 + len(SPS) else 2]
            continue
        with pytest.raises(H264Error):
            avcc_split(data[:n])


def test_avc_config() -> None:
    cfg = AvcConfig([SPS], [PPS])
    data = cfg.serialize()
    assert data[:6] == bytes((1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1))
    assert (
        data
        == bytes((1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1))
        + len(SPS).to_bytes(2, "big")
        + SPS
        + b"\x01\x00\x04"
        + PPS
    )
    assert AvcConfig.parse(data) == cfg
    assert AvcConfig.parse(data + b"\xfc\xf8\xf8\x00") == cfg  # high-profile extension bytes ignored
    assert AvcConfig.parse(AvcConfig([SPS], [PPS], 2).serialize()).length_size == 2
    for n in range(len(data)):
        with pytest.raises(H264Error):
            AvcConfig.parse(data[:n])
    with pytest.raises(H264Error, match="version 2"):
        AvcConfig.parse(b"\x02" + data[1:])
    with pytest.raises(H264Error, match="length size 3"):
        AvcConfig.parse(data[:4] + b"\xfe" + data[5:])
    with pytest.raises(H264Error, match="needs an SPS"):
        AvcConfig([], [PPS]).serialize()


def test_keyframe_access_unit_round_trip() -> None:
    au = [SPS, PPS, bytes((0x65,)) + bytes(range(256)) * 20]
    payloads = packetize(au)
    assert payloads[0][0] & 0x1F == STAP_A  # SPS + PPS aggregated
    assert payloads[1][0] & 0x1F == FU_A and payloads[1][1] & 0x1F == NAL_IDR
    (got,) = _depacketize([(p, i, 0, i == len(payloads) - 1) for i, p in enumerate(payloads)])
    assert got.nalus == au and is_keyframe(got.nalus)
