"""Transcoding: prove the audio survives each path (frequency, no gaps), not just that bytes flow."""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import av
import numpy as np
import pytest

from b2bua.media.transcode import (
    AAC_FRAME_SAMPLES,
    AacDecoder,
    AacEncoder,
    PcmFifo,
    Resampler,
    RtpAudioDecoder,
    RtpAudioEncoder,
    codec_info,
    parse_audio_specific_config,
)
from tests.media.audio import (
    delay_samples,
    dominant_frequency,
    find_gaps,
    noise_burst_pcm,
    samples,
    sine_float,
    sine_pcm,
)

RTP_CODECS = ["PCMU", "PCMA", "G722", "opus"]
TONE = 1000.0


def assert_tone(pcm: bytes, rate: int, *, skip_ms: int = 100) -> None:
    skip = rate * skip_ms // 1000 * 2
    body = pcm[skip : len(pcm) - skip]
    freq = dominant_frequency(body, rate)
    assert abs(freq - TONE) <= TONE * 0.02, "dominant frequency %.1f Hz" % freq
    assert find_gaps(body, rate) == [], "gaps in the tone"
    assert samples(body).std() > 0.05, "tone too quiet"


@lru_cache
def aac_stream(rate: int, channels: int, seconds: float = 1.0) -> tuple[bytes, list[bytes]]:
    """A 1 kHz sine AAC-encoded by PyAV directly (as a publisher would): (ASC, raw frames)."""
    layout = "stereo" if channels == 2 else "mono"
    ctx = av.CodecContext.create("aac", "w")
    ctx.format = "fltp"
    ctx.layout = layout
    ctx.sample_rate = rate
    ctx.time_base = Fraction(1, rate)
    ctx.bit_rate = 64000 * channels
    ctx.open()
    tone = sine_float(TONE, seconds, rate)
    packets: list[bytes] = []
    for start in range(0, len(tone) - AAC_FRAME_SAMPLES + 1, AAC_FRAME_SAMPLES):
        chunk = np.tile(tone[start : start + AAC_FRAME_SAMPLES], (channels, 1))
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        packets += [bytes(p) for p in ctx.encode(frame)]
    packets += [bytes(p) for p in ctx.encode(None)]
    return bytes(ctx.extradata), packets


def aac_decode_all(asc: bytes, packets: list[bytes]) -> tuple[bytes, int]:
    """Decode AAC with PyAV alone (as a player would): s16 mono PCM and its rate."""
    ctx = av.CodecContext.create("aac", "r")
    ctx.extradata = asc
    resampler = av.AudioResampler(format="s16", layout="mono")
    out = []
    rate = 0
    for data in packets:
        for frame in ctx.decode(av.Packet(data)):
            rate = frame.sample_rate
            for converted in resampler.resample(frame):
                out.append(converted.to_ndarray().tobytes())
    return b"".join(out), rate


# --- uplink: AAC → RTP codec -------------------------------------------------------------------


@pytest.mark.parametrize("codec", RTP_CODECS)
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("aac_rate", [44100, 16000, 48000])
def test_uplink_aac_to_rtp_codec_keeps_the_tone(aac_rate: int, channels: int, codec: str) -> None:
    asc, packets = aac_stream(aac_rate, channels)
    decoder = AacDecoder(asc)
    assert decoder.sample_rate == aac_rate
    encoder = RtpAudioEncoder(codec)
    resampler = Resampler(encoder.sample_rate)
    fifo = PcmFifo()
    rtp_decoder = RtpAudioDecoder(codec)
    n = encoder.samples_per_frame
    received = []
    # A publisher delivers in bursts; the media tick pulls exactly 20 ms whenever it can.
    for index, data in enumerate(packets):
        fifo.put(resampler.resample(decoder.decode(data)))
        if index % 4 == 3:
            while fifo.level() >= n:
                payload = encoder.encode(fifo.take(n))
                assert payload
                received.append(rtp_decoder.decode(payload))
    while fifo.level() >= n:
        received.append(rtp_decoder.decode(encoder.encode(fifo.take(n))))
    assert fifo.underruns == 0
    pcm = b"".join(received)
    assert len(pcm) // 2 >= encoder.sample_rate * 0.9
    assert_tone(pcm, rtp_decoder.sample_rate)


