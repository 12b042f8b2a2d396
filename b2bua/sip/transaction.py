"""SIP transactions (RFC 3261 §17, RFC 6026 Accepted state, §9.2 CANCEL matching).

Four state machines — INVITE client (ICT), non-INVITE client (NICT), INVITE server (IST),
non-INVITE server (NIST) — kept by one :class:`TransactionLayer` that matches incoming
messages to them (§17.1.3, §17.2.3). Timers carry their RFC 3261 letters (A…M) and are
reactor ``callLater`` calls on an injected ``IReactorTime``: tests drive them with
``twisted.internet.task.Clock``. No I/O of its own: messages leave through a
:class:`TransportSender` and arrive through :meth:`TransactionLayer.message_received`.

Callbacks into the transaction user (TU) never raise into the reactor: a failing callback is
logged and the transaction carries on. State changes happen before the TU is told.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from b2bua.wire.sip import (
    MAX_FORWARDS,
    Headers,
    Request,
    Response,
    SipParseError,
    Via,
    make_response,
    split_commas,
)
from b2bua.wire.sipuri import NameAddr, UriError

__all__ = [
    "MAGIC_COOKIE", "TRYING_DELAY", "ClientTransaction", "InviteClientTransaction",
    "InviteServerTransaction", "NonInviteClientTransaction", "NonInviteServerTransaction",
    "ServerTransaction", "Target", "Timers", "TransactionLayer", "TransactionUser",
    "TransportError", "TransportSender", "make_cancel", "make_non2xx_ack", "new_branch",
]

log = Logger()

MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7
TRYING_DELAY = 0.2  # §17.2.1: an IST sends 100 Trying itself if the TU is silent this long

CALLING = "calling"
TRYING = "trying"
PROCEEDING = "proceeding"
COMPLETED = "completed"
ACCEPTED = "accepted"
CONFIRMED = "confirmed"
TERMINATED = "terminated"

_DEFAULT_PORTS = {"UDP": 5060, "TCP": 5060, "TLS": 5061, "WS": 80, "WSS": 443, "SCTP": 5060}


class Target(NamedTuple):
    """Where a message goes to or came from."""

    transport: str  # 'UDP' | 'TCP' | 'TLS'
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport.upper() != "UDP"


@dataclass(frozen=True)
class Timers:
    """RFC 3261 Table 4. The derived timers are properties (or methods of the transport's reliability)."""

    T1: float = 0.5
    T2: float = 4.0
    T4: float = 5.0

    @property
    def B(self) -> float:
        return 64 * self.T1

    @property
    def F(self) -> float:
        return 64 * self.T1

    @property
    def H(self) -> float:
        return 64 * self.T1

    @property
    def L(self) -> float:  # RFC 6026
        return 64 * self.T1

    @property
    def M(self) -> float:  # RFC 6026
        return 64 * self.T1

    def D(self, reliable: bool) -> float:
        return 0.0 if reliable else 32.0

    def I(self, reliable: bool) -> float:  # noqa: E743
        return 0.0 if reliable else self.T4

    def J(self, reliable: bool) -> float:
        return 0.0 if reliable else 64 * self.T1

    def K(self, reliable: bool) -> float:
        return 0.0 if reliable else self.T4


class TransportError(Exception):
    """Raised by :meth:`TransportSender.send` when a message cannot be sent (no route, connection lost…)."""


class TransportSender(Protocol):
    def send(self, message: Request | Response, target: Target) -> None: ...


class TransactionUser(Protocol):
    def request_received(self, request: Request, transaction: ServerTransaction | None,
                         source: Target) -> None: ...

    def stray_response(self, response: Response, source: Target) -> None: ...


def new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(10)


def _top_via_value(message: Request | Response) -> str:
    values = message.headers.get_all("Via")
    if not values:
        raise SipParseError("no Via")
    return values[0]


def _set_top_via(request: Request, via: Via) -> None:
    """Replace the topmost Via value in place (splitting a comma list that held it)."""
    headers = Headers()
    done = False
    for name, value in request.headers:
        if name == "Via" and not done:
            parts = split_commas(value)
            headers.add("Via", str(via))
            for part in parts[1:]:
                headers.add("Via", part)
            done = True
        else:
            headers.add(name, value)
    request.headers = headers


def _copy_base(request: Request, method: str, to: str | None) -> Request:
    """The common shape of a hop-by-hop ACK (§17.1.1.3) and a CANCEL (§9.1)."""
    h = request.headers
    out = Request(method=method, uri=request.uri)
    out.headers.add("Via", _top_via_value(request))
    out.headers.add("Max-Forwards", MAX_FORWARDS)
    for route in h.get_all("Route"):
        out.headers.add("Route", route)
    out.headers.add("From", h.get("From") or "")
    out.headers.add("To", to if to is not None else (h.get("To") or ""))
    out.headers.add("Call-ID", request.call_id)
    out.headers.add("CSeq", f"{request.cseq[0]} {method}")
    return out


def make_non2xx_ack(invite: Request, response: Response) -> Request:
    """The ACK an ICT sends for a 3xx–6xx (§17.1.1.3): the INVITE's Request-URI, top Via (same
    branch), From, Call-ID, CSeq number and Route set, and the response's To (with its tag)."""
    return _copy_base(invite, "ACK", response.headers.get("To"))


def make_cancel(invite: Request) -> Request:
    """A CANCEL for ``invite`` (§9.1); send it with :meth:`TransactionLayer.send_request`."""
    return _copy_base(invite, "CANCEL", None)


_TAG = re.compile(r";\s*tag\s*=\s*([^;,\s>]+)", re.IGNORECASE)


def _from_tag(value: str | None) -> str:
    if not value:
        return ""
    try:
        return NameAddr.parse(value).tag or ""
    except UriError:
        m = _TAG.search(value)
        return m.group(1) if m else ""


def _server_key(request: Request, method: str | None = None) -> tuple:
    """§17.2.3: branch + sent-by + method (ACK → INVITE). Branches without the magic cookie
    (RFC 2543 peers) are keyed by branch, sent-by, method, Call-ID, CSeq number and From tag."""
    via = request.top_via
    if method is None:
        method = "INVITE" if request.method == "ACK" else request.method
    port = via.port or _DEFAULT_PORTS.get(via.transport, 5060)
    branch = via.branch or ""
    if branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
        return (branch, via.host.lower(), port, method)
    return (branch, via.host.lower(), port, method, request.call_id, request.cseq[0],
            _from_tag(request.headers.get("From")))


class _Transaction:
    """Timers, sending and TU calls shared by the four machines."""

    kind = ""

    def __init__(self, layer: TransactionLayer, request: Request, state: str) -> None:
        self._layer = layer
        self.request = request
        self.state = state
        self._timers: dict[str, IDelayedCall] = {}

    @property
    def timers(self) -> Timers:
        return self._layer.timers

    def _start_timer(self, name: str, delay: float, fn: Callable[[], None]) -> None:
        self._stop_timer(name)
        self._timers[name] = self._layer.clock.callLater(delay, self._fire, name, fn)

    def _stop_timer(self, *names: str) -> None:
        for name in names:
            call = self._timers.pop(name, None)
            if call is not None and call.active():
                call.cancel()

    def _stop_all_timers(self) -> None:
        self._stop_timer(*list(self._timers))

    def _fire(self, name: str, fn: Callable[[], None]) -> None:
        self._timers.pop(name, None)
        if self.state == TERMINATED:
            return
        try:
            fn()
        except Exception:
            log.failure("timer {name} of {tx!r} failed", name=name, tx=self)

    def _terminate(self) -> None:
        if self.state == TERMINATED:
            return
        self.state = TERMINATED
        self._stop_all_timers()
        self._layer._forget(self)

    def _transmit(self, message: Request | Response, target: Target) -> Exception | None:
        """Send; a failure is returned (logged if it is not a TransportError), never raised."""
        try:
            self._layer.transport.send(message, target)
        except TransportError as e:
            log.info("{tx!r}: transport error: {error}", tx=self, error=e)
            return e
        except Exception as e:
            log.failure("{tx!r}: transport send failed", tx=self)
            return e
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.request.method} {self.state} call-id={self.request.call_id!r}>"


