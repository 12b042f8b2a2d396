"""b2bua.wire.flv: audio/video tag bodies, AudioSpecificConfig, AVCDecoderConfigurationRecord.

tests/data/rtmp/x264_avc_sequence_header.bin is the AVC sequence header FFmpeg's FLV muxer sent
when publishing ``testsrc=size=320x240`` encoded with libx264 (High profile, level 1.2).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from b2bua.wire import flv
from b2bua.wire.flv import (
    AudioSpecificConfig,
    AVCDecoderConfigurationRecord,
    FlvError,
    build_aac_raw,
    build_aac_sequence_header,
    build_avc_end_of_sequence,
    build_avc_nalus,
    build_avc_sequence_header,
    parse_audio,
    parse_video,
    split_avcc_nalus,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "rtmp"
FFMPEG_ASC = bytes.fromhex("120856e500")  # AAC-LC 44.1 kHz mono + sync extension 0x2B7 "no SBR"


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 32000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_aac_sequence_header_round_trip(rate: int, channels: int) -> None:
    body = build_aac_sequence_header(rate, channels)
    tag = parse_audio(body)
    assert tag.codec == flv.SOUND_AAC and tag.aac_packet_type == flv.AAC_SEQUENCE_HEADER
    assert body[0] == 0xAF and len(tag.data) == 2
    asc = AudioSpecificConfig.parse(tag.data)
    assert (asc.object_type, asc.sample_rate, asc.channels) == (flv.AAC_LC, rate, channels)
    assert asc.sampling_index == flv.SAMPLING_FREQUENCIES.index(rate)
    assert asc.serialize() == tag.data


@pytest.mark.parametrize(
    "rate,channels,asc",
    [(44100, 1, "1208"), (44100, 2, "1210"), (48000, 2, "1190"), (16000, 1, "1408"), (8000, 1, "1588")],
)
def test_known_asc_bytes(rate: int, channels: int, asc: str) -> None:
    assert build_aac_sequence_header(rate, channels) == b"\xaf\x00" + bytes.fromhex(asc)


def test_ffmpeg_asc_with_sync_extension() -> None:
    asc = AudioSpecificConfig.parse(FFMPEG_ASC)
    assert (asc.object_type, asc.sample_rate, asc.channel_config, asc.sampling_index) == (2, 44100, 1, 4)
    # GASpecificConfig (3 zero bits), 0x2B7 (11), extension object type 5 = SBR (5),
    # sbrPresentFlag 0 (1), then 7 bits of byte padding.
    assert asc.trailing == (0x2B7 << 13 | 5 << 8, 3 + 11 + 5 + 1 + 7)
    assert asc.serialize() == FFMPEG_ASC


def test_explicit_frequency_and_escaped_object_type() -> None:
    asc = AudioSpecificConfig.for_stream(12345, 2)
    data = asc.serialize()
    parsed = AudioSpecificConfig.parse(data)
    assert (parsed.sampling_index, parsed.sample_rate, parsed.channels) == (15, 12345, 2)
    assert parsed.serialize() == data
    usac = AudioSpecificConfig(42, 48000, 2, trailing=(0, 0))
    back = AudioSpecificConfig.parse(usac.serialize())
    assert (back.object_type, back.sample_rate, back.channels) == (42, 48000, 2)
    eight = AudioSpecificConfig.parse(AudioSpecificConfig.for_stream(48000, 8).serialize())
    assert (eight.channel_config, eight.channels) == (7, 8)


def test_unrepresentable_object_types_are_refused() -> None:
    # found by fuzzing: 31 is the escape value itself and 32 + 63 the largest escaped type;
    # serialize() wrote 31 as the escaped type 95 (and 96 as 32) without a word
    assert AudioSpecificConfig.parse(AudioSpecificConfig(95, 8000, 1).serialize()).object_type == 95
    for object_type in (0, 31, 96, 200):
        with pytest.raises(FlvError, match="audioObjectType"):
            AudioSpecificConfig(object_type, 8000, 1).serialize()
        with pytest.raises(FlvError, match="audioObjectType"):
            flv.build_aac_sequence_header(8000, 1, object_type)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\x12", "1 bytes"),
        (bytes.fromhex("0008"), "audioObjectType 0"),
        (bytes.fromhex("1688"), "samplingFrequencyIndex 13 is reserved"),
        (bytes.fromhex("1780"), "truncated in samplingFrequency"),
        (bytes.fromhex("1240"), "channelConfiguration 8 is reserved"),
        (bytes.fromhex("f8"), "1 bytes"),
        (bytes.fromhex("f800"), "truncated in channelConfiguration"),
        (b"\x12\x08" + bytes(80), "implausibly long"),
    ],
)
def test_asc_malformed(data: bytes, message: str) -> None:
    with pytest.raises(FlvError, match=message):
        AudioSpecificConfig.parse(data)


def test_asc_bad_arguments() -> None:
    with pytest.raises(FlvError, match="7 channels"):
        build_aac_sequence_header(44100, 7)
    with pytest.raises(FlvError, match="sample rate 0"):
        build_aac_sequence_header(0, 1)
    with pytest.raises(FlvError, match="Index 4 does not match 48000"):
        AudioSpecificConfig(2, 48000, 1, 4).serialize()


def test_aac_raw_and_audio_header_fields() -> None:
    tag = parse_audio(build_aac_raw(b"\x21\x10\x05"))
    assert tag == flv.AudioTag(flv.SOUND_AAC, flv.AAC_RAW, b"\x21\x10\x05", 3, 1, 1)


def test_speex_and_other_codecs() -> None:
    speex = parse_audio(b"\xb2" + b"spx")  # SoundFormat 11, 5.5 kHz nominal, 16-bit, mono
    assert speex == flv.AudioTag(flv.SOUND_SPEEX, None, b"spx", 0, 1, 0)
    mp3 = parse_audio(b"\x2f" + b"mp3")
    assert (mp3.codec, mp3.aac_packet_type, mp3.sound_rate, mp3.sound_type) == (flv.SOUND_MP3, None, 3, 1)
    assert parse_audio(b"\x72").codec == flv.SOUND_G711_ALAW


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"", "empty audio tag"),
        (b"\xaf", "without AACPacketType"),
        (b"\xaf\x02", "AACPacketType 2"),
        (b"\x9f\x00", "SoundFormat 9 is reserved"),
        (b"\xdf\x00", "SoundFormat 13 is reserved"),
    ],
)
def test_audio_malformed(payload: bytes, message: str) -> None:
    with pytest.raises(FlvError, match=message):
        parse_audio(payload)


# --- video ------------------------------------------------------------------------------------------


def test_x264_sequence_header() -> None:
    body = (DATA / "x264_avc_sequence_header.bin").read_bytes()
    tag = parse_video(body)
    assert (tag.frame_type, tag.codec, tag.avc_packet_type, tag.composition_time) == (1, 7, 0, 0)
    rec = AVCDecoderConfigurationRecord.parse(tag.data)
    assert (rec.profile, rec.profile_compatibility, rec.level, rec.length_size) == (100, 0, 12, 4)
    assert len(rec.sps) == 1 and rec.sps[0][0] & 0x1F == 7 and len(rec.sps[0]) == 25
    assert len(rec.pps) == 1 and rec.pps[0][0] & 0x1F == 8 and len(rec.pps) == 1
    assert rec.extension == bytes.fromhex("fdf8f800")  # High profile: 4:2:0, 8-bit, no SPS ext
    assert rec.serialize() == tag.data
    assert build_avc_sequence_header(rec) == body
    again = AVCDecoderConfigurationRecord.from_sps_pps(rec.sps, rec.pps)
    assert (again.profile, again.profile_compatibility, again.level) == (100, 0, 12)
    assert again.serialize() == tag.data[:-4]


def test_record_counts_and_length_sizes() -> None:
    sps = [b"\x67\x42\xc0\x1e" + bytes(10), b"\x67\x42\xc0\x1f"]
    pps = [b"\x68\xce\x3c\x80", b"\x68\x01", b"\x68\x02"]
    for length_size in (1, 2, 3, 4):
        rec = AVCDecoderConfigurationRecord.from_sps_pps(sps, pps, length_size)
        assert rec.profile == 0x42 and rec.level == 0x1E
        data = rec.serialize()
        assert data[4] == 0xFC | (length_size - 1) and data[5] == 0xE2
        assert AVCDecoderConfigurationRecord.parse(data) == rec


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\x01\x64\x00", "3 bytes"),
        (b"\x02\x64\x00\x0c\xff\xe0\x00", "version 2"),
        (b"\x01\x64\x00\x0c\xff\xe1\x00", "SPS 0 length"),
        (b"\x01\x64\x00\x0c\xff\xe1\x00\x05\x67", "SPS 0 of 5 bytes exceeds the 1 bytes left"),
        (b"\x01\x64\x00\x0c\xff\xe0", "6 bytes"),
        (b"\x01\x64\x00\x0c\xff\xe1\x00\x01\x67", "before the PPS count"),
        (b"\x01\x64\x00\x0c\xff\xe0\x01\x00\x03\x68", "PPS 0 of 3 bytes"),
    ],
)
def test_record_malformed(data: bytes, message: str) -> None:
    with pytest.raises(FlvError, match=message):
        AVCDecoderConfigurationRecord.parse(data)


def test_record_bad_fields() -> None:
    with pytest.raises(FlvError, match="length size 5"):
        AVCDecoderConfigurationRecord(66, 0, 30, [], [], 5).serialize()
    with pytest.raises(FlvError, match="32 SPS"):
        AVCDecoderConfigurationRecord(66, 0, 30, [b"\x67"] * 32, []).serialize()
    with pytest.raises(FlvError, match="at least one SPS"):
        AVCDecoderConfigurationRecord.from_sps_pps([], [b"\x68"])


@pytest.mark.parametrize("cts", [0, 40, -40, (1 << 23) - 1, -(1 << 23)])
@pytest.mark.parametrize("keyframe", [True, False])
def test_avc_nalus_round_trip(cts: int, keyframe: bool) -> None:
    nalus = [b"\x09\xf0", b"\x65" + bytes(range(256)) * 3, b"\x06\x05"]
    body = build_avc_nalus(nalus, keyframe, cts)
    tag = parse_video(body)
    assert tag.keyframe is keyframe and tag.frame_type == (1 if keyframe else 2)
    assert (tag.codec, tag.avc_packet_type, tag.composition_time) == (7, flv.AVC_NALU, cts)
    assert split_avcc_nalus(tag.data) == nalus


@pytest.mark.parametrize("length_size", [1, 2, 3, 4])
def test_split_length_sizes(length_size: int) -> None:
    nalus = [b"\x67\x01", b"\x68", b"\x65" + bytes(200)]
    body = build_avc_nalus(nalus, True, length_size=length_size)
    assert split_avcc_nalus(parse_video(body).data, length_size) == nalus
    assert split_avcc_nalus(b"", length_size) == []


def test_end_of_sequence_and_other_codecs() -> None:
    assert build_avc_end_of_sequence() == b"\x17\x02\x00\x00\x00"
    tag = parse_video(b"\x17\x02\x00\x00\x00")
    assert tag.avc_packet_type == flv.AVC_END_OF_SEQUENCE and tag.data == b""
    vp6 = parse_video(b"\x24abc")
    assert (vp6.frame_type, vp6.codec, vp6.avc_packet_type, vp6.data) == (2, 4, None, b"abc")


@pytest.mark.parametrize(
    "payload,message",
    [
        (b"", "empty video tag"),
        (b"\x17\x01\x00\x00", "4 bytes"),
        (b"\x17\x03\x00\x00\x00", "AVCPacketType 3"),
        (b"\x07\x01\x00\x00\x00", "FrameType 0"),
        (b"\x90hvc1", "enhanced RTMP"),
    ],
)
def test_video_malformed(payload: bytes, message: str) -> None:
    with pytest.raises(FlvError, match=message):
        parse_video(payload)


@pytest.mark.parametrize(
    "data,length_size,message",
    [
        (b"\x00\x00\x00", 4, "truncated NALU length at offset 0"),
        (b"\x00\x00\x00\x05\x65", 4, "NALU of 5 bytes at offset 4 exceeds the 1 bytes left"),
        (b"\x01\x65\x02", 1, "NALU of 2 bytes at offset 3"),
        (b"", 0, "length size 0"),
        (b"", 5, "length size 5"),
    ],
)
def test_split_malformed(data: bytes, length_size: int, message: str) -> None:
    with pytest.raises(FlvError, match=message):
        split_avcc_nalus(data, length_size)


def test_build_errors() -> None:
    with pytest.raises(FlvError, match="composition time 8388608"):
        build_avc_nalus([b"\x65"], True, 1 << 23)
    with pytest.raises(FlvError, match="256 bytes does not fit a 1-byte length"):
        build_avc_nalus([bytes(256)], True, length_size=1)
