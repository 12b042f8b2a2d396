"""Guards for the Twisted internals the gateway relies on for speed (issue 12).

pyproject.toml pins Twisted to the versions these tests passed on. Before raising that pin, run
this module against the new Twisted: each failure says which private attribute or behaviour moved
and which of our functions depends on it. Everything runs on the real reactor with a real UDP
port and a real TCP connection on loopback, no doubles.

What we use, and where:

* ``twisted.internet.udp.Port`` subclassed with ``doRead`` overridden (``b2bua.media.ports.RtpPort``:
  one ``recvfrom`` per readiness event), reading ``self.socket``, ``self.maxPacketSize`` and
  ``self.protocol``, built as ``udp.Port(port, proto, interface, reactor=...)``;
* ``udp.Port.socket`` of a listening port, to send RTP without Twisted's per-packet address checks
  (``b2bua.media.leg.RtpSocket.send``);
* a TCP transport's ``socket``, ``TLS``, ``dataBuffer``, ``_tempDataBuffer``, ``disconnecting`` and
  ``connected``, to write media to RTMP players straight to the socket when Twisted holds nothing
  queued before it (``b2bua.rtmp.protocol.send_now``).
"""

from __future__ import annotations

import inspect
import socket

import pytest_twisted
from twisted.internet import defer, protocol, reactor, udp
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.posixbase import PosixReactorBase

from b2bua.media.leg import RtpSocket
from b2bua.media.ports import PortPool, RtpPort
from b2bua.rtmp.protocol import send_now
from tests.integration.helpers import wait_until

WHERE_RTP_PORT = "b2bua.media.ports.RtpPort (UDP reads for RTP/RTCP)"
WHERE_RTP_SEND = "b2bua.media.leg.RtpSocket.send (RTP writes)"
WHERE_SEND_NOW = "b2bua.rtmp.protocol.send_now (media to RTMP players)"


def broke(what: str, where: str) -> str:
    return f"Twisted changed: {what}. Used by {where}; fix it there before raising the Twisted pin."


