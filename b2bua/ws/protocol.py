"""The autobahn WebSocket protocol of the signalling channel.

It only frames and parses: ``onConnect`` refuses wrong paths (404) and origins (403) with
``ConnectionDeny``; each text frame is parsed by :func:`b2bua.ws.jsonrpc.parse_frame` and handed
to the controller (``factory.controller``); frames that do not parse are answered here with the
JSON-RPC error. Binary frames are answered with ``-32600 bad_request`` and the socket stays open.
Oversized messages are refused by autobahn itself (close code 1009, see the factory options).

Limits (see :mod:`b2bua.ws.factory`): the login deadline (close code 4002, ``login_timeout``) and
the bound on what is queued for a peer that does not read (the socket is aborted). Our own log lines
go to the module's logger: autobahn's ``self.log`` is its own level-filtered logger, and must not
be replaced by a plain ``twisted.logger.Logger``, which would pass its debug lines (dozens per
connection) to the log.

The protocol is also the controller's :class:`~b2bua.call.interfaces.Channel` for this socket
(``peer_host``, ``send_result``, ``send_error``, ``send_event``, ``close``).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import ConnectionDeny, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

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

__all__ = ["JsonRpcServerProtocol", "origin_allowed", "peer_host", "CLOSE_LOGIN_TIMEOUT"]

log = Logger()

#: Close code and reason for a socket that did not log in or resume within ``login_deadline``.
CLOSE_LOGIN_TIMEOUT = 4002

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


@implementer(IPushProducer)
class _SendBuffer:
    """Registered on the transport: Twisted pauses it while the socket's write buffer is over
    64 KiB (the peer does not read fast enough) and resumes it once the buffer is empty.

    While paused we also stop reading from the peer: a client that does not read its answers
    cannot make us compute more of them (TCP back-pressure bounds its requests, and the CPU they
    cost, to what fits in the socket buffers). Only what we send on our own (events) can then
    grow the backlog, up to ``max_send_buffer``."""

    __slots__ = ("proto",)

    def __init__(self, proto: JsonRpcServerProtocol) -> None:
        self.proto = proto

    def pauseProducing(self) -> None:  # noqa: N802
        # Twisted calls this again on every write while the buffer stays full
        proto = self.proto
        if not proto.send_paused:
            proto.send_paused = True
            proto.backlog = 0
            proto.transport.pauseProducing()

    def resumeProducing(self) -> None:  # noqa: N802
        proto = self.proto
        if proto.send_paused:
            proto.send_paused = False
            proto.backlog = 0
            if not proto.deaf:
                proto.transport.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802
        pass


class JsonRpcServerProtocol(WebSocketServerProtocol):
    """One client socket. ``self.factory`` is a :class:`~b2bua.ws.factory.JsonRpcServerFactory`."""

    factory: JsonRpcServerFactory

    def __init__(self) -> None:
        super().__init__()
        self.peer_host = "?"
        self.tcp_host = "?"  # the address the factory counts this socket under (set by buildProtocol)
        self.unauthenticated = False
        self.send_paused = False
        self.deaf = False  # closed for flooding: never read again
        self.backlog = 0  # bytes queued while paused
        self._client: Client | None = None
        self._deadline: Any = None

    # --- Twisted hooks ---------------------------------------------------------------------------
    def connectionMade(self) -> None:  # noqa: N802
        super().connectionMade()
        self.factory.protocol_opened(self)
        self._set_unauthenticated(True)
        self.transport.registerProducer(_SendBuffer(self), True)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self._set_unauthenticated(False)
        try:
            super().connectionLost(reason)
        finally:
            self.factory.protocol_closed(self)

    # --- autobahn hooks --------------------------------------------------------------------------
    def onConnect(self, request: ConnectionRequest) -> None:
        self.peer_host = peer_host(request.peer)
        if request.path != self.factory.path:
            log.info("refused {peer}: wrong path", peer=self.peer_host)
            raise ConnectionDeny(ConnectionDeny.NOT_FOUND, "not found")
        origin = request.headers.get("origin")
        if not origin_allowed(origin, self.factory.allowed_origins):
            log.info("refused {peer}: origin {origin!r} not allowed", peer=self.peer_host,
                     origin=(origin or "")[:100])
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        return None

    def onOpen(self) -> None:
        self._client = self.factory.controller.connection_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        client = self._client
        if client is None:  # pragma: no cover - autobahn only delivers messages once open
            return
        if self.state != self.STATE_OPEN:
            return  # closing: autobahn still hands over what it reads; nothing is answered now
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
        self._update_authenticated()

    def send_error(self, request_id: JsonId | None, error: RpcError) -> None:
        self._send(error_frame(request_id, error))
        self._update_authenticated()

    def send_event(self, method: str, params: dict[str, Any]) -> None:
        self._send(notification_frame(method, params))

    def close(self, code: int, reason: str, stop_reading: bool = False) -> None:
        # sendCloseFrame rather than sendClose, which refuses 1001 (going away) from a server.
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode("utf-8")[:123], isReply=False)
        if stop_reading and not self.deaf and self.transport is not None:
            # a flooder: its frames are not even parsed any more; the close frame still drains
            # to a peer that reads, and the close handshake timeout aborts one that does not
            self.deaf = True
            self.transport.pauseProducing()

    # --- helpers ---------------------------------------------------------------------------------
    def _send(self, text: str) -> None:
        if self.state == self.STATE_OPEN:
            data = text.encode("utf-8")
            if self.send_paused:
                self.backlog += len(data)
                if self.backlog > self.factory.max_send_buffer:
                    self._drop_slow()
                    return
            self.sendMessage(data, isBinary=False)

    def _drop_slow(self) -> None:
        """The peer stopped reading: abort, which frees everything queued for it."""
        self.factory.limits.drop(
            "send_buffer",
            "WebSocket {peer} dropped ({reason}): {backlog} bytes queued while it does not read",
            peer=self.peer_host,
            backlog=self.backlog,
        )
        self.dropConnection(abort=True)

    # --- login deadline and the unauthenticated count --------------------------------------------
    def _logged_in(self) -> bool:
        client = self._client
        session = None if client is None else client.session
        return session is not None and session.state == "active"

    def _update_authenticated(self) -> None:
        """After a result or error: a login/resume that succeeded ends the unauthenticated time, a
        logout starts it again."""
        if self.unauthenticated:
            if self._logged_in():
                self._set_unauthenticated(False)
        elif self._client is not None and self._client.session is None and self.state == self.STATE_OPEN:
            self._set_unauthenticated(True)

    def _set_unauthenticated(self, value: bool) -> None:
        if value == self.unauthenticated:
            return
        self.unauthenticated = value
        limits = self.factory.limits
        if value:
            limits.add(self.tcp_host)
            self._arm_deadline()
        else:
            limits.remove(self.tcp_host)
            deadline, self._deadline = self._deadline, None
            if deadline is not None and deadline.active():
                deadline.cancel()

    def _arm_deadline(self) -> None:
        self._deadline = self.factory.reactor.callLater(self.factory.login_deadline, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self._logged_in():
            self._set_unauthenticated(False)
            return
        client = self._client
        if client is not None and client.session is not None:  # a login still in progress
            self._arm_deadline()
            return
        self.factory.limits.drop(
            "login_deadline",
            "WebSocket {peer} closed ({reason}): not logged in within {secs} s",
            peer=self.peer_host if self.peer_host != "?" else self.tcp_host,
            secs=self.factory.login_deadline,
        )
        if self.state == self.STATE_OPEN:
            self.close(CLOSE_LOGIN_TIMEOUT, "login_timeout")
        else:
            self.dropConnection(abort=True)

    def _reject(self, error: RpcError) -> None:
        self.factory.controller.frame_rejected(self._client, error)
        self.send_error(error.request_id, error)
