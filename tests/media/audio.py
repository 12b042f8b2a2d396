"""Measure what comes out of a media path: tone, frequency, gaps, delay (numpy only).

Shared by the transcoding unit tests and the integration tests that record what a peer heard.
PCM is s16 native-endian; multichannel PCM is interleaved.
"""

from __future__ import annotations

import numpy as np


def sine_pcm(
    freq: float,
    seconds: float,
    rate: int,
    *,
    amplitude: float = 0.5,
    channels: int = 1,
    phase: float = 0.0,
) -> bytes:
    """A sine of ``freq`` Hz as s16 PCM, ``amplitude`` relative to full scale."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    mono = np.round(amplitude * 32767 * np.sin(2 * np.pi * freq * t + phase)).astype(np.int16)
    return np.repeat(mono, channels).tobytes() if channels > 1 else mono.tobytes()


def sine_float(freq: float, seconds: float, rate: int, *, amplitude: float = 0.5) -> np.ndarray:
    """A sine as float32 in [-1, 1] (what FFmpeg's AAC encoder takes)."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def samples(pcm: bytes, channels: int = 1) -> np.ndarray:
    """PCM bytes → float64 mono samples in [-1, 1] (channels averaged)."""
    data = np.frombuffer(pcm, dtype=np.int16).astype(np.float64) / 32768.0
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return data


def dominant_frequency(pcm: bytes | np.ndarray, rate: int) -> float:
    """The strongest frequency by a Hann-windowed FFT, refined by parabolic interpolation."""
    x = samples(pcm) if isinstance(pcm, bytes | bytearray) else np.asarray(pcm, dtype=np.float64)
    if len(x) < 16:
        raise ValueError("too few samples for a spectrum")
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    if 0 < k < len(spectrum) - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        k = k + (0.5 * (a - c) / denom if denom else 0.0)
    return k * rate / len(x)


def rms_windows(pcm: bytes | np.ndarray, rate: int, window_ms: int = 20) -> np.ndarray:
    """RMS (full scale = 1.0) of each whole ``window_ms`` window."""
    x = samples(pcm) if isinstance(pcm, bytes | bytearray) else np.asarray(pcm, dtype=np.float64)
    size = rate * window_ms // 1000
    count = len(x) // size
    if count == 0:
        return np.zeros(0)
    return np.sqrt(np.mean(x[: count * size].reshape(count, size) ** 2, axis=1))


def find_gaps(
    pcm: bytes | np.ndarray,
    rate: int,
    *,
    window_ms: int = 20,
    threshold: float = 0.2,
    skip_ms: int = 0,
) -> list[int]:
    """Indexes of the 20 ms windows whose RMS falls below ``threshold`` × the median RMS.

    ``skip_ms`` ignores the start (codec priming, resampler warm-up) and the same at the end.
    """
    rms = rms_windows(pcm, rate, window_ms)
    skip = skip_ms // window_ms
    body = rms[skip : len(rms) - skip] if skip else rms
    if len(body) == 0:
        return []
    reference = float(np.median(body))
    if reference == 0.0:
        return list(range(skip, skip + len(body)))
    return [skip + i for i, value in enumerate(body) if value < threshold * reference]


def delay_samples(reference: bytes | np.ndarray, recorded: bytes | np.ndarray) -> int:
    """How many samples ``recorded`` lags ``reference``, by FFT cross-correlation (same rate).

    Works best on a signal without a period shorter than the delay (noise, a chirp, a burst).
    """
    a = samples(reference) if isinstance(reference, bytes | bytearray) else np.asarray(reference, float)
    b = samples(recorded) if isinstance(recorded, bytes | bytearray) else np.asarray(recorded, float)
    n = len(a) + len(b) - 1
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lag = int(np.argmax(corr))
    return lag if lag < size - len(a) + 1 else lag - size


def noise_burst_pcm(seconds: float, rate: int, *, amplitude: float = 0.3, seed: int = 1) -> bytes:
    """White noise as s16 mono PCM: an unambiguous reference for :func:`delay_samples`."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(0.0, amplitude, int(round(seconds * rate))), -1, 1)
    return np.round(x * 32767).astype(np.int16).tobytes()