# --------------------------------------------------------------------------- client side


class ClientTransaction(_Transaction):
    """Base of the ICT and NICT; made by :meth:`TransactionLayer.send_request`."""

    def __init__(self, layer: TransactionLayer, request: Request, target: Target,
                 on_response: Callable[[Response], None], branch: str, state: str) -> None:
        super().__init__(layer, request, state)
        self.target = target
        self.branch = branch
        self.on_response = on_response
        self.key = (branch, request.method)

    def terminate(self) -> None:
        """Stop every timer and forget the transaction; the TU is not called."""
        self._terminate()

    def _release_tu(self) -> None:
        """Drop the reference to the TU once it can no longer be called: a completed transaction
        lingers for Timer D/K (32 s / 5 s on UDP) and must not keep the TU's whole call alive
        (at 400 calls/s that is ~13,000 finished calls for the cyclic GC to walk)."""
        self.on_response = _no_tu

    def _start(self) -> None:
        raise NotImplementedError

    def _receive(self, response: Response) -> None:
        raise NotImplementedError

    def _notify(self, response: Response) -> None:
        self._layer._call_tu(self.on_response, response)

    def _local_response(self, status: int) -> Response:
        response = make_response(self.request, status)
        response.local = True
        return response

    def _send_request(self, initial: bool = False) -> bool:
        """(Re)transmit the request; on failure terminate and tell the TU with a local 503
        (on the next reactor turn for the first send, so the caller of send_request is not re-entered)."""
        error = self._transmit(self.request, self.target)
        if error is None:
            return True
        self._terminate()
        response = self._local_response(503)
        if initial:
            self._layer._call_later(self._notify, response)
        else:
            self._notify(response)
        return False

    def _timeout(self) -> None:
        """Timer B / F: a local 408."""
        self._terminate()
        self._notify(self._local_response(408))


