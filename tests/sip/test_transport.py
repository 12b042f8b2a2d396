"""SipTransport's UDP socket: its receive buffer is enlarged at start (bursts must not be dropped)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from b2bua.sip.transport import UDP_RECEIVE_BUFFER, SipTransport, _grow_receive_buffer


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
