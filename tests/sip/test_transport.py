"""SipTransport: its UDP receive buffer is enlarged at start (bursts must not be dropped); on real
loopback sockets, the TCP limits for non-PBX addresses and the 505 for other SIP versions."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from b2bua.sip.transaction import Target
from b2bua.sip.transport import UDP_RECEIVE_BUFFER, SipTransport, TcpLimits, _grow_receive_buffer
from b2bua.wire.sip import parse_message


def _rmem_max() -> int:
    path = Path("/proc/sys/net/core/rmem_max")
    if not path.exists():
        pytest.skip("needs Linux's net.core.rmem_max")
    return int(path.read_text())


def _expected(size: int) -> int:
    return 2 * min(size, _rmem_max())  # Linux doubles the request, capped at rmem_max


class _Port:
    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def getHandle(self):  # noqa: N802
        return self.sock

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", "127.0.0.1", 5099)


class _Reactor(Clock):
    def __init__(self, port: _Port) -> None:
        super().__init__()
        self.port = port
        self.udp_calls: list[tuple] = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):  # noqa: N802, N803
        self.udp_calls.append((port, interface, maxPacketSize))
        return self.port


@pytest.fixture
def udp_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield s
    s.close()


def test_grow_receive_buffer_asks_the_kernel(udp_socket: socket.socket) -> None:
    size = 1 << 20
    granted = _grow_receive_buffer(_Port(udp_socket), size)
    assert granted == _expected(size)
    assert udp_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == granted


def test_grow_receive_buffer_never_lowers(udp_socket: socket.socket) -> None:
    udp_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    before = udp_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    assert _grow_receive_buffer(_Port(udp_socket), 4096) == before
    assert udp_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == before


def test_grow_receive_buffer_without_a_socket() -> None:
    assert _grow_receive_buffer(_Port(None), 1 << 20) is None
    assert _grow_receive_buffer(object(), 1 << 20) is None


def test_start_enlarges_the_udp_receive_buffer(udp_socket: socket.socket) -> None:
    default = udp_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    reactor = _Reactor(_Port(udp_socket))
    transport = SipTransport(reactor, "127.0.0.1", 0, lambda m, s: None, transports=("UDP",))
    transport.start()
    assert reactor.udp_calls and transport.port == 5099
    assert transport.udp_receive_buffer == UDP_RECEIVE_BUFFER
    assert transport.udp_receive_buffer_granted == _expected(UDP_RECEIVE_BUFFER)
    assert udp_socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == transport.udp_receive_buffer_granted
    if _rmem_max() > default:
        assert transport.udp_receive_buffer_granted > default


def test_start_with_a_chosen_buffer_size(udp_socket: socket.socket) -> None:
    transport = SipTransport(
        _Reactor(_Port(udp_socket)), "127.0.0.1", 0, lambda m, s: None, ("UDP",), udp_receive_buffer=300_000
    )
    transport.start()
    assert transport.udp_receive_buffer_granted == _expected(300_000)


# -- real loopback sockets: TCP limits, 505 (issue 12) -------------------------------------------------

BADVERS = (Path(__file__).parent.parent / "data" / "sip" / "badvers.sip").read_bytes()


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class _Client(protocol.Protocol):
    def __init__(self) -> None:
        self.open = False
        self.data = b""
        self.made: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:  # noqa: N802
        self.open = True
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data

    def connectionLost(self, reason) -> None:  # noqa: N802
        self.open = False
        self.lost.callback(None)


def connect(port: int, source: str) -> _Client:
    client = _Client()
    factory = protocol.ClientFactory.forProtocol(lambda: client)
    factory.noisy = False
    reactor.connectTCP("127.0.0.1", port, factory, timeout=5, bindAddress=(source, 0))
    return client


@pytest.fixture
def sip_transport():
    """A SipTransport on real loopback sockets; 127.0.0.1 is the PBX's address."""
    started = []
    events: list[str] = []

    def make(**limits) -> SipTransport:
        t = SipTransport(
            reactor,
            "127.0.0.1",
            0,
            lambda m, s: None,
            is_trusted=lambda host: host == "127.0.0.1",
            limits=TcpLimits(**limits),
            on_tcp_event=events.append,
        )
        t.events = events
        t.start()
        started.append(t)
        return t

    yield make
    for t in started:
        pytest_twisted.blockon(t.stop())


