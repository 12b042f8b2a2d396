"""The WebSocket server factory and its listening endpoints.

``make_ws_factory(controller, ws_config, url)`` builds the factory; listen with
``ws_endpoints(reactor, ws_config)`` (one plain endpoint, plus a TLS one when ``tls_listen`` is
set) or hand :func:`ws_endpoint_descriptions` to ``twisted.application.strports.service``.

Origins are checked in the protocol's ``onConnect`` (403 with a clear reason), not by autobahn,
whose own check compares ``scheme://host:port`` with the port always spelled out; autobahn's
``allowedOrigins`` is therefore left at ``["*"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint

from b2bua.ws.protocol import JsonRpcServerProtocol

if TYPE_CHECKING:
    from b2bua.call.controller import Controller
    from b2bua.config import WebSocketConfig

__all__ = ["JsonRpcServerFactory", "make_ws_factory", "ws_endpoint_descriptions", "ws_endpoints"]

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
    ) -> None:
        super().__init__(url, reactor=reactor)
        self.controller = controller
        self.path = ws_config.path
        self.allowed_origins = list(ws_config.allowed_origins)
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


def make_ws_factory(
    controller: Controller,
    ws_config: WebSocketConfig,
    url: str | None = None,
    *,
    reactor: Any = None,
    trust_x_forwarded_for: int = 0,
) -> JsonRpcServerFactory:
    """The factory to listen with. ``url`` is the public URL (``wss://host/ws``), informative;
    ``trust_x_forwarded_for`` is how many proxy hops may set X-Forwarded-For (0: none)."""
    return JsonRpcServerFactory(
        controller, ws_config, url, reactor=reactor, trust_x_forwarded_for=trust_x_forwarded_for
    )


def ws_endpoint_descriptions(ws_config: WebSocketConfig) -> list[str]:
    """The Twisted endpoint strings to listen on: ``listen`` and, when set, ``tls_listen``."""
    return [d for d in (ws_config.listen, ws_config.tls_listen) if d]


def ws_endpoints(reactor: Any, ws_config: WebSocketConfig) -> list[IStreamServerEndpoint]:
    """Server endpoints for :func:`ws_endpoint_descriptions` (``endpoint.listen(factory)``)."""
    return [serverFromString(reactor, d) for d in ws_endpoint_descriptions(ws_config)]
