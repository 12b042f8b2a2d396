"""An authoritative DNS server for tests: twisted.names' own server, in-process, on loopback.

One zone held in memory, changed while the server runs (``set``/``remove``); every query is
recorded (``queries``) and ``fail = True`` answers SERVFAIL to everything.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IReactorUDP
from twisted.names import authority, common, dns, server


class Zone(authority.FileAuthority):
    """The records of one zone, by owner name; SOA minimum 1 s so negative answers expire fast."""

    def __init__(self, origin: str) -> None:
        common.ResolverBase.__init__(self)
        self.origin = origin.encode()
        self.soa = (
            self.origin,
            dns.Record_SOA(
                mname=b"ns." + self.origin,
                rname=b"admin." + self.origin,
                serial=1,
                refresh=60,
                retry=60,
                expire=1,
                minimum=1,
                ttl=1,
            ),
        )
        self.records: dict[bytes, list] = {}
        self.queries: list[tuple[str, str]] = []  # (name, type) as asked
        self.fail = False

    def set(self, name: str, *records) -> None:
        """Replace every record of ``name``."""
        self.records[name.lower().encode()] = list(records)

    def remove(self, name: str) -> None:
        self.records.pop(name.lower().encode(), None)

    def asked(self, type_name: str) -> list[str]:
        return [name for name, t in self.queries if t == type_name]

    def _lookup(self, name, cls, type, timeout=None):
        self.queries.append((name.decode().lower(), dns.QUERY_TYPES.get(type, str(type))))
        if self.fail:
            return defer.fail(RuntimeError("SERVFAIL for the test"))
        return super()._lookup(name, cls, type, timeout)


def srv(priority: int, weight: int, port: int, target: str, ttl: int = 60) -> dns.Record_SRV:
    return dns.Record_SRV(priority, weight, port, target, ttl=ttl)


def a(address: str, ttl: int = 60) -> dns.Record_A:
    return dns.Record_A(address, ttl=ttl)


def aaaa(address: str, ttl: int = 60) -> dns.Record_AAAA:
    return dns.Record_AAAA(address, ttl=ttl)


class DnsServer:
    """``Zone`` served over UDP on 127.0.0.1:``port`` (a free one)."""

    def __init__(self, reactor: IReactorUDP, origin: str = "test") -> None:
        self.zone = Zone(origin)
        factory = server.DNSServerFactory(authorities=[self.zone], verbose=0)
        factory.noisy = False
        protocol = dns.DNSDatagramProtocol(controller=factory)
        protocol.noisy = False
        self._port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.host = "127.0.0.1"
        self.port: int = self._port.getHost().port

    @property
    def address(self) -> str:
        """As ``sip.dns_servers`` takes it."""
        return f"{self.host}:{self.port}"

    def stop(self) -> defer.Deferred:
        return defer.maybeDeferred(self._port.stopListening)
