"""The node's side of its media workers (``media.workers`` > 0): spawn, drive over AMP, restart.

:class:`WorkerPool` is the node's media backend (b2bua/media/backend.py) and a service: it
spawns ``media.workers`` processes (b2bua/media/worker.py), each connected by a socketpair that
carries AMP, and gives each new leg to the least-loaded running worker. A :class:`RemoteLeg` is
the call's handle on a leg in a worker. A worker that dies fails its own legs only (their calls
end with ``MEDIA_WORKER_FAILED``) and is spawned again after :data:`RESTART_DELAY`.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.application import service
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import InvalidLogLevelError, Logger, LogLevel
from twisted.protocols import amp

from b2bua.media import worker_amp as cmd
from b2bua.media.backend import UNBOUND
from b2bua.media.leg import MediaLeg
from b2bua.media.ports import NoPortsAvailable
from b2bua.media.worker import AMP_FD, shifted_endpoint
from b2bua.wire.sdp import NegotiatedMedia

log = Logger()
RESTART_DELAY = 1.0  # s before a dead worker is spawned again (bounds a crash loop)
STOP_GRACE = 5.0  # s a worker has to exit on SIGTERM before SIGKILL


def worker_rtmp_base(config, index: int) -> str:
    """The push/play URL base naming worker ``index``'s RTMP port: ``rtmp.public_url``'s (or
    ``rtmp.listen``'s) port + index."""
    rtmp = config.rtmp
    if rtmp.public_url:
        parts = urlsplit(rtmp.public_url)
        port = (parts.port or 1935) + index
        host = parts.hostname or config.public_host
        if ":" in host:
            host = f"[{host}]"
        return urlunsplit(parts._replace(netloc=f"{host}:{port}"))
    port = int(shifted_endpoint(rtmp.listen, index).split(":")[1])
    return f"rtmp://{config.public_host}:{port}/{rtmp.app}"


def choose_worker(workers: Sequence[MediaWorker]) -> MediaWorker | None:
    """The running worker with the fewest legs (the lowest index among equals)."""
    ready = [w for w in workers if w.ready]
    return min(ready, key=lambda w: (len(w.legs), w.index)) if ready else None


class RemoteMediaLeg(MediaLeg):
    """The node's half of a leg whose sockets are in a worker: SDP, keys and URLs only."""

    def open(self) -> None:  # the worker bound them
        pass

    def set_ports(self, audio: int, video: int | None) -> None:
        self._pairs = [audio] if video is None else [audio, video]

    def close(self) -> None:
        self.closed = True


class RemoteLeg:
    """A call's handle on its leg in a worker (the commands are sent in order; AMP keeps it)."""

    def __init__(self, worker: MediaWorker, leg_id: str, leg: RemoteMediaLeg) -> None:
        self.worker = worker
        self.id = leg_id
        self.leg = leg
        self.events: Any = UNBOUND
        self.started = False
        self.packets_in = 0
        self.closed = False
        self._stats: Deferred | None = None

    def apply(self, negotiated: NegotiatedMedia) -> None:
        if self.closed:
            return
        self.started = True
        self._send(cmd.ApplyMedia, negotiated=negotiated)

    def send_dtmf(self, digits: str) -> None:
        self._send(cmd.SendDtmf, digits=digits)

    def _send(self, command: type[amp.Command], **kwargs: Any) -> None:
        if self.closed or self.worker.amp is None:
            return
        d = self.worker.amp.callRemote(command, leg=self.id, **kwargs)
        d.addErrback(lambda f: log.warn("media worker {i}: {c} for leg {leg} failed: {e}",
                                        i=self.worker.index, c=command.__name__, leg=self.id,
                                        e=f.getErrorMessage()))

    def stop(self) -> Deferred:
        """Close the leg in its worker: a Deferred of its LegStats (None if it never started or
        the worker is gone)."""
        if self._stats is None:
            self.closed = True
            self.worker.legs.pop(self.id, None)
            if self.worker.amp is None:
                self._stats = Deferred()
                self._stats.callback(None)
            else:
                self._stats = self.worker.amp.callRemote(cmd.CloseLeg, leg=self.id)
                self._stats.addCallback(lambda r: r["stats"] if self.started else None)
                self._stats.addErrback(lambda f: None)
            self.leg.close()
        d: Deferred = Deferred()
        self._stats.addBoth(lambda r: (d.callback(r), r)[1])
        return d

    def close(self) -> None:
        self.stop()

    def failed(self, reason: str) -> None:
        """Its worker died: the leg is gone with it."""
        self.closed = True
        self.leg.close()
        self.events.media_failed(reason)


class _NodeAmp(amp.AMP):
    """The node's end of one worker's socketpair."""

    def __init__(self, worker: MediaWorker) -> None:
        super().__init__()
        self.worker = worker

    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        self.worker.amp = self

    def connectionLost(self, reason) -> None:  # noqa: N802
        super().connectionLost(reason)
        if self.worker.amp is self:
            self.worker.amp = None

    @cmd.StreamEvent.responder
    def stream_event(self, leg: str, stream: str, state: str, id: str, reason: str | None) -> dict:  # noqa: A002
        handle = self.worker.legs.get(leg)
        if handle is not None:
            events = handle.events
            if stream == "publisher":
                if state == "connected":
                    events.publisher_started(id, None)
                else:
                    events.publisher_stopped(reason or "")
            elif state == "connected":
                events.player_joined(id)
            else:
                events.player_left(id, reason or "")
        return {}

    @cmd.DtmfReceived.responder
    def dtmf_received(self, leg: str, digit: str) -> dict:
        handle = self.worker.legs.get(leg)
        if handle is not None:
            handle.events.dtmf_received(digit)
        return {}

    @cmd.Report.responder
    def report(self, packets: dict, metrics: dict | None) -> dict:
        self.worker.reported = True
        for leg, count in packets.items():
            handle = self.worker.legs.get(leg)
            if handle is not None:
                handle.packets_in = count
        if metrics is not None:
            self.worker.pool.metrics_reported(self.worker, metrics)
        return {}


MAX_LOG_LINE = 65536  # a worker's log line longer than this is cut (a runaway traceback)


class _WorkerProcess(ProcessProtocol):
    """The worker's process: its end, and its log (one JSON event per line on its stdout and
    stderr, b2bua.media.worker.log_line) re-emitted in the node's log, so a node started with
    ``twistd --logfile`` keeps its workers' lines in the same file."""

    def __init__(self, worker: MediaWorker) -> None:
        self.worker = worker
        self._partial: dict[int, bytes] = {}

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802
        *lines, rest = (self._partial.pop(fd, b"") + data).split(b"\n")
        if len(rest) > MAX_LOG_LINE:
            lines.append(rest[:MAX_LOG_LINE])
            rest = b""
        if rest:
            self._partial[fd] = rest
        for line in lines:
            if line.strip():
                self.worker.log_line(line[:MAX_LOG_LINE])

    def processEnded(self, reason) -> None:  # noqa: N802
        self.worker.ended(reason)


class MediaWorker:
    """One worker process, its AMP connection and the legs it holds."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.rtmp_base = worker_rtmp_base(pool.config, index)
        self.amp: _NodeAmp | None = None
        self.process = None
        self.legs: dict[str, RemoteLeg] = {}
        self.metrics: dict[str, Any] = {}
        self.spawns = 0
        # the process has reported since its spawn: it runs, its RTMP port listens (``ready`` is
        # earlier: commands sent before the process runs wait in the socketpair)
        self.reported = False

    @property
    def ready(self) -> bool:
        return self.amp is not None and self.process is not None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def spawn(self) -> None:
        pool = self.pool
        node_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # where the b2bua package is
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            self.process = pool.reactor.spawnProcess(
                _WorkerProcess(self),
                sys.executable,
                [sys.executable, "-m", "b2bua.media.worker", str(self.index), str(pool.count)],
                env=env,
                childFDs={0: "w", 1: "r", 2: "r", AMP_FD: child_end.fileno()},
            )
            pool.reactor.adoptStreamConnection(node_end.fileno(), socket.AF_UNIX,
                                               Factory.forProtocol(lambda: _NodeAmp(self)))
        finally:
            child_end.close()
            node_end.close()
        self.process.write(pickle.dumps(pool.config))
        self.process.closeStdin()
        self.spawns += 1
        log.info("media worker {index} started (pid {pid})", index=self.index, pid=self.process.pid)

    def log_line(self, line: bytes) -> None:
        """One line the worker wrote: a JSON log event, or raw text (a crash before logging began)."""
        try:
            event = json.loads(line)
            level = LogLevel.levelWithName(event["level"])
            text = str(event["text"])
        except (ValueError, KeyError, TypeError, InvalidLogLevelError):
            level, text = LogLevel.error, line.decode("utf-8", "replace")
        log.emit(level, "media worker {index}: {text}", index=self.index, text=text)

    def ended(self, reason) -> None:
        pid = self.pid
        self.process = None
        if self.amp is not None and self.amp.transport is not None:
            self.amp.transport.loseConnection()
        self.amp = None
        self.reported = False
        legs, self.legs = self.legs, {}
        self.metrics = {}
        text = f"media worker {self.index} (pid {pid}) {_exit_text(reason.value)}"
        if self.pool.stopping:
            log.info("{text}", text=text)
        else:
            log.error("{text}: ending its {n} calls, restarting", text=text, n=len(legs))
            for handle in legs.values():
                handle.failed(text)
        self.pool.worker_ended(self)


def _exit_text(value) -> str:
    sig = getattr(value, "signal", None)
    if sig:
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exited with status {getattr(value, 'exitCode', None)}"


class WorkerPool(service.Service):
    """The node's media workers: the media backend when ``media.workers`` > 0."""

    def __init__(self, reactor, config, sdp_host: str, count: int | None = None) -> None:
        self.reactor = reactor
        self.config = config
        self.sdp_host = sdp_host
        self.count = count if count is not None else config.media.workers
        self.workers = [MediaWorker(self, i) for i in range(self.count)]
        self.stopping = False
        self._ids = itertools.count(1)
        self._restarts: dict[int, Any] = {}
        self._stopped: dict[int, Deferred] = {}
        self.on_metrics: Callable[[dict, dict], None] | None = None
        self._export_gauges: Callable[[], object] | None = None

    # -- service ----------------------------------------------------------------------------------------
    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.stopping = False
        for worker in self.workers:
            worker.spawn()

    def stopService(self) -> Deferred:  # noqa: N802
        super().stopService()
        self.stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        waits = []
        for worker in self.workers:
            if worker.process is not None:
                d: Deferred = Deferred()
                self._stopped[worker.index] = d
                waits.append(d)
                process = worker.process
                process.signalProcess("TERM")
                kill = self.reactor.callLater(STOP_GRACE, _kill, process)
                d.addBoth(lambda r, k=kill: (k.active() and k.cancel(), r)[1])
        from twisted.internet.defer import DeferredList

        return DeferredList(waits)

    def worker_ended(self, worker: MediaWorker) -> None:
        waiting = self._stopped.pop(worker.index, None)
        if waiting is not None:
            waiting.callback(None)
        if self._export_gauges is not None:
            self._export_gauges()  # the dead worker's connections are gone
        if not self.stopping:
            self._restarts[worker.index] = self.reactor.callLater(RESTART_DELAY, self._restart, worker)

    def _restart(self, worker: MediaWorker) -> None:
        self._restarts.pop(worker.index, None)
        if not self.stopping and worker.process is None:
            worker.spawn()

    # -- backend ----------------------------------------------------------------------------------------
    def new_leg(self, video: bool) -> Deferred:
        worker = choose_worker(self.workers)
        if worker is None:
            return fail(NoPortsAvailable("no media worker running"))
        leg_id = f"l{next(self._ids)}"
        leg = RemoteMediaLeg(self.reactor, None, self.sdp_host, self.config.media.codecs, video,
                             worker.rtmp_base, srtp=self.config.media.srtp)
        handle = RemoteLeg(worker, leg_id, leg)
        worker.legs[leg_id] = handle  # counted at once: a burst of calls spreads
        d = worker.amp.callRemote(cmd.CreateLeg, leg=leg_id, push_key=leg.push_key, play_key=leg.play_key,
                                  video=video)

        def created(result: dict) -> RemoteLeg:
            leg.set_ports(result["audio_port"], result["video_port"] or None)
            if handle.closed:  # its worker died meanwhile
                raise NoPortsAvailable("media worker gone")
            return handle

        def failed(f):
            worker.legs.pop(leg_id, None)
            if f.check(cmd.NoPorts):
                raise NoPortsAvailable(f.getErrorMessage())
            raise NoPortsAvailable(f"media worker {worker.index}: {f.getErrorMessage()}")

        return d.addCallbacks(created, failed)

    def rtp_ports_in_use(self) -> int:
        return sum(len(w.legs) for w in self.workers)

    # -- metrics ----------------------------------------------------------------------------------------
    def metrics_reported(self, worker: MediaWorker, metrics: dict) -> None:
        previous, worker.metrics = worker.metrics, metrics
        if self.on_metrics is not None:
            self.on_metrics(previous, metrics)

    def total(self, key: str, combine: Callable = sum) -> float:
        values = [w.metrics.get(key, 0) for w in self.workers if w.metrics]
        return float(combine(values)) if values else 0.0

    def clock_stats(self) -> dict[str, float]:
        """The media clocks' figures over the running workers (sums; maxima of the maxima)."""
        return {
            "late_ticks": self.total("late_ticks"),
            "lag_max_ms": self.total("lag_max_ms", max),
            "busy_max_ms": self.total("busy_max_ms", max),
            "ticks_lagging_5ms": self.total("ticks_lagging_5ms"),
        }

    def export_metrics(self, registry) -> None:
        """The workers' RTMP metrics in the node's registry, under their usual names: gauges the
        sum over the running workers, counters advanced by each report's increase."""
        from b2bua.rtmp.server import RtmpMetrics

        rtmp = RtmpMetrics(registry)
        gauges = {"rtmp_connections": rtmp.connections, "rtmp_publishers": rtmp.publishers,
                  "rtmp_players": rtmp.players}
        counters = {"rtmp_received_bytes": rtmp.bytes_in, "rtmp_sent_bytes": rtmp.bytes_out}

        def apply(previous: dict, current: dict) -> None:
            for key, gauge in gauges.items():
                gauge.set(self.total(key))
            for key, counter in counters.items():
                counter.inc(max(0.0, current.get(key, 0) - previous.get(key, 0)))
            before = previous.get("rtmp_refused", {})
            for reason, value in current.get("rtmp_refused", {}).items():
                if value > before.get(reason, 0):
                    rtmp.refused.labels(reason).inc(value - before.get(reason, 0))

        self.on_metrics = apply
        self._export_gauges = lambda: [g.set(self.total(k)) for k, g in gauges.items()]


def _kill(process) -> None:
    try:
        process.signalProcess("KILL")
    except Exception:  # noqa: BLE001 (already gone)
        pass
