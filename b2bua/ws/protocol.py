"""The autobahn WebSocket protocol of the signalling channel.

It only frames and parses: ``onConnect`` refuses wrong paths (404) and origins (403) with
``ConnectionDeny``; each text frame is parsed by :func:`b2bua.ws.jsonrpc.parse_frame` and handed
to the controller (``factory.controller``); frames that do not parse are answered here with the
JSON-RPC error. Binary frames are answered with ``-32600 bad_request`` and the socket stays open.
Oversized messages are refused by autobahn itself (close code 1009, see the factory options).

The protocol is also the controller's :class:`~b2bua.call.interfaces.Channel` for this socket
(``peer_host``, ``send_result``, ``send_error``, ``send_event``, ``close``).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import ConnectionDeny, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.logger import Logger

from b2bua.ws.jsonrpc import (
    JsonId,
    Notification,
    RpcError,
    error_frame,
    notification_frame,
    parse_frame,
    result_frame,
)

if TYPE_CHECKING:
    from b2bua.call.controller import Client
    from b2bua.ws.factory import JsonRpcServerFactory

__all__ = ["JsonRpcServerProtocol", "origin_allowed", "peer_host"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin_allowed(origin: str | None, patterns: list[str]) -> bool:
    """Whether an ``Origin`` header value is allowed by ``patterns`` (shell-style, ``*``).

    A missing header is allowed: only browsers send it, and a non-browser client could forge it
    anyway. Matching is case-insensitive against the origin as sent and without a default port,
    so ``https://servicewechat.com`` matches ``https://servicewechat.com:443`` and vice versa.
    """
    if origin is None:
        return True
    origin = origin.strip().lower()
    candidates = {origin}
    try:
        parts = urlsplit(origin)
        if parts.scheme and parts.hostname:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            candidates.add(f"{parts.scheme}://{host}")
            if port is not None:
                candidates.add(f"{parts.scheme}://{host}:{port}")
    except ValueError:
        pass
    return any(fnmatchcase(c, p.strip().lower()) for p in patterns for c in candidates)


def peer_host(peer: str) -> str:
    """The address part of autobahn's peer string (``tcp:1.2.3.4:5678``, ``tcp6:::1:5678``,
    or a bare address taken from a trusted X-Forwarded-For)."""
    for prefix in ("tcp4:", "tcp6:", "tcp:"):
        if peer.startswith(prefix):
            host, _, _port = peer[len(prefix) :].rpartition(":")
            return host or peer
    return peer


class JsonRpcServerProtocol(WebSocketServerProtocol):
    """One client socket. ``self.factory`` is a :class:`~b2bua.ws.factory.JsonRpcServerFactory`."""

    log = Logger()
    factory: JsonRpcServerFactory

    def __init__(self) -> None:
        super().__init__()
        self.peer_host = "?"
        self._client: Client | None = None

    # --- autobahn hooks --------------------------------------------------------------------------
    def onConnect(self, request: ConnectionRequest) -> None:
        self.peer_host = peer_host(request.peer)
        if request.path != self.factory.path:
            self.log.info("refused {peer}: wrong path", peer=self.peer_host)
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, "not found")
        origin = request.headers.get("origin")
        if not origin_allowed(origin, self.factory.allowed_origins):
            self.log.info("refused {peer}: origin {origin!r} not allowed", peer=self.peer_host,
                          origin=(origin or "")[:100])
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        return None

    def onOpen(self) -> None:
        self._client = self.factory.controller.connection_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        client = self._client
        if client is None:  # pragma: no cover - autobahn only delivers messages once open
            return
        if isBinary:
            self._reject(RpcError("bad_request", "binary frames are not supported; send JSON text frames"))
            return
        try:
            message = parse_frame(payload)
        except RpcError as error:
            self._reject(error)
            return
        if isinstance(message, Notification):
            self.factory.controller.notification_received(client, message)
        else:
            self.factory.controller.request_received(client, message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        client, self._client = self._client, None
        if client is not None:
            self.factory.controller.connection_lost(client)

    # --- Channel ---------------------------------------------------------------------------------
    def send_result(self, request_id: JsonId, result: Any) -> None:
        self._send(result_frame(request_id, result))

    def send_error(self, request_id: JsonId | None, error: RpcError) -> None:
        self._send(error_frame(request_id, error))

    def send_event(self, method: str, params: dict[str, Any]) -> None:
        self._send(notification_frame(method, params))

    def close(self, code: int, reason: str) -> None:
        # sendCloseFrame rather than sendClose, which refuses 1001 (going away) from a server.
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)

    # --- helpers ---------------------------------------------------------------------------------
    def _send(self, text: str) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(text.encode("utf-8"), isBinary=False)

    def _reject(self, error: RpcError) -> None:
        self.factory.controller.frame_rejected(self._client, error)
        self.send_error(error.request_id, error)
