"""The codec pipeline of one leg: what a codec or ptime change rebuilds, and nothing else.

Uplink: publisher PCM (already AAC-decoded, any rate) → :attr:`CodecPipeline.resampler` →
the RTP codec's rate → :attr:`~CodecPipeline.encoder`, one ``ptime`` per RTP payload.
Downlink: RTP payload → :attr:`~CodecPipeline.decoder` (or its concealment) → PCM at the
codec's rate, which the leg's long-lived AAC encoder resamples in its own pass.

The two ends that must not break when the codec changes stay with the leg, outside: the AAC
decoder of the publisher's stream (it follows the pusher's sequence header) and the AAC encoder
toward the players (told the new input rate, so the players' stream goes on unbroken).
"""

from __future__ import annotations

from typing import NamedTuple

from b2bua.media.transcode import Resampler, RtpAudioDecoder, RtpAudioEncoder, codec_info
from b2bua.wire.sdp import NegotiatedStream

PTIMES_MS = (10, 20, 30, 40, 60)  # what we packetize at
OPUS_PTIMES_MS = (10, 20, 40, 60)  # libopus has no 30 ms frame


class PipelineKey(NamedTuple):
    codec: str
    channels: int
    ptime: int


def send_ptime(stream: NegotiatedStream) -> int:
    """The packetization we send at: the far end's ``a=ptime`` when we can, else 20 ms."""
    allowed = OPUS_PTIMES_MS if stream.codec.lower() == "opus" else PTIMES_MS
    return stream.ptime if stream.ptime in allowed else 20


def pipeline_key(stream: NegotiatedStream) -> PipelineKey:
    channels = stream.channels if stream.codec.lower() == "opus" else 1
    return PipelineKey(codec_info(stream.codec).name, channels, send_ptime(stream))


class CodecPipeline:
    """Encoder, decoder and uplink resampler for one (codec, channels, ptime)."""

    def __init__(self, key: PipelineKey) -> None:
        self.key = key
        self.encoder = RtpAudioEncoder(key.codec, channels=key.channels, ptime=key.ptime)
        self.decoder = RtpAudioDecoder(key.codec)
        self.sample_rate = self.encoder.sample_rate  # PCM rate, both directions
        self.tick_silence = bytes(self.sample_rate * 2 * 20 // 1000)  # 20 ms of s16 mono, made once
        self.clock_rate = self.encoder.clock_rate  # RTP timestamp rate
        self.ptime = key.ptime
        self.frame_samples = self.encoder.samples_per_frame  # PCM samples per packet we send
        self.timestamp_step = self.encoder.timestamp_step
        self.resampler = Resampler(self.sample_rate)  # publisher audio → our rate
        self.silence = bytes(2 * self.frame_samples)

    @classmethod
    def for_stream(cls, stream: NegotiatedStream) -> CodecPipeline:
        return cls(pipeline_key(stream))

    def conceal(self, rtp_samples: int) -> bytes:
        """PCM standing in for ``rtp_samples`` (RTP clock units) of lost audio."""
        return self.decoder.conceal(rtp_samples * self.sample_rate // self.clock_rate)