class InviteClientTransaction(ClientTransaction):
    """§17.1.1 with RFC 6026: calling → proceeding → accepted (2xx) | completed (3xx–6xx) → terminated."""

    kind = "ict"

    def __init__(self, layer: TransactionLayer, request: Request, target: Target,
                 on_response: Callable[[Response], None], branch: str) -> None:
        super().__init__(layer, request, target, on_response, branch, CALLING)
        self._interval_a = self.timers.T1
        self.ack: Request | None = None

    def _start(self) -> None:
        if not self.target.reliable:
            self._start_timer("A", self._interval_a, self._timer_a)
        self._start_timer("B", self.timers.B, self._timeout)
        self._send_request(initial=True)

    def _timer_a(self) -> None:
        if self.state != CALLING:
            return
        if self._send_request():
            self._interval_a *= 2
            self._start_timer("A", self._interval_a, self._timer_a)

    def abandon(self, delay: float) -> None:
        """The TU gave this INVITE up (it sent a CANCEL): if no final response has come within
        ``delay`` (§9.1: 64*T1), forget the transaction without telling the TU. An ICT in
        proceeding has no timer of its own and would otherwise wait for ever."""
        if self.state == PROCEEDING:
            self._start_timer("abandon", delay, self._terminate)

    def _receive(self, response: Response) -> None:
        code = response.status
        if self.state in (CALLING, PROCEEDING):
            self._stop_timer("A", "B", "abandon")
            if code < 200:
                self.state = PROCEEDING
            elif code < 300:
                self.state = ACCEPTED
                self._start_timer("M", self.timers.M, self._terminate)
            else:
                self.state = COMPLETED
                self.ack = make_non2xx_ack(self.request, response)
                self._send_ack()
                if self.state == COMPLETED:
                    delay = self.timers.D(self.target.reliable)
                    if delay > 0:
                        self._start_timer("D", delay, self._terminate)
                    else:
                        self._terminate()
            self._notify(response)
            if self.state in (COMPLETED, TERMINATED):
                self._release_tu()  # retransmitted finals are ACKed here, never passed up
        elif self.state == ACCEPTED:
            if 200 <= code < 300:
                self._notify(response)  # RFC 6026: 2xx retransmissions and forked 2xx go to the TU
        elif self.state == COMPLETED:
            if code >= 300:
                self._send_ack()  # a retransmitted final response: the ACK was lost

    def _send_ack(self) -> None:
        assert self.ack is not None
        if self._transmit(self.ack, self.target) is not None:
            self._terminate()


