"""SIP over UDP, TCP and TLS (RFC 3261 §18, §26) on Twisted.

The only SIP code that touches sockets: it frames and parses what arrives and
hands whole messages to one handler; it serializes and sends what it is given.
Requests that cannot be parsed are answered 400 (or what the parser says) when
enough of them was readable; anything else is dropped. Nothing raises into the reactor.

TCP connections are counted in two pools so that strangers cannot starve the PBX: ours (to
the PBX, or to a dialog's remote target) and those accepted from a PBX address, up to
``MAX_TCP_CONNECTIONS``; and those accepted from any other address, up to
``TcpLimits.max_inbound`` in total and ``max_per_address`` per address. Every accepted
connection must deliver a whole message within ``first_message_timeout``; one from a
non-PBX address is closed after ``idle_timeout`` without data.

TLS is TCP with Twisted's TLS layer on top (settings and checks in :mod:`b2bua.sip.tls`): the
same pools, limits, reuse and framing. A connection of ours that cannot be made (refused, TLS
handshake or certificate check failed) is reported with ``on_connect_failed`` so that the
transactions waiting on it end at once; one that was up and is lost, with ``on_connection_lost``,
so that the registrations it carried are renewed over a new one. Connections are keyed by
(host, port): a host never serves TCP and TLS on one port. Requests the PBX sends over a
connection we opened (the one our REGISTER went over) are received like any other, and the
responses go back over it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.interfaces import IHandshakeListener, IReactorTCP, IReactorTime, IReactorUDP
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from b2bua.sip.ratelog import RateLimitedLog
from b2bua.sip.tls import TlsSettings, describe_failure
from b2bua.sip.transaction import Target, TransportError
from b2bua.wire.sip import (
    MAX_MESSAGE_SIZE,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    make_response,
    parse_message,
)

log = Logger()

MessageHandler = Callable[[Request | Response, Target], None]
MAX_TCP_CONNECTIONS = 1024  # ours and the PBX's
TCP_IDLE_TIMEOUT = 600.0  # ours and the PBX's
TCP_BACKLOG = 1024  # a burst of strangers' SYNs must not crowd out the PBX's connect
MAX_CONNECT_ERRORS = 64
MAX_QUEUED_BYTES = 1 << 20
# Receive buffer asked for the UDP socket. Linux's default (net.core.rmem_default, ~208 KiB)
# holds only ~100 datagrams of ~1 KB (each costs ~2 KiB of buffer): at 400 call setups/s
# (~2,000 datagrams/s in) a 50 ms pause of the reactor overflows it, and a dropped 2xx
# costs the call its T1 retransmission (500 ms) or, if the far end does not retransmit, the call.
UDP_RECEIVE_BUFFER = 4 << 20


@dataclass(frozen=True)
class TcpLimits:
    """Bounds on TCP connections accepted from addresses other than the PBX's."""

    max_inbound: int = 256
    max_per_address: int = 8
    first_message_timeout: float = 5.0
    idle_timeout: float = 60.0
    # messages a second parsed from non-PBX addresses (UDP and TCP), all together and per address
    messages_per_second: int = 200
    messages_per_second_per_address: int = 20


class StrangerBudget:
    """How many messages a second from non-PBX addresses are parsed (and answered 403), in
    total and per address; the rest is dropped unread, so a flood costs a dict lookup per
    datagram instead of a parse (~150 µs) and a response. Fixed one-second windows: the
    per-address table holds at most ``total`` addresses."""

    def __init__(self, clock: IReactorTime, total: int, per_address: int) -> None:
        self.clock = clock
        self.total = total
        self.per_address = per_address
        self._second = -1
        self._used = 0
        self._by_host: dict[str, int] = {}

    def allow(self, host: str) -> bool:
        second = int(self.clock.seconds())
        if second != self._second:
            self._second, self._used, self._by_host = second, 0, {}
        if self._used >= self.total:
            return False
        used = self._by_host.get(host, 0)
        if used >= self.per_address:
            return False
        self._by_host[host] = used + 1
        self._used += 1
        return True