@pytest.mark.parametrize("codec", RTP_CODECS)
def test_encoder_payload_sizes_and_clocks(codec: str) -> None:
    encoder = RtpAudioEncoder(codec)
    pcm = sine_pcm(TONE, 0.02, encoder.sample_rate)
    payload = encoder.encode(pcm)
    expected = {"PCMU": 160, "PCMA": 160, "G722": 160}
    if codec in expected:
        assert len(payload) == expected[codec]
    else:
        assert 0 < len(payload) < 400
    assert encoder.timestamp_step == {"PCMU": 160, "PCMA": 160, "G722": 160, "opus": 960}[codec]
    assert encoder.samples_per_frame == {"PCMU": 160, "PCMA": 160, "G722": 320, "opus": 960}[codec]
    assert codec_info(codec).clock_rate == encoder.clock_rate


def test_opus_stereo_and_fec_encode() -> None:
    encoder = RtpAudioEncoder("opus", channels=2, fec=True)
    decoder = RtpAudioDecoder("opus")
    pcm = sine_pcm(TONE, 1.0, 48000)
    out = b"".join(decoder.decode(encoder.encode(pcm[i : i + 1920])) for i in range(0, len(pcm), 1920))
    assert encoder.encode(pcm[:1920])[0] & 0x04  # TOC stereo flag
    assert_tone(out, 48000)


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError):
        RtpAudioEncoder("GSM")
    with pytest.raises(ValueError):
        RtpAudioDecoder("G729")


# --- downlink: RTP codec → AAC -----------------------------------------------------------------


@pytest.mark.parametrize("aac_rate", [16000, 44100, 48000])
@pytest.mark.parametrize("codec", RTP_CODECS)
def test_downlink_rtp_codec_to_aac_keeps_the_tone(codec: str, aac_rate: int) -> None:
    encoder = RtpAudioEncoder(codec)
    rtp_decoder = RtpAudioDecoder(codec)
    resampler = Resampler(aac_rate, in_rate=rtp_decoder.sample_rate)
    aac = AacEncoder(aac_rate)
    tone = sine_pcm(TONE, 1.0, encoder.sample_rate)
    step = encoder.samples_per_frame * 2
    frames = []
    for start in range(0, len(tone), step):
        payload = encoder.encode(tone[start : start + step])
        frames += aac.encode(resampler.resample(rtp_decoder.decode(payload)))
    assert [f.pts for f in frames] == [i * AAC_FRAME_SAMPLES for i in range(len(frames))]
    assert len(frames) >= aac_rate // AAC_FRAME_SAMPLES - 2
    config = parse_audio_specific_config(aac.extradata)
    assert (config.object_type, config.sample_rate, config.channels) == (2, aac_rate, 1)
    pcm, rate = aac_decode_all(aac.extradata, [f.data for f in frames])
    assert rate == aac_rate
    assert_tone(pcm, rate)


def test_aac_encoder_takes_any_chunk_size() -> None:
    aac = AacEncoder(16000)
    tone = sine_pcm(TONE, 1.0, 16000)
    frames = []
    sizes = [2, 34, 640, 3000, 1, 7777]
    pos = i = 0
    while pos < len(tone):
        size = sizes[i % len(sizes)] * 2
        frames += aac.encode(tone[pos : pos + size])
        pos += size
        i += 1
    # One frame of look-ahead stays inside the encoder.
    assert len(frames) == 16000 // AAC_FRAME_SAMPLES - 1
    assert aac.encode(b"") == []
    pcm, rate = aac_decode_all(aac.extradata, [f.data for f in frames])
    assert_tone(pcm, rate)