def _options(transport: str) -> bytes:
    return (
        f"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} 127.0.0.2:9;branch=z9hG4bKo1\r\n"
        "From: <sip:a@127.0.0.2>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: o1@t\r\n"
        "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@pytest_twisted.inlineCallbacks
def test_tcp_strangers_limited_per_address_and_in_total_pbx_never_starved(sip_transport):
    t = sip_transport(max_inbound=5, max_per_address=3, first_message_timeout=30, idle_timeout=30)
    port = t.port
    flood = [connect(port, "127.0.0.2") for _ in range(20)]
    yield sleep(0.5)
    assert sum(c.open for c in flood) == 3  # per address
    assert t.tcp_counts() == {"pbx": 0, "other": 3}
    more = [connect(port, "127.0.0.3") for _ in range(5)]
    yield sleep(0.5)
    assert sum(c.open for c in more) == 2  # in total
    assert t.tcp_counts() == {"pbx": 0, "other": 5}
    assert t.events.count("per_address") == 17 and t.events.count("total") == 3
    # the PBX's own connections are counted apart: accepted while strangers fill their pool
    pbx = [connect(port, "127.0.0.1") for _ in range(3)]
    yield defer.DeferredList([c.made for c in pbx])
    yield sleep(0.2)
    assert all(c.open for c in pbx) and t.tcp_counts() == {"pbx": 3, "other": 5}
    # and so is ours to the PBX (here a listener on 127.0.0.1 that records what it gets)
    got = defer.Deferred()
    server = protocol.ServerFactory.forProtocol(protocol.Protocol)
    server.noisy = False

    class Sink(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            if not got.called:
                got.callback(data)

    server.protocol = Sink
    listener = reactor.listenTCP(0, server, interface="127.0.0.1")
    try:
        t.send(parse_message(_options("TCP")), Target("TCP", "127.0.0.1", listener.getHost().port))
        data = yield got
        assert data.startswith(b"OPTIONS ")
        assert t.tcp_counts() == {"pbx": 4, "other": 5}
        assert t.tcp_connection_to("127.0.0.1", listener.getHost().port) == "connected"
    finally:
        yield listener.stopListening()
    # a stranger's slot frees when its connection closes
    flood_open = [c for c in flood if c.open]
    flood_open[0].transport.loseConnection()
    yield flood_open[0].lost
    yield sleep(0.2)
    assert t.tcp_counts()["other"] == 4
    late = connect(port, "127.0.0.2")
    yield sleep(0.3)
    assert late.open
    for c in flood + more + pbx + [late]:
        if c.open:
            c.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_tcp_first_message_deadline_and_idle_timeout(sip_transport):
    t = sip_transport(max_inbound=10, max_per_address=10, first_message_timeout=0.6, idle_timeout=1.2)
    silent = connect(t.port, "127.0.0.2")
    partial = connect(t.port, "127.0.0.2")  # trickles an incomplete message
    talker = connect(t.port, "127.0.0.2")  # one whole message, then silence
    pbx = connect(t.port, "127.0.0.1")  # the PBX's connection has the same first-message deadline
    yield defer.DeferredList([c.made for c in (silent, partial, talker, pbx)])
    partial.transport.write(_options("TCP")[:40])
    talker.transport.write(_options("TCP"))
    yield sleep(0.4)
    partial.transport.write(_options("TCP")[40:60])
    yield sleep(0.6)  # 1.0 s after connecting
    assert not silent.open and not partial.open and not pbx.open
    assert talker.open
    assert t.events.count("first_message_timeout") == 3
    yield sleep(1.0)  # idle past 1.2 s
    assert not talker.open
    assert t.events.count("idle_timeout") == 1
    assert t.tcp_counts() == {"pbx": 0, "other": 0}


@pytest_twisted.inlineCallbacks
def test_other_sip_version_over_udp_is_answered_505(sip_transport):
    """RFC 4475 §3.3.15: a SIP/7.0 request gets 505 Version Not Supported."""
    t = sip_transport()
    answers: defer.Deferred = defer.Deferred()

    class Peer(protocol.DatagramProtocol):
        def datagramReceived(self, data: bytes, addr) -> None:  # noqa: N802
            if not answers.called:
                answers.callback(data)

    peer = reactor.listenUDP(0, Peer(), interface="127.0.0.1")
    try:
        peer.write(BADVERS.replace(b"\n", b"\r\n"), ("127.0.0.1", t.port))
        answer = yield answers.addTimeout(3, reactor)
    finally:
        yield peer.stopListening()
    assert answer.startswith(b"SIP/2.0 505 Version Not Supported")
    assert b"\r\nVia: SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw\r\n" in answer
    assert b"\r\nCall-ID: badvers.31417@c.example.com\r\n" in answer


def test_messages_from_strangers_are_read_at_a_bounded_rate() -> None:
    """Beyond the budget a stranger's datagram is dropped before it is parsed or answered."""
    clock = Clock()
    handled: list[str] = []
    dropped: list[str] = []
    t = SipTransport(
        clock,
        "127.0.0.1",
        5070,
        lambda m, s: handled.append(s.host),
        ("UDP",),
        is_trusted=lambda host: host == "127.0.0.1",
        limits=TcpLimits(messages_per_second=30, messages_per_second_per_address=20),
        on_dropped=lambda s: dropped.append(s.host),
    )
    data = _options("UDP")
    for _ in range(100):
        t.datagram(data, Target("UDP", "127.0.0.2", 9))
        t.datagram(data, Target("UDP", "127.0.0.1", 5060))  # the PBX is never limited
    for _ in range(100):
        t.datagram(data, Target("UDP", "127.0.0.3", 9))
    t.datagram(b"garbage", Target("UDP", "127.0.0.4", 9))
    assert handled.count("127.0.0.2") == 20 and handled.count("127.0.0.3") == 10
    assert handled.count("127.0.0.1") == 100
    assert len(dropped) == 80 + 90 + 1
    clock.advance(1)
    t.datagram(data, Target("UDP", "127.0.0.2", 9))
    assert handled.count("127.0.0.2") == 21
