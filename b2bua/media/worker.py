"""A media worker process: ``python -m b2bua.media.worker INDEX COUNT``, spawned by its node.

It reads the node's pickled :class:`~b2bua.config.Config` on stdin, listens for RTMP on
``rtmp.listen``'s port + INDEX, binds RTP in its share of ``media.rtp_port_min``–``max``, and
serves the node's AMP commands (b2bua/media/worker_amp.py) on file descriptor 3, a socketpair
end. It owns its legs' sockets, RTMP connections, codecs and media clock: no media crosses the
process boundary. It exits when the node's end closes.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import endpoints, task
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.protocols import amp

from b2bua.media import worker_amp as cmd
from b2bua.media.engine import LegEngine
from b2bua.media.leg import MediaLeg
from b2bua.media.ports import NoPortsAvailable, PortPool
from b2bua.media.tick import MediaClock
from b2bua.metrics import Registry
from b2bua.rtmp.server import RtmpMetrics, RtmpServerFactory
from b2bua.rtmp.streams import StreamRegistry

log = Logger()
AMP_FD = 3
REPORT_INTERVAL = 1.0  # s: the watchdog's counters and /metrics are this fresh


def worker_port_range(low: int, high: int, index: int, count: int) -> tuple[int, int]:
    """Worker ``index``'s share of the RTP range: ``count`` disjoint slices of even-started pairs."""
    pairs = (high - low + 1) // 2
    share = pairs // count
    if share < 1:
        raise ValueError(f"RTP port range {low}-{high} too small for {count} media workers")
    first = low + 2 * share * index
    return first, first + 2 * share - 1


def shifted_endpoint(description: str, offset: int) -> str:
    """``tcp:1935:interface=…`` with its port moved by ``offset`` (tcp:, ssl: endpoints)."""
    parts = description.split(":")
    if len(parts) < 2 or parts[0] not in ("tcp", "ssl") or not parts[1].isdigit():
        raise ValueError(f"rtmp.listen: media workers need tcp:PORT or ssl:PORT, got {description!r}")
    parts[1] = str(int(parts[1]) + offset)
    return ":".join(parts)


def metrics_snapshot(rtmp: RtmpMetrics, clock: MediaClock) -> dict[str, Any]:
    """The worker's media metrics as totals; the node sums them over its workers."""
    return {
        "rtmp_connections": rtmp.connections.value,
        "rtmp_publishers": rtmp.publishers.value,
        "rtmp_players": rtmp.players.value,
        "rtmp_received_bytes": rtmp.bytes_in.value,
        "rtmp_sent_bytes": rtmp.bytes_out.value,
        "rtmp_refused": {
            sample.labels["reason"]: sample.value
            for family in rtmp.refused.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        },
        "late_ticks": clock.late_ticks,
        "lag_max_ms": clock.lag_max_ms,
        "busy_max_ms": clock.busy_max_ms,
        "ticks_lagging_5ms": sum(clock.lag_counts[3:]),
    }


class _LegEvents:
    """A leg's events, sent to the node."""

    def __init__(self, worker: WorkerProtocol, leg_id: str) -> None:
        self.worker = worker
        self.leg = leg_id

    def _stream(self, stream: str, state: str, id_: str, reason: str | None = None) -> None:
        self.worker.tell(cmd.StreamEvent, leg=self.leg, stream=stream, state=state, id=id_, reason=reason)

    def publisher_started(self, publisher_id: str, metadata: dict | None) -> None:
        self._stream("publisher", "connected", publisher_id)

    def publisher_stopped(self, reason: str) -> None:
        self._stream("publisher", "gone", "", reason)

    def player_joined(self, player_id: str) -> None:
        self._stream("player", "connected", player_id)

    def player_left(self, player_id: str, reason: str) -> None:
        self._stream("player", "gone", player_id, reason)

    def dtmf_received(self, digit: str) -> None:
        self.worker.tell(cmd.DtmfReceived, leg=self.leg, digit=digit)


