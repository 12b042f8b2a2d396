"""The node's SIP user agent: transport + transactions + the usages of every logged-in user.

One ``SipStack`` per node. It builds requests from the node's real local address,
keeps a Contact per registration (``sip:mp-<id>@node``) so inbound requests reach
the right session, answers OPTIONS, refuses requests from addresses other than the
PBX's, and counts every SIP message for ``/metrics``.

What a stranger sends never becomes a metric label (methods outside ``KNOWN_METHODS`` are
``other``; status codes of responses from non-PBX addresses are bucketed as ``4xx``) and
never floods the log (:class:`~b2bua.sip.ratelog.RateLimitedLog`).
"""

from __future__ import annotations

import random
import secrets
import socket
from collections.abc import Callable

from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from b2bua.config import SipConfig, digest_realms, dns_servers
from b2bua.metrics import Registry
from b2bua.sip.dialog import ALLOW
from b2bua.sip.invite import InviteSession
from b2bua.sip.ratelog import RateLimitedLog
from b2bua.sip.registration import Registration, RegistrationListener
from b2bua.sip.resolver import PbxLocator, make_resolver
from b2bua.sip.tls import load_tls
from b2bua.sip.transaction import (
    ClientTransaction,
    ServerTransaction,
    Target,
    Timers,
    TransactionLayer,
    TransportError,
)
from b2bua.sip.transport import TCP_EVENTS, SipTransport, TcpLimits
from b2bua.wire.digest import DigestClient, DigestError
from b2bua.wire.sip import Request, Response, Via, make_response
from b2bua.wire.sipuri import NameAddr, SipUri, UriError, join_hostport, split_hostport

log = Logger()

CONTACT_PREFIX = "mp-"
#: methods counted under their own name in /metrics (RFC 3261 and its extensions); others: "other"
KNOWN_METHODS = frozenset(
    "INVITE ACK BYE CANCEL OPTIONS REGISTER PRACK SUBSCRIBE NOTIFY PUBLISH INFO REFER MESSAGE UPDATE".split()
)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def status_label(status: int, from_pbx: bool) -> str:
    """The code itself for the PBX's (and our own) responses, its class for anyone else's."""
    return str(status) if from_pbx else f"{min(max(status // 100, 1), 6)}xx"


