"""PBX location (RFC 3263) against a real authoritative DNS server on loopback, TTL-driven
re-resolution on a task.Clock, and the SIP stack's target and allow-list following the answers."""

from __future__ import annotations

import random
import socket
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.logger import globalLogPublisher
from twisted.names import client

from b2bua.config import ConfigError, SipConfig, dns_servers
from b2bua.metrics import Registry
from b2bua.sip.resolver import (
    RETRY_FIRST,
    TTL_CEILING,
    TTL_FLOOR,
    Answer,
    PbxLocator,
    ResolveError,
    SrvRecord,
    locate_sip_server,
    srv_order,
)
from b2bua.sip.ua import SipStack
from b2bua.wire.sip import Request, Response, parse_message
from tests.integration.helpers import wait_until
from tests.peers.dns_zone import DnsServer, a, aaaa, srv
from tests.peers.ports import free_port

V4 = (socket.AF_INET,)
V6 = (socket.AF_INET6,)


@pytest.fixture
def dns_server():
    server = DnsServer(reactor)
    yield server
    pytest_twisted.blockon(server.stop())


def resolver_for(server: DnsServer):
    return client.Resolver(servers=[(server.host, server.port)], reactor=reactor)


def locate(server, host, port=None, transport="UDP", families=V4, rng=None):
    return defer.Deferred.fromCoroutine(
        locate_sip_server(resolver_for(server), host, port, transport, families, rng or random.Random(1))
    )


class _NoDns:
    """A resolver that must not be used."""

    def __getattr__(self, name):
        raise AssertionError(f"DNS lookup {name} made for an IP literal")


# ---------------------------------------------------------------------------------------------- SRV order

class _Draws:
    """randint(0, total) returning given fractions of the total, in turn."""

    def __init__(self, *fractions: float) -> None:
        self.fractions = list(fractions)

    def randint(self, low: int, high: int) -> int:
        return round(self.fractions.pop(0) * high)


def test_srv_order_by_priority_first():
    records = [SrvRecord(20, 0, 1, "c"), SrvRecord(10, 0, 1, "a"), SrvRecord(30, 0, 1, "d"),
               SrvRecord(10, 0, 1, "b")]
    order = [r.target for r in srv_order(records, random.Random(3))]
    assert set(order[:2]) == {"a", "b"} and order[2:] == ["c", "d"]


def test_srv_order_weighted_draw_uses_running_sums():
    records = [SrvRecord(10, 10, 1, "light"), SrvRecord(10, 90, 1, "heavy"), SrvRecord(10, 0, 1, "zero")]
    # total 100; running sums zero:0, light:10, heavy:100. A draw of 5 picks light; then the rest
    # (zero:0, heavy:90) with a draw of 0 picks zero
    assert [r.target for r in srv_order(records, _Draws(0.05, 0.0, 0.0))] == ["light", "zero", "heavy"]
    # a draw of 0 picks the zero-weight record (it sorts first)
    assert srv_order(records, _Draws(0.0, 0.5, 0.0))[0].target == "zero"
    assert srv_order(records, _Draws(0.5, 0.5, 0.0))[0].target == "heavy"


def test_srv_order_weights_are_proportions():
    rng = random.Random(7)
    records = [SrvRecord(10, 90, 1, "heavy"), SrvRecord(10, 10, 1, "light")]
    first = Counter(srv_order(records, rng)[0].target for _ in range(2000))
    assert 0.85 < first["heavy"] / 2000 < 0.95


# ---------------------------------------------------------------------------------------------- RFC 3263

@pytest_twisted.ensureDeferred
async def test_srv_targets_in_priority_order_with_their_ports(dns_server):
    zone = dns_server.zone
    zone.set("_sip._udp.pbx.test",
             srv(20, 0, 5090, "backup.pbx.test", ttl=300), srv(10, 0, 5080, "main.pbx.test", ttl=120))
    zone.set("main.pbx.test", a("127.0.0.11", ttl=90))
    zone.set("backup.pbx.test", a("127.0.0.12", ttl=600))
    answer = await locate(dns_server, "pbx.test")
    assert answer.targets == (("127.0.0.11", 5080), ("127.0.0.12", 5090))
    assert answer.via_srv and answer.preferred == 1
    assert answer.ttl == 90  # the smallest TTL of every record used
    assert zone.asked("SRV") == ["_sip._udp.pbx.test"]


