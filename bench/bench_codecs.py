"""CPU cost of the gateway's codec paths, in ms of CPU per second of audio (one core).

    python bench/bench_codecs.py [--seconds 30]

Uplink: AAC (as a publisher sends it) → AacDecoder → Resampler → PcmFifo → RtpAudioEncoder.
Downlink: RTP payloads → RtpAudioDecoder → Resampler → AacEncoder (aac_coder=fast), plus the
default AAC coder for comparison. Inputs are prepared before the clock starts; only the
gateway's stages are timed (time.process_time), best of --repeat runs. The signal is
speech-like (two tones, noise, a 3 Hz envelope).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from fractions import Fraction

import av
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from b2bua.media.transcode import (  # noqa: E402
    AAC_FRAME_SAMPLES,
    AacDecoder,
    AacEncoder,
    PcmFifo,
    Resampler,
    RtpAudioDecoder,
    RtpAudioEncoder,
)

CODECS = ("PCMU", "PCMA", "G722", "opus")


def signal(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(7)
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.15 * np.sin(2 * np.pi * 1300 * t) + rng.normal(0, 0.03, len(t))
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    return (x * envelope).astype(np.float32)


def aac_packets(seconds: float, rate: int, channels: int) -> tuple[bytes, list[bytes]]:
    layout = "stereo" if channels == 2 else "mono"
    ctx = av.CodecContext.create("aac", "w")
    ctx.format, ctx.layout, ctx.sample_rate = "fltp", layout, rate
    ctx.time_base = Fraction(1, rate)
    ctx.bit_rate = 64000 * channels
    ctx.open()
    x = signal(seconds, rate)
    out = []
    for start in range(0, len(x) - AAC_FRAME_SAMPLES + 1, AAC_FRAME_SAMPLES):
        frame = av.AudioFrame.from_ndarray(
            np.tile(x[start : start + AAC_FRAME_SAMPLES], (channels, 1)), format="fltp", layout=layout
        )
        frame.sample_rate, frame.pts = rate, start
        out += [bytes(p) for p in ctx.encode(frame)]
    return bytes(ctx.extradata), out


def bench_uplink(seconds: float, aac_rate: int, channels: int, codec: str) -> float:
    asc, packets = aac_packets(seconds, aac_rate, channels)
    start = time.process_time()
    decoder = AacDecoder(asc)
    encoder = RtpAudioEncoder(codec)
    resampler = Resampler(encoder.sample_rate)
    fifo = PcmFifo()
    n = encoder.samples_per_frame
    for data in packets:
        fifo.put(resampler.resample(decoder.decode(data)))
        while fifo.level() >= n:
            encoder.encode(fifo.take(n))
    return (time.process_time() - start) * 1000 / seconds


def rtp_payloads(seconds: float, codec: str) -> list[bytes]:
    encoder = RtpAudioEncoder(codec)
    pcm = (signal(seconds, encoder.sample_rate) * 32767).astype(np.int16).tobytes()
    step = encoder.samples_per_frame * 2
    return [encoder.encode(pcm[i : i + step]) for i in range(0, len(pcm) - step + 1, step)]


def bench_downlink(seconds: float, codec: str, aac_rate: int, coder: str) -> float:
    payloads = rtp_payloads(seconds, codec)
    start = time.process_time()
    decoder = RtpAudioDecoder(codec)
    resampler = Resampler(aac_rate, in_rate=decoder.sample_rate)
    encoder = AacEncoder(aac_rate, coder=coder)
    for payload in payloads:
        encoder.encode(resampler.resample(decoder.decode(payload)))
    return (time.process_time() - start) * 1000 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3, help="report the best of N runs")
    args = parser.parse_args()
    s = args.seconds

    def best(fn, *fn_args) -> float:  # noqa: ANN001
        return min(fn(*fn_args) for _ in range(args.repeat))

    bench_uplink(1.0, 44100, 1, "PCMU")  # warm up FFmpeg's tables
    print("PyAV %s, %.0f s of audio per path; ms CPU per second of audio" % (av.__version__, s))
    print("\nuplink: AAC → RTP codec")
    for aac_rate, channels in ((44100, 1), (44100, 2), (16000, 1), (48000, 1)):
        for codec in CODECS:
            cost = best(bench_uplink, s, aac_rate, channels, codec)
            layout = "stereo" if channels == 2 else "mono  "
            print("  AAC %5d Hz %s → %-5s %6.2f ms" % (aac_rate, layout, codec, cost))
    print("\ndownlink: RTP codec → AAC")
    for codec in CODECS:
        for aac_rate in (16000, 44100, 48000):
            cost = best(bench_downlink, s, codec, aac_rate, "fast")
            print("  %-5s → AAC %5d Hz (aac_coder=fast)  %6.2f ms" % (codec, aac_rate, cost))
    for aac_rate in (16000, 44100):
        cost = best(bench_downlink, s, "PCMU", aac_rate, "twoloop")
        print("  PCMU  → AAC %5d Hz (twoloop, default) %6.2f ms" % (aac_rate, cost))


if __name__ == "__main__":
    main()
