"""One leg's media where it runs: in the node process (``media.workers: 0``) or in a media worker.

:class:`LegEngine` joins a :class:`~b2bua.media.leg.MediaLeg`'s sockets, the leg's two RTMP
stream keys and its :class:`~b2bua.media.bridge.AudioBridge` (created at the first negotiated
media, re-pointed by every later one). It is the key's publish sink and play source, so the
pusher's AAC goes straight to the bridge; what the owner must hear about (publisher and players
coming and going, DTMF digits) goes to ``events`` — the Call in-process, an AMP proxy in a worker.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from b2bua.media.bridge import AudioBridge
from b2bua.media.leg import MediaLeg
from b2bua.media.stats import LegStats
from b2bua.media.tick import MediaClock
from b2bua.rtmp.streams import StreamRegistry
from b2bua.wire.sdp import NegotiatedMedia


class LegEvents(Protocol):
    """What a leg's media reports to its call."""

    def publisher_started(self, publisher_id: str, metadata: dict | None) -> None: ...
    def publisher_stopped(self, reason: str) -> None: ...
    def player_joined(self, player_id: str) -> None: ...
    def player_left(self, player_id: str, reason: str) -> None: ...
    def dtmf_received(self, digit: str) -> None: ...


def close_details(bridge: AudioBridge, leg: MediaLeg, rebuilt: dict[str, int]) -> dict[str, Any]:
    """What a leg's close tells its node beyond the `hangup` event (``LegStats.extra``): the
    bridge's internals the tests and logs judge by, the same whether the media ran in the node or
    in a worker. Plain values: they cross AMP pickled."""
    jitter = bridge.jitter
    remote = leg.audio_rtp.remote
    return {
        "pipeline_builds": bridge.pipeline_builds,
        "ptime": bridge.pipeline.ptime,  # what we sent at
        "jitter_ptime_ms": jitter.ptime_ms,  # what we received at, as the jitter buffer learnt it
        "jitter": dataclasses.asdict(jitter.stats),
        "jitter_rebuilds": rebuilt["jitter"],
        "decoder_rebuilds": rebuilt["decoder"],
        "audio_remote": tuple(remote) if remote is not None else None,  # where RTP went at the end
    }


class LegEngine:
    """A leg's media: sockets, stream keys, bridge. ``close`` frees all of it."""

    def __init__(
        self, leg: MediaLeg, streams: StreamRegistry, clock: MediaClock, events: LegEvents, media_config: Any
    ) -> None:
        self.leg = leg
        self.streams = streams
        self.clock = clock
        self.events = events
        self.config = media_config
        self.bridge: AudioBridge | None = None
        self.audio_header: bytes | None = None  # the pusher's last AAC sequence header
        self.video_header: bytes | None = None
        self.stopped = False
        self.rebuilt = {"jitter": 0, "decoder": 0}  # by a later negotiated media (a re-INVITE)
        streams.add(leg.push_key, "publish", self)
        self.players = streams.add(leg.play_key, "play", self).group

    @property
    def started(self) -> bool:
        return self.bridge is not None

    @property
    def packets_in(self) -> int:
        """Datagrams from the far end so far: what the dead-call watchdog reads."""
        return self.bridge.packets_in if self.bridge is not None else 0

    # -- commands ---------------------------------------------------------------------------------------
    def apply(self, negotiated: NegotiatedMedia) -> None:
        """The first negotiated media starts the bridge; every later one re-points it (hold,
        unhold, refresh, new codec or address)."""
        if self.stopped:
            return
        bridge = self.bridge
        if bridge is not None:
            jitter, decoder = bridge.jitter, bridge.decoder
            bridge.apply(negotiated)
            self.rebuilt["jitter"] += bridge.jitter is not jitter
            self.rebuilt["decoder"] += bridge.decoder is not decoder
            return
        config = self.config
        self.bridge = AudioBridge(
            self.leg,
            negotiated,
            self.players,
            self.events.dtmf_received,
            aac_rate=config.aac_sample_rate,
            uplink_buffer_ms=config.uplink_buffer_ms,
            uplink_buffer_max_ms=config.uplink_buffer_max_ms,
        )
        if self.audio_header is not None:
            self.bridge.publisher_audio(0, self.audio_header)
        if self.video_header is not None:
            self.bridge.publisher_video(0, self.video_header)
        self.clock.add(self.bridge)

    def send_dtmf(self, digits: str) -> None:
        if self.bridge is not None:
            self.bridge.send_dtmf(digits)

    def stop(self) -> LegStats | None:
        """Stop the bridge (once): its statistics, or None when media never started."""
        self.stopped = True
        bridge, self.bridge = self.bridge, None
        if bridge is None:
            return None
        self.clock.discard(bridge)
        stats = bridge.close()
        stats.extra.update(close_details(bridge, self.leg, self.rebuilt))
        return stats

    def close(self) -> LegStats | None:
        stats = self.stop()
        self.streams.remove(self.leg.push_key)
        self.streams.remove(self.leg.play_key)
        self.leg.close()
        self.players = None  # the group's callbacks point back here: no cycle to collect
        return stats

    # -- PublishSink: the live-pusher of this leg ---------------------------------------------------------
    def publisher_started(self, publisher_id: str, metadata: dict | None) -> None:
        self.events.publisher_started(publisher_id, metadata)

    def audio(self, timestamp_ms: int, payload: bytes) -> None:
        if len(payload) > 1 and payload[1] == 0 and payload[0] >> 4 == 10:  # AAC sequence header
            self.audio_header = payload
        if self.bridge is not None:
            self.bridge.publisher_audio(timestamp_ms, payload)

    def video(self, timestamp_ms: int, payload: bytes) -> None:
        if len(payload) > 1 and payload[1] == 0 and payload[0] & 0x0F == 7:  # AVC sequence header
            self.video_header = payload
        if self.bridge is not None:
            self.bridge.publisher_video(timestamp_ms, payload)

    def publisher_stopped(self, reason: str) -> None:
        self.events.publisher_stopped(reason)

    # -- PlaySource: the live-players of this leg ---------------------------------------------------------
    def player_joined(self, player_id: str) -> None:
        self.events.player_joined(player_id)

    def player_left(self, player_id: str, reason: str) -> None:
        self.events.player_left(player_id, reason)
