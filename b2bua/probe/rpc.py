"""A JSON-RPC client over autobahn's Twisted WebSocket, as a mini-program talks to the gateway.

``ws://`` and ``wss://``; for ``wss`` the server certificate is verified against the system's
trust store (or ``ca_file``) and the host name, unless ``insecure``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from OpenSSL import SSL
from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

__all__ = ["RpcClient", "RpcFailure", "connect"]


class RpcFailure(Exception):
    """An error answer: ``reason`` is the gateway's stable ``data.reason``."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.code = error.get("code")
        self.message = error.get("message") or ""
        self.data: dict[str, Any] = error.get("data") or {}
        self.reason: str = self.data.get("reason") or "unknown"
        super().__init__(self.describe())

    def describe(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.data.items() if k != "reason")
        return f"{self.reason} ({self.code} {self.message}{'; ' + extra if extra else ''})"


class _Protocol(WebSocketClientProtocol):
    client: RpcClient

    def onOpen(self) -> None:  # noqa: N802
        self.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802,N803
        self.client._received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802,N803
        self.client._closed(code, reason)


class RpcClient:
    """One socket. ``on_event(name, params)`` sees every notification from the gateway."""

    def __init__(self, reactor, on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self.reactor = reactor
        self.on_event = on_event
        self.proto: _Protocol | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._opened_d: defer.Deferred[RpcClient] = defer.Deferred()
        self._pending: dict[int, defer.Deferred[Any]] = {}
        self._next_id = 0

    def request(self, method: str, params: dict[str, Any] | None = None) -> defer.Deferred[Any]:
        """The result, or a failure with :class:`RpcFailure` (or ConnectionError)."""
        if self.proto is None or self.close_code is not None:
            return defer.fail(ConnectionError(self._close_text()))
        self._next_id += 1
        d: defer.Deferred[Any] = defer.Deferred()
        self._pending[self._next_id] = d
        frame = {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params or {}}
        self.proto.sendMessage(json.dumps(frame).encode())
        return d

    def close(self) -> None:
        if self.proto is not None and self.close_code is None:
            self.proto.sendClose(1000)

    def _close_text(self) -> str:
        return f"socket closed ({self.close_code} {self.close_reason or ''})".strip()

    def _opened(self, proto: _Protocol) -> None:
        self.proto = proto
        self._opened_d.callback(self)

    def _received(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if "method" in msg and "id" not in msg:
            self.on_event(str(msg["method"]), msg.get("params") or {})
            return
        d = self._pending.pop(msg.get("id"), None)  # type: ignore[arg-type]
        if d is None:
            return
        if "error" in msg:
            d.errback(RpcFailure(msg["error"] or {}))
        else:
            d.callback(msg.get("result"))

    def _closed(self, code: int | None, reason: str | None) -> None:
        self.close_code = code if code is not None else 1006
        self.close_reason = reason
        error = ConnectionError(self._close_text())
        if not self._opened_d.called:
            self._opened_d.errback(error)
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(error)


@implementer(IOpenSSLClientConnectionCreator)
class _NoVerify:
    """TLS without any certificate check (``--insecure``), still sending SNI."""

    def __init__(self, hostname: str) -> None:
        self._context = ssl.CertificateOptions(verify=False).getContext()
        self._sni = None if _is_ip(hostname) else hostname.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol):  # noqa: N802,N803
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        connection.set_connect_state()
        return connection


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def connect(
    reactor,
    url: str,
    on_event: Callable[[str, dict[str, Any]], None],
    *,
    insecure: bool = False,
    ca_file: str | None = None,
    timeout: float = 10.0,
) -> defer.Deferred[RpcClient]:
    """Open ``url`` (``ws://`` or ``wss://``); fires with the client once the handshake is done."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    client = RpcClient(reactor, on_event)
    factory = WebSocketClientFactory(url)
    factory.setProtocolOptions(openHandshakeTimeout=timeout, maxMessagePayloadSize=0)
    endpoint = HostnameEndpoint(reactor, parts.hostname, port, timeout=timeout)
    if secure:
        if insecure:
            creator = _NoVerify(parts.hostname)
        elif ca_file:
            with open(ca_file, "rb") as f:
                trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(f.read())])
            creator = ssl.optionsForClientTLS(parts.hostname, trustRoot=trust)
        else:
            creator = ssl.optionsForClientTLS(parts.hostname)
        endpoint = wrapClientTLS(creator, endpoint)

    def build(addr):
        proto = factory.buildProtocol(addr)
        proto.client = client
        return proto

    factory.protocol = _Protocol
    wrapper = _Factory(build)
    d = endpoint.connect(wrapper)
    d.addCallback(lambda _: client._opened_d)
    return d


class _Factory:
    """An IProtocolFactory that builds the autobahn protocol with the client attached."""

    def __init__(self, build) -> None:
        self.buildProtocol = build  # noqa: N815

    def doStart(self) -> None:  # noqa: N802
        pass

    def doStop(self) -> None:  # noqa: N802
        pass
