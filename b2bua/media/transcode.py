"""The gateway's audio codecs, all through PyAV (``av`` 18.x).

Uplink (publisher → PBX)::

    AacDecoder(asc).decode(raw) -> [AudioFrame]      # fltp at the stream's rate
    Resampler(rate).resample(frames) -> bytes         # s16 mono at the RTP codec's sample rate
    PcmFifo.put(pcm); PcmFifo.take(n)                 # the media tick pulls exactly 20 ms
    RtpAudioEncoder(codec).encode(pcm_20ms) -> bytes  # one RTP payload

Downlink (PBX → player)::

    RtpAudioDecoder(codec).decode(payload) -> bytes   # s16 mono at the codec's sample rate
    RtpAudioDecoder.conceal(samples) -> bytes         # when the jitter buffer reports a loss
    Resampler(rate, in_rate=codec_rate).resample(pcm) -> bytes
    AacEncoder(rate).encode(pcm) -> [AacFrame]        # whole 1024-sample frames; .extradata is the ASC

PCM between the stages is always interleaved signed 16-bit native-endian, mono unless said otherwise.
Codec names follow the SDP encoding names (case-insensitive): PCMU, PCMA, G722, opus. G.722 samples
at 16 kHz but its RTP clock is 8000 (RFC 3551 §4.5.2); :attr:`RtpAudioEncoder.clock_rate` gives the
RTP timestamp rate and :attr:`~RtpAudioEncoder.sample_rate` the PCM rate.

Nothing here does I/O or keeps time: callers drive the stages, the one media clock decides when.
The AAC encoder takes PCM at its own rate or half of it (the usual G.711/G.722 into 16 kHz AAC)
through numpy (:class:`Upsampler2`) instead of a filter graph per 20 ms chunk.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import av
import av.error
import numpy as np

try:  # G.711 is a table lookup per sample: the stdlib's C loop beats a PyAV frame per packet
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
except ImportError:  # Python 3.13 dropped it: PyAV does the work then
    audioop = None


_G711 = {"PCMU": ("lin2ulaw", "ulaw2lin"), "PCMA": ("lin2alaw", "alaw2lin")}

SAMPLE_BYTES = 2  # s16
AAC_FRAME_SAMPLES = 1024


@dataclass(frozen=True)
class AudioCodecInfo:
    """How one RTP audio codec maps onto FFmpeg."""

    name: str  # SDP encoding name
    encoder: str  # FFmpeg encoder name
    decoder: str  # FFmpeg decoder name
    sample_rate: int  # PCM rate the codec works at
    clock_rate: int  # RTP timestamp rate


RTP_AUDIO_CODECS: dict[str, AudioCodecInfo] = {
    "pcmu": AudioCodecInfo("PCMU", "pcm_mulaw", "pcm_mulaw", 8000, 8000),
    "pcma": AudioCodecInfo("PCMA", "pcm_alaw", "pcm_alaw", 8000, 8000),
    "g722": AudioCodecInfo("G722", "adpcm_g722", "g722", 16000, 8000),
    "opus": AudioCodecInfo("opus", "libopus", "libopus", 48000, 48000),
}


def codec_info(codec: str) -> AudioCodecInfo:
    """The :class:`AudioCodecInfo` of an SDP encoding name; ``ValueError`` if we do not transcode it."""
    try:
        return RTP_AUDIO_CODECS[codec.lower()]
    except KeyError:
        raise ValueError("unsupported audio codec %r" % codec)


class AudioSpecificConfig(NamedTuple):
    object_type: int  # 2 = AAC-LC, 5 = SBR (HE-AAC), 29 = PS
    sample_rate: int
    channels: int


_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def parse_audio_specific_config(asc: bytes) -> AudioSpecificConfig:
    """Read object type, sampling rate and channel configuration from an AudioSpecificConfig
    (ISO/IEC 14496-3 §1.6.2.1), as carried in the RTMP AAC sequence header. Raises ``ValueError``."""
    bits = int.from_bytes(asc, "big")
    avail = len(asc) * 8
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > avail:
            raise ValueError("AudioSpecificConfig truncated")
        pos += n
        return (bits >> (avail - pos)) & ((1 << n) - 1)

    object_type = read(5)
    if object_type == 31:
        object_type = 32 + read(6)
    index = read(4)
    if index == 15:
        rate = read(24)
    elif index < len(_AAC_RATES):
        rate = _AAC_RATES[index]
    else:
        raise ValueError("AudioSpecificConfig: reserved sampling frequency index %d" % index)
    channels = read(4)
    if object_type == 0 or rate == 0:
        raise ValueError("AudioSpecificConfig: invalid object type or rate")
    return AudioSpecificConfig(object_type, rate, channels)


def _s16_frame(pcm: bytes, rate: int, layout: str = "mono", pts: int | None = None) -> av.AudioFrame:
    channels = 2 if layout == "stereo" else 1
    frame = av.AudioFrame(format="s16", layout=layout, samples=len(pcm) // (SAMPLE_BYTES * channels))
    frame.planes[0].update(pcm)
    frame.sample_rate = rate
    frame.pts = pts
    if pts is not None:
        frame.time_base = Fraction(1, rate)
    return frame


def _frame_bytes(frame: av.AudioFrame) -> bytes:
    """The samples of a packed s16 frame (planes are padded; cut at the real length)."""
    return bytes(frame.planes[0])[: frame.samples * SAMPLE_BYTES * len(frame.layout.channels)]


def _mono_to_stereo(pcm: bytes) -> bytes:
    out = bytearray(len(pcm) * 2)
    out[0::4] = pcm[0::2]
    out[1::4] = pcm[1::2]
    out[2::4] = pcm[0::2]
    out[3::4] = pcm[1::2]
    return bytes(out)


class AacDecoder:
    """Raw AAC frames (RTMP audio tags after the sequence header) → PyAV audio frames.

    ``asc`` is the AudioSpecificConfig from the AAC sequence header. A broken frame yields no
    audio rather than an exception: a publisher's glitch must not end the call.
    """

    def __init__(self, asc: bytes) -> None:
        self.config = parse_audio_specific_config(asc)
        self._ctx = av.CodecContext.create("aac", "r")
        self._ctx.extradata = bytes(asc)
        self.errors = 0

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def decode(self, raw_aac_frame: bytes) -> list[av.AudioFrame]:
        if not raw_aac_frame:  # an empty packet would mean end of stream to FFmpeg
            return []
        try:
            return self._ctx.decode(av.Packet(raw_aac_frame))
        except (av.error.FFmpegError, ValueError):
            self.errors += 1
            return []


OWED_SLACK = 64  # samples: above FFmpeg's resampling delay (16 at the default filter size)


class Resampler:
    """Any audio → s16 mono (or stereo) PCM bytes at ``rate``.

    Accepts PyAV frames (any format, layout or rate; a change mid-stream, e.g. a publisher that
    reconnects at another rate, rebuilds the converter) or PCM bytes of s16 mono at ``in_rate``.
    Bytes at the output rate and layout pass through untouched.
    """

    def __init__(self, rate: int, in_rate: int | None = None, layout: str = "mono") -> None:
        self.rate = rate
        self.in_rate = in_rate
        self.layout = layout
        self._graph: av.filter.Graph | None = None
        self._setup: tuple[str, str, int] | None = None
        self._owed = 0.0  # output samples the input so far should have made, not yet pulled

    def _build(self, fmt: str, layout: str, rate: int) -> av.filter.Graph:
        """abuffer → aresample (FFmpeg's default filter) → aformat s16 → abuffersink: what
        av.AudioResampler builds, driven directly (it costs a third less per frame here)."""
        graph = av.filter.Graph()
        src = graph.add_abuffer(format=fmt, sample_rate=rate, layout=layout, time_base=Fraction(1, rate))
        resample = graph.add("aresample", str(self.rate))
        convert = graph.add("aformat", f"sample_fmts=s16:channel_layouts={self.layout}")
        sink = graph.add("abuffersink")
        src.link_to(resample)
        resample.link_to(convert)
        convert.link_to(sink)
        graph.configure()
        return graph

    def resample(self, audio: bytes | av.AudioFrame | Iterable[av.AudioFrame]) -> bytes:
        if isinstance(audio, bytes | bytearray | memoryview):
            if self.in_rate is None:
                raise ValueError("Resampler needs in_rate to take PCM bytes")
            if self.in_rate == self.rate and self.layout == "mono":
                return bytes(audio)
            frames: Iterable[av.AudioFrame] = (_s16_frame(bytes(audio), self.in_rate),)
        elif isinstance(audio, av.AudioFrame):
            frames = (audio,)
        else:
            frames = audio
        out = []
        for frame in frames:
            setup = (frame.format.name, frame.layout.name, frame.sample_rate)
            if setup != self._setup:
                self._setup = setup
                self._graph = self._build(*setup)
                self._owed = 0.0
            graph = self._graph
            frame.pts = None  # our PCM has no timeline; keeps the converter from padding gaps
            graph.push(frame)
            self._owed += frame.samples * self.rate / frame.sample_rate
            # a frame in makes one frame out, short by the filter's delay: pull again only while
            # more than that is owed (a pull that finds nothing raises, and costs a third of a frame)
            while self._owed > OWED_SLACK:
                try:
                    converted = graph.pull()
                except (av.error.BlockingIOError, av.error.EOFError):
                    break
                self._owed -= converted.samples
                out.append(_frame_bytes(converted))
        return b"".join(out)


class PcmFifo:
    """A byte FIFO of PCM samples: put any amount, take exactly ``n`` samples.

    ``take`` pads with silence on underrun (counted in ``underruns``); ``trim_to`` drops the
    oldest samples so that a fast publisher clock never turns into growing delay.
    """

    def __init__(self, sample_bytes: int = SAMPLE_BYTES) -> None:
        self.sample_bytes = sample_bytes
        self._buf = bytearray()
        self.underruns = 0
        self.dropped = 0

    def put(self, pcm: bytes) -> None:
        self._buf += pcm

    def level(self) -> int:
        """Samples buffered."""
        return len(self._buf) // self.sample_bytes

    def take(self, n: int) -> bytes:
        size = n * self.sample_bytes
        chunk = bytes(self._buf[:size])
        del self._buf[:size]
        if len(chunk) < size:
            self.underruns += 1
            chunk += bytes(size - len(chunk))
        return chunk

    def trim_to(self, max_samples: int) -> int:
        """Drop the oldest samples beyond ``max_samples``; returns how many were dropped."""
        excess = self.level() - max_samples
        if excess <= 0:
            return 0
        del self._buf[: excess * self.sample_bytes]
        self.dropped += excess
        return excess

    def clear(self) -> None:
        self._buf.clear()


class RtpAudioEncoder:
    """s16 mono PCM at :attr:`sample_rate`, one ``ptime`` at a time → one RTP payload.

    For opus, ``channels=2`` sends stereo (the mono input duplicated; only worth it when the
    remote asked ``stereo=1``), ``fec`` turns on in-band FEC tuned for ``packet_loss`` percent.
    """

    def __init__(
        self,
        codec: str,
        *,
        channels: int = 1,
        ptime: int = 20,
        bitrate: int | None = None,
        fec: bool = False,
        packet_loss: int = 10,
    ) -> None:
        info = codec_info(codec)
        self.codec = info.name
        self.sample_rate = info.sample_rate
        self.clock_rate = info.clock_rate
        self.samples_per_frame = info.sample_rate * ptime // 1000
        self.timestamp_step = info.clock_rate * ptime // 1000  # RTP timestamp increment per payload
        self.channels = channels if info.name == "opus" else 1
        self._layout = "stereo" if self.channels == 2 else "mono"
        ctx = av.CodecContext.create(info.encoder, "w")
        ctx.format = "s16"
        ctx.layout = self._layout
        ctx.sample_rate = info.sample_rate
        ctx.time_base = Fraction(1, info.sample_rate)
        if info.name == "G722":  # FFmpeg's default is 20 ms frames: other ptimes need their own size
            ctx.options = {"frame_size": str(self.samples_per_frame)}
        if info.name == "opus":
            options = {"application": "voip", "frame_duration": str(ptime)}
            if fec:
                options.update(fec="1", packet_loss=str(packet_loss))
            ctx.options = options
            ctx.bit_rate = bitrate or (32000 * self.channels)
        ctx.open()
        self._ctx = ctx
        self._pts = 0
        self._g711 = getattr(audioop, _G711[self.codec][0]) if audioop and self.codec in _G711 else None

    def encode(self, pcm: bytes) -> bytes:
        if self._g711 is not None:
            return self._g711(pcm, SAMPLE_BYTES)
        if self.channels == 2:
            pcm = _mono_to_stereo(pcm)
        frame = _s16_frame(pcm, self.sample_rate, self._layout, self._pts)
        self._pts += frame.samples
        return b"".join(bytes(packet) for packet in self._ctx.encode(frame))


class RtpAudioDecoder:
    """RTP payloads → s16 mono PCM at :attr:`sample_rate`, with loss concealment.

    ``conceal(samples)`` stands in for lost packets: opus runs its own PLC (a TOC-only packet
    makes libopus conceal one frame, as for DTX); G.711 and G.722 repeat the last frame, fading
    by half each time, then fall silent. A payload FFmpeg cannot decode is concealed too.
    """

    FADE_STEPS = 3

    def __init__(self, codec: str) -> None:
        info = codec_info(codec)
        self.codec = info.name
        self.sample_rate = info.sample_rate
        self.clock_rate = info.clock_rate
        self.samples_per_frame = info.sample_rate // 50
        ctx = av.CodecContext.create(info.decoder, "r")
        ctx.sample_rate = info.sample_rate
        ctx.layout = "mono"
        if info.name == "opus":
            ctx.format = "s16"  # libopus decodes straight to s16, downmixing stereo streams
        self._ctx = ctx
        self._last = b""
        self._fades = 0
        self._toc = 0x78  # hybrid fullband 20 ms, until a real packet tells us more
        self._g711 = getattr(audioop, _G711[self.codec][1]) if audioop and self.codec in _G711 else None
        self._spare = b""  # opus PLC produced beyond what conceal() was asked for
        self.errors = 0

    def decode(self, payload: bytes) -> bytes:
        self._spare = b""
        if not payload:  # an empty packet would mean end of stream to FFmpeg
            return self.conceal(self.samples_per_frame)
        if self._g711 is not None:
            pcm = self._g711(payload, SAMPLE_BYTES)
            self._last = pcm[-self.samples_per_frame * SAMPLE_BYTES :]
            self._fades = 0
            return pcm
        try:
            frames = self._ctx.decode(av.Packet(payload))
        except (av.error.FFmpegError, ValueError):
            self.errors += 1
            return self.conceal(self._expected(payload))
        pcm = b"".join(_frame_bytes(frame) for frame in frames)
        if self.codec == "opus":
            if payload:
                self._toc = payload[0] & 0xFC  # code 0: one frame of the same configuration
        else:
            self._last = pcm[-self.samples_per_frame * SAMPLE_BYTES :]
            self._fades = 0
        return pcm

    def _expected(self, payload: bytes) -> int:
        if self.codec in ("PCMU", "PCMA"):
            return len(payload)
        if self.codec == "G722":
            return len(payload) * 2
        return self.samples_per_frame

    def conceal(self, samples: int) -> bytes:
        size = samples * SAMPLE_BYTES
        if self.codec == "opus":
            out = bytearray(self._spare)
            while len(out) < size:
                try:
                    frames = self._ctx.decode(av.Packet(bytes((self._toc,))))
                except (av.error.FFmpegError, ValueError):
                    frames = []
                chunk = b"".join(_frame_bytes(frame) for frame in frames)
                if not chunk:
                    break
                out += chunk
            self._spare = bytes(out[size:])
            return bytes(out[:size]).ljust(size, b"\0")
        if not self._last or self._fades >= self.FADE_STEPS:
            return bytes(size)
        self._fades += 1
        gain = 0.5**self._fades
        faded = array("h", self._last)
        faded = array("h", [int(sample * gain) for sample in faded]).tobytes()
        reps = -(-size // len(faded))
        return (faded * reps)[:size]


class AacFrame(NamedTuple):
    pts: int  # in samples at the encoder's rate, from 0, one frame = 1024
    data: bytes  # raw AAC, as the payload of an FLV AAC raw tag


def _halfband_taps(half: int = 12, beta: float = 8.0) -> np.ndarray:
    """The odd phase of a 2x interpolator: windowed sinc at the input's Nyquist, taps at the
    half-sample points -half+0.5 … half-0.5, unit gain at DC."""
    t = np.arange(-half, half) + 0.5
    taps = np.sinc(t) * np.kaiser(2 * half, beta)
    return (taps / taps.sum()).astype(np.float32)


class Upsampler2:
    """s16 mono PCM → float32 at twice its rate, stream by stream (the state carries over).

    Polyphase: even outputs are the input (delayed by ``half - 1`` samples), odd outputs a
    24-tap windowed-sinc interpolation between them: -70 dB images, flat to 3.4 kHz from 8 kHz.
    What FFmpeg's resampler does for this ratio, without a filter graph per 20 ms chunk.
    """

    HALF = 12
    TAPS = _halfband_taps(HALF)

    def __init__(self) -> None:
        self._history = np.zeros(2 * self.HALF - 1, np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        ext = np.concatenate((self._history, x))
        self._history = ext[len(x):]
        out = np.empty(2 * len(x), np.float32)
        out[0::2] = ext[self.HALF - 1 : self.HALF - 1 + len(x)]
        out[1::2] = np.convolve(ext, self.TAPS, "valid")
        return out


class AacEncoder:
    """s16 mono PCM of any chunk size → whole raw AAC-LC frames of 1024 samples.

    ``extradata`` is the AudioSpecificConfig for the RTMP/FLV AAC sequence header, available
    from construction. ``coder`` is FFmpeg's ``aac_coder``: ``fast`` costs a fraction of the
    default ``twoloop`` (DESIGN §4).
    The encoder holds back one frame (``delay`` samples) of look-ahead.
    PCM at the AAC rate or at half of it (G.722 or G.711 into 16 kHz AAC, the default) is
    converted and cut into frames here, with numpy; other rates go through FFmpeg's resampler
    first. Either way the samples wait in one buffer, so a change of input rate keeps the
    stream whole.
    """

    def __init__(
        self,
        sample_rate: int,
        channels: int = 1,
        bitrate: int | None = None,
        *,
        coder: str = "fast",
        in_rate: int | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.coder = coder
        self._bitrate = bitrate
        self.in_rate = in_rate or sample_rate  # the PCM given to encode(); converted in the same pass
        self._layout = "stereo" if channels == 2 else "mono"
        self._cutoff = self.in_rate // 2 if self.in_rate < sample_rate else 0
        self._ctx = self._open()
        self._time_base = self._ctx.time_base
        self._pending = np.zeros(0, np.float32)  # samples at the AAC rate, less than a frame
        self._convert = self._converter()
        self._in_pts = 0
        self._out_frames = 0
        self.delay = AAC_FRAME_SAMPLES

    @property
    def cutoff(self) -> int:
        """The encoded bandwidth, Hz, chosen from the input rate at construction: PCM at
        ``in_rate`` has nothing above ``in_rate / 2``, so no CPU or bits go to empty bands (G.711
        into 48 kHz AAC: a fifth of the encoder's work). 0: FFmpeg's default for the rate."""
        return self._cutoff

    @property
    def bitrate(self) -> int:
        if self._bitrate:
            return self._bitrate
        narrow = self.sample_rate <= 16000 or 0 < self.cutoff <= 4000
        return (32000 if narrow else 64000) * self.channels

    def _open(self) -> av.CodecContext:
        ctx = av.CodecContext.create("aac", "w")
        ctx.format = "fltp"
        ctx.layout = self._layout
        ctx.sample_rate = self.sample_rate
        ctx.time_base = Fraction(1, self.sample_rate)
        ctx.bit_rate = self.bitrate
        options = {"aac_coder": self.coder}
        if self.cutoff:
            options["cutoff"] = str(self.cutoff)
        ctx.options = options
        ctx.open()
        return ctx

    def _converter(self):
        """s16 mono bytes at ``in_rate`` → float32 mono samples at the AAC rate."""
        scale = np.float32(1 / 32768)
        if self.in_rate == self.sample_rate:
            return lambda pcm: np.frombuffer(pcm, "<i2").astype(np.float32) * scale
        if 2 * self.in_rate == self.sample_rate:
            up = Upsampler2()
            return lambda pcm: up(np.frombuffer(pcm, "<i2").astype(np.float32) * scale)
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=self.sample_rate)
        in_rate = self.in_rate

        def convert(pcm: bytes) -> np.ndarray:
            parts = [f.to_ndarray()[0] for f in resampler.resample(_s16_frame(pcm, in_rate))]
            return np.concatenate(parts) if parts else np.zeros(0, np.float32)

        return convert

    def set_input_rate(self, rate: int) -> None:
        """The PCM given to :meth:`encode` changes rate (a new codec); the AAC stream goes on
        unbroken, with the bandwidth it started with (a new encoder would cost a frame of gap)."""
        if rate != self.in_rate:
            self.in_rate = rate
            self._convert = self._converter()

    @property
    def extradata(self) -> bytes:
        return bytes(self._ctx.extradata)

    def encode(self, pcm: bytes) -> list[AacFrame]:
        if not pcm:
            return []
        samples = self._convert(pcm)
        if len(self._pending):
            samples = np.concatenate((self._pending, samples))
        whole = len(samples) - len(samples) % AAC_FRAME_SAMPLES
        self._pending = samples[whole:]
        out = []
        for start in range(0, whole, AAC_FRAME_SAMPLES):
            chunk = samples[None, start : start + AAC_FRAME_SAMPLES]
            if self.channels == 2:
                chunk = np.concatenate((chunk, chunk))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self._layout)
            frame.sample_rate = self.sample_rate
            frame.pts = self._in_pts
            frame.time_base = self._time_base
            self._in_pts += AAC_FRAME_SAMPLES
            for packet in self._ctx.encode(frame):
                out.append(AacFrame(self._out_frames * AAC_FRAME_SAMPLES, bytes(packet)))
                self._out_frames += 1
        return out