#: why a TCP connection was refused or closed by the limits (label values of a metric)
TCP_EVENTS = ("total", "per_address", "pbx_pool_full", "first_message_timeout", "idle_timeout")


class SipTransport:
    """UDP and TCP listeners on one address (and a TLS one on ``tls_port``), plus outgoing TCP
    and TLS connections, for one SIP node."""

    def __init__(
        self,
        reactor: IReactorUDP | IReactorTCP | IReactorTime,
        host: str,
        port: int,
        handler: MessageHandler,
        transports: tuple[str, ...] = ("UDP", "TCP"),
        on_bad_message: Callable[[str, Target], None] | None = None,
        udp_receive_buffer: int = UDP_RECEIVE_BUFFER,
        is_trusted: Callable[[str], bool] = lambda host: False,
        limits: TcpLimits | None = None,
        ratelog: RateLimitedLog | None = None,
        on_tcp_event: Callable[[str], None] | None = None,
        on_dropped: Callable[[Target], None] | None = None,
        tls: TlsSettings | None = None,
        tls_port: int = 5071,
        on_connect_failed: Callable[[Target, str], None] | None = None,
        on_connection_lost: Callable[[Target], None] | None = None,
        keep_open: Callable[[Target], bool] = lambda target: False,
    ) -> None:
        """``is_trusted(host)``: whether an address is the PBX's (see the module's docstring);
        ``on_tcp_event(reason)``: a connection refused or closed by the limits (TCP_EVENTS);
        ``on_dropped(source)``: a message from a non-PBX address dropped unread (over the rate);
        ``tls``: enables sending over TLS (and the TLS listener when ``transports`` has it);
        ``on_connect_failed(target, why)``: a connection of ours could not be made;
        ``on_connection_lost(target)``: a connection of ours that was up is gone;
        ``keep_open(target)``: a connection of ours that is never closed for being idle."""
        self.reactor = reactor
        self.host = host
        self.port = port
        self.transports = tuple(t.upper() for t in transports)
        self.handler = handler
        self.on_bad_message = on_bad_message
        self._udp: _UdpProtocol | None = None
        self._ports: list = []
        self._conns: dict[tuple[str, int], _TcpProtocol] = {}
        self._pending: dict[tuple[str, int], list[bytes]] = {}
        self.is_trusted = is_trusted
        self.limits = limits or TcpLimits()
        self.ratelog = ratelog or RateLimitedLog(reactor)
        self.on_tcp_event = on_tcp_event
        self.on_dropped = on_dropped
        self.budget = StrangerBudget(
            reactor, self.limits.messages_per_second, self.limits.messages_per_second_per_address
        )
        self._trusted = 0  # connections in the pool of ours and the PBX's
        self._others: dict[str, int] = {}  # accepted from other addresses, per address
        self._others_total = 0
        self.connect_errors: dict[tuple[str, int], str] = {}  # last failed connect per target
        self._tcp_port = None
        self._local_cache: dict[str, str] = {}
        self.udp_receive_buffer = udp_receive_buffer
        self.udp_receive_buffer_granted: int | None = None  # what the kernel gave (it doubles, caps)
        self.tls = tls
        self.tls_port = tls_port
        self._tls_port = None
        self._tls_creator = None  # made once, on the first TLS connect
        self.on_connect_failed = on_connect_failed
        self.on_connection_lost = on_connection_lost
        self.keep_open = keep_open
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        if "UDP" in self.transports:
            self._udp = _UdpProtocol(self)
            port = self.reactor.listenUDP(
                self.port, self._udp, interface=self.host, maxPacketSize=MAX_MESSAGE_SIZE
            )
            self._ports.append(port)
            self.port = port.getHost().port  # port 0 → the one the OS chose
            self.udp_receive_buffer_granted = _grow_receive_buffer(port, self.udp_receive_buffer)
        if "TCP" in self.transports:
            self._tcp_port = self.reactor.listenTCP(
                self.port, _TcpFactory(self), backlog=TCP_BACKLOG, interface=self.host
            )
            self._ports.append(self._tcp_port)
        if "TLS" in self.transports:
            if self.tls is None:
                raise ValueError("a TLS listener needs TLS settings")
            self._tls_port = self.reactor.listenSSL(
                self.tls_port,
                _TcpFactory(self, tls=True),
                self.tls.server_options(),
                backlog=TCP_BACKLOG,
                interface=self.host,
            )
            self._ports.append(self._tls_port)
            self.tls_port = self._tls_port.getHost().port

    def stop(self):
        from twisted.internet.defer import DeferredList, maybeDeferred

        self._stopping = True
        for conn in list(self._conns.values()):
            conn.transport.loseConnection()
        ds = [maybeDeferred(p.stopListening) for p in self._ports]
        self._ports = []
        self._udp = self._tcp_port = self._tls_port = None
        return DeferredList(ds)

    # -- addresses ---------------------------------------------------------------------------------------
    def local_host_for(self, target: Target) -> str:
        """The address of ours that ``target`` sees, for Via and Contact."""
        if self.host not in ("0.0.0.0", "::", ""):
            return self.host
        cached = self._local_cache.get(target.host)
        if cached is None:
            family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((target.host.strip("[]"), target.port))  # no packet is sent
                cached = s.getsockname()[0]
            self._local_cache[target.host] = cached
        return cached

    def port_for(self, transport: str) -> int:
        """Our port for Via and Contact over ``transport``: the TLS listener's for TLS when there
        is one, else the UDP/TCP port (a TLS Contact without a listener is reached over the
        connection that carried the REGISTER)."""
        if transport.upper() == "TLS" and "TLS" in self.transports:
            return self.tls_port
        return self.port

    # -- sending -----------------------------------------------------------------------------------------
    def send(self, message: Request | Response, target: Target) -> None:
        data = bytes(message)
        if len(data) > MAX_MESSAGE_SIZE:
            raise TransportError(f"message of {len(data)} bytes is too large")
        if target.transport == "UDP":
            if self._udp is None or self._udp.transport is None:
                raise TransportError("UDP transport is not running")
            try:
                self._udp.transport.write(data, (target.host.strip("[]"), target.port))
            except OSError as e:
                raise TransportError(str(e)) from e
            return
        tls = target.transport == "TLS"
        if target.transport != "TCP" and not (tls and self.tls is not None):
            raise TransportError(f"transport {target.transport} not enabled")
        key = (target.host, target.port)
        conn = self._conns.get(key)
        if conn is not None:
            conn.transport.write(data)
            return
        if isinstance(message, Response):
            raise TransportError("connection for response is gone")
        queue = self._pending.get(key)
        if queue is not None:
            if sum(map(len, queue)) + len(data) > MAX_QUEUED_BYTES:
                raise TransportError("TCP connect backlog full")
            queue.append(data)
            return
        if self._trusted + len(self._pending) >= MAX_TCP_CONNECTIONS:
            raise TransportError("too many TCP connections")
        self._pending[key] = [data]
        creator = protocol.ClientCreator(self.reactor, lambda: _TcpProtocol(self, outgoing=True, tls=tls))
        host = target.host.strip("[]")
        if tls:
            if self._tls_creator is None:
                self._tls_creator = self.tls.client_creator()
            d = creator.connectSSL(host, target.port, self._tls_creator, timeout=10)
        else:
            d = creator.connectTCP(host, target.port, timeout=10)
        d.addCallbacks(
            lambda conn: self._connected(key, conn), lambda f: self._connect_failed(key, f, target.transport)
        )

    def _connected(self, key: tuple[str, int], conn: _TcpProtocol) -> None:
        # over TLS the handshake is still to come: what is written now waits for it
        conn.peer_key = key
        conn.pool = "trusted"
        self._trusted += 1
        self._conns[key] = conn
        self.connect_errors.pop(key, None)
        for data in self._pending.pop(key, []):
            conn.transport.write(data)

    def _connect_failed(self, key: tuple[str, int], failure: Failure | str, transport: str) -> None:
        """A connection of ours could not be made, or (TLS) its handshake or checks failed."""
        dropped = self._pending.pop(key, [])
        if len(self.connect_errors) >= MAX_CONNECT_ERRORS:
            self.connect_errors.pop(next(iter(self.connect_errors)))
        error = failure if isinstance(failure, str) else describe_failure(failure)
        self.connect_errors[key] = error
        log.warn(
            "SIP {transport} connect to {peer} failed: {err}; {n} message(s) dropped",
            transport=transport,
            peer=f"{key[0]}:{key[1]}",
            err=error,
            n=len(dropped),
        )
        # the transactions waiting on it end now rather than at Timer B/F
        if self.on_connect_failed is not None and not self._stopping:
            self.on_connect_failed(Target(transport, *key), error)

    def _lost(self, conn: _TcpProtocol) -> None:
        """A connection of ours that was up is gone (the PBX restarted, a NAT forgot it...)."""
        if self.on_connection_lost is not None and not self._stopping and conn.peer_key is not None:
            self.on_connection_lost(Target("TLS" if conn.tls else "TCP", *conn.peer_key))

    # -- receiving ---------------------------------------------------------------------------------------
    def datagram(self, data: bytes, source: Target) -> None:
        if not data.strip(b"\r\n\x00"):
            return  # keep-alive
        self._dispatch(data, source, datagram=True)

    def _dispatch(self, data: bytes, source: Target, datagram: bool) -> None:
        if not self.is_trusted(source.host) and not self.budget.allow(source.host):
            if self.on_dropped is not None:
                self.on_dropped(source)
            self.ratelog.warn(
                "dropped over the rate",
                source.host,
                "SIP message from {src} dropped unread: over sip.stranger_messages_per_second",
                src=f"{source.host}:{source.port}",
            )
            return
        try:
            message = parse_message(data, datagram=datagram)
        except SipParseError as e:
            self._bad(str(e), source, e.partial, e.status)
            return
        except ValueError as e:  # any other parse-level error: same treatment
            self._bad(str(e), source, None, 400)
            return
        if isinstance(message, Request):
            _fix_via(message, source)
        try:
            self.handler(message, source)
        except Exception:
            log.failure("SIP message handler failed for {msg!r}", msg=message)

    def _bad(self, reason: str, source: Target, partial: Request | None, status: int) -> None:
        if self.on_bad_message is not None:
            self.on_bad_message(reason, source)
        self.ratelog.warn(
            "bad messages",
            source.host,
            "bad SIP message from {src}: {reason}",
            src=f"{source.host}:{source.port}",
            reason=reason,
        )
        if partial is None or partial.method == "ACK":
            return
        try:
            response = make_response(partial, status, reason=_reason_phrase(status, reason))
            self.send(response, source)
        except Exception as e:  # the partial message may be too broken even for a 400
            self.ratelog.warn(
                "bad messages",
                source.host,
                "could not answer a bad message from {src}: {e}",
                src=source.host,
                e=e,
            )

    def connection_count(self) -> int:
        return len(self._conns)

    # -- TCP accounting ----------------------------------------------------------------------------------
    def _admit(self, conn: _TcpProtocol, host: str) -> bool:
        """Count an accepted connection in its pool; False when the pool is full."""
        if self.is_trusted(host):
            if self._trusted >= MAX_TCP_CONNECTIONS:
                return self._refuse("pbx_pool_full", host)
            self._trusted += 1
            conn.pool = "trusted"
            return True
        if self._others.get(host, 0) >= self.limits.max_per_address:
            return self._refuse("per_address", host)
        if self._others_total >= self.limits.max_inbound:
            return self._refuse("total", host)
        self._others[host] = self._others.get(host, 0) + 1
        self._others_total += 1
        conn.pool = "other"
        return True

    def _refuse(self, reason: str, host: str) -> bool:
        self.tcp_event(reason, host)
        return False

    def tcp_event(self, reason: str, host: str) -> None:
        if self.on_tcp_event is not None:
            self.on_tcp_event(reason)
        self.ratelog.warn(
            "TCP connections refused or closed",
            host,
            "SIP TCP connection from {host} refused or closed: {reason}",
            host=host,
            reason=reason,
        )

    def _release(self, conn: _TcpProtocol, host: str) -> None:
        if conn.pool == "trusted":
            self._trusted -= 1
        elif conn.pool == "other":
            self._others_total -= 1
            left = self._others.get(host, 0) - 1
            if left > 0:
                self._others[host] = left
            else:
                self._others.pop(host, None)
        conn.pool = None

    def tcp_counts(self) -> dict[str, int]:
        """Open TCP connections: ``pbx`` (ours and the PBX's pool) and ``other`` (everyone else)."""
        return {"pbx": self._trusted, "other": self._others_total}

    def tcp_connection_to(self, host: str, port: int) -> str:
        """What a message to ``host:port`` over TCP would meet: ``connected``, ``connecting``,
        ``possible`` (a connect would be tried), ``failed`` (the last connect failed) or ``full``."""
        key = (host, port)
        if key in self._conns:
            return "connected"
        if key in self._pending:
            return "connecting"
        if self._trusted + len(self._pending) >= MAX_TCP_CONNECTIONS:
            return "full"
        return "failed" if key in self.connect_errors else "possible"

    def listening(self) -> dict[str, bool]:
        """Per enabled transport, whether its socket is open."""
        out = {}
        if "UDP" in self.transports:
            out["udp"] = self._udp is not None and self._udp.transport is not None
        if "TCP" in self.transports:
            out["tcp"] = self._tcp_port is not None and bool(getattr(self._tcp_port, "connected", True))
        if "TLS" in self.transports:
            out["tls"] = self._tls_port is not None and bool(getattr(self._tls_port, "connected", True))
        return out


