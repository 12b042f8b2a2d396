"""Where the calls' media runs, behind one interface for the call logic (b2bua/call/calls.py).

A backend hands out one handle per leg (:meth:`MediaBackend.new_leg`, a Deferred: a media
worker binds the RTP ports asynchronously). A handle has ``leg`` (the node's
:class:`~b2bua.media.leg.MediaLeg`: the SDP side, the ports, the stream keys and URLs),
``events`` (set by its call), ``started``, ``packets_in``, and the commands ``apply(negotiated)``,
``send_dtmf(digits)``, ``stop()`` (the :class:`~b2bua.media.stats.LegStats`, or a Deferred of
them) and ``close()``.

* :class:`LocalMediaBackend` (``media.workers: 0``): the media in the node process, a
  :class:`~b2bua.media.engine.LegEngine` per leg;
* :class:`b2bua.media.workers.WorkerPool`: the media in worker processes, driven over AMP.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed

from b2bua.media.engine import LegEngine
from b2bua.media.leg import MediaLeg
from b2bua.media.ports import PortPool
from b2bua.media.tick import MediaClock
from b2bua.rtmp.streams import StreamRegistry


class MediaBackend(Protocol):
    def new_leg(self, video: bool) -> Deferred: ...  # fires with a handle; NoPortsAvailable
    def rtp_ports_in_use(self) -> int: ...
    def clock_stats(self) -> dict[str, float]: ...  # late_ticks, lag_max_ms, busy_max_ms, ticks_lagging_5ms


class _Unbound:
    """A handle's events before its call binds them (nothing reaches it before)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


UNBOUND = _Unbound()


class LocalMediaBackend:
    """Media in the node process: today's single-process node."""

    def __init__(
        self, reactor, config, streams: StreamRegistry, clock: MediaClock, sdp_host: str, rtmp_base: str
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.streams = streams
        self.clock = clock
        self.sdp_host = sdp_host
        self.rtmp_base = rtmp_base
        media = config.media
        self.ports = PortPool(reactor, media.rtp_host or config.sip.listen_host, media.rtp_port_min,
                              media.rtp_port_max)

    def new_leg(self, video: bool) -> Deferred:
        leg = MediaLeg(self.reactor, self.ports, self.sdp_host, self.config.media.codecs, video,
                       self.rtmp_base, srtp=self.config.media.srtp)
        try:
            leg.open()
        except Exception as e:
            return fail(e)
        return succeed(LegEngine(leg, self.streams, self.clock, UNBOUND, self.config.media))

    def rtp_ports_in_use(self) -> int:
        return len(self.ports.in_use)

    def clock_stats(self) -> dict[str, float]:
        clock = self.clock
        return {"late_ticks": clock.late_ticks, "lag_max_ms": clock.lag_max_ms,
                "busy_max_ms": clock.busy_max_ms, "ticks_lagging_5ms": sum(clock.lag_counts[3:])}
