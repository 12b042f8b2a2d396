"""What the `hangup` event's `media` member and /metrics report about a leg's media."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LegStats:
    """One leg's counters, kept from its first media to its end (re-INVITEs included)."""

    rtp_sent: int = 0
    rtp_received: int = 0
    rtp_bad: int = 0
    rtp_foreign: int = 0
    lost: int = 0
    late: int = 0
    jitter_ms: float = 0.0
    rtt_ms: float | None = None
    uplink_underruns: int = 0
    uplink_dropped_ms: float = 0.0
    concealed_ms: float = 0.0
    video_sent: int = 0
    video_received: int = 0
    keyframe_requests: int = 0
    codec: str | None = None
    srtp: str | None = None  # the SDES suite of the audio while it is SRTP
    srtp_auth_failed: int = 0  # SRTP/SRTCP packets whose authentication failed (dropped)
    srtp_replayed: int = 0  # SRTP/SRTCP packets already received (libsrtp's replay check)
    # the buffering we add, measured: mean spare of the uplink FIFO + of the jitter buffer, i.e.
    # the mean time audio waits in them beyond the packet being sent/played (the tick phase and
    # the pusher's own bursts come on top)
    added_delay_ms: float = 0.0
    uplink_target_ms: float = 0.0  # current adaptive targets (spare at the lowest point) ...
    jitter_target_ms: float = 0.0
    uplink_target_avg_ms: float = 0.0  # ... and their time-weighted means over the leg
    jitter_target_avg_ms: float = 0.0
    uplink_target_raises: int = 0
    jitter_target_raises: int = 0
    jitter_stretched: int = 0  # Gaps played to rebuffer to a raised target
    jitter_shrunk: int = 0  # packets dropped to give delay back
    extra: dict = field(default_factory=dict)

    def as_event(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "extra" and v not in (None, 0, 0.0)}
        out["jitter_ms"] = round(self.jitter_ms, 1)
        for k in ("added_delay_ms", "uplink_target_avg_ms", "jitter_target_avg_ms", "uplink_dropped_ms"):
            if k in out:
                out[k] = round(out[k], 1)
        if self.rtt_ms is not None:
            out["rtt_ms"] = round(self.rtt_ms, 1)
        return out