def _grow_receive_buffer(port, size: int) -> int | None:
    """Ask for ``size`` bytes of receive buffer on a listening UDP port's socket; returns what
    the kernel granted (Linux doubles the request and caps it at 2 × net.core.rmem_max).
    Never lowers the buffer; a port without a socket handle (a test double) gives None."""
    get_handle = getattr(port, "getHandle", None)
    sock = get_handle() if get_handle is not None else None
    if not isinstance(sock, socket.socket):
        return None
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError as e:
        log.warn("SIP UDP receive buffer not enlarged: {e}", e=e)
        return None
    if granted < size:
        log.info(
            "SIP UDP receive buffer is {granted} bytes, {size} asked: raise net.core.rmem_max",
            granted=granted,
            size=size,
        )
    return granted


def _reason_phrase(status: int, reason: str) -> str:
    base = {
        400: "Bad Request",
        505: "Version Not Supported",
        513: "Message Too Large",
        416: "Unsupported URI Scheme",
    }.get(status, "Bad Request")
    detail = "".join(c if 32 <= ord(c) < 127 else "?" for c in reason)[:100]
    return f"{base} ({detail})"


def _fix_via(request: Request, source: Target) -> None:
    """RFC 3261 §18.2.1 'received' and RFC 3581 'rport', so responses go where the request came from."""
    vias = request.headers.get_all("Via")
    via = request.top_via
    changed = False
    if via.host != source.host:
        via.params["received"] = source.host
        changed = True
    if "rport" in via.params and not via.params["rport"]:
        via.params["rport"] = str(source.port)
        changed = True
    if changed:
        request.headers.remove("Via")
        request.headers.add("Via", str(via))
        for rest in vias[1:]:
            request.headers.add("Via", rest)