@pytest_twisted.ensureDeferred
async def test_srv_name_follows_the_transport(dns_server):
    zone = dns_server.zone
    zone.set("_sip._tcp.pbx.test", srv(10, 0, 5081, "tcp.pbx.test"))
    zone.set("_sips._tcp.pbx.test", srv(10, 0, 5061, "tls.pbx.test"))
    zone.set("tcp.pbx.test", a("127.0.0.21"))
    zone.set("tls.pbx.test", a("127.0.0.22"))
    assert (await locate(dns_server, "pbx.test", transport="TCP")).targets == (("127.0.0.21", 5081),)
    assert (await locate(dns_server, "pbx.test", transport="TLS")).targets == (("127.0.0.22", 5061),)


@pytest_twisted.ensureDeferred
async def test_without_srv_the_hosts_addresses_on_5060(dns_server):
    dns_server.zone.set("pbx.test", a("127.0.0.31", ttl=45), a("127.0.0.32", ttl=45))
    answer = await locate(dns_server, "pbx.test")
    assert answer.targets == (("127.0.0.31", 5060), ("127.0.0.32", 5060))
    assert not answer.via_srv and answer.preferred == 2 and answer.ttl == 45
    assert dns_server.zone.asked("SRV") == ["_sip._udp.pbx.test"]  # NXDOMAIN, then A


@pytest_twisted.ensureDeferred
async def test_explicit_port_means_no_srv(dns_server):
    zone = dns_server.zone
    zone.set("_sip._udp.pbx.test", srv(10, 0, 5080, "other.pbx.test"))
    zone.set("pbx.test", a("127.0.0.41"))
    answer = await locate(dns_server, "pbx.test", port=5999)
    assert answer.targets == (("127.0.0.41", 5999),)
    assert zone.asked("SRV") == []


@pytest_twisted.ensureDeferred
async def test_ip_literals_are_not_looked_up():
    for host, port, expected in [
        ("192.0.2.7", None, ("192.0.2.7", 5060)),
        ("192.0.2.7", 5080, ("192.0.2.7", 5080)),
        ("[2001:db8::1]", None, ("2001:db8::1", 5060)),
        ("[2001:DB8:0::1]", 5080, ("2001:db8::1", 5080)),
    ]:
        answer = await locate_sip_server(_NoDns(), host, port, "UDP", V4, random.Random())
        assert answer.targets == (expected,) and answer.ttl == float("inf")
    answer = await locate_sip_server(_NoDns(), "192.0.2.7", None, "TLS", V4, random.Random())
    assert answer.targets == (("192.0.2.7", 5061),)


@pytest_twisted.ensureDeferred
async def test_ipv6_targets_from_aaaa(dns_server):
    zone = dns_server.zone
    zone.set("_sip._udp.pbx.test", srv(10, 0, 5080, "v6.pbx.test"))
    zone.set("v6.pbx.test", a("127.0.0.51"), aaaa("2001:db8::51"))
    assert (await locate(dns_server, "pbx.test", families=V6)).targets == (("2001:db8::51", 5080),)
    assert (await locate(dns_server, "pbx.test", families=V4)).targets == (("127.0.0.51", 5080),)
    assert zone.asked("AAAA") == ["v6.pbx.test"] and zone.asked("A") == ["v6.pbx.test"]


@pytest_twisted.ensureDeferred
async def test_a_target_that_does_not_resolve_is_skipped(dns_server):
    zone = dns_server.zone
    zone.set("_sip._udp.pbx.test", srv(10, 0, 5080, "gone.pbx.test"), srv(20, 0, 5090, "ok.pbx.test"))
    zone.set("ok.pbx.test", a("127.0.0.61"))
    answer = await locate(dns_server, "pbx.test")
    assert answer.targets == (("127.0.0.61", 5090),)


