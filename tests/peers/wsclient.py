"""An autobahn JSON-RPC client playing the mini-program, for tests and benchmarks."""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS


class RpcError(Exception):
    def __init__(self, error: dict):
        super().__init__(f"{error.get('code')} {error.get('message')} {error.get('data')}")
        self.code = error.get("code")
        self.data = error.get("data") or {}
        self.reason = self.data.get("reason")
        self.sip_status = self.data.get("sip_status")


class _Protocol(WebSocketClientProtocol):
    client: WsClient

    def onOpen(self) -> None:  # noqa: N802
        self.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:  # noqa: N802,N803
        self.client._message(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802,N803
        self.client._closed(code, reason)


class WsClient:
    """One WebSocket connection. ``events`` keeps every notification received, in order."""

    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url
        self.timeout = timeout
        self.proto: _Protocol | None = None
        self.events: list[tuple[str, dict]] = []
        self.raw: list[Any] = []  # every decoded frame
        self.close_code: int | None = None
        self.closed = defer.Deferred()
        self._next_id = 0
        self._pending: dict[Any, defer.Deferred] = {}
        self._event_waiters: list[tuple[str, defer.Deferred]] = []
        self._open = defer.Deferred()

    @classmethod
    @defer.inlineCallbacks
    def connect(
        cls,
        url: str,
        origin: str | None = None,
        timeout: float = 60.0,
        context_factory=None,
        bind_host: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        """Open ``url``; for ``wss://`` give ``context_factory`` (e.g. ``ssl.optionsForClientTLS(...)``).
        ``bind_host``: the local address to connect from (127.0.0.2 plays another machine);
        ``headers``: extra HTTP headers of the upgrade request."""
        if url.startswith("wss://") and context_factory is None:
            raise ValueError("wss:// needs a context_factory (TLS client options)")
        client = cls(url, timeout)
        factory = WebSocketClientFactory(url, origin=origin, headers=headers)
        factory.protocol = _Protocol
        factory.setProtocolOptions(openHandshakeTimeout=timeout, maxMessagePayloadSize=0)
        hostport = url.split("//", 1)[1].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        bind = (bind_host, 0) if bind_host else None
        endpoint = TCP4ClientEndpoint(reactor, host, int(port), timeout=timeout, bindAddress=bind)
        if context_factory is not None:
            endpoint = wrapClientTLS(context_factory, endpoint)

        def build(addr):
            proto = factory.buildProtocol(addr)
            proto.client = client
            return proto

        factory_wrapper = _Wrapper(build)
        yield endpoint.connect(factory_wrapper)
        yield client._open
        return client

    # -- sending -----------------------------------------------------------------------------------------
    def send_raw(self, data: str | bytes, binary: bool = False) -> None:
        payload = data.encode() if isinstance(data, str) else data
        self.proto.sendMessage(payload, isBinary=binary)

    def request(self, method: str, params: dict | None = None, id: Any = None) -> defer.Deferred:
        if id is None:
            self._next_id += 1
            id = self._next_id
        d = defer.Deferred()
        self._pending[id] = d
        frame: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
        if params is not None:
            frame["params"] = params
        self.send_raw(json.dumps(frame))
        d.addTimeout(self.timeout, reactor)
        return d

    def wait_event(self, name: str, timeout: float | None = None) -> defer.Deferred:
        """The next event of that name not yet consumed (already received ones count)."""
        for i, (n, params) in enumerate(self.events):
            if n == name:
                del self.events[i]
                return defer.succeed(params)
        d = defer.Deferred()
        self._event_waiters.append((name, d))
        d.addTimeout(timeout or self.timeout, reactor)
        return d

    def close(self, code: int = 1000) -> defer.Deferred:
        if self.proto is not None and self.close_code is None:
            self.proto.sendClose(code)
        return self.closed

    def drop(self) -> None:
        """Vanish without a close handshake, as a phone losing its network does."""
        if self.proto is not None:
            self.proto.transport.abortConnection()

    # -- receiving ---------------------------------------------------------------------------------------
    def _opened(self, proto: _Protocol) -> None:
        self.proto = proto
        self._open.callback(self)

    def _message(self, payload: bytes, binary: bool) -> None:
        msg = json.loads(payload)
        self.raw.append(msg)
        if "id" in msg and ("result" in msg or "error" in msg):
            d = self._pending.pop(msg["id"], None)
            if d is None:
                return
            if "error" in msg:
                d.errback(RpcError(msg["error"]))
            else:
                d.callback(msg["result"])
        elif "method" in msg:
            name, params = msg["method"], msg.get("params") or {}
            for i, (n, d) in enumerate(self._event_waiters):
                if n == name and not d.called:
                    del self._event_waiters[i]
                    d.callback(params)
                    return
            self.events.append((name, params))

    def _closed(self, code: int | None, reason: str | None) -> None:
        self.close_code = code if code is not None else 1006
        if not self._open.called:
            self._open.errback(ConnectionError(f"closed before open: {code} {reason}"))
        for d in self._pending.values():
            if not d.called:
                d.errback(ConnectionError(f"socket closed: {code} {reason}"))
        self._pending.clear()
        if not self.closed.called:
            self.closed.callback((code, reason))


class _Wrapper:
    """A minimal IProtocolFactory that builds through a closure (to attach the client)."""

    def __init__(self, build):
        self._build = build

    def buildProtocol(self, addr):  # noqa: N802
        return self._build(addr)

    def doStart(self):  # noqa: N802
        pass

    def doStop(self):  # noqa: N802
        pass

    def startedConnecting(self, connector):  # noqa: N802
        pass
