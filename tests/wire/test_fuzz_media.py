"""Property-based fuzzing of the media framings: b2bua.wire.flv and b2bua.wire.h264.

Only :class:`FlvError` / :class:`H264Error` may come out of the parsers and of the RTP
depacketizer; records and NAL unit framings round-trip; reassembly memory is bounded.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from b2bua.wire import flv, h264
from b2bua.wire.flv import AudioSpecificConfig, AVCDecoderConfigurationRecord, FlvError
from b2bua.wire.h264 import AvcConfig, Depacketizer, H264Error
from tests.wire.fuzz_support import fuzz, mutated, peak_allocation

# A NAL unit: forbidden bit clear, a single-NAL type 1..23, a body without start-code-like
# "00 00" runs (real encoders insert emulation prevention bytes) and not ending in 00.
nal_bodies = st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\x00\x03") + b"\x80")
nalus = st.tuples(st.integers(0, 3), st.integers(1, 23), nal_bodies).map(
    lambda t: bytes((t[0] << 5 | t[1],)) + t[2]
)
access_units = st.lists(nalus, min_size=1, max_size=8)


def _flv_parsers(data: bytes) -> None:
    for parse in (
        flv.parse_audio,
        flv.parse_video,
        AudioSpecificConfig.parse,
        AVCDecoderConfigurationRecord.parse,
        flv.split_avcc_nalus,
        lambda d: flv.split_avcc_nalus(d, 2),
        lambda d: flv.split_avcc_nalus(d, 1),
    ):
        try:
            parse(data)
        except FlvError:
            pass


def _h264_parsers(data: bytes) -> None:
    for parse in (
        h264.annexb_split,
        h264.avcc_split,
        lambda d: h264.avcc_split(d, 2),
        lambda d: h264.avcc_split(d, 1),
        AvcConfig.parse,
        h264.nal_type,
        h264.nal_ref_idc,
        lambda d: h264.packetize([d]),
    ):
        try:
            parse(data)
        except H264Error:
            pass


def _push_all(dep: Depacketizer, packets: list[tuple[bytes, int, int, bool]]) -> list[h264.AccessUnit]:
    out = []
    for payload, seq, ts, marker in packets:
        try:
            out += dep.push(payload, seq, ts, marker)
        except H264Error:
            pass
    out += dep.flush()
    for unit in out:
        assert unit.nalus and all(unit.nalus)  # what the bridge reads: nal_type() of each
    return out


# --- (a) arbitrary input ---------------------------------------------------------------------------


@fuzz(300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    _flv_parsers(data)
    _h264_parsers(data)


@fuzz(180)
@given(st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 0xFFFF), st.integers(0, 3), st.booleans()),
                max_size=30))
def test_depacketizer_arbitrary_packets(packets: list[tuple[bytes, int, int, bool]]) -> None:
    _push_all(Depacketizer(), packets)


# --- (b) valid data, mutated -----------------------------------------------------------------------


@fuzz(60)
@given(st.data())
def test_mutated_records_and_tags(data: st.DataObject) -> None:
    units = data.draw(access_units)
    sps = bytes((0x67, 0x42, 0xC0, 0x1F)) + data.draw(nal_bodies)
    record = AVCDecoderConfigurationRecord.from_sps_pps([sps], [b"\x68\xce\x3c\x80"])
    for base in (
        record.serialize(),
        flv.build_avc_sequence_header(record),
        flv.build_avc_nalus(units, True, data.draw(st.integers(-(1 << 23), (1 << 23) - 1))),
        flv.build_aac_sequence_header(data.draw(st.sampled_from([8000, 16000, 44100, 12345])), 1),
        flv.build_aac_raw(data.draw(st.binary(max_size=50))),
        AvcConfig([sps], [b"\x68\xce"]).serialize(),
        h264.to_annexb(units),
        h264.to_avcc(units),
    ):
        raw = data.draw(mutated(base))
        _flv_parsers(raw)
        _h264_parsers(raw)


@fuzz(70)
@given(access_units, st.integers(3, 1500), st.data())
def test_depacketizer_mutated_packets(units: list[bytes], mtu: int, data: st.DataObject) -> None:
    payloads = h264.packetize(units, mtu)
    packets = [(data.draw(mutated(p)), i, 0, i == len(payloads) - 1) for i, p in enumerate(payloads)]
    # losses, duplicates and reordering
    packets = data.draw(st.lists(st.sampled_from(packets), max_size=len(packets) + 3)) if packets else []
    _push_all(Depacketizer(), packets)


# --- (c) round trips -------------------------------------------------------------------------------


@fuzz(120)
@given(st.lists(access_units, min_size=1, max_size=4), st.integers(3, 1500), st.integers(0, 0xFFFF))
def test_packetize_depacketize(units: list[list[bytes]], mtu: int, seq0: int) -> None:
    dep = Depacketizer()
    got = []
    seq = seq0
    for ts, unit in enumerate(units):
        payloads = h264.packetize(unit, mtu)
        assert all(len(p) <= mtu for p in payloads)
        for i, payload in enumerate(payloads):
            got += dep.push(payload, seq & 0xFFFF, ts * 3000, i == len(payloads) - 1)
            seq += 1
    assert [u.nalus for u in got] == units
    assert not any(u.damaged for u in got)


@fuzz(120)
@given(access_units, st.sampled_from([1, 2, 4]))
def test_framings_round_trip(units: list[bytes], length_size: int) -> None:
    assert h264.annexb_split(h264.to_annexb(units)) == units
    short = [u[:255] for u in units] if length_size == 1 else units
    assert h264.avcc_split(h264.to_avcc(short, length_size), length_size) == short
    assert flv.split_avcc_nalus(h264.to_avcc(short, length_size), length_size) == short
    tag = flv.parse_video(flv.build_avc_nalus(units, keyframe=False, cts=-5))
    assert (tag.avc_packet_type, tag.composition_time, tag.keyframe) == (flv.AVC_NALU, -5, False)
    assert flv.split_avcc_nalus(tag.data) == units


@fuzz(120)
@given(
    st.lists(st.binary(min_size=4, max_size=40), min_size=1, max_size=31),
    st.lists(st.binary(min_size=1, max_size=40), max_size=10),
    st.sampled_from([1, 2, 4]),
    st.binary(max_size=8),
)
def test_avc_records_round_trip(sps: list[bytes], pps: list[bytes], length_size: int, ext: bytes) -> None:
    record = AVCDecoderConfigurationRecord.from_sps_pps(sps, pps, length_size)
    record.extension = ext
    raw = record.serialize()
    assert AVCDecoderConfigurationRecord.parse(raw) == record
    assert AVCDecoderConfigurationRecord.parse(raw).serialize() == raw
    config = AvcConfig(sps, pps, length_size)
    assert AvcConfig.parse(config.serialize()) == config
    assert AvcConfig.parse(raw) == config  # the extension is ignored
    tag = flv.parse_video(flv.build_avc_sequence_header(record))
    assert tag.avc_packet_type == flv.AVC_SEQUENCE_HEADER
    assert AVCDecoderConfigurationRecord.parse(tag.data) == record


@fuzz(180)
@given(st.binary(min_size=2, max_size=64))
def test_audio_specific_config_reproduces_its_input(data: bytes) -> None:
    try:
        asc = AudioSpecificConfig.parse(data)
    except FlvError:
        return
    assert asc.serialize() == data
    assert AudioSpecificConfig.parse(asc.serialize()) == asc


@fuzz(120)
@given(st.integers(1, (1 << 24) - 1), st.sampled_from([1, 2, 3, 4, 5, 6, 8]),
       st.integers(1, 95).filter(lambda t: t != 31))
def test_audio_specific_config_for_stream(rate: int, channels: int, object_type: int) -> None:
    asc = AudioSpecificConfig.for_stream(rate, channels, object_type)
    parsed = AudioSpecificConfig.parse(asc.serialize())
    assert (parsed.sample_rate, parsed.channels, parsed.object_type) == (rate, channels, object_type)
    tag = flv.parse_audio(flv.build_aac_sequence_header(rate, channels, object_type))
    assert tag.aac_packet_type == flv.AAC_SEQUENCE_HEADER and tag.data == asc.serialize()


# --- (d) memory bounded ----------------------------------------------------------------------------


def test_depacketizer_memory_is_bounded() -> None:
    """An FU-A that never ends, or an access unit that never gets its marker (same timestamp for
    ever), is dropped at a bound instead of growing with everything the peer sends."""
    fragment = bytes((0x7C, 0x05)) + b"\xab" * 1400  # FU-A, IDR, neither start nor end
    start = bytes((0x7C, 0x85)) + b"\xab" * 1400

    def endless_fu(_: object) -> None:
        dep = Depacketizer()
        dep.push(start, 0, 1000, False)
        for seq in range(1, 8000):  # 11 MB
            try:
                dep.push(fragment, seq, 1000, False)
            except H264Error:
                pass

    def endless_unit(_: object) -> None:
        dep = Depacketizer()
        for seq in range(8000):
            try:
                dep.push(bytes((0x41,)) + b"\xab" * 1400, seq, 1000, False)  # P slices, no marker
            except H264Error:
                pass

    for attack in (endless_fu, endless_unit):
        peak = peak_allocation(attack, None)
        assert peak < 2 * h264.MAX_ACCESS_UNIT_SIZE + 1024 * 1024, f"{attack.__name__}: {peak} bytes"
