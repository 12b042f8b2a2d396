"""RTP port pairs and the one-datagram-per-event UDP port, on real loopback sockets."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol

from b2bua.media.ports import NoPortsAvailable, PortPool, RtpPort


class Collect(DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, data, addr) -> None:  # noqa: N802
        self.got.append((data, addr))


class Exploding(DatagramProtocol):
    def datagramReceived(self, data, addr) -> None:  # noqa: N802
        raise RuntimeError("handler bug")


def free_even_range(size: int = 4) -> int:
    for _ in range(50):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1] & ~1
        s.close()
        if 20000 < port < 60000:
            return port
    raise RuntimeError("no port")


def test_pairs_are_even_odd_real_rtp_ports_and_run_out() -> None:
    low = free_even_range()
    pool = PortPool(reactor, "127.0.0.1", low, low + 3)
    protos = [Collect() for _ in range(6)]
    ports = []
    try:
        a = pool.bind_pair(protos[0], protos[1])
        b = pool.bind_pair(protos[2], protos[3])
        ports += [*a, *b]
        assert all(isinstance(p, RtpPort) for p in ports)
        numbers = sorted(p.getHost().port for p in ports)
        assert numbers[0] % 2 == 0 and numbers == list(range(numbers[0], numbers[0] + 4))
        with pytest.raises(NoPortsAvailable):
            pool.bind_pair(protos[4], protos[5])
    finally:
        for p in ports:
            p.stopListening()


def test_one_datagram_per_read_event_and_nothing_queued_is_quiet() -> None:
    proto = Collect()
    port = RtpPort(0, proto, "127.0.0.1", reactor=reactor)
    port.startListening()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        target = ("127.0.0.1", port.getHost().port)
        for i in range(3):
            sender.sendto(b"p%d" % i, target)
        port.doRead()
        assert [d for d, _ in proto.got] == [b"p0"]  # the rest waits for the next poll
        port.doRead()
        port.doRead()
        assert [d for d, _ in proto.got] == [b"p0", b"p1", b"p2"]
        assert proto.got[0][1] == ("127.0.0.1", sender.getsockname()[1])
        port.doRead()  # EAGAIN: no exception, no datagram
        assert len(proto.got) == 3
    finally:
        sender.close()
        port.stopListening()


def test_a_failing_handler_does_not_break_the_port() -> None:
    port = RtpPort(0, Exploding(), "127.0.0.1", reactor=reactor)
    port.startListening()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"x", ("127.0.0.1", port.getHost().port))
        port.doRead()  # logged, not raised
        assert port.connected
    finally:
        sender.close()
        port.stopListening()
