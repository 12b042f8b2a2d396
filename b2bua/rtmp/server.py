"""The RTMP listening side: :class:`RtmpServerFactory` builds one protocol per connection.

Listen with an endpoint, as the rest of the service does::

    registry = StreamRegistry(reactor)
    factory = RtmpServerFactory(registry, app=config.rtmp.app, reactor=reactor, metrics=metrics)
    serverFromString(reactor, config.rtmp.listen).listen(factory)

Metrics (when a :class:`b2bua.metrics.Registry` is given): ``mpb2bua_rtmp_connections``,
``mpb2bua_rtmp_publishers``, ``mpb2bua_rtmp_players`` (gauges),
``mpb2bua_rtmp_refused_total{reason}`` (unknown_key, wrong_direction, busy, ended, wrong_app,
bad_input, buffer_limit, handshake_timeout, idle_timeout, slow_player, too_many_connections,
too_many_from_address), ``mpb2bua_rtmp_received_bytes_total`` and ``mpb2bua_rtmp_sent_bytes_total``.

Connections beyond ``max_connections`` in total or ``max_connections_per_address`` from one
client address are closed at once, before the handshake (the same rule as Twisted's
``LimitTotalConnectionsFactory`` and ``LimitConnectionsByPeer``, counted here rather than through
their wrapping factories so that the protocol keeps the real TCP transport that ``send_now`` uses).
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from b2bua.metrics import Registry
from b2bua.rtmp.protocol import RtmpServerProtocol
from b2bua.rtmp.streams import StreamRegistry

log = Logger()

DEFAULT_APP = "mp"
WINDOW_ACK_SIZE = 2_500_000
CHUNK_SIZE = 4096
HANDSHAKE_TIMEOUT = 5.0
IDLE_TIMEOUT = 15.0
MAX_STALL = 5.0  # seconds a player may stay paused (its socket not draining) before it is closed
MAX_BACKLOG = 1_000_000  # bytes written to a paused player before it is closed
MAX_CONNECTIONS = 4096
MAX_CONNECTIONS_PER_ADDRESS = 64


class _Null:
    """A metric that records nothing (no metrics registry given)."""

    def inc(self, n: float = 1) -> None:
        pass

    def dec(self, n: float = 1) -> None:
        pass

    def labels(self, *values: object) -> _Null:
        return self


class RtmpMetrics:
    """The RTMP server's metric families (no-ops without a registry)."""

    def __init__(self, registry: Registry | None) -> None:
        if registry is None:
            null: Any = _Null()
            self.connections = self.publishers = self.players = null
            self.refused = self.bytes_in = self.bytes_out = null
            return
        self.connections = registry.gauge("mpb2bua_rtmp_connections", "Open RTMP connections.")
        self.publishers = registry.gauge("mpb2bua_rtmp_publishers", "RTMP connections publishing.")
        self.players = registry.gauge("mpb2bua_rtmp_players", "RTMP connections playing.")
        self.refused = registry.counter(
            "mpb2bua_rtmp_refused_total", "RTMP connections refused or closed, by reason.", ("reason",)
        )
        self.bytes_in = registry.counter("mpb2bua_rtmp_received_bytes_total", "Bytes received on RTMP.")
        self.bytes_out = registry.counter("mpb2bua_rtmp_sent_bytes_total", "Bytes sent on RTMP.")


class LogLimiter:
    """At most ``burst`` log lines per ``period`` seconds (a token bucket): bad input from many
    connections must not flood the log."""

    def __init__(self, clock: IReactorTime, burst: int = 20, period: float = 60.0) -> None:
        self.clock = clock
        self.burst = burst
        self.rate = burst / period
        self.tokens = float(burst)
        self.updated = clock.seconds()
        self.suppressed = 0

    def allow(self) -> bool:
        now = self.clock.seconds()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.suppressed += 1
        return False


class RtmpServerFactory(ServerFactory):
    """Builds :class:`RtmpServerProtocol` connections sharing one :class:`StreamRegistry`."""

    def __init__(
        self,
        registry: StreamRegistry,
        app: str = DEFAULT_APP,
        reactor: IReactorTime | None = None,
        metrics: Registry | None = None,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        window_ack_size: int = WINDOW_ACK_SIZE,
        chunk_size: int = CHUNK_SIZE,
        max_stall: float = MAX_STALL,
        max_backlog: int = MAX_BACKLOG,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor  # type: ignore[assignment]
        self.registry = registry
        self.app = app.strip("/")
        self.reactor = reactor
        self.metrics = RtmpMetrics(metrics)
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.window_ack_size = window_ack_size
        self.chunk_size = chunk_size
        self.max_stall = max_stall
        self.max_backlog = max_backlog
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self.limiter = LogLimiter(reactor)
        self.connections: set[RtmpServerProtocol] = set()
        self.per_address: dict[str, int] = {}
        self._serial = itertools.count(1)

    def buildProtocol(self, addr: IAddress) -> RtmpServerProtocol | None:  # noqa: N802
        host = getattr(addr, "host", "?")
        port = getattr(addr, "port", 0)
        if len(self.connections) >= self.max_connections:
            return self._refuse("too_many_connections", host, len(self.connections))
        n = self.per_address.get(host, 0)
        if n >= self.max_connections_per_address:
            return self._refuse("too_many_from_address", host, n)
        proto = RtmpServerProtocol(self, f"rtmp-{next(self._serial)}@{host}:{port}")
        proto.peer_host = host
        return proto

    def _refuse(self, reason: str, host: str, n: int) -> None:
        """Twisted closes a connection whose factory builds no protocol."""
        self.metrics.refused.labels(reason).inc()
        if self.limiter.allow():
            log.warn("RTMP connection from {host} refused: {reason} ({n} open)", host=host, reason=reason,
                     n=n)
        return None

    def connection_made(self, proto: RtmpServerProtocol) -> None:
        self.connections.add(proto)
        host = proto.peer_host
        self.per_address[host] = self.per_address.get(host, 0) + 1

    def connection_lost(self, proto: RtmpServerProtocol) -> None:
        if proto not in self.connections:
            return
        self.connections.discard(proto)
        host = proto.peer_host
        n = self.per_address.get(host, 0) - 1
        if n > 0:
            self.per_address[host] = n
        else:
            self.per_address.pop(host, None)