class _UdpProtocol(protocol.DatagramProtocol):
    def __init__(self, owner: SipTransport):
        self.owner = owner

    def datagramReceived(self, data: bytes, addr: tuple) -> None:  # noqa: N802
        try:
            self.owner.datagram(data, Target("UDP", addr[0], addr[1]))
        except Exception:
            log.failure("UDP datagram handling failed")


@implementer(IHandshakeListener)
class _TcpProtocol(protocol.Protocol):
    """A SIP stream connection, TCP or (``tls``) TLS; ours (``outgoing``) or accepted."""

    def __init__(self, owner: SipTransport, outgoing: bool = False, tls: bool = False):
        self.owner = owner
        self.outgoing = outgoing  # outgoing connections are registered by SipTransport._connected
        self.tls = tls
        self.up = not tls  # TLS: once the handshake (and the pin check) succeeded
        self.error: str | None = None  # why we closed it during the handshake
        self.received = False  # any byte from the peer yet
        self.framer = StreamFramer()
        self.peer_key: tuple[str, int] | None = None
        self.pool: str | None = None  # "trusted" or "other" while counted
        self._idle = None
        self._first = None  # the deadline of an accepted connection's first whole message

    def connectionMade(self) -> None:  # noqa: N802
        if not self.outgoing:
            peer = self.transport.getPeer()
            if not self.owner._admit(self, peer.host):
                self.transport.abortConnection()
                return
            self.peer_key = (peer.host, peer.port)
            self.owner._conns[self.peer_key] = self
            self._first = self.owner.reactor.callLater(
                self.owner.limits.first_message_timeout, self._timed_out, "first_message_timeout"
            )
        self._touch()

    def handshakeCompleted(self) -> None:  # noqa: N802
        if self.outgoing and self.owner.tls is not None:
            cert = self.transport.getPeerCertificate()
            try:
                self.owner.tls.check_pin(cert.to_cryptography() if cert is not None else None)
            except Exception as e:
                self.error = describe_failure(e)
                self.transport.abortConnection()
                return
        self.up = True

    @property
    def target(self) -> Target | None:
        return Target("TLS" if self.tls else "TCP", *self.peer_key) if self.peer_key else None

    def _idle_timeout(self) -> float:
        return self.owner.limits.idle_timeout if self.pool == "other" else TCP_IDLE_TIMEOUT

    def _touch(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout())
        else:
            self._idle = self.owner.reactor.callLater(self._idle_timeout(), self._timed_out, "idle_timeout")

    def _timed_out(self, reason: str) -> None:
        if self.pool != "other" and reason == "idle_timeout":
            if self.outgoing and self.target is not None and self.owner.keep_open(self.target):
                self._touch()  # it carries registrations: the PBX reaches the users over it
                return
            self.transport.loseConnection()  # ours or the PBX's, quiet for TCP_IDLE_TIMEOUT
            return
        self.owner.tcp_event(reason, self.transport.getPeer().host)
        self.transport.abortConnection()  # no FIN handshake to wait for: the fd is freed at once

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self._touch()
        self.received = True
        peer = self.transport.getPeer()
        source = Target("TLS" if self.tls else "TCP", peer.host, peer.port)
        try:
            messages = self.framer.feed(data)
        except SipParseError as e:
            self.owner._bad(str(e), source, None, e.status)
            self.transport.loseConnection()  # framing is lost: the stream cannot be resynchronised
            return
        if messages and self._first is not None:
            if self._first.active():
                self._first.cancel()
            self._first = None
        for raw in messages:
            self.owner._dispatch(raw, source, datagram=False)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        for timer in (self._idle, self._first):
            if timer is not None and timer.active():
                timer.cancel()
        if self.pool is not None:
            self.owner._release(self, self.peer_key[0] if self.peer_key else self.transport.getPeer().host)
        if self.peer_key is not None and self.owner._conns.get(self.peer_key) is self:
            del self.owner._conns[self.peer_key]
        if not self.outgoing or self.peer_key is None:
            return
        # TLS 1.3 ends the client's handshake before the server has checked our certificate: a
        # TLS alert before the server's first byte (no or a refused client certificate) is a
        # failed connect too, not the loss of a connection that worked
        refused = self.tls and not self.received and isinstance(reason.value, SSL.Error)
        if self.up and not refused:
            self.owner._lost(self)
        else:  # the TLS handshake or our checks failed: the connection never was
            self.owner._connect_failed(self.peer_key, self.error or reason, "TLS")


class _TcpFactory(protocol.ServerFactory):
    def __init__(self, owner: SipTransport, tls: bool = False):
        self.owner = owner
        self.tls = tls
        self.noisy = False

    def buildProtocol(self, addr) -> _TcpProtocol:  # noqa: N802
        return _TcpProtocol(self.owner, tls=self.tls)