class NonInviteClientTransaction(ClientTransaction):
    """§17.1.2: trying → proceeding → completed → terminated."""

    kind = "nict"

    def __init__(self, layer: TransactionLayer, request: Request, target: Target,
                 on_response: Callable[[Response], None], branch: str) -> None:
        super().__init__(layer, request, target, on_response, branch, TRYING)
        self._interval_e = self.timers.T1

    def _start(self) -> None:
        if not self.target.reliable:
            self._start_timer("E", self._interval_e, self._timer_e)
        self._start_timer("F", self.timers.F, self._timeout)
        self._send_request(initial=True)

    def _timer_e(self) -> None:
        if self.state not in (TRYING, PROCEEDING):
            return
        if self._send_request():
            if self.state == PROCEEDING:
                self._interval_e = self.timers.T2
            else:
                self._interval_e = min(2 * self._interval_e, self.timers.T2)
            self._start_timer("E", self._interval_e, self._timer_e)

    def _receive(self, response: Response) -> None:
        if self.state not in (TRYING, PROCEEDING):
            return  # completed: retransmitted final responses are absorbed
        if response.status < 200:
            self.state = PROCEEDING
        else:
            self.state = COMPLETED
            self._stop_timer("E", "F")
            delay = self.timers.K(self.target.reliable)
            if delay > 0:
                self._start_timer("K", delay, self._terminate)
            else:
                self._terminate()
        self._notify(response)
        if self.state in (COMPLETED, TERMINATED):
            self._release_tu()  # retransmitted finals are absorbed, never passed up


# --------------------------------------------------------------------------- server side


class ServerTransaction(_Transaction):
    """Base of the IST and NIST; handed to the TU by ``request_received``.

    ``on_timeout`` is called when Timer H fires (no ACK for a 3xx–6xx); ``on_transport_error``
    with the exception when a response cannot be sent (the transaction is then terminated).
    """

    def __init__(self, layer: TransactionLayer, request: Request, source: Target, key: tuple,
                 state: str) -> None:
        super().__init__(layer, request, state)
        self.source = source
        self.key = key
        self.branch = request.top_via.branch or ""
        self.last_response: Response | None = None
        self.on_timeout: Callable[[], None] | None = None
        self.on_transport_error: Callable[[Exception], None] | None = None

    def respond(self, response: Response) -> None:
        raise NotImplementedError

    def _receive(self, request: Request, source: Target) -> None:
        raise NotImplementedError

    def _send_response(self, response: Response) -> bool:
        error = self._transmit(response, self.source)
        if error is None:
            return True
        self._terminate()
        self._layer._call_tu(self.on_transport_error, error)
        return False

    def _resend_last(self) -> None:
        if self.last_response is not None:
            self._send_response(self.last_response)

    def _ignored(self, response: Response) -> None:
        log.info("{tx!r}: {response!r} from the TU ignored in state {state}",
                 tx=self, response=response, state=self.state)