class Collect(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        self.received.append((data, addr))


class CountingRtpPort(RtpPort):
    """RtpPort that counts the reactor's calls to its doRead override."""

    reads = 0

    def doRead(self) -> None:  # noqa: N802
        self.reads += 1
        super().doRead()


def _client() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    return s


# --- UDP --------------------------------------------------------------------------------------------


def test_udp_port_constructor_and_attributes() -> None:
    assert isinstance(reactor, PosixReactorBase), broke(
        "the default reactor is no longer a PosixReactorBase, so PortPool falls back to listenUDP "
        "and RtpPort is never used",
        WHERE_RTP_PORT,
    )
    params = list(inspect.signature(udp.Port.__init__).parameters)
    assert params[:4] == ["self", "port", "proto", "interface"] and "reactor" in params, broke(
        f"udp.Port.__init__ takes {params}, RtpPort is built as (port, proto, interface, reactor=)",
        WHERE_RTP_PORT,
    )
    assert "doRead" in IReadDescriptor.names(), broke("IReadDescriptor has no doRead", WHERE_RTP_PORT)
    proto = Collect()
    port = RtpPort(0, proto, "127.0.0.1", reactor=reactor)
    port.startListening()
    try:
        is_socket = isinstance(port.socket, socket.socket)
        assert is_socket, broke("udp.Port.socket is not the socket", WHERE_RTP_PORT)
        assert isinstance(port.maxPacketSize, int) and port.maxPacketSize >= 1500, broke(
            "udp.Port.maxPacketSize is gone or too small", WHERE_RTP_PORT
        )
        assert port.protocol is proto, broke("udp.Port.protocol is not the protocol", WHERE_RTP_PORT)
        transport_is_port = proto.transport is port
        assert transport_is_port, broke("a DatagramProtocol's transport is not its udp.Port", WHERE_RTP_SEND)
    finally:
        port.stopListening()


@pytest_twisted.inlineCallbacks
def test_reactor_calls_our_do_read_once_per_datagram() -> None:
    proto = Collect()
    port = CountingRtpPort(0, proto, "127.0.0.1", reactor=reactor)
    port.startListening()
    client = _client()
    try:
        target = port.getHost()
        for i in range(3):
            client.sendto(b"rtp%d" % i, ("127.0.0.1", target.port))
        yield wait_until(lambda: len(proto.received) == 3, timeout=5, interval=0.01, what="3 datagrams")
        assert port.reads >= 3, broke(
            f"the reactor delivered 3 datagrams with {port.reads} calls to the doRead override: "
            "udp.Port no longer reads through doRead",
            WHERE_RTP_PORT,
        )
        assert [d for d, _ in proto.received] == [b"rtp0", b"rtp1", b"rtp2"]
        assert proto.received[0][1] == client.getsockname()
    finally:
        client.close()
        yield defer.maybeDeferred(port.stopListening)


def test_our_do_read_takes_one_datagram_per_call() -> None:
    proto = Collect()
    port = RtpPort(0, proto, "127.0.0.1", reactor=reactor)
    port.startListening()
    reactor.removeReader(port)  # drive doRead by hand
    client = _client()
    try:
        for i in range(2):
            client.sendto(b"x%d" % i, ("127.0.0.1", port.getHost().port))
        port.doRead()
        assert [d for d, _ in proto.received] == [b"x0"], broke(
            "RtpPort.doRead did not read exactly one datagram from self.socket", WHERE_RTP_PORT
        )
        port.doRead()
        port.doRead()  # nothing left: EAGAIN is swallowed
        assert [d for d, _ in proto.received] == [b"x0", b"x1"]
    finally:
        client.close()
        port.stopListening()


@pytest_twisted.inlineCallbacks
def test_port_pool_and_media_socket_send_through_the_port_socket() -> None:
    pool = PortPool(reactor, "127.0.0.1", 40000, 40999)
    rtp, rtcp = RtpSocket("rtp"), RtpSocket("rtcp")
    rtp_port, rtcp_port = pool.bind_pair(rtp, rtcp)
    client = _client()
    try:
        assert type(rtp_port) is RtpPort, broke("PortPool did not listen with RtpPort", WHERE_RTP_PORT)
        rtp.send(b"hello", client.getsockname())
        data, addr = client.recvfrom(100)
        assert (data, addr[1]) == (b"hello", rtp_port.getHost().port), broke(
            "transport.socket.sendto of a listening udp.Port did not send", WHERE_RTP_SEND
        )
        assert rtp.errors == rtp.dropped == 0
        got: list[bytes] = []
        rtp.handler = lambda data, addr: got.append(data)
        client.sendto(b"back", ("127.0.0.1", rtp_port.getHost().port))
        yield wait_until(lambda: got, timeout=5, interval=0.01, what="a datagram through RtpPort")
        assert got == [b"back"]
    finally:
        client.close()
        yield defer.maybeDeferred(rtp_port.stopListening)
        yield defer.maybeDeferred(rtcp_port.stopListening)


# --- TCP --------------------------------------------------------------------------------------------


class Server(protocol.Protocol):
    def connectionMade(self) -> None:  # noqa: N802
        self.factory.connected.callback(self)  # type: ignore[attr-defined]


class Client(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data


@pytest_twisted.inlineCallbacks
def test_tcp_transport_buffers_and_send_now() -> None:
    factory = protocol.ServerFactory()
    factory.protocol = Server
    factory.connected = defer.Deferred()  # type: ignore[attr-defined]
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = Client()
    connector = protocol.ClientCreator(reactor, lambda: client)
    try:
        yield connector.connectTCP("127.0.0.1", listening.getHost().port)
        server = yield factory.connected
        t = server.transport
        for name, ok in (
            ("socket", isinstance(getattr(t, "socket", None), socket.socket)),
            ("TLS", getattr(t, "TLS", None) is False),
            ("dataBuffer", getattr(t, "dataBuffer", None) == b""),
            ("_tempDataBuffer", getattr(t, "_tempDataBuffer", None) == []),
            ("disconnecting", hasattr(t, "disconnecting") and not t.disconnecting),
            ("connected", bool(getattr(t, "connected", False))),
        ):
            assert ok, broke(f"a fresh TCP transport's {name!r} is missing or not as it was", WHERE_SEND_NOW)

        # write() queues in _tempDataBuffer/dataBuffer until the reactor's next write: send_now must
        # see that and queue behind it, or the player would get bytes out of order
        t.write(b"queued-")
        assert t._tempDataBuffer or t.dataBuffer, broke(
            "transport.write() no longer shows in _tempDataBuffer or dataBuffer", WHERE_SEND_NOW
        )
        send_now(t, b"after")
        yield wait_until(lambda: len(client.data) >= 12, timeout=5, interval=0.01, what="12 bytes")
        assert client.data == b"queued-after", broke(
            f"send_now overtook bytes queued by transport.write(): {client.data!r}", WHERE_SEND_NOW
        )
        yield wait_until(
            lambda: not (t._tempDataBuffer or t.dataBuffer), timeout=5, interval=0.01, what="empty buffers"
        )

        # nothing queued: send_now writes on the socket itself, Twisted's buffers stay empty
        send_now(t, b"-direct")
        assert t._tempDataBuffer == [] and t.dataBuffer == b"", broke(
            "with empty buffers send_now went through transport.write", WHERE_SEND_NOW
        )
        yield wait_until(lambda: client.data.endswith(b"-direct"), timeout=5, interval=0.01, what="the send")

        t.loseConnection()
        assert t.disconnecting, broke("loseConnection() does not set transport.disconnecting", WHERE_SEND_NOW)
    finally:
        if client.transport is not None:
            client.transport.loseConnection()
        yield defer.maybeDeferred(listening.stopListening)
