"""The WebSocket protocol over real loopback sockets, with a real autobahn client.

Each misbehaving client gets its clear answer and the server keeps serving the next client.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

from b2bua.call.controller import Controller
from b2bua.config import AuthConfig, WebSocketConfig
from b2bua.ws.factory import SocketLimits, make_ws_factory, ws_endpoint_descriptions
from b2bua.ws.protocol import origin_allowed, peer_host
from tests.call.test_controller import FakeStack

TIMEOUT = 5.0


class RecordingClient(WebSocketClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.messages: defer.DeferredQueue[Any] = defer.DeferredQueue()
        self.opened: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[tuple[bool, int | None, str | None]] = defer.Deferred()

    def onOpen(self) -> None:
        self.opened.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.put((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(reason))
        self.closed.callback((wasClean, code, reason))

    async def call(self, method: str, params: dict | None = None, rid: int = 1) -> dict:
        frame = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            frame["params"] = params
        self.sendMessage(json.dumps(frame).encode())
        return await self.next_json()

    async def next_json(self) -> dict:
        payload, is_binary = await self.messages.get().addTimeout(TIMEOUT, reactor)
        assert not is_binary
        return json.loads(payload)


class RawHttp(protocol.Protocol):
    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data and not self.done.called:
            self.done.callback(self.data)
            self.transport.loseConnection()

    def connectionLost(self, reason: object) -> None:
        if not self.done.called:
            self.done.callback(self.data)


class Server:
    """A listening gateway front (real controller, fake SIP stack) and the clients of one test."""

    def __init__(self, clock: Any = None, metrics: Any = None, **ws_options: Any) -> None:
        options: dict[str, Any] = {
            "listen": "tcp:0",
            "path": "/ws",
            "max_message_size": 1024,
            "allowed_origins": ["https://servicewechat.com", "http://localhost:*"],
        }
        options.update(ws_options)
        self.ws_config = WebSocketConfig(**options)
        self.stack = FakeStack()
        self.controller = Controller(reactor, self.ws_config, AuthConfig(), self.stack, None, None)
        # the login deadline runs on ``clock`` (the factory's reactor); autobahn's own timers and
        # the sockets on the real reactor
        limits = SocketLimits(
            self.ws_config.max_unauthenticated, self.ws_config.max_unauthenticated_per_address, metrics
        )
        self.factory = make_ws_factory(
            self.controller, self.ws_config, "ws://127.0.0.1/ws", reactor=clock, limits=limits
        )
        self.port: Any = None
        self.port_number = 0
        self.clients: list[RecordingClient] = []

    async def start(self) -> None:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port = await endpoint.listen(self.factory)
        self.port_number = self.port.getHost().port

    async def stop(self) -> None:
        for client in self.clients:
            if client.state == client.STATE_OPEN:
                client.sendClose(1000)
            try:
                await client.closed.addTimeout(TIMEOUT, reactor)
            except Exception:
                pass
        for _ in range(50):  # let the server side see the closes
            if not self.controller.clients:
                break
            await _tick()
        for session in list(self.controller.sessions):
            session.cancel_grace()
        await self.port.stopListening()

    async def connect(self, path: str = "/ws", origin: str | None = None) -> RecordingClient:
        url = f"ws://127.0.0.1:{self.port_number}{path}"
        factory = WebSocketClientFactory(url, origin=origin)
        factory.protocol = RecordingClient
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port_number)
        client: RecordingClient = await endpoint.connect(factory)
        self.clients.append(client)
        await client.opened.addTimeout(TIMEOUT, reactor)
        return client

    async def raw_handshake(self, path: str, origin: str | None) -> bytes:
        headers = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port_number}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ]
        if origin:
            headers.append(f"Origin: {origin}")
        raw = RawHttp(("\r\n".join(headers) + "\r\n\r\n").encode())
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port_number)
        await endpoint.connect(protocol.Factory.forProtocol(lambda: raw))
        return await raw.done.addTimeout(TIMEOUT, reactor)

    async def assert_still_serving(self) -> None:
        client = await self.connect()
        answer = await client.call("ping", rid=99)
        assert answer["id"] == 99
        assert isinstance(answer["result"]["pong"], int)


@pytest_twisted.async_yield_fixture
async def server():
    srv = Server()
    await srv.start()
    yield srv
    await srv.stop()


async def login(server: Server, client: RecordingClient, rid: int = 1) -> dict:
    frame = {"jsonrpc": "2.0", "id": rid, "method": "login", "params": {"user": "1000", "password": "pw"}}
    before = len(server.stack.registrations)
    client.sendMessage(json.dumps(frame).encode())
    while len(server.stack.registrations) == before:
        await _tick()
    server.stack.last.succeed(120)
    answer = await client.next_json()
    event = await client.next_json()
    assert event == {"jsonrpc": "2.0", "method": "registered", "params": {"user": "1000", "expires": 120}}
    return answer


# --- tests -------------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_ping(server):
    client = await server.connect()
    answer = await client.call("ping", rid="p1")
    assert (answer["jsonrpc"], answer["id"]) == ("2.0", "p1")
    assert server.controller.health()["connections"] == 1


@pytest_twisted.ensureDeferred
async def test_login_and_logout(server):
    client = await server.connect()
    answer = await login(server, client)
    assert answer["result"]["user"] == "1000"
    assert answer["result"]["expires"] == 120
    answer = await client.call("logout", rid=2)
    assert answer == {"jsonrpc": "2.0", "id": 2, "result": {}}


@pytest_twisted.ensureDeferred
async def test_malformed_json(server):
    client = await server.connect()
    client.sendMessage(b'{"jsonrpc": "2.0", "id": 1, "method": ')
    answer = await client.next_json()
    assert answer["id"] is None
    assert answer["error"]["code"] == -32700
    assert answer["error"]["data"]["reason"] == "parse_error"
    answer = await client.call("ping", rid=2)  # the same socket still works
    assert "result" in answer


@pytest_twisted.ensureDeferred
async def test_batch(server):
    client = await server.connect()
    client.sendMessage(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]')
    answer = await client.next_json()
    assert answer["error"]["code"] == -32600
    assert answer["error"]["data"]["reason"] == "bad_request"


@pytest_twisted.ensureDeferred
async def test_unknown_method(server):
    client = await server.connect()
    answer = await client.call("fly", rid=5)
    assert answer["id"] == 5
    assert answer["error"]["code"] == -32601
    assert answer["error"]["data"]["reason"] == "method_not_found"


@pytest_twisted.ensureDeferred
async def test_not_logged_in(server):
    client = await server.connect()
    answer = await client.call("logout", rid=6)
    assert answer["error"]["data"]["reason"] == "not_logged_in"


@pytest_twisted.ensureDeferred
async def test_binary_frame(server):
    client = await server.connect()
    client.sendMessage(b"\x00\x01\x02", isBinary=True)
    answer = await client.next_json()
    assert answer["error"]["code"] == -32600
    assert "binary" in answer["error"]["message"]
    answer = await client.call("ping", rid=2)
    assert "result" in answer


@pytest_twisted.ensureDeferred
async def test_oversized_message_closes_with_1009(server):
    client = await server.connect()
    big = {"jsonrpc": "2.0", "id": 1, "method": "ping", "x": "a" * 2000}
    client.sendMessage(json.dumps(big).encode())
    _clean, code, _reason = await client.closed.addTimeout(TIMEOUT, reactor)
    assert code == 1009
    await server.assert_still_serving()


@pytest_twisted.ensureDeferred
async def test_oversized_fragmented_message_closes_with_1009(server):
    client = await server.connect()
    client.beginMessage(isBinary=False)
    for _ in range(4):
        client.sendMessageFrame(b" " * 400)
    client.endMessage()
    _clean, code, _reason = await client.closed.addTimeout(TIMEOUT, reactor)
    assert code == 1009
    await server.assert_still_serving()


@pytest_twisted.ensureDeferred
async def test_wrong_path_is_404(server):
    response = await server.raw_handshake("/other", None)
    assert response.startswith(b"HTTP/1.1 404"), response[:80]
    await server.assert_still_serving()


@pytest_twisted.ensureDeferred
async def test_bad_origin_is_403(server):
    response = await server.raw_handshake("/ws", "https://evil.example")
    assert response.startswith(b"HTTP/1.1 403"), response[:80]
    await server.assert_still_serving()


@pytest_twisted.ensureDeferred
async def test_allowed_origin(server):
    client = await server.connect(origin="https://servicewechat.com")
    answer = await client.call("ping")
    assert "result" in answer


@pytest_twisted.ensureDeferred
async def test_client_refused_on_wrong_path(server):
    with pytest.raises(ConnectionError):
        await server.connect(path="/nope")


@pytest_twisted.ensureDeferred
async def test_socket_loss_then_resume_on_a_new_socket(server):
    client = await server.connect()
    sid = (await login(server, client))["result"]["session"]
    client.dropConnection(abort=True)
    await client.closed.addTimeout(TIMEOUT, reactor)
    while server.controller.sessions.get(sid).state != "detached":
        await _tick()
    other = await server.connect()
    answer = await other.call("resume", {"session": sid}, rid=3)
    assert answer["result"] == {
        "session": sid, "user": "1000", "state": "registered", "grace_period": 30.0, "calls": []
    }
    answer = await other.call("logout", rid=4)
    assert answer["result"] == {}


@pytest_twisted.ensureDeferred
async def test_resume_closes_the_old_socket_with_replaced(server):
    first = await server.connect()
    sid = (await login(server, first))["result"]["session"]
    second = await server.connect()
    answer = await second.call("resume", {"session": sid}, rid=2)
    assert answer["result"]["session"] == sid
    _clean, code, reason = await first.closed.addTimeout(TIMEOUT, reactor)
    assert (code, reason) == (4001, "replaced")
    answer = await second.call("logout", rid=3)
    assert answer["result"] == {}


async def _tick() -> None:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0.01, d.callback, None)
    await d


def test_origin_allowed() -> None:
    pats = ["https://servicewechat.com", "http://localhost:*"]
    assert origin_allowed(None, pats)
    assert origin_allowed("https://servicewechat.com", pats)
    assert origin_allowed("https://ServiceWechat.com:443", pats)
    assert origin_allowed("http://localhost:3000", pats)
    assert not origin_allowed("https://servicewechat.com.evil.example", pats)
    assert not origin_allowed("null", pats)
    assert origin_allowed("null", ["*"])
    assert origin_allowed("https://x.example", ["*"])
    assert origin_allowed("https://a.example.com", ["https://*.example.com"])


def test_peer_host() -> None:
    assert peer_host("tcp:127.0.0.1:5000") == "127.0.0.1"
    assert peer_host("tcp6:::1:5000") == "::1"
    assert peer_host("203.0.113.9") == "203.0.113.9"


def test_endpoint_descriptions() -> None:
    cfg = WebSocketConfig(tls_listen="ssl:8443:privateKey=k.pem:certKey=c.pem")
    assert ws_endpoint_descriptions(cfg) == [cfg.listen, cfg.tls_listen]
    assert ws_endpoint_descriptions(WebSocketConfig(listen="tcp:9999")) == ["tcp:9999"]


def test_factory_options() -> None:
    controller = Controller(reactor, WebSocketConfig(), AuthConfig(), FakeStack(), None, None)
    factory = make_ws_factory(controller, WebSocketConfig(max_message_size=4096, auto_ping_interval=7))
    assert factory.maxMessagePayloadSize == 4096
    assert factory.maxFramePayloadSize == 4096
    assert factory.autoPingInterval == 7
    assert factory.path == "/ws"


@pytest_twisted.ensureDeferred
async def test_shutdown_sends_unregistered_then_closes_with_1001(server):
    client = await server.connect()
    await login(server, client)
    idle = await server.connect()
    await server.controller.shutdown()
    event = await client.next_json()
    assert event["method"] == "unregistered"
    assert event["params"] == {"user": "1000", "reason": "shutdown"}
    for c in (client, idle):
        _clean, code, reason = await c.closed.addTimeout(TIMEOUT, reactor)
        assert (code, reason) == (1001, "shutdown")