class WorkerProtocol(amp.AMP):
    """The worker's end: the legs by the node's ids."""

    def __init__(self, reactor, config, pool: PortPool, streams: StreamRegistry, clock: MediaClock,
                 rtmp_metrics: RtmpMetrics | None = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.config = config
        self.pool = pool
        self.streams = streams
        self.clock = clock
        self.rtmp_metrics = rtmp_metrics
        self.legs: dict[str, LegEngine] = {}
        self._report = task.LoopingCall(self.report)
        self._report.clock = reactor

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        # the first report at once: the node knows the worker is up (its RTMP port listening)
        self._report.start(REPORT_INTERVAL, now=True)

    def connectionLost(self, reason) -> None:  # noqa: N802
        super().connectionLost(reason)
        if self._report.running:
            self._report.stop()
        for engine in list(self.legs.values()):
            engine.close()
        self.legs.clear()
        if self.reactor.running:
            self.reactor.stop()  # the node is gone: so is this worker

    def tell(self, command: type[amp.Command], **kwargs: Any) -> None:
        if self.transport is not None and not getattr(self.transport, "disconnected", False):
            self.callRemote(command, **kwargs)

    def report(self) -> None:
        items = [(k, e.packets_in) for k, e in self.legs.items()]
        n = cmd.REPORT_LEGS_PER_BOX
        metrics = (metrics_snapshot(self.rtmp_metrics, self.clock) if self.rtmp_metrics is not None else None)
        for start in range(0, max(len(items), 1), n):
            self.tell(cmd.Report, packets=dict(items[start:start + n]), metrics=metrics)
            metrics = None

    def _engine(self, leg: str) -> LegEngine:
        engine = self.legs.get(leg)
        if engine is None:
            raise cmd.UnknownLeg(leg)
        return engine

    @cmd.CreateLeg.responder
    def create_leg(self, leg: str, push_key: str, play_key: str, video: bool) -> dict:
        media = self.config.media
        sdp_host = "0.0.0.0"  # the node writes the SDP: only the ports matter here
        rtp_leg = MediaLeg(self.reactor, self.pool, sdp_host, media.codecs, video, "")
        rtp_leg.push_key, rtp_leg.play_key = push_key, play_key
        try:
            rtp_leg.open()
        except NoPortsAvailable as e:
            raise cmd.NoPorts(str(e)) from None
        self.legs[leg] = LegEngine(rtp_leg, self.streams, self.clock, _LegEvents(self, leg), media)
        return {"audio_port": rtp_leg.audio_port, "video_port": rtp_leg.video_port or 0}

    @cmd.ApplyMedia.responder
    def apply_media(self, leg: str, negotiated) -> dict:
        self._engine(leg).apply(negotiated)
        return {}

    @cmd.SendDtmf.responder
    def send_dtmf(self, leg: str, digits: str) -> dict:
        self._engine(leg).send_dtmf(digits)
        return {}

    @cmd.CloseLeg.responder
    def close_leg(self, leg: str) -> dict:
        engine = self.legs.pop(leg, None)
        if engine is None:
            raise cmd.UnknownLeg(leg)
        return {"stats": engine.close()}


def log_line(event: dict) -> str:
    """One log event as the line the node reads back (MediaWorker.log_line): JSON with the
    level's name and the text, a failure's traceback included."""
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}\n{failure.getTraceback()}"
    level = event.get("log_level", LogLevel.info)
    return json.dumps({"level": level.name, "text": text}) + "\n"


def log_line_observer(out) -> Callable[[dict], None]:
    def observe(event: dict) -> None:
        out.write(log_line(event))
        out.flush()

    return observe


def main(argv: list[str]) -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from b2bua.service import tune_gc

    index, count = int(argv[1]), int(argv[2])
    config = pickle.load(sys.stdin.buffer)  # noqa: S301 (from the node that spawned us)
    globalLogBeginner.beginLoggingTo([log_line_observer(sys.stderr)], redirectStandardIO=False)
    media = config.media
    low, high = worker_port_range(media.rtp_port_min, media.rtp_port_max, index, count)
    pool = PortPool(reactor, media.rtp_host or config.sip.listen_host, low, high)
    streams = StreamRegistry(reactor)
    clock = MediaClock(reactor)
    metrics = Registry()
    rtmp = config.rtmp
    factory = RtmpServerFactory(
        streams, app=rtmp.app, reactor=reactor, metrics=metrics, max_backlog=rtmp.max_player_backlog,
        max_connections=rtmp.max_connections, max_connections_per_address=rtmp.max_connections_per_address,
    )
    listen = shifted_endpoint(rtmp.listen, index)
    endpoints.serverFromString(reactor, listen).listen(factory).addErrback(
        lambda f: (log.failure("media worker {index}: RTMP {listen} failed", f, index=index, listen=listen),
                   reactor.stop())
    )
    proto = WorkerProtocol(reactor, config, pool, streams, clock, factory.metrics)
    amp_factory = Factory.forProtocol(lambda: proto)
    reactor.adoptStreamConnection(AMP_FD, socket.AF_UNIX, amp_factory)
    os.close(AMP_FD)  # the reactor holds its own duplicate
    reactor.callWhenRunning(tune_gc)
    log.info("media worker {index}: RTMP on {listen}, RTP {low}-{high}", index=index, listen=listen,
             low=low, high=high)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)