@pytest_twisted.ensureDeferred
async def test_srv_dot_target_means_no_service(dns_server):
    dns_server.zone.set("_sip._udp.pbx.test", srv(0, 0, 0, ""))  # the root: "."
    dns_server.zone.set("pbx.test", a("127.0.0.71"))
    with pytest.raises(ResolveError, match="no SIP service"):
        await locate(dns_server, "pbx.test")


@pytest_twisted.ensureDeferred
async def test_servfail_on_srv_is_a_failure_not_a_fallback(dns_server):
    dns_server.zone.set("pbx.test", a("127.0.0.81"))
    dns_server.zone.fail = True
    with pytest.raises(ResolveError, match="SERVFAIL"):
        await locate(dns_server, "pbx.test")
    assert dns_server.zone.asked("A") == []


@pytest_twisted.ensureDeferred
async def test_unknown_name_fails(dns_server):
    with pytest.raises(ResolveError, match="NXDOMAIN"):
        await locate(dns_server, "nowhere.test")


# ---------------------------------------------------------------------------------------------- re-resolution

class _Changes:
    """on_change recorder that lets a test await the next change."""

    def __init__(self) -> None:
        self.count = 0
        self._waiting: list[defer.Deferred] = []

    def __call__(self) -> None:
        self.count += 1
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def next(self) -> defer.Deferred:
        d = defer.Deferred()
        self._waiting.append(d)
        return d.addTimeout(5, reactor)


def make_locator(server, clock, pbx="pbx.test", extra=(), families=V4, metrics=None, rng=None):
    changes = _Changes()
    locator = PbxLocator(clock, pbx, "UDP", list(extra), families, changes,
                         lambda: resolver_for(server), rng=rng, metrics=metrics)
    return locator, changes


async def settle(locator, predicate, what):
    await wait_until(predicate, timeout=5, interval=0.01, what=what)


@pytest_twisted.ensureDeferred
async def test_lookup_again_when_the_ttl_runs_out_and_follow_the_change(dns_server):
    zone = dns_server.zone
    zone.set("_sip._udp.pbx.test", srv(10, 0, 5080, "one.pbx.test", ttl=120))
    zone.set("one.pbx.test", a("127.0.0.91", ttl=100))
    zone.set("two.pbx.test", a("127.0.0.92", ttl=100))
    clock = task.Clock()
    locator, changes = make_locator(dns_server, clock)
    assert locator.target is None and not locator.resolved
    first = changes.next()
    locator.start()
    await first
    assert locator.target == ("127.0.0.91", 5080) and locator.allowed == {"127.0.0.91"}
    (watch,) = locator.watches
    assert watch.next_lookup == 100  # the smallest TTL

    zone.set("_sip._udp.pbx.test", srv(10, 0, 6080, "two.pbx.test", ttl=120))
    asked = len(zone.queries)
    clock.advance(99)
    assert len(zone.queries) == asked  # not before the TTL
    moved = changes.next()
    clock.advance(1)
    await moved
    assert locator.target == ("127.0.0.92", 6080) and locator.allowed == {"127.0.0.92"}
    locator.stop()


@pytest_twisted.ensureDeferred
async def test_ttl_bounded_by_floor_and_ceiling(dns_server):
    zone = dns_server.zone
    zone.set("short.test", a("127.0.0.93", ttl=1))
    zone.set("long.test", a("127.0.0.94", ttl=86400))
    clock = task.Clock()
    short, changes = make_locator(dns_server, clock, pbx="short.test:5060")
    long, long_changes = make_locator(dns_server, clock, pbx="long.test:5060")
    ready = defer.gatherResults([changes.next(), long_changes.next()])
    short.start()
    long.start()
    await ready
    assert short.watches[0].next_lookup == TTL_FLOOR
    assert long.watches[0].next_lookup == TTL_CEILING
    short.stop()
    long.stop()


