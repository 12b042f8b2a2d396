"""UDP port pairs for RTP (even) and RTCP (odd) from the configured range."""

from __future__ import annotations

import errno

from twisted.internet import udp
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorUDP
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

log = Logger()
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ECONNREFUSED)


class RtpPort(udp.Port):
    """A UDP port that takes one datagram per readiness event.

    Twisted's ``doRead`` reads until the socket says EAGAIN: for RTP, where one packet arrives
    per 20 ms, that is a second ``recvfrom`` and a raised exception per packet. The reactor's
    poller is level-triggered, so anything still queued is reported again at the next poll.
    """

    def doRead(self) -> None:  # noqa: N802
        try:
            data, addr = self.socket.recvfrom(self.maxPacketSize)
        except OSError as e:
            if e.errno not in _AGAIN:  # ECONNREFUSED: an ICMP error from an earlier send
                log.info("RTP socket read failed: {e}", e=e)
            return
        if len(addr) > 2:  # IPv6: (host, port, flowinfo, scope_id)
            addr = addr[:2]
        try:
            self.protocol.datagramReceived(data, addr)
        except Exception:
            log.failure("RTP datagram handler failed")


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
                rtp_port = self._listen(port, rtp)
            except CannotListenError:
                continue
            try:
                rtcp_port = self._listen(port + 1, rtcp)
            except CannotListenError:
                rtp_port.stopListening()
                continue
            self.in_use.add(port)
            return rtp_port, rtcp_port
        raise NoPortsAvailable(f"no free RTP port pair in {self.low}-{self.high}")

    def _listen(self, port: int, protocol: DatagramProtocol) -> IListeningPort:
        if isinstance(self.reactor, PosixReactorBase):
            listening = RtpPort(port, protocol, self.host, reactor=self.reactor)
            listening.startListening()
            return listening
        return self.reactor.listenUDP(port, protocol, interface=self.host)  # test reactors

    def release(self, port: int) -> None:
        self.in_use.discard(port)
