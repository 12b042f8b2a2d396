"""Where the PBX is: RFC 3263 server location with Twisted's DNS client, kept fresh by TTL.

``sip.pbx`` is an IP literal (no lookup), ``host:port`` (A/AAAA of host, that port) or a bare
``host``: SRV ``_sip._udp.host`` (``_sip._tcp`` / ``_sips._tcp`` for the configured transport),
tried in RFC 2782 order (priority, then weighted random), then A/AAAA of each target; without
SRV records, A/AAAA of the host itself on the transport's default port. NAPTR is skipped: the
transport is configured (RFC 3263 §4.1).

Each name is looked up again when its records expire (the smallest TTL of the records used,
bounded by :data:`TTL_FLOOR` and :data:`TTL_CEILING`). A failed lookup keeps the last good
answer and is retried sooner (from :data:`RETRY_FIRST` doubling up to the floor); failures and
changes are logged once each, not at every retry.

Only the address family the SIP transport sends from is asked for (``families``): a socket bound
to an IPv4 address cannot send to IPv6 nor receive from it.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from twisted.internet import defer
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.names import cache, client, dns, hosts, resolve
from twisted.names.error import (
    DNSFormatError,
    DNSNameError,
    DNSNotImplementedError,
    DNSQueryRefusedError,
    DNSServerError,
    DNSUnknownError,
)
from twisted.python.failure import Failure

from b2bua.metrics import Registry
from b2bua.wire.sipuri import split_hostport

log = Logger()

TTL_FLOOR = 30.0  # never look a name up more often than this (a TTL of 0 is common on SRV)
TTL_CEILING = 3600.0  # nor less often: a PBX may move without the TTL saying so
RETRY_FIRST = 2.0  # after a failure; doubles up to TTL_FLOOR
LOOKUP_TIMEOUT = (1, 3)  # seconds per attempt of one query: a lookup gives up after 4 s

_SRV_PREFIX = {"UDP": "_sip._udp", "TCP": "_sip._tcp", "TLS": "_sips._tcp"}
_DEFAULT_PORT = {"UDP": 5060, "TCP": 5060, "TLS": 5061}
_FAMILY_NAME = {socket.AF_INET: "A", socket.AF_INET6: "AAAA"}


class ResolveError(Exception):
    """A name could not be resolved to any usable address."""


class SrvRecord(NamedTuple):
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True)
class Answer:
    """Where a name points: ``targets`` (address, port), best first; IPv6 without brackets.

    ``ttl`` is how long it may be kept (the smallest TTL of the records used; infinite for a
    literal). The first ``preferred`` targets are equally good (one SRV priority, or one host's
    addresses): a user of the answer may stay on any of them rather than follow the shuffle.
    """

    targets: tuple[tuple[str, int], ...]
    ttl: float
    preferred: int = 1
    via_srv: bool = False

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(host for host, _ in self.targets)

    def describe(self) -> str:
        where = ", ".join(_hostport(h, p) for h, p in self.targets)
        return f"{where} ({'SRV' if self.via_srv else 'address'} records, TTL {self.ttl:g} s)"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ip_literal(host: str) -> str | None:
    """The canonical text of ``host`` when it is an IPv4 or (bracketed or bare) IPv6 address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).compressed
    except ValueError:
        return None


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def default_port(transport: str) -> int:
    return _DEFAULT_PORT.get(transport.upper(), 5060)


# ---------------------------------------------------------------------------------------------- ordering

