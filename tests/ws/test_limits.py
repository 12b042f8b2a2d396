"""WebSocket limits (issue 12): the login deadline, the caps on unauthenticated sockets, the bound
on what is queued for a peer that does not read, and autobahn's log level.

Real loopback sockets and autobahn clients; the login deadline runs on a ``task.Clock``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.logger import globalLogPublisher

from b2bua.metrics import Registry
from tests.ws.test_protocol import TIMEOUT, Server, _tick, login


@pytest_twisted.async_yield_fixture
async def limited():
    servers: list[Server] = []

    async def make(**options: Any) -> Server:
        srv = Server(clock=task.Clock(), metrics=Registry(), **options)
        await srv.start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        await srv.stop()


async def _until(predicate: Any, what: str) -> None:
    for _ in range(300):  # 3 s at most
        if predicate():
            return
        await _tick()
    raise AssertionError(f"timed out waiting for {what}")


async def _refused(server: Server) -> bool:
    """Whether a new connection is closed before its WebSocket handshake."""
    try:
        await server.connect()
    except ConnectionError:
        return True
    return False


@pytest_twisted.ensureDeferred
async def test_login_deadline_closes_with_4002(limited):
    server = await limited(login_deadline=10.0)
    clock = server.factory.reactor
    idle = await server.connect()
    user = await server.connect()
    await login(server, user)
    clock.advance(9.9)
    assert not idle.closed.called
    clock.advance(0.2)
    _clean, code, reason = await idle.closed.addTimeout(TIMEOUT, reactor)
    assert (code, reason) == (4002, "login_timeout")
    assert server.factory.limits.dropped["login_deadline"] == 1
    answer = await user.call("ping", rid=5)  # the logged-in socket is not touched
    assert answer["id"] == 5


@pytest_twisted.ensureDeferred
async def test_login_deadline_waits_for_a_login_in_progress(limited):
    server = await limited(login_deadline=10.0)
    clock = server.factory.reactor
    client = await server.connect()
    client.sendMessage(json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "login", "params": {"user": "1000", "password": "pw"}}
    ).encode())
    await _until(lambda: server.stack.registrations, "the REGISTER")
    clock.advance(10.1)  # the PBX has not answered yet: the login's own timeout applies
    await _tick()
    assert not client.closed.called
    server.stack.last.succeed(120)
    assert "result" in await client.next_json()
    assert (await client.next_json())["method"] == "registered"
    clock.advance(100)
    await _tick()
    assert not client.closed.called and server.factory.limits.total == 0
    # after logout the socket must log in again within the deadline
    assert (await client.call("logout", rid=2))["result"] == {}
    assert server.factory.limits.total == 1
    clock.advance(10.1)
    _clean, code, _reason = await client.closed.addTimeout(TIMEOUT, reactor)
    assert code == 4002


@pytest_twisted.ensureDeferred
async def test_unauthenticated_sockets_capped_per_address_and_in_total(limited):
    server = await limited(max_unauthenticated_per_address=2, max_unauthenticated=3)
    a, b = await server.connect(), await server.connect()
    assert await _refused(server)
    assert server.factory.limits.dropped["too_many_from_address"] == 1
    await login(server, a)  # a logged-in socket no longer counts
    c = await server.connect()
    assert server.factory.limits.per_address == {"127.0.0.1": 2}
    b.sendClose(1000)
    await b.closed.addTimeout(TIMEOUT, reactor)
    await _until(lambda: server.factory.limits.total == 1, "the close to be counted")
    # the total cap, with the per-address one raised
    server.factory.limits.max_per_address = 100
    server.factory.limits.max_unauthenticated = 2
    await server.connect()
    assert await _refused(server)
    assert server.factory.limits.dropped["too_many_unauthenticated"] == 1
    assert (await a.call("ping", rid=3))["id"] == 3 and c.state == c.STATE_OPEN


@pytest_twisted.ensureDeferred
async def test_peer_that_does_not_read_is_dropped(limited):
    """A logged-in client stops reading; events keep coming. Beyond max_send_buffer on top of
    Twisted's 64 KiB the socket is aborted and what was queued for it is freed."""
    server = await limited(max_send_buffer=200_000)
    client = await server.connect()
    await login(server, client)
    (proto,) = server.factory.protocols
    client.transport.pauseProducing()  # the client stops reading
    event = {"text": "x" * 900}  # the test server's max_message_size is 1024
    sent = 0
    for _ in range(500):  # at most ~47 MB
        for _ in range(100):
            proto.send_event("info", event)
            sent += 1
        assert proto.backlog <= 200_000 + 1000
        if proto.state == proto.STATE_CLOSED:
            break
        await _tick()
    assert proto.state == proto.STATE_CLOSED, sent
    assert server.factory.limits.dropped["send_buffer"] == 1
    await _until(lambda: proto not in server.factory.protocols, "the abort")
    assert not proto.transport.connected
    client.transport.resumeProducing()
    await client.closed.addTimeout(TIMEOUT, reactor)
    await server.assert_still_serving()


