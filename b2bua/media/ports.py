"""UDP port pairs for RTP (even) and RTCP (odd) from the configured range."""

from __future__ import annotations

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorUDP
from twisted.internet.protocol import DatagramProtocol


class NoPortsAvailable(Exception):
    """Every pair in the range is taken."""


class PortPool:
    """Hands out bound RTP/RTCP socket pairs, round-robin so a freed pair rests before reuse."""

    def __init__(self, reactor: IReactorUDP, host: str, low: int, high: int) -> None:
        if low % 2:
            low += 1
        if high <= low:
            raise ValueError(f"empty RTP port range {low}-{high}")
        self.reactor = reactor
        self.host = host
        self.low = low
        self.high = high
        self._next = low
        self.in_use: set[int] = set()

    @property
    def capacity(self) -> int:
        return (self.high - self.low + 1) // 2

    def bind_pair(
        self, rtp: DatagramProtocol, rtcp: DatagramProtocol
    ) -> tuple[IListeningPort, IListeningPort]:
        """Listen with ``rtp`` on an even port and ``rtcp`` on the next; raises NoPortsAvailable."""
        for _ in range(self.capacity):
            port = self._next
            self._next = port + 2 if port + 3 <= self.high else self.low
            if port in self.in_use:
                continue
            try:
                rtp_port = self.reactor.listenUDP(port, rtp, interface=self.host)
            except CannotListenError:
                continue
            try:
                rtcp_port = self.reactor.listenUDP(port + 1, rtcp, interface=self.host)
            except CannotListenError:
                rtp_port.stopListening()
                continue
            self.in_use.add(port)
            return rtp_port, rtcp_port
        raise NoPortsAvailable(f"no free RTP port pair in {self.low}-{self.high}")

    def release(self, port: int) -> None:
        self.in_use.discard(port)