def srv_order(records: Iterable[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """RFC 2782 order: by priority, lowest first; within one priority a weighted random draw
    (zero-weight records first in the running sums, so they are drawn only rarely)."""
    out: list[SrvRecord] = []
    records = list(records)
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight != 0)
        while group:
            pick = rng.randint(0, sum(r.weight for r in group))
            running = 0
            chosen = len(group) - 1
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    chosen = index
                    break
            out.append(group.pop(chosen))
    return out


# ---------------------------------------------------------------------------------------------- lookups

def make_resolver(reactor, servers: Sequence[tuple[str, int]] = ()):
    """Twisted's resolver: only ``servers`` when given (tests, operators pinning a server); else
    /etc/hosts, a cache and the servers of /etc/resolv.conf (re-read when it changes)."""
    if servers:
        return client.Resolver(servers=list(servers), reactor=reactor)
    return resolve.ResolverChain(
        [
            hosts.Resolver(b"/etc/hosts", ttl=int(TTL_FLOOR)),
            cache.CacheResolver(reactor=reactor),
            client.Resolver(resolv=b"/etc/resolv.conf", reactor=reactor),
        ]
    )


async def lookup_addresses(
    resolver, name: str, port: int, families: Sequence[int]
) -> Answer:
    """A and/or AAAA of ``name`` (in ``families`` order), every address on ``port``."""
    found: list[tuple[str, int]] = []
    ttls: list[float] = []
    errors: list[str] = []
    for family in families:
        lookup = resolver.lookupIPV6Address if family == socket.AF_INET6 else resolver.lookupAddress
        try:
            answers, _, _ = await lookup(name, timeout=LOOKUP_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - NXDOMAIN, timeout, refused: all say "none here"
            errors.append(f"{_FAMILY_NAME[family]} {_describe(e)}")
            continue
        for rr in answers:
            if rr.type == dns.A and family == socket.AF_INET:
                address = rr.payload.dottedQuad()
            elif rr.type == dns.AAAA and family == socket.AF_INET6:
                address = socket.inet_ntop(socket.AF_INET6, rr.payload.address)
            else:
                if rr.type == dns.CNAME:
                    ttls.append(rr.ttl)
                continue
            if (address, port) not in found:
                found.append((address, port))
                ttls.append(rr.ttl)
    if not found:
        why = "; ".join(errors) or "no address records"
        raise ResolveError(f"{name}: {why}")
    return Answer(tuple(found), float(min(ttls)), preferred=len(found))


async def locate_sip_server(
    resolver,
    host: str,
    port: int | None,
    transport: str,
    families: Sequence[int],
    rng: random.Random,
) -> Answer:
    """RFC 3263 §4.2 for a configured transport: SRV unless a port is given, then A/AAAA."""
    literal = ip_literal(host)
    if literal is not None:
        return Answer(((literal, port or default_port(transport)),), float("inf"))
    if port is not None:
        return await lookup_addresses(resolver, host, port, families)
    prefix = _SRV_PREFIX.get(transport.upper(), "_sip._udp")
    srv_name = f"{prefix}.{host}"
    try:
        answers, _, _ = await resolver.lookupService(srv_name, timeout=LOOKUP_TIMEOUT)
    except DNSNameError:
        answers = []  # NXDOMAIN: no SRV, fall back to the host's addresses
    except Exception as e:  # noqa: BLE001 - a timeout or SERVFAIL is not "no SRV": keep the old answer
        raise ResolveError(f"{srv_name} SRV: {_describe(e)}") from None
    records = [rr for rr in answers if rr.type == dns.SRV]
    if not records:
        return await lookup_addresses(resolver, host, default_port(transport), families)
    srv_ttl = float(min(rr.ttl for rr in records))
    usable = [
        SrvRecord(rr.payload.priority, rr.payload.weight, rr.payload.port, str(rr.payload.target))
        for rr in records
    ]
    usable = [r for r in usable if r.target not in ("", ".")]  # "." = decidedly no service here
    if not usable:
        raise ResolveError(f"{srv_name} SRV: the domain offers no SIP service over {transport}")
    ordered = srv_order(usable, rng)
    # look every target up at once; one that does not resolve is skipped (RFC 3263 §4.3)
    results = await gatherResults(
        [
            Deferred.fromCoroutine(_maybe(lookup_addresses(resolver, r.target, r.port, families)))
            for r in ordered
        ]
    )
    targets: list[tuple[str, int]] = []
    ttls = [srv_ttl]
    preferred = 0
    errors = []
    best = ordered[0].priority
    for record, result in zip(ordered, results, strict=True):
        if isinstance(result, Exception):
            errors.append(str(result))
            continue
        ttls.append(result.ttl)
        for target in result.targets:
            if target not in targets:
                targets.append(target)
                if record.priority == best:
                    preferred += 1
    if not targets:
        raise ResolveError(f"{srv_name} SRV: no target resolves ({'; '.join(errors)})")
    return Answer(tuple(targets), min(ttls), preferred=max(preferred, 1), via_srv=True)


async def _maybe(coro):
    try:
        return await coro
    except ResolveError as e:
        return e


def _describe(error: BaseException) -> str:
    """A short reason for logs and /healthz (the DNS error classes carry whole messages)."""
    if isinstance(error, DNSNameError):
        return "no such name (NXDOMAIN)"
    for cls, text in _DNS_ERRORS:
        if isinstance(error, cls):
            return text
    if isinstance(error, TimeoutError | defer.TimeoutError):
        return "timed out"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text and len(text) < 200 else type(error).__name__


_DNS_ERRORS = (
    (DNSServerError, "server failure (SERVFAIL)"),
    (DNSQueryRefusedError, "refused (REFUSED)"),
    (DNSFormatError, "format error (FORMERR)"),
    (DNSNotImplementedError, "not implemented (NOTIMP)"),
    (DNSUnknownError, "unknown DNS error"),
)


# ---------------------------------------------------------------------------------------------- keeping fresh

class Watch:
    """Keeps one name's :class:`Answer` fresh: looks it up again when it expires, keeps the last
    good one while lookups fail, and calls ``on_change`` when the addresses change."""

    def __init__(
        self,
        clock: IReactorTime,
        name: str,
        lookup: Callable[[], Deferred],
        on_change: Callable[[], None],
        *,
        floor: float = TTL_FLOOR,
        ceiling: float = TTL_CEILING,
        retry_first: float = RETRY_FIRST,
        count_failure: Callable[[], None] = lambda: None,
        count_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.clock = clock
        self._count_failure = count_failure
        self._count_change = count_change
        self.name = name
        self._lookup = lookup
        self._on_change = on_change
        self.floor = floor
        self.ceiling = ceiling
        self.retry_first = retry_first
        self.answer: Answer | None = None
        self.error: str | None = None  # why the last lookup failed; None once one worked
        self.failures = 0  # consecutive
        self.next_lookup: float | None = None  # clock time
        self._timer: IDelayedCall | None = None
        self._running = False
        self._stopped = False

    def start(self) -> None:
        if not self._running and not self._stopped:
            self._run()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _run(self) -> None:
        self._timer = None
        self._running = True
        try:
            d = self._lookup()
        except Exception as e:  # noqa: BLE001 - a lookup that cannot even start is a failure too
            self._failed(Failure(e))
            return
        d.addCallbacks(self._succeeded, self._failed)
        d.addErrback(lambda f: log.failure("DNS watch of {name} failed", f, name=self.name))

    def _succeeded(self, answer: Answer) -> None:
        self._running = False
        if self._stopped:
            return
        old = self.answer
        self.answer = answer
        if self.error is not None:
            log.info("DNS: {name} resolves again", name=self.name)
        self.error = None
        self.failures = 0
        changed = old is None or old.targets != answer.targets
        if changed:
            if old is not None:
                self._count_change()
            log.info("DNS: {name} -> {answer}", name=self.name, answer=answer.describe())
        self._schedule(min(self.ceiling, max(self.floor, answer.ttl)))
        if changed:
            self._on_change()

    def _failed(self, failure: Failure) -> None:
        self._running = False
        if self._stopped:
            return
        self.failures += 1
        self._count_failure()
        why = failure.getErrorMessage() if failure.check(ResolveError) else _describe(failure.value)
        if why != self.error:  # once per change, not at every retry
            kept = f"; keeping {self.answer.describe()}" if self.answer else "; no address yet"
            log.warn("DNS: lookup of {name} failed: {why}{kept}", name=self.name, why=why, kept=kept)
        self.error = why
        delay = min(self.floor, self.retry_first * 2 ** min(self.failures - 1, 16))
        self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        self.next_lookup = self.clock.seconds() + delay
        self._timer = self.clock.callLater(delay, self._run)


class PbxLocator:
    """The PBX's address (where requests go) and every address it may send from (the
    allow-list): ``sip.pbx`` located per RFC 3263, plus the ``sip.pbx_addresses`` entries (IP
    addresses or names, A/AAAA). IP literals are known at once; names after their first answer.

    ``on_change()`` is called when :attr:`target` or :attr:`allowed` change. :attr:`target`
    stays on its current address while the new answer still lists it among the equally preferred
    ones, so a weighted SRV shuffle or a round-robin A answer does not move every user at each TTL.
    """

    def __init__(
        self,
        clock: IReactorTime,
        pbx: str,
        transport: str,
        extra: Sequence[str],
        families: Sequence[int],
        on_change: Callable[[], None],
        resolver_factory: Callable[[], object],
        *,
        rng: random.Random | None = None,
        metrics: Registry | None = None,
        floor: float = TTL_FLOOR,
        ceiling: float = TTL_CEILING,
    ) -> None:
        self.clock = clock
        self.transport = transport.upper()
        self.families = tuple(families)
        self._on_change = on_change
        self._resolver_factory = resolver_factory
        self._resolver = None
        self._rng = rng or random.Random()
        self.target: tuple[str, int] | None = None
        self.allowed: frozenset[str] = frozenset()
        self.watches: list[Watch] = []
        self._static: set[str] = set()
        self._failures = self._changes = None
        if metrics is not None:
            self._init_metrics(metrics)
        host, port = split_hostport(pbx)
        self.pbx_name = host
        literal = ip_literal(host)
        self._pbx_static: tuple[str, int] | None = None
        self._pbx_watch: Watch | None = None
        if literal is not None:
            self._pbx_static = (literal, port or default_port(self.transport))
            self._static.add(literal)
        else:
            label = host if port is None else f"{host}:{port}"
            self._pbx_watch = Watch(
                clock,
                label,
                lambda: Deferred.fromCoroutine(
                    locate_sip_server(self.resolver, host, port, self.transport, self.families, self._rng)
                ),
                self._update,
                floor=floor,
                ceiling=ceiling,
                **self._counters(label),
            )
            self.watches.append(self._pbx_watch)
        for entry in extra:
            name, _ = split_hostport(entry)
            literal = ip_literal(name)
            if literal is not None:
                self._static.add(literal)
                continue
            self.watches.append(
                Watch(
                    clock,
                    name,
                    lambda name=name: Deferred.fromCoroutine(
                        lookup_addresses(self.resolver, name, 0, self.families)
                    ),
                    self._update,
                    floor=floor,
                    ceiling=ceiling,
                    **self._counters(name),
                )
            )
        self._update(notify=False)

    @property
    def resolver(self):
        if self._resolver is None:  # made only when a name needs it (no resolv.conf for literals)
            self._resolver = self._resolver_factory()
        return self._resolver

    @property
    def resolved(self) -> bool:
        return self.target is not None

    def start(self) -> None:
        for watch in self.watches:
            watch.start()

    def stop(self) -> None:
        for watch in self.watches:
            watch.stop()

    def status(self) -> dict[str, object]:
        """For /healthz: where requests go, and each looked-up name's state."""
        names = {}
        for w in self.watches:
            targets = w.answer.targets if w.answer else ()
            names[w.name] = {
                "ok": w.error is None and w.answer is not None,
                "addresses": [_hostport(h, p) if p else h for h, p in targets],
                **({"error": w.error} if w.error else {}),
            }
        target = _hostport(*self.target) if self.target else None
        return {"pbx_target": target, **({"pbx_dns": names} if names else {})}

    def _update(self, notify: bool = True) -> None:
        target = self._pbx_static
        if self._pbx_watch is not None and self._pbx_watch.answer is not None:
            answer = self._pbx_watch.answer
            if self.target is not None and self.target in answer.targets[: answer.preferred]:
                target = self.target
            else:
                target = answer.targets[0]
        allowed = set(self._static)
        for watch in self.watches:
            if watch.answer is not None:
                allowed |= watch.answer.addresses
        changed = target != self.target or allowed != self.allowed
        self.target = target
        self.allowed = frozenset(allowed)
        if changed and notify:
            self._on_change()

    def _counters(self, name: str) -> dict[str, Callable[[], None]]:
        if self._failures is None or self._changes is None:
            return {}
        return {
            "count_failure": self._failures.labels(name).inc,
            "count_change": self._changes.labels(name).inc,
        }

    def _init_metrics(self, metrics: Registry) -> None:
        metrics.gauge_fn(
            "mpb2bua_pbx_dns_ok",
            "1 while the last DNS lookup of a PBX name worked, 0 while lookups fail",
            lambda: {(w.name,): float(w.error is None and w.answer is not None) for w in self.watches},
            ("name",),
        )
        self._failures = metrics.counter(
            "mpb2bua_pbx_dns_failures_total", "Failed DNS lookups of a PBX name", ("name",)
        )
        self._changes = metrics.counter(
            "mpb2bua_pbx_dns_changes_total", "Changes of the addresses a PBX name resolves to", ("name",)
        )
        metrics.gauge_fn(
            "mpb2bua_pbx_resolved", "1 once the PBX has an address", lambda: float(self.resolved)
        )