@pytest_twisted.ensureDeferred
async def test_connect_and_close_log_no_autobahn_debug_lines(limited):
    server = await limited()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        client = await server.connect()
        assert (await client.call("ping"))["id"] == 1
        client.sendClose(1000)
        await client.closed.addTimeout(TIMEOUT, reactor)
        await _until(lambda: not server.factory.protocols, "the server side to close")
    finally:
        globalLogPublisher.removeObserver(events.append)
    debug = [e for e in events if e.get("log_level") is not None and e["log_level"].name == "debug"]
    assert debug == [], [e.get("log_format") for e in debug][:5]


def test_limit_config_is_validated() -> None:
    from b2bua.config import ConfigError, RtmpConfig, WebSocketConfig

    with pytest.raises(ConfigError, match="websocket.login_deadline"):
        WebSocketConfig(login_deadline=0)
    with pytest.raises(ConfigError, match="rtmp.max_connections_per_address"):
        RtmpConfig(max_connections_per_address=-1)


@pytest_twisted.ensureDeferred
async def test_requests_of_a_peer_that_does_not_read_are_not_read(limited):
    """A client that floods requests without reading the answers: once its answers fill the
    socket, the server stops reading it (back-pressure) instead of computing more answers."""
    import socket

    # no request rate limit here: back-pressure alone
    server = await limited(max_send_buffer=10_000_000, requests_per_minute=0)
    client = await server.connect()
    await login(server, client)
    (proto,) = server.factory.protocols
    client.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    proto.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.transport.pauseProducing()
    frame = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    for _ in range(100):
        for _ in range(100):
            client.sendMessage(frame)
        await _tick()
        if proto.send_paused:
            break
    assert proto.send_paused
    assert proto.transport not in reactor.getReaders()  # no longer read
    assert proto.state == proto.STATE_OPEN  # nothing of ours queued beyond the bound: kept
    client.transport.resumeProducing()
    await _until(lambda: not proto.send_paused, "the answers to drain")
    assert proto.transport in reactor.getReaders()


@pytest_twisted.ensureDeferred
async def test_a_request_flood_is_answered_rate_limited_then_closed_and_no_longer_read(limited):
    """requests_per_minute 60: a burst of 10 pings answered, then rate_limited answers; a whole
    burst more of them and the socket is closed with 4003 and not read any more, so the rest
    of the flood costs the reactor nothing (frames are not even parsed)."""
    server = await limited(requests_per_minute=60)
    client = await server.connect()
    other = await server.connect()
    frame = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    for _ in range(300):
        client.sendMessage(frame)
    _clean, code, reason = await client.closed.addTimeout(TIMEOUT, reactor)
    assert (code, reason) == (4003, "rate_limited")
    answers = [json.loads(payload) for payload, _ in client.messages.pending]
    results = [a for a in answers if "result" in a]
    refused = [a for a in answers if "error" in a]
    assert len(results) == 10
    assert len(refused) == 10 and refused[0]["error"]["data"]["reason"] == "rate_limited"
    assert (await other.call("ping", rid=9))["id"] == 9  # another socket has its own budget