class InviteServerTransaction(ServerTransaction):
    """§17.2.1 with RFC 6026: proceeding → accepted (2xx) | completed (3xx–6xx) → confirmed → terminated."""

    kind = "ist"

    def __init__(self, layer: TransactionLayer, request: Request, source: Target, key: tuple) -> None:
        super().__init__(layer, request, source, key, PROCEEDING)
        self._interval_g = self.timers.T1
        self._start_timer("Trying", TRYING_DELAY, self._auto_trying)

    def _auto_trying(self) -> None:
        if self.state == PROCEEDING and self.last_response is None:
            self.last_response = make_response(self.request, 100)
            self._send_response(self.last_response)

    def respond(self, response: Response) -> None:
        code = response.status
        if self.state == ACCEPTED and 200 <= code < 300:
            self.last_response = response  # the TU/dialog retransmits its 2xx through here
            self._send_response(response)
            return
        if self.state != PROCEEDING:
            self._ignored(response)
            return
        self._stop_timer("Trying")
        self.last_response = response
        if code < 200:
            pass
        elif code < 300:
            self.state = ACCEPTED
            self._start_timer("L", self.timers.L, self._terminate)
        else:
            self.state = COMPLETED
            if not self.source.reliable:
                self._start_timer("G", self._interval_g, self._timer_g)
            self._start_timer("H", self.timers.H, self._timer_h)
        self._send_response(response)

    def _timer_g(self) -> None:
        if self.state != COMPLETED:
            return
        if self._send_response(self.last_response):  # type: ignore[arg-type]
            self._interval_g = min(2 * self._interval_g, self.timers.T2)
            self._start_timer("G", self._interval_g, self._timer_g)

    def _timer_h(self) -> None:
        self._terminate()
        self._layer._call_tu(self.on_timeout)

    def _receive(self, request: Request, source: Target) -> None:
        if request.method == "ACK":
            if self.state == COMPLETED:
                self.state = CONFIRMED
                self._stop_timer("G", "H")
                delay = self.timers.I(self.source.reliable)
                if delay > 0:
                    self._start_timer("I", delay, self._terminate)
                else:
                    self._terminate()
            elif self.state == ACCEPTED:
                # RFC 6026 §7.1: ACKs in Accepted go to the TU (they belong to the dialog)
                self._layer._call_tu(self._layer.user.request_received, request, None, source)
            return
        if self.state in (PROCEEDING, ACCEPTED, COMPLETED):
            self._resend_last()  # a retransmitted INVITE is absorbed


class NonInviteServerTransaction(ServerTransaction):
    """§17.2.2: trying → proceeding → completed → terminated."""

    kind = "nist"

    def __init__(self, layer: TransactionLayer, request: Request, source: Target, key: tuple) -> None:
        super().__init__(layer, request, source, key, TRYING)

    def respond(self, response: Response) -> None:
        if self.state not in (TRYING, PROCEEDING):
            self._ignored(response)
            return
        self.last_response = response
        if response.status < 200:
            self.state = PROCEEDING
            self._send_response(response)
            return
        self.state = COMPLETED
        delay = self.timers.J(self.source.reliable)
        if delay > 0:
            self._start_timer("J", delay, self._terminate)
        if self._send_response(response) and delay <= 0:
            self._terminate()

    def _receive(self, request: Request, source: Target) -> None:
        if self.state in (PROCEEDING, COMPLETED):
            self._resend_last()


# --------------------------------------------------------------------------- the layer


def _no_tu(response: Response) -> None:
    """The TU of a client transaction that will not call its TU again."""


