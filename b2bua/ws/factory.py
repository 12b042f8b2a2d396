"""The WebSocket server factory and its listening endpoints.

``make_ws_factory(controller, ws_config, url)`` builds the factory; listen with
``ws_endpoints(reactor, ws_config)`` (one plain endpoint, plus a TLS one when ``tls_listen`` is
set) or hand :func:`ws_endpoint_descriptions` to ``twisted.application.strports.service``.

Limits (all from ``websocket.*``): a socket is *unauthenticated* from its TCP accept until a
``login`` or ``resume`` on it has succeeded, and again after ``logout``. At most
``max_unauthenticated`` such sockets in total and ``max_unauthenticated_per_address`` from one
client address (the TCP peer) are accepted; beyond that a new TCP connection is closed at once,
before the HTTP upgrade (as Twisted's ``LimitConnectionsByPeer`` does). One that is still
unauthenticated ``login_deadline`` seconds after it connected (a login in progress is waited for)
is closed with close code 4002. A socket whose peer stops reading gets at most
``max_send_buffer`` bytes queued on top of Twisted's own 64 KiB; then it is dropped (TCP abort:
no close frame can reach a peer that does not read). :class:`SocketLimits` holds what the plain
and TLS listeners share; ``mpb2bua_ws_dropped_total{reason}`` counts what it refused or closed.

Origins are checked in the protocol's ``onConnect`` (403 with a clear reason), not by autobahn,
whose own check compares ``scheme://host:port`` with the port always spelled out; autobahn's
``allowedOrigins`` is therefore left at ``["*"]``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress, IStreamServerEndpoint
from twisted.logger import Logger

from b2bua.ws.protocol import JsonRpcServerProtocol
from b2bua.ws.ratelimit import TokenBucketLimiter

if TYPE_CHECKING:
    from b2bua.call.controller import Controller
    from b2bua.config import WebSocketConfig
    from b2bua.metrics import Registry

__all__ = [
    "JsonRpcServerFactory",
    "SocketLimits",
    "WsListenerService",
    "make_ws_factory",
    "ws_endpoint_descriptions",
    "ws_endpoints",
]

log = Logger()

#: Reasons of ``mpb2bua_ws_dropped_total`` (a fixed set).
DROP_REASONS = ("too_many_unauthenticated", "too_many_from_address", "login_deadline", "send_buffer")
#: Seconds a stopping listener waits for its sockets to finish their close handshake, on top of
#: the controller's own bound on un-REGISTERs (STOP_TIMEOUT) before it sends 1001.
STOP_WAIT = 20.0


class SocketLimits:
    """Unauthenticated sockets counted in total and per client address, shared by the listeners
    of one node, and the dropped-socket metric."""

    def __init__(
        self,
        max_unauthenticated: int,
        max_per_address: int,
        metrics: Registry | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.max_unauthenticated = max_unauthenticated
        self.max_per_address = max_per_address
        self.total = 0
        self.per_address: dict[str, int] = {}
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._log_limiter = TokenBucketLimiter(20, clock, burst=20, max_keys=1)  # 20 lines a minute
        self._counter = None
        if metrics is not None:
            metrics.gauge_fn(
                "mpb2bua_ws_unauthenticated",
                "WebSocket connections not logged in (yet).",
                lambda: float(self.total),
            )
            self._counter = metrics.counter(
                "mpb2bua_ws_dropped_total",
                "WebSocket connections refused or dropped by a limit, by reason.",
                ("reason",),
            )

    def refusal(self, host: str) -> str | None:
        """Why one more unauthenticated socket from ``host`` is refused, or None."""
        if self.total >= self.max_unauthenticated:
            return "too_many_unauthenticated"
        if self.per_address.get(host, 0) >= self.max_per_address:
            return "too_many_from_address"
        return None

    def add(self, host: str) -> None:
        self.total += 1
        self.per_address[host] = self.per_address.get(host, 0) + 1

    def remove(self, host: str) -> None:
        self.total -= 1
        n = self.per_address.get(host, 0) - 1
        if n > 0:
            self.per_address[host] = n
        else:
            self.per_address.pop(host, None)

    def drop(self, reason: str, message: str, **fields: Any) -> None:
        """Count a refused or dropped socket and log why (at most 20 lines a minute)."""
        self.dropped[reason] += 1
        if self._counter is not None:
            self._counter.labels(reason).inc()
        if self._log_limiter.allow("log"):
            log.warn(message, reason=reason, **fields)

#: Seconds a client has to complete the HTTP upgrade (slow-loris bound).
OPEN_HANDSHAKE_TIMEOUT = 10.0
#: Seconds to wait for the client's close reply before dropping TCP. autobahn runs this timer on
#: 1-second buckets, so its default of 1 s may fire at once and abort the socket with the last
#: frames (an event, the close frame itself) still unsent.
CLOSE_HANDSHAKE_TIMEOUT = 5.0


class JsonRpcServerFactory(WebSocketServerFactory):
    """Builds :class:`JsonRpcServerProtocol` instances bound to one controller."""

    protocol = JsonRpcServerProtocol

    def __init__(
        self,
        controller: Controller,
        ws_config: WebSocketConfig,
        url: str | None = None,
        *,
        reactor: Any = None,
        trust_x_forwarded_for: int = 0,
        limits: SocketLimits | None = None,
    ) -> None:
        super().__init__(url, reactor=reactor)
        self.controller = controller
        self.path = ws_config.path
        self.allowed_origins = list(ws_config.allowed_origins)
        self.login_deadline = ws_config.login_deadline
        self.max_send_buffer = ws_config.max_send_buffer
        if limits is None:
            limits = SocketLimits(ws_config.max_unauthenticated, ws_config.max_unauthenticated_per_address)
        self.limits = limits
        self.protocols: set[JsonRpcServerProtocol] = set()
        self._all_closed: list[Deferred[None]] = []
        size = int(ws_config.max_message_size)
        self.setProtocolOptions(
            autoPingInterval=ws_config.auto_ping_interval,
            autoPingTimeout=ws_config.auto_ping_interval,
            maxMessagePayloadSize=size,
            maxFramePayloadSize=size,
            allowedOrigins=["*"],
            openHandshakeTimeout=OPEN_HANDSHAKE_TIMEOUT,
            closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
            # On a protocol error (e.g. an oversized message) send a close frame with the code
            # (1009 ...) instead of dropping TCP, so clients see why; closeHandshakeTimeout bounds it.
            failByDrop=False,
            trustXForwardedFor=trust_x_forwarded_for,
        )

    def buildProtocol(self, addr: IAddress) -> JsonRpcServerProtocol | None:  # noqa: N802
        host = str(getattr(addr, "host", "?"))
        reason = self.limits.refusal(host)
        if reason is not None:
            # Twisted closes a connection whose factory builds no protocol: nothing is allocated.
            self.limits.drop(reason, "WebSocket connection from {host} refused: {reason}", host=host)
            return None
        proto = super().buildProtocol(addr)
        proto.tcp_host = host
        return proto

    def protocol_opened(self, proto: JsonRpcServerProtocol) -> None:
        self.protocols.add(proto)

    def protocol_closed(self, proto: JsonRpcServerProtocol) -> None:
        self.protocols.discard(proto)
        if not self.protocols:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def wait_closed(self, timeout: float = STOP_WAIT) -> Deferred[None]:
        """Fires once every socket of this factory is closed, or after ``timeout`` seconds
        (the remaining ones are then dropped). Sockets not yet upgraded are dropped at once:
        the controller only closes the open ones."""
        for proto in list(self.protocols):
            if proto.state == proto.STATE_CONNECTING:
                proto.dropConnection(abort=True)
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._all_closed.append(d)

        def give_up() -> None:
            for proto in list(self.protocols):
                proto.dropConnection(abort=True)
            if not d.called:
                self._all_closed.remove(d)
                d.callback(None)

        call = self.reactor.callLater(timeout, give_up)
        return d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])


class WsListenerService(StreamServerEndpointService):
    """Listens; on stop, stops accepting and waits (bounded) until the sockets are closed, so that
    the reactor does not exit with their close frames (1001) still unsent."""

    factory: JsonRpcServerFactory

    def stopService(self) -> Deferred[Any]:  # noqa: N802
        stopped = super().stopService()
        waits = [self.factory.wait_closed()]
        if stopped is not None:
            waits.insert(0, stopped)
        return DeferredList(waits, consumeErrors=True)


def make_ws_factory(
    controller: Controller,
    ws_config: WebSocketConfig,
    url: str | None = None,
    *,
    reactor: Any = None,
    trust_x_forwarded_for: int = 0,
    limits: SocketLimits | None = None,
) -> JsonRpcServerFactory:
    """The factory to listen with. ``url`` is the public URL (``wss://host/ws``), informative;
    ``trust_x_forwarded_for`` is how many proxy hops may set X-Forwarded-For (0: none);
    ``limits`` is shared by the listeners of one node (a new one when None)."""
    return JsonRpcServerFactory(
        controller,
        ws_config,
        url,
        reactor=reactor,
        trust_x_forwarded_for=trust_x_forwarded_for,
        limits=limits,
    )


def ws_endpoint_descriptions(ws_config: WebSocketConfig) -> list[str]:
    """The Twisted endpoint strings to listen on: ``listen`` and, when set, ``tls_listen``."""
    return [d for d in (ws_config.listen, ws_config.tls_listen) if d]


def ws_endpoints(reactor: Any, ws_config: WebSocketConfig) -> list[IStreamServerEndpoint]:
    """Server endpoints for :func:`ws_endpoint_descriptions` (``endpoint.listen(factory)``)."""
    return [serverFromString(reactor, d) for d in ws_endpoint_descriptions(ws_config)]
