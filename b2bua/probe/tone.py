"""Is the test tone in a recording, and where does it start? Standard library only (no numpy).

Samples are floats in [-1, 1] (see :func:`pcm_to_floats`). The Goertzel algorithm gives the
energy at one frequency in O(n) without an FFT, which is all a probe needs: the level at the
tone's frequency per 10 ms window finds the onset, and a coarse scan followed by a fine one
finds the dominant frequency of the steady part.
"""

from __future__ import annotations

import math
import sys
from array import array
from dataclasses import dataclass

__all__ = ["ToneReport", "analyse", "goertzel_amplitude", "dominant_frequency", "pcm_to_floats"]

WINDOW_S = 0.010  # onset resolution
ONSET_LEVEL = 0.02  # amplitude (of full scale) at the tone frequency that counts as "tone" (-34 dBFS)
FREQ_TOLERANCE = 0.02  # heard: dominant frequency within 2 % of the tone


def pcm_to_floats(pcm: bytes) -> list[float]:
    """Signed 16-bit little-endian mono PCM → floats in [-1, 1]."""
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) // 2 * 2])
    if sys.byteorder != "little":
        samples.byteswap()
    return [s / 32768.0 for s in samples]


def _hann(n: int) -> list[float]:
    return [0.5 - 0.5 * math.cos(2 * math.pi * i / (n - 1)) for i in range(n)] if n > 1 else [1.0]


def goertzel_amplitude(
    samples: list[float], rate: int, freq: float, window: list[float] | None = None
) -> float:
    """Amplitude (of full scale) of the component at ``freq`` Hz; ``window`` weights the samples
    (a Hann window: its mean is 0.5, corrected for)."""
    n = len(samples)
    if n == 0:
        return 0.0
    coeff = 2.0 * math.cos(2.0 * math.pi * freq / rate)
    s1 = s2 = 0.0
    if window is None:
        for x in samples:
            s1, s2 = x + coeff * s1 - s2, s1
        gain = n
    else:
        for x, w in zip(samples, window, strict=True):
            s1, s2 = x * w + coeff * s1 - s2, s1
        gain = sum(window)
    power = max(0.0, s1 * s1 + s2 * s2 - coeff * s1 * s2)
    return 2.0 * math.sqrt(power) / gain


def dominant_frequency(
    samples: list[float], rate: int, low: float = 100.0, high: float | None = None
) -> float:
    """The strongest frequency between ``low`` and ``high`` Hz (±1 Hz): a 25 Hz scan of a short
    window, then a 1 Hz scan around its peak over up to 0.5 s, refined by a parabola."""
    high = min(high or rate / 2 - 100, rate / 2 - 1)
    short = samples[: int(rate * 0.064)]
    hann = _hann(len(short))
    coarse = max((goertzel_amplitude(short, rate, f, hann), f) for f in _frange(low, high, 25.0))[1]
    long = samples[: int(rate * 0.5)]
    hann = _hann(len(long))
    freqs = list(_frange(max(low, coarse - 30), min(high, coarse + 30), 1.0))
    amps = [goertzel_amplitude(long, rate, f, hann) for f in freqs]
    i = max(range(len(amps)), key=amps.__getitem__)
    if 0 < i < len(amps) - 1:  # parabolic interpolation between the neighbours
        a, b, c = amps[i - 1], amps[i], amps[i + 1]
        denom = a - 2 * b + c
        if denom:
            return freqs[i] + 0.5 * (a - c) / denom
    return freqs[i]


def _frange(start: float, stop: float, step: float):
    n = int((stop - start) / step) + 1
    return (start + k * step for k in range(max(0, n)))


@dataclass(frozen=True)
class ToneReport:
    heard: bool
    onset_s: float | None = None  # where the tone starts in the recording
    frequency: float | None = None  # dominant frequency of its steady part
    level_dbfs: float | None = None  # its amplitude at the tone frequency
    tone_s: float = 0.0  # how long it was heard (10 ms windows above the onset level)
    why: str = ""  # when not heard

    def describe(self, expected: float) -> str:
        if self.onset_s is None:
            return f"tone not heard: {self.why}"
        text = (
            f"{self.frequency:.1f} Hz (sent {expected:g} Hz), {self.tone_s:.1f} s of tone, "
            f"level {self.level_dbfs:.0f} dBFS, starts at {self.onset_s:.2f} s of the recording"
        )
        return f"tone heard: {text}" if self.heard else f"tone not heard: {self.why}; {text}"


def analyse(samples: list[float], rate: int, freq: float, expected_s: float) -> ToneReport:
    """Look for a tone of ``freq`` Hz lasting about ``expected_s`` seconds in ``samples``."""
    win = max(1, int(rate * WINDOW_S))
    levels = [
        goertzel_amplitude(samples[i : i + win], rate, freq) for i in range(0, len(samples) - win + 1, win)
    ]
    loud = [i for i, level in enumerate(levels) if level >= ONSET_LEVEL]
    if not loud:
        peak = max(levels, default=0.0)
        level = f"{20 * math.log10(peak):.0f} dBFS" if peak > 0 else "silence"
        return ToneReport(
            False, why=f"nothing at {freq:g} Hz in {len(samples) / rate:.1f} s (at most {level})"
        )
    onset = loud[0] * win
    tone_s = len(loud) * WINDOW_S
    # the steady part: skip the start (codec and jitter-buffer settling) and stay inside the tone
    skip = int(min(0.3, expected_s / 4) * rate)
    steady = samples[onset + skip : onset + skip + int(0.5 * rate)]
    if len(steady) < rate // 10:
        steady = samples[onset : onset + int(0.5 * rate)]
    frequency = dominant_frequency(steady, rate)
    level = goertzel_amplitude(steady, rate, frequency, _hann(len(steady)))
    report = dict(
        onset_s=onset / rate,
        frequency=frequency,
        level_dbfs=20 * math.log10(level) if level > 0 else -120.0,
        tone_s=tone_s,
    )
    if abs(frequency - freq) > FREQ_TOLERANCE * freq:
        return ToneReport(False, why=f"the loudest frequency is {frequency:.0f} Hz", **report)
    if tone_s < expected_s / 2:
        return ToneReport(False, why=f"only {tone_s:.1f} s of the {expected_s:g} s tone came back", **report)
    return ToneReport(True, **report)