class TransactionLayer:
    """Creates, matches and forgets transactions; the transport calls :meth:`message_received`."""

    def __init__(self, clock: IReactorTime, transport: TransportSender, user: TransactionUser,
                 timers: Timers = Timers()) -> None:  # noqa: B008  (frozen, so sharing is safe)
        self.clock = clock
        self.transport = transport
        self.user = user
        self.timers = timers
        self._clients: dict[tuple, ClientTransaction] = {}
        self._servers: dict[tuple, ServerTransaction] = {}
        self._pending: set[IDelayedCall] = set()

    # ---- client side

    def send_request(self, request: Request, target: Target,
                     on_response: Callable[[Response], None]) -> ClientTransaction:
        """Start a client transaction for ``request`` (whose top Via the caller wrote; a missing
        branch is added). An ACK is not a transaction: it is sent once and the returned
        transaction is already terminated."""
        via = request.top_via
        if not via.branch:
            via.params["branch"] = new_branch()
            _set_top_via(request, via)
        branch = via.branch or ""
        tx: ClientTransaction
        if request.method == "INVITE":
            tx = InviteClientTransaction(self, request, target, on_response, branch)
        else:
            tx = NonInviteClientTransaction(self, request, target, on_response, branch)
        if request.method == "ACK":
            tx.state = TERMINATED
            tx._send_request(initial=True)
            return tx
        if tx.key in self._clients:
            raise ValueError(f"a {request.method} client transaction with branch {branch} exists")
        self._clients[tx.key] = tx
        tx._start()
        return tx

    def connection_failed(self, target: Target, reason: str) -> int:
        """A connection to ``target`` could not be made (refused, TLS handshake): the client
        transactions sent there and still without any response end now with a local 503 whose
        reason phrase names the cause (RFC 3261 §8.1.3.1), not at Timer B/F. Returns how many."""
        failed = [
            tx for tx in self._clients.values()
            if tx.target == target and tx.state in (CALLING, TRYING)
        ]
        printable = "".join(c if 32 <= ord(c) < 127 else "?" for c in reason)[:160]
        phrase = f"Service Unavailable ({printable})"
        for tx in failed:
            tx._terminate()
            response = tx._local_response(503)
            response.reason = phrase
            tx._notify(response)
        return len(failed)

    # ---- incoming

    def message_received(self, message: Request | Response, source: Target) -> None:
        try:
            if isinstance(message, Response):
                self._response_received(message, source)
            else:
                self._request_received(message, source)
        except SipParseError as e:
            log.info("dropped a message from {source}: {error}", source=source, error=e)

    def _response_received(self, response: Response, source: Target) -> None:
        branch = response.top_via.branch or ""
        key = (branch, response.cseq[1])
        tx = self._clients.get(key)
        if tx is None:
            self._call_tu(self.user.stray_response, response, source)
        else:
            tx._receive(response)

    def _request_received(self, request: Request, source: Target) -> None:
        key = _server_key(request)
        tx = self._servers.get(key)
        if tx is not None:
            tx._receive(request, source)
            return
        if request.method == "ACK":
            self._call_tu(self.user.request_received, request, None, source)
            return
        new: ServerTransaction
        if request.method == "INVITE":
            new = InviteServerTransaction(self, request, source, key)
        else:
            new = NonInviteServerTransaction(self, request, source, key)
        self._servers[key] = new
        self._call_tu(self.user.request_received, request, new, source)

    def find_invite_server_transaction(self, cancel: Request) -> ServerTransaction | None:
        """§9.2: the live INVITE server transaction a CANCEL refers to (same branch and sent-by)."""
        try:
            key = _server_key(cancel, method="INVITE")
        except SipParseError:
            return None
        tx = self._servers.get(key)
        return tx if isinstance(tx, InviteServerTransaction) else None

    # ---- bookkeeping

    def count(self) -> dict[str, int]:
        counts = {"ict": 0, "nict": 0, "ist": 0, "nist": 0}
        for tx in (*self._clients.values(), *self._servers.values()):
            counts[tx.kind] += 1
        return counts

    def close(self) -> None:
        """Cancel every timer and forget every transaction (service shutdown); the TU is not called."""
        for tx in (*self._clients.values(), *self._servers.values()):
            tx.state = TERMINATED
            tx._stop_all_timers()
        self._clients.clear()
        self._servers.clear()
        for call in self._pending:
            if call.active():
                call.cancel()
        self._pending.clear()

    def _forget(self, tx: _Transaction) -> None:
        table: dict = self._clients if isinstance(tx, ClientTransaction) else self._servers
        if table.get(tx.key) is tx:  # type: ignore[attr-defined]
            del table[tx.key]  # type: ignore[attr-defined]

    def _call_tu(self, fn: Callable[..., None] | None, *args: object) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.failure("transaction user callback {fn!r} failed", fn=fn)

    def _call_later(self, fn: Callable[..., None], *args: object) -> None:
        """Call the TU on the next reactor turn (tracked, so close() can cancel it)."""
        call: IDelayedCall

        def run() -> None:
            self._pending.discard(call)
            self._call_tu(fn, *args)

        call = self.clock.callLater(0, run)
        self._pending.add(call)