@pytest.mark.parametrize("aac_rate", [16000, 48000])
def test_aac_encoder_bandwidth_follows_the_input_and_survives_a_codec_change(aac_rate: int) -> None:
    aac = AacEncoder(aac_rate, in_rate=8000)
    assert (aac.cutoff, aac.bitrate) == (4000, 32000)  # G.711 has nothing above 4 kHz
    frames = aac.encode(sine_pcm(TONE, 1.0, 8000))
    aac.set_input_rate(48000)  # e.g. a re-INVITE to opus: the stream goes on, no gap
    frames += aac.encode(sine_pcm(TONE, 1.0, 48000))
    assert [f.pts for f in frames] == [i * AAC_FRAME_SAMPLES for i in range(len(frames))]
    assert len(frames) >= 2 * aac_rate // AAC_FRAME_SAMPLES - 3
    pcm, rate = aac_decode_all(aac.extradata, [f.data for f in frames])
    assert rate == aac_rate
    assert_tone(pcm, rate)
    assert AacEncoder(48000).bitrate == 64000 and AacEncoder(48000).cutoff == 0


def test_aac_encoder_stereo_extradata() -> None:
    aac = AacEncoder(44100, channels=2)
    config = parse_audio_specific_config(aac.extradata)
    assert (config.sample_rate, config.channels) == (44100, 2)
    frames = aac.encode(sine_pcm(TONE, 0.5, 44100))
    pcm, rate = aac_decode_all(aac.extradata, [f.data for f in frames])
    assert abs(dominant_frequency(pcm[4096:], rate) - TONE) < 20


# --- concealment ----------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", RTP_CODECS)
@pytest.mark.parametrize("count", [1, 160, 333, 960, 2000])
def test_conceal_returns_the_number_of_samples_asked(codec: str, count: int) -> None:
    decoder = RtpAudioDecoder(codec)
    assert len(decoder.conceal(count)) == count * 2  # before any packet
    encoder = RtpAudioEncoder(codec)
    decoder.decode(encoder.encode(sine_pcm(TONE, 0.02, encoder.sample_rate)))
    assert len(decoder.conceal(count)) == count * 2
    assert len(decoder.conceal(count)) == count * 2


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
def test_g711_g722_conceal_repeats_then_fades_to_silence(codec: str) -> None:
    encoder = RtpAudioEncoder(codec)
    decoder = RtpAudioDecoder(codec)
    n = encoder.samples_per_frame
    tone = sine_pcm(TONE, 0.2, encoder.sample_rate)
    for start in range(0, len(tone), n * 2):
        last = decoder.decode(encoder.encode(tone[start : start + n * 2]))
    levels = [samples(decoder.conceal(n)).std() for _ in range(5)]
    reference = samples(last).std()
    assert levels[0] == pytest.approx(reference / 2, rel=0.1)
    assert levels[0] > levels[1] > levels[2] > 0
    assert levels[3] == levels[4] == 0.0
    # A good packet restores full level.
    decoded = decoder.decode(encoder.encode(tone[: n * 2]))
    assert samples(decoded).std() > reference * 0.8
    assert samples(decoder.conceal(n)).std() > 0


def test_opus_plc_continues_the_tone_then_recovers() -> None:
    encoder = RtpAudioEncoder("opus", fec=True)
    decoder = RtpAudioDecoder("opus")
    tone = sine_pcm(TONE, 1.0, 48000)
    out = []
    lost = (20, 30, 40, 41)
    for index, start in enumerate(range(0, len(tone), 1920)):
        payload = encoder.encode(tone[start : start + 1920])
        if index in lost:
            concealed = decoder.conceal(960)
            assert len(concealed) == 1920
            if index - 1 not in lost:
                assert samples(concealed).std() > 0.1, "PLC produced silence"
                assert abs(dominant_frequency(concealed, 48000) - TONE) < 60
            out.append(concealed)
        else:
            out.append(decoder.decode(payload))
    pcm = b"".join(out)
    assert abs(dominant_frequency(pcm, 48000) - TONE) < TONE * 0.02
    # Single losses leave no gap; opus PLC fades over a second consecutive loss, by design.
    assert set(find_gaps(pcm, 48000, skip_ms=100)) <= {41}


def test_undecodable_payload_is_concealed() -> None:
    decoder = RtpAudioDecoder("opus")
    pcm = decoder.decode(b"\xff\xff\xff")  # code 3 with a bogus frame count
    assert len(pcm) == 960 * 2
    assert decoder.errors == 1