@pytest_twisted.ensureDeferred
async def test_failure_keeps_the_last_good_answer_retries_sooner_and_logs_once(dns_server):
    zone = dns_server.zone
    zone.set("pbx.test", a("127.0.0.95", ttl=60))
    clock = task.Clock()
    metrics = Registry()
    locator, changes = make_locator(dns_server, clock, metrics=metrics)
    warnings = []

    def observe(event):
        if event.get("log_level") is not None and event["log_level"].name == "warn" and \
                event.get("log_namespace") == "b2bua.sip.resolver":
            warnings.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        first = changes.next()
        locator.start()
        await first
        (watch,) = locator.watches
        zone.remove("pbx.test")  # NXDOMAIN from now on
        clock.advance(60)
        await settle(locator, lambda: watch.failures == 1, "the first failure")
        assert locator.target == ("127.0.0.95", 5060) and locator.allowed == {"127.0.0.95"}
        assert watch.error and "NXDOMAIN" in watch.error
        assert watch.next_lookup == 60 + RETRY_FIRST
        clock.advance(RETRY_FIRST)
        await settle(locator, lambda: watch.failures == 2, "the second failure")
        assert watch.next_lookup == 60 + RETRY_FIRST + 2 * RETRY_FIRST  # doubling
        assert len(warnings) == 1  # the same error is not logged again
        assert changes.count == 1
        text = metrics.render().decode()
        assert 'mpb2bua_pbx_dns_ok{name="pbx.test"} 0' in text
        assert 'mpb2bua_pbx_dns_failures_total{name="pbx.test"} 2' in text
        assert locator.status()["pbx_dns"]["pbx.test"]["ok"] is False

        zone.set("pbx.test", a("127.0.0.96", ttl=60))
        moved = changes.next()
        clock.advance(2 * RETRY_FIRST)
        await moved
        assert locator.target == ("127.0.0.96", 5060) and watch.error is None
        text = metrics.render().decode()
        assert 'mpb2bua_pbx_dns_ok{name="pbx.test"} 1' in text
        assert 'mpb2bua_pbx_dns_changes_total{name="pbx.test"} 1' in text
    finally:
        globalLogPublisher.removeObserver(observe)
        locator.stop()


@pytest_twisted.ensureDeferred
async def test_first_lookup_failing_leaves_no_target_and_retries(dns_server):
    clock = task.Clock()
    locator, changes = make_locator(dns_server, clock)
    locator.start()
    (watch,) = locator.watches
    await settle(locator, lambda: watch.failures == 1, "the failure")
    assert locator.target is None and locator.allowed == frozenset()
    dns_server.zone.set("pbx.test", a("127.0.0.97"))
    found = changes.next()
    clock.advance(RETRY_FIRST)
    await found
    assert locator.target == ("127.0.0.97", 5060)
    locator.stop()


@pytest_twisted.ensureDeferred
async def test_target_stays_put_across_an_equal_weight_shuffle(dns_server):
    zone = dns_server.zone
    zone.set("_sip._udp.pbx.test", srv(10, 50, 5080, "x.pbx.test", ttl=30),
             srv(10, 50, 5080, "y.pbx.test", ttl=30))
    zone.set("x.pbx.test", a("127.0.0.101"))
    zone.set("y.pbx.test", a("127.0.0.102"))
    clock = task.Clock()
    locator, changes = make_locator(dns_server, clock, rng=random.Random(5))
    first = changes.next()
    locator.start()
    await first
    chosen = locator.target
    (watch,) = locator.watches
    for round_ in range(1, 9):
        clock.advance(30)
        await settle(locator, lambda r=round_: watch.next_lookup == 30 * (r + 1), "a lookup")
        assert locator.target == chosen
    assert locator.allowed == {"127.0.0.101", "127.0.0.102"}
    locator.stop()


@pytest_twisted.ensureDeferred
async def test_allow_list_has_pbx_addresses_names_and_literals(dns_server):
    zone = dns_server.zone
    zone.set("pbx.test", a("127.0.0.111"))
    zone.set("standby.test", a("127.0.0.112"), a("127.0.0.113"))
    clock = task.Clock()
    locator, changes = make_locator(dns_server, clock, pbx="pbx.test:5060",
                                    extra=["standby.test", "192.0.2.1", "[2001:db8::1]", "standby.test:5070"])
    assert locator.allowed == {"192.0.2.1", "2001:db8::1"}  # literals at once
    locator.start()
    await settle(locator, lambda: len(locator.allowed) == 5, "the names")
    assert locator.allowed == {"127.0.0.111", "127.0.0.112", "127.0.0.113", "192.0.2.1", "2001:db8::1"}
    locator.stop()


