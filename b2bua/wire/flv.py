"""FLV tag bodies as carried in RTMP audio (type 8) and video (type 9) messages.

Adobe "Video File Format Specification" v10, annex E.4.2/E.4.3, plus the codec records they carry:
ISO 14496-3 §1.6.2.1 AudioSpecificConfig (AAC) and ISO 14496-15 §5.2.4.1
AVCDecoderConfigurationRecord (H.264). Sans-IO, standard library only; bad input raises
:class:`FlvError` (a ``ValueError``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# SoundFormat (E.4.2.1)
SOUND_PCM = 0
SOUND_ADPCM = 1
SOUND_MP3 = 2
SOUND_PCM_LE = 3
SOUND_NELLYMOSER_16K = 4
SOUND_NELLYMOSER_8K = 5
SOUND_NELLYMOSER = 6
SOUND_G711_ALAW = 7
SOUND_G711_MULAW = 8
SOUND_AAC = 10
SOUND_SPEEX = 11
SOUND_MP3_8K = 14

AAC_SEQUENCE_HEADER = 0
AAC_RAW = 1

# FrameType and CodecID (E.4.3.1)
FRAME_KEY = 1
FRAME_INTER = 2
FRAME_DISPOSABLE_INTER = 3
FRAME_GENERATED_KEY = 4
FRAME_INFO = 5
CODEC_AVC = 7

AVC_SEQUENCE_HEADER = 0
AVC_NALU = 1
AVC_END_OF_SEQUENCE = 2

# ISO 14496-3 Table 1.18
SAMPLING_FREQUENCIES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
SAMPLING_FREQUENCIES += (7350,)
AAC_LC = 2

# The audio header byte for AAC is fixed by the spec: 44 kHz, 16-bit, stereo; the real values
# are in the AudioSpecificConfig.
_AAC_HEADER = (SOUND_AAC << 4) | 0x0F


class FlvError(ValueError):
    """A malformed or unsupported FLV tag body or codec configuration record."""


# --- audio ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class AudioTag:
    """An audio tag body. ``aac_packet_type`` is ``None`` unless ``codec`` is AAC (10)."""

    codec: int
    aac_packet_type: int | None
    data: bytes
    sound_rate: int = 3  # 0: 5.5 kHz, 1: 11 kHz, 2: 22 kHz, 3: 44 kHz (nominal for AAC/Speex)
    sound_size: int = 1  # 0: 8-bit, 1: 16-bit
    sound_type: int = 1  # 0: mono, 1: stereo


def parse_audio(payload: bytes) -> AudioTag:
    if not payload:
        raise FlvError("empty audio tag")
    b = payload[0]
    codec = b >> 4
    if codec == SOUND_AAC:
        if len(payload) < 2:
            raise FlvError("AAC audio tag without AACPacketType")
        packet_type = payload[1]
        if packet_type > AAC_RAW:
            raise FlvError(f"AACPacketType {packet_type} is not 0 or 1")
        return AudioTag(codec, packet_type, payload[2:], (b >> 2) & 3, (b >> 1) & 1, b & 1)
    if codec in (9, 12, 13):
        raise FlvError(f"SoundFormat {codec} is reserved")
    return AudioTag(codec, None, payload[1:], (b >> 2) & 3, (b >> 1) & 1, b & 1)


def build_aac_raw(frame: bytes) -> bytes:
    """An AAC raw frame tag body (AACPacketType 1)."""
    return b"\xaf\x01" + frame


def build_aac_sequence_header(sample_rate: int, channels: int, object_type: int = AAC_LC) -> bytes:
    """An AAC sequence header tag body (AACPacketType 0) for AAC-LC (by default)."""
    asc = AudioSpecificConfig.for_stream(sample_rate, channels, object_type)
    return b"\xaf\x00" + asc.serialize()


class _BitReader:
    __slots__ = ("value", "left")

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = len(data) * 8

    def read(self, n: int, what: str) -> int:
        if n > self.left:
            raise FlvError(f"AudioSpecificConfig truncated in {what}")
        self.left -= n
        return (self.value >> self.left) & ((1 << n) - 1)


@dataclass(slots=True)
class AudioSpecificConfig:
    """ISO 14496-3 AudioSpecificConfig, first fields parsed, the rest kept as bits.

    ``sampling_index`` is 15 when the frequency is explicit (24 bits); ``None`` lets
    ``serialize`` choose. ``trailing`` holds every
    bit after the channel configuration (GASpecificConfig, sync extensions such as FFmpeg's
    0x2B7 "no SBR" signal) as ``(value, bit count)``, so that ``serialize`` reproduces the input.
    """

    object_type: int
    sample_rate: int
    channel_config: int
    sampling_index: int | None = None  # None: from the table when listed, else explicit (15)
    trailing: tuple[int, int] = field(default=(0, 3))  # AAC-LC GASpecificConfig: 3 zero bits

    @classmethod
    def for_stream(cls, sample_rate: int, channels: int, object_type: int = AAC_LC) -> AudioSpecificConfig:
        if not 1 <= channels <= 6 and channels != 8:
            raise FlvError(f"{channels} channels have no AAC channel configuration")
        if not 0 < sample_rate < 1 << 24:
            raise FlvError(f"sample rate {sample_rate} out of range")
        return cls(object_type, sample_rate, 7 if channels == 8 else channels)

    @property
    def channels(self) -> int:
        """The channel count (0 when given by a program config element)."""
        return 8 if self.channel_config == 7 else self.channel_config

    @classmethod
    def parse(cls, data: bytes) -> AudioSpecificConfig:
        if len(data) < 2:
            raise FlvError(f"AudioSpecificConfig of {len(data)} bytes (at least 2 needed)")
        if len(data) > 64:
            raise FlvError(f"AudioSpecificConfig of {len(data)} bytes is implausibly long")
        r = _BitReader(data)
        object_type = r.read(5, "audioObjectType")
        if object_type == 31:
            object_type = 32 + r.read(6, "audioObjectTypeExt")
        if object_type == 0:
            raise FlvError("audioObjectType 0 (null)")
        index = r.read(4, "samplingFrequencyIndex")
        if index == 15:
            sample_rate = r.read(24, "samplingFrequency")
            if sample_rate == 0:
                raise FlvError("explicit sampling frequency 0")
        elif index < len(SAMPLING_FREQUENCIES):
            sample_rate = SAMPLING_FREQUENCIES[index]
        else:
            raise FlvError(f"samplingFrequencyIndex {index} is reserved")
        channel_config = r.read(4, "channelConfiguration")
        if channel_config > 7:
            raise FlvError(f"channelConfiguration {channel_config} is reserved")
        rest = r.left
        return cls(object_type, sample_rate, channel_config, index, (r.read(rest, "tail"), rest))

    def serialize(self) -> bytes:
        value = 0
        bits = 0

        def put(v: int, n: int) -> None:
            nonlocal value, bits
            value = (value << n) | (v & ((1 << n) - 1))
            bits += n

        if not 0 < self.object_type < 96 or self.object_type == 31:  # 31 is the escape, 32 + 63 the last
            raise FlvError(f"audioObjectType {self.object_type} cannot be written")
        if self.object_type > 31:
            put(31, 5)
            put(self.object_type - 32, 6)
        else:
            put(self.object_type, 5)
        index = self.sampling_index
        rate = self.sample_rate
        table = SAMPLING_FREQUENCIES
        if index is None:
            index = table.index(rate) if rate in table else 15
        elif index != 15 and (index >= len(table) or table[index] != rate):
            raise FlvError(f"samplingFrequencyIndex {index} does not match {self.sample_rate} Hz")
        put(index, 4)
        if index == 15:
            put(self.sample_rate, 24)
        put(self.channel_config, 4)
        tail, tail_bits = self.trailing
        put(tail, tail_bits)
        pad = -bits % 8
        put(0, pad)
        return value.to_bytes(bits // 8, "big")


# --- video ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class VideoTag:
    """A video tag body. For AVC, ``avc_packet_type`` and ``composition_time`` (ms, signed)
    come from the AVCVIDEOPACKET header; for other codecs they are ``None`` and 0."""

    frame_type: int
    codec: int
    avc_packet_type: int | None
    composition_time: int
    data: bytes

    @property
    def keyframe(self) -> bool:
        return self.frame_type == FRAME_KEY


def parse_video(payload: bytes) -> VideoTag:
    if not payload:
        raise FlvError("empty video tag")
    b = payload[0]
    if b & 0x80:
        raise FlvError("enhanced RTMP video tag (ExVideoTagHeader) is not supported")
    frame_type = b >> 4
    codec = b & 0x0F
    if frame_type == 0:
        raise FlvError("video FrameType 0 is reserved")
    if codec != CODEC_AVC:
        return VideoTag(frame_type, codec, None, 0, payload[1:])
    if len(payload) < 5:
        raise FlvError(f"AVC video tag of {len(payload)} bytes (at least 5 needed)")
    packet_type = payload[1]
    if packet_type > AVC_END_OF_SEQUENCE:
        raise FlvError(f"AVCPacketType {packet_type} is not 0, 1 or 2")
    cts = int.from_bytes(payload[2:5], "big", signed=True)
    return VideoTag(frame_type, codec, packet_type, cts, payload[5:])


def _avc_header(keyframe: bool, packet_type: int, cts: int) -> bytes:
    if not -(1 << 23) <= cts < 1 << 23:
        raise FlvError(f"composition time {cts} does not fit 24 bits")
    return bytes(((FRAME_KEY if keyframe else FRAME_INTER) << 4 | CODEC_AVC, packet_type)) + cts.to_bytes(
        3, "big", signed=True
    )


def build_avc_nalus(nalus: list[bytes], keyframe: bool, cts: int = 0, length_size: int = 4) -> bytes:
    """An AVC NALU tag body (AVCPacketType 1): the NAL units with ``length_size``-byte lengths."""
    parts = [_avc_header(keyframe, AVC_NALU, cts)]
    limit = 1 << (8 * length_size)
    for nalu in nalus:
        if len(nalu) >= limit:
            raise FlvError(f"NAL unit of {len(nalu)} bytes does not fit a {length_size}-byte length")
        parts.append(len(nalu).to_bytes(length_size, "big"))
        parts.append(nalu)
    return b"".join(parts)


def build_avc_sequence_header(record: AVCDecoderConfigurationRecord) -> bytes:
    """An AVC sequence header tag body (AVCPacketType 0)."""
    return _avc_header(True, AVC_SEQUENCE_HEADER, 0) + record.serialize()


def build_avc_end_of_sequence() -> bytes:
    return _avc_header(True, AVC_END_OF_SEQUENCE, 0)


def split_avcc_nalus(data: bytes, length_size: int = 4) -> list[bytes]:
    """Split length-prefixed (AVCC) NAL units."""
    if not 1 <= length_size <= 4:
        raise FlvError(f"NALU length size {length_size} is not 1..4")
    nalus = []
    pos = 0
    end = len(data)
    while pos < end:
        if pos + length_size > end:
            raise FlvError(f"truncated NALU length at offset {pos}")
        n = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if pos + n > end:
            raise FlvError(f"NALU of {n} bytes at offset {pos} exceeds the {end - pos} bytes left")
        nalus.append(data[pos : pos + n])
        pos += n
    return nalus


@dataclass(slots=True)
class AVCDecoderConfigurationRecord:
    """ISO 14496-15 AVCDecoderConfigurationRecord (the "avcC" box body).

    ``extension`` keeps whatever follows the PPS list verbatim (for High profiles: chroma format,
    bit depths and SPS extensions, which FFmpeg writes), so ``serialize`` reproduces the input.
    """

    profile: int
    profile_compatibility: int
    level: int
    sps: list[bytes]
    pps: list[bytes]
    length_size: int = 4
    extension: bytes = b""

    @classmethod
    def from_sps_pps(
        cls, sps: list[bytes], pps: list[bytes], length_size: int = 4
    ) -> AVCDecoderConfigurationRecord:
        """Build a record from parameter sets (profile, compatibility and level from the first SPS)."""
        if not sps or len(sps[0]) < 4:
            raise FlvError("need at least one SPS of 4 bytes or more")
        s = sps[0]
        return cls(s[1], s[2], s[3], list(sps), list(pps), length_size)

    @classmethod
    def parse(cls, data: bytes) -> AVCDecoderConfigurationRecord:
        end = len(data)
        if end < 7:
            raise FlvError(f"AVCDecoderConfigurationRecord of {end} bytes (at least 7 needed)")
        if data[0] != 1:
            raise FlvError(f"AVCDecoderConfigurationRecord version {data[0]} (expected 1)")
        profile, compat, level = data[1], data[2], data[3]
        length_size = (data[4] & 3) + 1
        pos = 5
        sets: list[list[bytes]] = []
        for what, count_mask in (("SPS", 0x1F), ("PPS", 0xFF)):
            if pos >= end:
                raise FlvError(f"AVCDecoderConfigurationRecord truncated before the {what} count")
            count = data[pos] & count_mask
            pos += 1
            items = []
            for i in range(count):
                if pos + 2 > end:
                    raise FlvError(f"AVCDecoderConfigurationRecord truncated in {what} {i} length")
                n = int.from_bytes(data[pos : pos + 2], "big")
                pos += 2
                if pos + n > end:
                    raise FlvError(f"{what} {i} of {n} bytes exceeds the {end - pos} bytes left")
                items.append(bytes(data[pos : pos + n]))
                pos += n
            sets.append(items)
        return cls(profile, compat, level, sets[0], sets[1], length_size, bytes(data[pos:]))

    def serialize(self) -> bytes:
        if not 1 <= self.length_size <= 4:
            raise FlvError(f"NALU length size {self.length_size} is not 1..4")
        if len(self.sps) > 31 or len(self.pps) > 255:
            raise FlvError(f"{len(self.sps)} SPS / {len(self.pps)} PPS exceed the record's counts")
        parts = [
            bytes((1, self.profile, self.profile_compatibility, self.level, 0xFC | (self.length_size - 1)))
        ]
        for count_prefix, items in ((0xE0, self.sps), (0, self.pps)):
            parts.append(bytes((count_prefix | len(items),)))
            for item in items:
                if len(item) > 0xFFFF:
                    raise FlvError(f"parameter set of {len(item)} bytes exceeds 65535")
                parts.append(len(item).to_bytes(2, "big") + item)
        parts.append(self.extension)
        return b"".join(parts)
