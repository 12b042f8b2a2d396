"""The probe's tone finder (pure Python), checked against numpy-free synthetic signals."""

from __future__ import annotations

import math
import random

import pytest

from b2bua.probe.tone import analyse, dominant_frequency, goertzel_amplitude, pcm_to_floats

RATE = 16000


def sine(freq: float, seconds: float, amplitude: float = 0.125) -> list[float]:
    return [amplitude * math.sin(2 * math.pi * freq * i / RATE) for i in range(int(seconds * RATE))]


def test_goertzel_gives_the_amplitude_at_its_frequency_only():
    tone = sine(1000, 0.1, 0.5)
    assert goertzel_amplitude(tone, RATE, 1000) == pytest.approx(0.5, rel=0.01)
    assert goertzel_amplitude(tone, RATE, 1500) < 0.01


@pytest.mark.parametrize("freq", [440.0, 1000.0, 1234.5, 3000.0])
def test_dominant_frequency_within_one_hertz(freq):
    rng = random.Random(1)
    noisy = [x + rng.gauss(0, 0.01) for x in sine(freq, 0.5)]
    assert dominant_frequency(noisy, RATE) == pytest.approx(freq, abs=1.0)


def test_a_tone_after_silence_is_heard_with_its_onset():
    report = analyse([0.0] * 2 * RATE + sine(1000, 3) + [0.0] * RATE, RATE, 1000, 3)
    assert report.heard
    assert report.onset_s == pytest.approx(2.0, abs=0.01)
    assert report.tone_s == pytest.approx(3.0, abs=0.02)
    assert report.level_dbfs == pytest.approx(-18, abs=0.5)
    assert report.describe(1000).startswith("tone heard: 1000.0 Hz")


def test_silence_another_tone_or_a_short_tone_is_not_heard():
    assert analyse([0.0] * RATE, RATE, 1000, 3).why.startswith("nothing at 1000 Hz")
    other = [a + b for a, b in zip(sine(440, 3), sine(1000, 3, 0.03), strict=True)]
    assert analyse(other, RATE, 1000, 3).why == "the loudest frequency is 440 Hz"
    short = analyse(sine(1000, 0.5) + [0.0] * RATE, RATE, 1000, 3)
    assert not short.heard and "only 0.5 s" in short.why


def test_pcm_to_floats_reads_s16le():
    assert pcm_to_floats(b"\x00\x80\xff\x7f\x00\x00\x01") == [-1.0, 32767 / 32768, 0.0]