class SipStack:
    """``resolver_factory`` makes the DNS resolver (``twisted.names`` IResolver) when a PBX name
    needs one; by default the servers of ``sip.dns_servers``, else the system's."""

    def __init__(
        self,
        reactor,
        config: SipConfig,
        metrics: Registry | None = None,
        resolver_factory: Callable[[], object] | None = None,
    ) -> None:
        self.reactor = reactor
        self.config = config
        host, port = split_hostport(config.pbx)
        self.domain = config.domain or host
        self.registrar_uri = config.registrar_uri or f"sip:{join_hostport(host, port)}"
        self.realms = digest_realms(config)  # None: any realm
        # Where requests go and who may send us requests: kept up to date from DNS (RFC 3263).
        # Until a PBX name has its first answer, pbx_target is None and requests for the PBX fail
        # at once with a local 503 (a login: pbx_unreachable).
        self.pbx_target: Target | None = None
        self.allowed_sources: frozenset[str] = frozenset()
        self._started = False
        self._keepalive: task.LoopingCall | None = None
        servers = dns_servers(config)
        self.locator = PbxLocator(
            reactor,
            config.pbx,
            config.pbx_transport,
            config.pbx_addresses,
            (socket.AF_INET6,) if ":" in config.listen_host else (socket.AF_INET,),
            self._pbx_moved,
            resolver_factory or (lambda: make_resolver(reactor, servers)),
            metrics=metrics,
        )
        self._pbx_moved()
        self.ratelog = RateLimitedLog(reactor, config.log_limit, config.log_limit_interval)
        self.tls = load_tls(config)  # None unless the PBX transport or a listener is TLS
        self.transport = SipTransport(
            reactor,
            config.listen_host,
            config.listen_port,
            self._message_received,
            tuple(t.upper() for t in config.transports),
            self._bad_message,
            is_trusted=lambda host: host in self.allowed_sources,
            limits=TcpLimits(
                max_inbound=config.tcp_max_inbound,
                max_per_address=config.tcp_max_inbound_per_address,
                first_message_timeout=config.tcp_first_message_timeout,
                idle_timeout=config.tcp_idle_timeout,
                messages_per_second=config.stranger_messages_per_second,
                messages_per_second_per_address=config.stranger_messages_per_second_per_address,
            ),
            ratelog=self.ratelog,
            on_tcp_event=self._tcp_event,
            on_dropped=lambda source: self._m_dropped.inc(),
            tls=self.tls,
            tls_port=config.tls_listen_port,
            on_connect_failed=self._connect_failed,
            on_connection_lost=self._connection_lost,
            keep_open=self._keep_open,
        )
        self.transactions = TransactionLayer(reactor, self, self, Timers(T1=config.t1))
        self.registrations: dict[str, Registration] = {}
        self.dialogs: dict[tuple[str, str, str], InviteSession] = {}
        self.incoming: dict[ServerTransaction, InviteSession] = {}  # unanswered INVITEs, for CANCEL
        self.inbound = (
            None  # the call layer: incoming_invite(reg, request, txn), incoming_message(reg, request)
        )
        self.pbx_reachable: bool | None = None
        self.pbx_listeners: list[Callable[[bool], None]] = []  # called on every reachability change
        self._last_heard: float | None = None  # when the PBX last sent us anything
        self._ping_txn: ClientTransaction | None = None
        self._init_metrics(metrics)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self.transport.start()
        self._started = True
        self.locator.start()
        if self.pbx_target is not None:
            self._start_keepalive()  # else once the PBX's name has an address
        log.info(
            "SIP listening on {host}:{port} ({transports}{tls}); PBX {pbx}",
            host=self.config.listen_host,
            port=self.transport.port,
            transports="+".join(t for t in self.transport.transports if t != "TLS"),
            tls=f", TLS on {self.transport.tls_port}" if "TLS" in self.transport.transports else "",
            pbx=self.pbx_target or f"{self.config.pbx} (resolving)",
        )

    def _start_keepalive(self) -> None:
        if self.config.options_keepalive > 0 and self._keepalive is None:
            self._keepalive = task.LoopingCall(self._ping_pbx)
            self._keepalive.clock = self.reactor
            self._keepalive.start(self.config.options_keepalive, now=True)

    def _pbx_moved(self) -> None:
        """The locator's answer changed: follow it (target and allow-list)."""
        target = self.locator.target
        old = self.pbx_target
        self.pbx_target = Target(self.config.pbx_transport.upper(), *target) if target else None
        self.allowed_sources = self.locator.allowed
        if old is not None and self.pbx_target != old:
            log.info("PBX {name}: now {new} (was {old})", name=self.config.pbx, old=old, new=self.pbx_target)
        if old is None and self.pbx_target is not None and self._started:
            self._start_keepalive()

    def health(self) -> dict:
        """For /healthz: where SIP requests go, the state of the PBX names' DNS lookups, and what
        a login's REGISTER would meet: the SIP sockets open and, over TCP, a connection to the PBX
        that is open or could be made (``pbx_connection``)."""
        out = self.locator.status()
        out["sip_listening"] = self.transport.listening()
        out["sip_tcp_connections"] = self.transport.tcp_counts()
        target = self.pbx_target
        if self.config.pbx_transport.upper() in ("TCP", "TLS"):
            state = (
                "unknown" if target is None else self.transport.tcp_connection_to(target.host, target.port)
            )
            out["pbx_connection"] = state
            error = self.transport.connect_errors.get((target.host, target.port)) if target else None
            if state == "failed" and error:
                out["pbx_connection_error"] = error
        return out

    def healthy(self) -> bool:
        """False when a login would fail for reasons of this node's own SIP side: a SIP socket
        closed, or no room for a TCP connection to the PBX (see :meth:`health`)."""
        if not self._started or not all(self.transport.listening().values()):
            return False
        if self.config.pbx_transport.upper() in ("TCP", "TLS") and self.pbx_target is not None:
            target = self.pbx_target
            return self.transport.tcp_connection_to(target.host, target.port) not in ("full", "failed")
        return True

    def stop(self) -> Deferred:
        """Un-register everyone (bounded by the registrations' own stop timeout), then close."""
        self.locator.stop()
        self._started = False
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        pending = [reg.stop() for reg in list(self.registrations.values())]
        d = DeferredList(pending)

        def close(_):
            self.transactions.close()
            self.ratelog.stop()
            return self.transport.stop()

        return d.addBoth(close)

    # -- usages ------------------------------------------------------------------------------------------
    def create_registration(
        self, user: str, password: str | None, ha1: str | None, listener: RegistrationListener
    ) -> Registration:
        contact_user = CONTACT_PREFIX + secrets.token_urlsafe(12).replace("_", "x").replace("-", "y")
        reg = Registration(
            self,
            user,
            DigestClient(user, password=password, ha1=ha1, realms=self.realms),
            contact_user,
            listener,
            self.config.register_expires,
        )
        self.registrations[contact_user] = reg
        return reg

    def forget_registration(self, reg: Registration) -> None:
        if self.registrations.get(reg.contact_user) is reg:
            del self.registrations[reg.contact_user]

    # -- building and sending ----------------------------------------------------------------------------
    def local_host(self, target: Target | None = None) -> str:
        """Our address as ``target`` (the PBX by default) sees it; IPv6 in brackets (Via, Contact)."""
        if self.config.public_host:
            return self.config.public_host
        target = target or self.pbx_target
        if target is None:  # the request cannot be sent anyway (see send)
            host = self.transport.host
        else:
            host = self.transport.local_host_for(target)
        return f"[{host}]" if ":" in host and not host.startswith("[") else host

    def aor(self, user: str) -> str:
        return f"sip:{user}@{self.domain}"

    def contact_uri(self, contact_user: str) -> SipUri:
        transport = self.config.pbx_transport.upper()
        params: dict[str, str | None] = {"transport": transport.lower()} if transport != "UDP" else {}
        port = self.transport.port_for(transport)
        return SipUri(host=self.local_host(), user=contact_user, port=port, params=params)

    def new_request(
        self,
        method: str,
        uri: str,
        from_uri: str,
        from_tag: str,
        to_uri: str,
        call_id: str,
        cseq: int,
        target: Target | None = None,
        to_tag: str | None = None,
    ) -> Request:
        transport = (target or self._pbx()).transport
        via = Via(transport, self.local_host(target), self.transport.port_for(transport), {"rport": None})
        request = Request(method=method, uri=uri)
        h = request.headers
        h.add("Via", str(via))
        h.add("Max-Forwards", 70)
        h.add("From", f"<{from_uri}>;tag={from_tag}")
        h.add("To", f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else ""))
        h.add("Call-ID", call_id)
        h.add("CSeq", f"{cseq} {method}")
        h.add("User-Agent", self.config.user_agent)
        if method in ("REGISTER", "INVITE", "OPTIONS"):
            h.add("Allow", ALLOW)
        return request

    def send_request(
        self, request: Request, on_response: Callable[[Response], None], target: Target | None = None
    ) -> ClientTransaction:
        return self.transactions.send_request(request, target or self._pbx(), on_response)

    def _pbx(self) -> Target:
        """The PBX's target; before its name's first DNS answer, one that ``send`` refuses."""
        return self.pbx_target or Target(self.config.pbx_transport.upper(), "", 0)

    # TransportSender for the transaction layer: counts, then hands to the transport.
    def send(self, message: Request | Response, target: Target) -> None:
        if not target.host:  # see _pbx
            raise TransportError(f"no address for the PBX {self.config.pbx} yet (DNS)")
        if isinstance(message, Request):
            self._m_req.labels("out", method_label(message.method)).inc()
        else:
            self._m_resp.labels("out", method_label(message.cseq[1]), str(message.status)).inc()
        self.transport.send(message, target)

    # -- receiving ---------------------------------------------------------------------------------------
    def _message_received(self, message: Request | Response, source: Target) -> None:
        from_pbx = source.host in self.allowed_sources
        if from_pbx:
            self._heard_from_pbx()
        if isinstance(message, Request):
            self._m_req.labels("in", method_label(message.method)).inc()
            if not from_pbx:
                self._m_refused.inc()
                self.ratelog.warn(
                    "refused",
                    source.host,
                    "refused {method} from {src}: not a PBX address",
                    method=message.method[:32],
                    src=f"{source.host}:{source.port}",
                )
                if message.method != "ACK":
                    self.transport.send(make_response(message, 403, "Forbidden (not a PBX address)"), source)
                return
        else:
            self._m_resp.labels(
                "in", method_label(message.cseq[1]), status_label(message.status, from_pbx)
            ).inc()
        self.transactions.message_received(message, source)

    def _bad_message(self, reason: str, source: Target) -> None:
        self._m_bad.inc()

    def _tcp_event(self, reason: str) -> None:
        self._m_tcp_refused.labels(reason).inc()

    # -- stream connections (TCP, TLS) -------------------------------------------------------------------
    def _connect_failed(self, target: Target, reason: str) -> None:
        """No connection to ``target`` (refused, TLS check failed): what waits on it fails now,
        a login with ``pbx_unreachable`` (the reason is logged and in /healthz)."""
        self.transactions.connection_failed(target, reason)

    def _connection_lost(self, target: Target) -> None:
        """Our connection to the PBX is gone: the PBX reaches the users over the connection
        their REGISTER came on, so every registration is renewed (over a new connection)."""
        if target == self.pbx_target and self.registrations and self._started:
            log.info("connection to the PBX {pbx} lost: re-registering", pbx=target)
            self.reregister_all(self.config.reregister_window)

    def _keep_open(self, target: Target) -> bool:
        return target == self.pbx_target and bool(self.registrations)

    # -- dialogs -----------------------------------------------------------------------------------------
    def register_dialog(self, session: InviteSession) -> None:
        self.dialogs[session.dialog.key] = session
        if session.role == "uas" and session.state == "incoming":
            self.incoming[session._txn] = session

    def forget_session(self, session: InviteSession) -> None:
        if session.dialog is not None and self.dialogs.get(session.dialog.key) is session:
            del self.dialogs[session.dialog.key]
        if session.role == "uas":
            self.incoming.pop(session._txn, None)

    def counts(self) -> dict[str, int]:
        """Live objects, for leak checks and /metrics."""
        return {
            "registrations": len(self.registrations),
            "dialogs": len(self.dialogs),
            "incoming": len(self.incoming),
            **self.transactions.count(),
        }

    # TransactionUser
    def request_received(
        self, request: Request, transaction: ServerTransaction | None, source: Target
    ) -> None:
        method = request.method
        to_tag = _tag(request.headers.get("To"))
        if to_tag:
            session = self.dialogs.get((request.call_id, to_tag, _tag(request.headers.get("From"))))
            if session is not None:
                session.handle_request(request, transaction)
            elif transaction is not None:
                transaction.respond(make_response(request, 481))
            return
        if transaction is None:
            return  # a stray ACK
        if method == "CANCEL":
            invite_txn = self.transactions.find_invite_server_transaction(request)
            session = self.incoming.get(invite_txn) if invite_txn is not None else None
            if session is None:
                transaction.respond(make_response(request, 481, to_tag=secrets.token_hex(6)))
            else:
                session.cancelled(transaction, request)
            return
        if method == "OPTIONS":
            transaction.respond(
                make_response(
                    request,
                    200,
                    to_tag=secrets.token_hex(6),
                    headers=[
                        ("Allow", ALLOW),
                        ("Accept", "application/sdp"),
                        ("User-Agent", self.config.user_agent),
                    ],
                )
            )
            return
        reg = self.registrations.get(_request_user(request) or "")
        handler = self.inbound
        if reg is None or reg.state not in ("registered", "registering"):
            transaction.respond(
                make_response(request, 404, "Not Found (no such session)", to_tag=secrets.token_hex(6))
            )
        elif method == "INVITE" and handler is not None:
            handler.incoming_invite(reg, request, transaction)
        elif method == "MESSAGE" and handler is not None:
            transaction.respond(
                make_response(request, handler.incoming_message(reg, request), to_tag=secrets.token_hex(6))
            )
        elif method in ("INVITE", "MESSAGE"):
            transaction.respond(make_response(request, 480, to_tag=secrets.token_hex(6)))
        elif method in ("BYE", "INFO", "UPDATE", "PRACK", "NOTIFY"):
            transaction.respond(make_response(request, 481, to_tag=secrets.token_hex(6)))
        else:
            transaction.respond(
                make_response(request, 405, to_tag=secrets.token_hex(6), headers=[("Allow", ALLOW)])
            )

    def stray_response(self, response: Response, source: Target) -> None:
        """A response that matches no transaction (late retransmission, or someone else's)."""
        self._m_stray.inc()
        self.ratelog.warn(
            "stray responses",
            source.host,
            "stray SIP response {status} {method} from {src}: no such transaction",
            status=response.status,
            method=response.cseq[1][:32],
            src=f"{source.host}:{source.port}",
        )

    def send_out_of_dialog(
        self, reg: Registration, method: str, to_uri: str, body: bytes = b"", content_type: str | None = None
    ) -> Deferred:
        """A request outside any dialog as the user of ``reg`` (e.g. MESSAGE); fires with the final
        response, after answering one digest challenge."""
        headers = [("Content-Type", content_type)] if content_type else []
        return self._send_authenticated(reg.digest, reg.user, method, to_uri, to_uri, headers, body)

    def check_credentials(self, user: str, password: str | None, ha1: str | None) -> Deferred:
        """Prove ``user``'s credentials with a REGISTER that carries no Contact: a bindings query
        (RFC 3261 §10.2.3), which changes nothing at the registrar. Fires with None when they
        are accepted, else with the reason (``auth_failed``, ``pbx_unreachable``, ``pbx_error``)."""
        aor = self.aor(user)
        d = self._send_authenticated(
            DigestClient(user, password=password, ha1=ha1), user, "REGISTER", self.registrar_uri, aor, [], b""
        )

        def outcome(response: Response) -> str | None:
            if 200 <= response.status < 300:
                return None
            if response.status in (401, 403, 407):
                return "auth_failed"
            return "pbx_unreachable" if response.local else "pbx_error"

        return d.addCallback(outcome)

    def _send_authenticated(
        self,
        digest: DigestClient,
        user: str,
        method: str,
        request_uri: str,
        to_uri: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> Deferred:
        """Send ``method`` as ``user``; answer one digest challenge; fire with the final response
        (a second challenge is that final response)."""
        d: Deferred = Deferred()
        call_id = f"{secrets.token_hex(12)}@mpb2bua"
        from_tag = secrets.token_hex(6)
        cseq = [1]

        def send(auth: tuple[str, str] | None) -> None:
            request = self.new_request(
                method,
                request_uri,
                from_uri=self.aor(user),
                from_tag=from_tag,
                to_uri=to_uri,
                call_id=call_id,
                cseq=cseq[0],
            )
            if auth is not None:
                request.headers.add(*auth)
            for name, value in headers:
                request.headers.add(name, value)
            request.body = body
            self.send_request(request, lambda r: on_response(r, auth is not None))

        def on_response(response: Response, authed: bool) -> None:
            if response.status < 200 or d.called:
                return
            if response.status in (401, 407) and not authed:
                name = "Proxy-Authenticate" if response.status == 407 else "WWW-Authenticate"
                try:
                    challenge = digest.choose(response.headers.get_all(name))
                    value = digest.authorization(challenge, method, request_uri)
                except DigestError:
                    d.callback(response)
                    return
                cseq[0] += 1
                send(("Proxy-Authorization" if response.status == 407 else "Authorization", value))
                return
            d.callback(response)

        send(None)
        return d

    # -- keepalive and fail-over ----------------------------------------------------------------------
    # The PBX counts as unreachable once it has sent nothing for ``pbx_down_after`` seconds (an
    # OPTIONS goes out every ``options_keepalive`` seconds; any SIP message from it counts). When
    # it answers again it may be a fresh instance or a standby without our bindings, so every
    # registration is renewed, spread over ``reregister_window`` so the PBX is not flooded.
    def _ping_pbx(self) -> None:
        now = self.reactor.seconds()
        if self._last_heard is None:
            self._last_heard = now  # the first ping's own deadline
        elif self.pbx_reachable is not False and now - self._last_heard >= self.config.pbx_down_after:
            self._set_reachable(False)
        if self._ping_txn is not None:
            self._ping_txn.terminate()  # one ping in flight: its retransmissions do not pile up
        request = self.new_request(
            "OPTIONS",
            self.registrar_uri,
            from_uri=f"sip:mpb2bua@{self.domain}",
            from_tag=secrets.token_hex(6),
            to_uri=self.registrar_uri,
            call_id=f"{secrets.token_hex(10)}@mpb2bua",
            cseq=1,
        )
        self._ping_txn = self.send_request(request, self._on_ping)

    def _on_ping(self, response: Response) -> None:
        if response.status < 200:
            return
        self._ping_txn = None
        if response.local and response.status != 408 and self.pbx_reachable is not False:
            # a transport error (TCP refused, no route) is an answer in itself
            self._set_reachable(False)

    def _heard_from_pbx(self) -> None:
        self._last_heard = self.reactor.seconds()
        if self.pbx_reachable is not True:
            self._set_reachable(True)

    def _set_reachable(self, reachable: bool) -> None:
        was = self.pbx_reachable
        self.pbx_reachable = reachable
        self._m_pbx_changes.labels("reachable" if reachable else "unreachable").inc()
        state = "reachable" if reachable else "unreachable"
        log.info("PBX {pbx} is {state}", pbx=self.pbx_target, state=state)
        if reachable and was is False:
            self.reregister_all(self.config.reregister_window)
        for listener in list(self.pbx_listeners):
            try:
                listener(reachable)
            except Exception:
                log.failure("PBX state listener failed")

    def reregister_all(self, window: float) -> int:
        """Renew every live registration at a random moment of the next ``window`` seconds;
        returns how many were scheduled."""
        n = 0
        for reg in list(self.registrations.values()):
            if reg.state in ("registered", "registering"):
                reg.refresh_soon(random.uniform(0.0, max(0.0, window)))
                n += 1
        log.info("re-registering {n} users over {window} s", n=n, window=window)
        return n

    # -- metrics -----------------------------------------------------------------------------------------
    def _init_metrics(self, metrics: Registry | None) -> None:
        reg = metrics or Registry()
        self._m_req = reg.counter(
            "mpb2bua_sip_requests_total", "SIP requests by direction and method", ("direction", "method")
        )
        self._m_resp = reg.counter(
            "mpb2bua_sip_responses_total",
            "SIP responses by direction, method and status",
            ("direction", "method", "code"),
        )
        self._m_bad = reg.counter("mpb2bua_sip_bad_messages_total", "SIP messages that could not be parsed")
        self._m_refused = reg.counter("mpb2bua_sip_refused_total", "SIP requests refused: source not a PBX")
        self._m_dropped = reg.counter(
            "mpb2bua_sip_dropped_total",
            "SIP messages from non-PBX addresses dropped unread: over sip.stranger_messages_per_second",
        )
        self._m_stray = reg.counter(
            "mpb2bua_sip_stray_responses_total", "SIP responses that matched no transaction"
        )
        self._m_tcp_refused = reg.counter(
            "mpb2bua_sip_tcp_refused_total",
            "SIP TCP connections refused or closed by sip.tcp_* limits, by reason",
            ("reason",),
        )
        for reason in TCP_EVENTS:
            self._m_tcp_refused.labels(reason)  # every series present from the start
        reg.gauge_fn(
            "mpb2bua_sip_tcp_connections",
            "Open SIP TCP connections: pbx (ours and the PBX's), other (any other address)",
            lambda: {(k,): float(v) for k, v in self.transport.tcp_counts().items()},
            ("peer",),
        )
        self._m_pbx_changes = reg.counter(
            "mpb2bua_pbx_state_changes_total", "The PBX became reachable or unreachable", ("state",)
        )
        reg.gauge_fn(
            "mpb2bua_pbx_reachable",
            "1 when the PBX answers, 0 when it has not for sip.pbx_down_after seconds, -1 while unknown",
            lambda: -1.0 if self.pbx_reachable is None else float(self.pbx_reachable),
        )
        reg.gauge_fn("mpb2bua_registrations", "Registrations by state", self._registration_states, ("state",))
        reg.gauge_fn(
            "mpb2bua_sip_transactions",
            "Live SIP transactions by kind",
            lambda: {(k,): float(v) for k, v in self.transactions.count().items()},
            ("kind",),
        )

    def _registration_states(self) -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {(s,): 0.0 for s in ("registering", "registered", "failed")}
        for reg in self.registrations.values():
            counts[(reg.state,)] = counts.get((reg.state,), 0.0) + 1
        return counts


def _tag(value: str | None) -> str:
    if not value:
        return ""
    try:
        return NameAddr.parse(value).tag or ""
    except UriError:
        return ""


def _request_user(request: Request) -> str | None:
    try:
        return SipUri.parse(request.uri).user
    except UriError:
        return None