def test_literal_pbx_known_at_once_without_a_resolver():
    def no_resolver():
        raise AssertionError("a resolver was made for IP literals")

    locator = PbxLocator(task.Clock(), "127.0.0.1:5080", "UDP", ["127.0.0.2"], V4, lambda: None, no_resolver)
    locator.start()
    assert locator.target == ("127.0.0.1", 5080) and locator.allowed == {"127.0.0.1", "127.0.0.2"}
    assert locator.watches == [] and locator.status() == {"pbx_target": "127.0.0.1:5080"}


def test_answer_describe():
    answer = Answer((("127.0.0.1", 5080), ("::1", 5080)), 60.0, via_srv=True)
    assert answer.describe() == "127.0.0.1:5080, [::1]:5080 (SRV records, TTL 60 s)"


# ---------------------------------------------------------------------------------------------- config

def test_dns_servers_config():
    config = SipConfig(dns_servers=["127.0.0.1:5353", "10.0.0.2", "[::1]:53", "[2001:db8::2]"])
    assert dns_servers(config) == [("127.0.0.1", 5353), ("10.0.0.2", 53), ("::1", 53), ("2001:db8::2", 53)]
    for bad in ["ns.example.com", "127.0.0.1:0", "::1", "127.0.0.1:x", ""]:
        with pytest.raises(ConfigError, match="sip.dns_servers"):
            dns_servers(SipConfig(dns_servers=[bad]))


# ---------------------------------------------------------------------------------------------- the stack