# --- AAC decoder, resampler, FIFO ------------------------------------------------------------------


def test_audio_specific_config() -> None:
    assert parse_audio_specific_config(bytes.fromhex("1210")) == (2, 44100, 2)
    assert parse_audio_specific_config(bytes.fromhex("1408")) == (2, 16000, 1)
    assert parse_audio_specific_config(bytes.fromhex("1188")) == (2, 48000, 1)
    # Explicit 24-bit rate (index 15).
    assert parse_audio_specific_config(bytes.fromhex("178001f408")) == (2, 1000, 1)
    for bad in (b"", b"\x12", bytes.fromhex("16 80"), bytes.fromhex("0010")):
        with pytest.raises(ValueError):
            parse_audio_specific_config(bad)


def test_aac_decoder_survives_garbage() -> None:
    asc, packets = aac_stream(44100, 1)
    decoder = AacDecoder(asc)
    for garbage in (b"\x00\xff" * 50, b"\xde\xad\xbe\xef" * 40, b""):
        assert isinstance(decoder.decode(garbage), list)  # never raises
    frames = [f for data in packets[:20] for f in decoder.decode(data)]
    assert frames and all(f.sample_rate == 44100 for f in frames)


def test_resampler_follows_a_rate_change() -> None:
    resampler = Resampler(8000)
    first = resampler.resample(AacDecoder(aac_stream(44100, 2)[0]).decode(aac_stream(44100, 2)[1][0]))
    decoder = AacDecoder(aac_stream(16000, 1)[0])
    pcm = b"".join(resampler.resample(decoder.decode(p)) for p in aac_stream(16000, 1)[1])
    assert isinstance(first, bytes)
    assert abs(len(pcm) // 2 - 8000) < 400
    assert abs(dominant_frequency(pcm[1600:], 8000) - TONE) < 20


def test_resampler_bytes() -> None:
    assert Resampler(8000, in_rate=8000).resample(b"\x01\x02") == b"\x01\x02"
    up = Resampler(16000, in_rate=8000)
    pcm = b"".join(up.resample(sine_pcm(TONE, 0.02, 8000)) for _ in range(50))
    assert abs(len(pcm) // 2 - 16000) < 100
    with pytest.raises(ValueError):
        Resampler(16000).resample(b"\0\0")


@pytest.mark.parametrize("chunk", [1024, 441, 7])
def test_resampler_keeps_pace_whatever_the_chunks(chunk: int) -> None:
    """Every push's output comes out with that push, short by no more than the filter's delay
    (the converter is pulled only while output is owed), and nothing is lost or repeated."""
    from b2bua.media.transcode import OWED_SLACK

    down = Resampler(8000, in_rate=44100)
    tone = sine_pcm(TONE, 2.0, 44100)
    pcm, fed = b"", 0
    for start in range(0, len(tone), chunk * 2):
        part = tone[start : start + chunk * 2]
        pcm += down.resample(part)
        fed += len(part) // 2
        assert fed * 8000 / 44100 - len(pcm) // 2 <= OWED_SLACK + 1
    assert abs(len(pcm) // 2 - 16000) <= OWED_SLACK
    assert_tone(pcm, 8000)


def test_pcm_fifo() -> None:
    fifo = PcmFifo()
    fifo.put(bytes(range(10)))
    assert fifo.level() == 5
    assert fifo.take(2) == bytes(range(4))
    assert fifo.level() == 3
    assert fifo.take(4) == bytes(range(4, 10)) + b"\0\0"
    assert fifo.underruns == 1 and fifo.level() == 0
    fifo.put(np.arange(1000, dtype=np.int16).tobytes())
    assert fifo.trim_to(1200) == 0
    assert fifo.trim_to(400) == 600
    assert fifo.dropped == 600 and fifo.level() == 400
    assert np.frombuffer(fifo.take(1), dtype=np.int16)[0] == 600  # oldest dropped first
    fifo.clear()
    assert fifo.level() == 0


def test_fifo_keeps_uplink_shallow_under_a_fast_publisher() -> None:
    """A publisher clock 2% fast: trimming at 60 ms keeps the depth bounded."""
    fifo = PcmFifo()
    chunk = bytes(2 * 164)  # 20.4 ms of 8 kHz per 20 ms tick
    for _ in range(500):
        fifo.put(chunk)
        fifo.take(160)
        fifo.trim_to(480)
        assert fifo.level() <= 480
    assert fifo.dropped > 0 and fifo.underruns == 0


# --- the helpers themselves ---------------------------------------------------------------------------


def test_audio_helpers() -> None:
    assert dominant_frequency(sine_pcm(1234.0, 0.5, 8000), 8000) == pytest.approx(1234.0, abs=3)
    reference = noise_burst_pcm(0.5, 8000)
    assert delay_samples(reference, bytes(2 * 37) + reference) == 37
    assert delay_samples(reference, reference[2 * 11 :]) == -11
    gapped = bytearray(sine_pcm(TONE, 1.0, 8000))
    gapped[2 * 4000 : 2 * 4400] = bytes(800)
    assert find_gaps(bytes(gapped), 8000) == [25, 26]
    assert find_gaps(sine_pcm(TONE, 1.0, 8000), 8000) == []


@pytest.mark.parametrize("codec", RTP_CODECS)
def test_empty_payload_does_not_end_the_stream(codec: str) -> None:
    encoder = RtpAudioEncoder(codec)
    decoder = RtpAudioDecoder(codec)
    assert len(decoder.decode(b"")) == decoder.samples_per_frame * 2
    tone = sine_pcm(TONE, 0.2, encoder.sample_rate)
    step = encoder.samples_per_frame * 2
    pcm = b"".join(decoder.decode(encoder.encode(tone[i : i + step])) for i in range(0, len(tone), step))
    assert abs(dominant_frequency(pcm, decoder.sample_rate) - TONE) < 20


def test_upsampler2_keeps_the_band_rejects_the_images_and_is_chunk_independent() -> None:
    from b2bua.media.transcode import Upsampler2

    rate = 8000
    for freq in (300, 1000, 3000):
        x = np.sin(2 * np.pi * freq * np.arange(rate) / rate).astype(np.float32) * 0.5
        y = Upsampler2()(x)[200:]  # 16 kHz, past the filter's start
        spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        bins = np.fft.rfftfreq(len(y), 1 / (2 * rate))
        wanted = spectrum[np.argmin(np.abs(bins - freq))]
        image = spectrum[np.argmin(np.abs(bins - (rate - freq)))]  # where 2x zero-stuffing mirrors it
        assert 20 * np.log10(image / wanted) < -60, freq
        assert abs(np.sqrt(np.mean(y**2)) - 0.5 / np.sqrt(2)) < 0.01  # unit gain in the band
    x = np.random.default_rng(7).normal(0, 0.1, 4000).astype(np.float32)
    whole = Upsampler2()(x)
    up, parts, pos = Upsampler2(), [], 0
    for n in (160, 1, 333, 80, 1000, 2426):  # any chunking gives the same stream
        parts.append(up(x[pos : pos + n]))
        pos += n
    assert np.allclose(np.concatenate(parts), whole, atol=1e-6)


@pytest.mark.parametrize("in_rate", [8000, 16000])
def test_aac_encoder_from_g711_and_g722_rates_has_no_gap_and_no_drift(in_rate: int) -> None:
    aac = AacEncoder(16000, in_rate=in_rate)
    tone = sine_pcm(TONE, 3.0, in_rate)
    step = in_rate // 50 * 2  # 20 ms, as the media tick feeds it
    frames = []
    for start in range(0, len(tone), step):
        frames += aac.encode(tone[start : start + step])
    assert len(frames) == 3 * 16000 // AAC_FRAME_SAMPLES - 1  # all of it, less the look-ahead
    pcm, rate = aac_decode_all(aac.extradata, [f.data for f in frames])
    assert_tone(pcm, rate)
    assert not find_gaps(samples(pcm)[AAC_FRAME_SAMPLES * 2 :], rate)