class SplitReactor:
    """The real reactor for sockets, a task.Clock for time: DNS answers and SIP datagrams really
    travel, the TTLs pass when the test says."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock

    def __getattr__(self, name):
        return getattr(reactor, name)

    def callLater(self, *args, **kwargs):  # noqa: N802
        return self.clock.callLater(*args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()


class Phone(protocol.DatagramProtocol):
    """A UDP socket on a given loopback address that sends OPTIONS and collects the answers."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.received: list[Response] = []
        self.port = reactor.listenUDP(0, self, interface=host)

    def datagramReceived(self, data, addr):  # noqa: N802
        message = parse_message(data, datagram=True)
        if isinstance(message, Response):
            self.received.append(message)

    def options(self, sip_port: int) -> None:
        port = self.port.getHost().port
        n = len(self.received)
        request = (
            f"OPTIONS sip:127.0.0.1:{sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{port};branch=z9hG4bK{random.getrandbits(64):x}{n};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:pbx@{self.host}>;tag=t{n}\r\nTo: <sip:127.0.0.1:{sip_port}>\r\n"
            f"Call-ID: c{random.getrandbits(64):x}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        self.transport.write(request.encode(), ("127.0.0.1", sip_port))

    async def ask(self, sip_port: int) -> int:
        n = len(self.received)
        self.options(sip_port)
        await wait_until(lambda: len(self.received) > n, timeout=5, interval=0.01, what="an answer")
        return self.received[-1].status


@pytest_twisted.ensureDeferred
async def test_stack_target_and_allow_list_follow_dns(dns_server):
    zone = dns_server.zone
    zone.set("_sip._udp.pbx.test", srv(10, 0, 5080, "pbx1.pbx.test", ttl=60))
    zone.set("pbx1.pbx.test", a("127.0.0.2", ttl=60))
    zone.set("pbx2.pbx.test", a("127.0.0.3", ttl=60))
    clock = task.Clock()
    config = SipConfig(listen_host="127.0.0.1", listen_port=free_port("udp"), transports=["udp"],
                       pbx="pbx.test", options_keepalive=0, dns_servers=[dns_server.address])
    stack = SipStack(SplitReactor(clock), config)
    old, new = Phone("127.0.0.2"), Phone("127.0.0.3")
    try:
        assert stack.pbx_target is None and stack.allowed_sources == frozenset()
        stack.start()
        await wait_until(lambda: stack.pbx_target is not None, timeout=5, interval=0.01, what="DNS")
        assert stack.pbx_target == ("UDP", "127.0.0.2", 5080)
        assert stack.health()["pbx_target"] == "127.0.0.2:5080"
        assert await old.ask(stack.transport.port) == 200
        assert await new.ask(stack.transport.port) == 403

        zone.set("_sip._udp.pbx.test", srv(10, 0, 5080, "pbx2.pbx.test", ttl=60))
        clock.advance(60)
        await wait_until(lambda: stack.pbx_target.host == "127.0.0.3", timeout=5, interval=0.01,
                         what="the new address")
        assert await new.ask(stack.transport.port) == 200
        assert await old.ask(stack.transport.port) == 403
    finally:
        old.port.stopListening()
        new.port.stopListening()
        await stack.stop()


def test_requests_before_the_first_answer_fail_at_once_with_a_local_503():
    class Pending:
        def __getattr__(self, name):
            return lambda *a, **k: defer.Deferred()  # a lookup that never answers

    clock = task.Clock()
    config = SipConfig(pbx="pbx.test", options_keepalive=0, listen_host="0.0.0.0")
    stack = SipStack(clock, config, resolver_factory=Pending)
    stack.locator.start()
    request = stack.new_request("OPTIONS", "sip:pbx.test", "sip:a@pbx.test", "t", "sip:pbx.test", "c", 1)
    assert isinstance(request, Request)
    got = []
    stack.send_request(request, got.append)
    clock.advance(0)
    assert [(r.status, r.local) for r in got] == [(503, True)]
    health = stack.health()
    assert {k: health[k] for k in ("pbx_target", "pbx_dns")} == {
        "pbx_target": None,
        "pbx_dns": {"pbx.test": {"ok": False, "addresses": []}},
    }


class Echo(protocol.DatagramProtocol):
    """A registrar stand-in on an IPv6 address: answers every request 200."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    def datagramReceived(self, data, addr):  # noqa: N802
        request = parse_message(data, datagram=True)
        self.requests.append(request)
        names = ("Via", "From", "To", "Call-ID", "CSeq")
        headers = "".join(f"{n}: {request.headers.get(n)}\r\n" for n in names)
        self.transport.write(f"SIP/2.0 200 OK\r\n{headers}Content-Length: 0\r\n\r\n".encode(), addr)


@pytest_twisted.ensureDeferred
async def test_ipv6_pbx_from_aaaa_is_reached(dns_server):
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.fail("IPv6 loopback (::1) is needed on the test machine")
    echo = Echo()
    echo_port = reactor.listenUDP(0, echo, interface="::1")
    dns_server.zone.set("_sip._udp.pbx.test", srv(10, 0, echo_port.getHost().port, "v6.pbx.test"))
    dns_server.zone.set("v6.pbx.test", aaaa("::1"), a("127.0.0.1"))
    config = SipConfig(listen_host="::1", listen_port=0, transports=["udp"], pbx="pbx.test",
                       options_keepalive=0, dns_servers=[dns_server.address])
    stack = SipStack(reactor, config)
    try:
        stack.start()
        await wait_until(lambda: stack.pbx_target is not None, timeout=5, interval=0.01, what="DNS")
        assert stack.pbx_target.host == "::1" and stack.allowed_sources == {"::1"}
        request = stack.new_request("OPTIONS", "sip:pbx.test", "sip:a@pbx.test", "t", "sip:pbx.test", "c", 1)
        got = []
        stack.send_request(request, got.append)
        await wait_until(lambda: got, timeout=5, interval=0.01, what="the answer")
        assert got[0].status == 200 and not got[0].local
        assert echo.requests[0].headers.get("Via").startswith(f"SIP/2.0/UDP [::1]:{stack.transport.port};")
    finally:
        echo_port.stopListening()
        await stack.stop()
