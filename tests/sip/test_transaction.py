"""RFC 3261 §17 transactions (with RFC 6026 and §9.2) driven by a fake clock and a fake transport."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger

from b2bua.sip import transaction as txmod
from b2bua.sip.transaction import (
    MAGIC_COOKIE,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    Target,
    Timers,
    TransactionLayer,
    TransportError,
    make_cancel,
    make_non2xx_ack,
)
from b2bua.wire.sip import Request, Response, make_response, parse_message

PEER_UDP = Target("UDP", "192.0.2.1", 5060)
PEER_TCP = Target("TCP", "192.0.2.1", 5060)
ZERO = {"ict": 0, "nict": 0, "ist": 0, "nist": 0}


# --------------------------------------------------------------------------- fakes and helpers


class FakeTransport:
    """Records (time, message, target); raises TransportError while ``fail`` is set."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, Request | Response, Target]] = []
        self.fail = False

    def send(self, message: Request | Response, target: Target) -> None:
        if self.fail:
            raise TransportError("no route")
        self.sent.append((self.clock.seconds(), message, target))

    def messages(self) -> list[Request | Response]:
        return [m for _, m, _ in self.sent]

    def times(self) -> list[float]:
        return [t for t, _, _ in self.sent]

    def clear(self) -> None:
        self.sent.clear()


class FakeTU:
    def __init__(self) -> None:
        self.requests: list[tuple[Request, ServerTransaction | None, Target]] = []
        self.strays: list[tuple[Response, Target]] = []
        self.on_request = None  # optional hook called like request_received

    def request_received(self, request: Request, transaction: ServerTransaction | None,
                         source: Target) -> None:
        self.requests.append((request, transaction, source))
        if self.on_request is not None:
            self.on_request(request, transaction, source)

    def stray_response(self, response: Response, source: Target) -> None:
        self.strays.append((response, source))


@dataclass
class Env:
    clock: Clock
    transport: FakeTransport
    tu: FakeTU
    layer: TransactionLayer
    responses: list[Response] = field(default_factory=list)

    def send(self, request: Request, target: Target = PEER_UDP):
        return self.layer.send_request(request, target, self.responses.append)

    def receive(self, message: Request | Response, source: Target = PEER_UDP) -> None:
        self.layer.message_received(wire(message), source)


@pytest.fixture
def env():
    clock = Clock()
    transport = FakeTransport(clock)
    tu = FakeTU()
    e = Env(clock, transport, tu, TransactionLayer(clock, transport, tu))
    yield e
    # every test drives its transactions to the end: nothing may be left behind
    assert e.layer.count() == ZERO
    assert clock.getDelayedCalls() == []


def wire(message: Request | Response) -> Request | Response:
    """Through bytes and back, as a transport would deliver it."""
    return parse_message(bytes(message))


def make_request(method: str = "INVITE", branch: str | None = "z9hG4bKabc123", transport: str = "UDP",
                 cseq: int = 1, sent_by: str = "192.0.2.9:5060", call_id: str = "call-1@example.com",
                 from_tag: str = "ftag", routes: tuple[str, ...] = ()) -> Request:
    r = Request(method=method, uri="sip:bob@example.com")
    via = f"SIP/2.0/{transport} {sent_by};rport"
    if branch is not None:
        via += f";branch={branch}"
    r.headers.add("Via", via)
    r.headers.add("Max-Forwards", 70)
    for route in routes:
        r.headers.add("Route", route)
    r.headers.add("From", f'"Alice" <sip:alice@example.com>;tag={from_tag}')
    r.headers.add("To", "<sip:bob@example.com>")
    r.headers.add("Call-ID", call_id)
    r.headers.add("CSeq", f"{cseq} {method}")
    r.headers.add("Contact", "<sip:alice@192.0.2.9:5060>")
    return r


def answer(request: Request, status: int, to_tag: str | None = "ttag") -> Response:
    return make_response(request, status, to_tag=to_tag if status > 100 else None)


def statuses(responses: list[Response]) -> list[int]:
    return [r.status for r in responses]


def advance_to(clock: Clock, when: float) -> None:
    """Advance in small steps so each timer fires at its own time."""
    while clock.seconds() < when - 1e-9:
        clock.advance(min(0.25, when - clock.seconds()))


# --------------------------------------------------------------------------- Timers and Target


def test_target_reliable():
    assert not Target("UDP", "h", 1).reliable
    assert Target("TCP", "h", 1).reliable
    assert Target("TLS", "h", 1).reliable


def test_timer_values():
    t = Timers()
    assert (t.T1, t.T2, t.T4) == (0.5, 4.0, 5.0)
    assert t.B == t.F == t.H == t.L == t.M == 32.0
    assert (t.D(False), t.D(True)) == (32.0, 0.0)
    assert (t.I(False), t.I(True), t.K(False), t.K(True)) == (5.0, 0.0, 5.0, 0.0)
    assert (t.J(False), t.J(True)) == (32.0, 0.0)
    assert Timers(T1=0.1).B == pytest.approx(6.4)


# --------------------------------------------------------------------------- INVITE client


def test_ict_timer_a_and_b_on_udp(env):
    invite = make_request()
    tx = env.send(invite)
    assert isinstance(tx, InviteClientTransaction)
    assert tx.state == "calling" and env.layer.count()["ict"] == 1
    advance_to(env.clock, 31.9)
    # Timer A: T1, doubling without cap → sent at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5
    assert env.transport.times() == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(m is invite for m in env.transport.messages())
    assert env.responses == []
    env.clock.advance(0.1)  # Timer B = 64*T1
    assert statuses(env.responses) == [408]
    timeout = env.responses[0]
    assert timeout.local
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        assert timeout.headers.get_all(name) == invite.headers.get_all(name)
    assert tx.state == "terminated"
    assert len(env.transport.sent) == 7


def test_ict_timer_b_on_tcp_without_retransmission(env):
    tx = env.send(make_request(transport="TCP"), PEER_TCP)
    advance_to(env.clock, 31.75)
    assert len(env.transport.sent) == 1 and env.responses == []
    advance_to(env.clock, 32)
    assert statuses(env.responses) == [408] and env.responses[0].local
    assert tx.state == "terminated"


def test_ict_sets_missing_branch(env):
    invite = make_request(branch=None)
    tx = env.send(invite)
    via = invite.top_via
    assert via.branch == tx.branch
    assert tx.branch.startswith(MAGIC_COOKIE) and len(tx.branch) == len(MAGIC_COOKIE) + 20
    assert via.params["rport"] is None  # other Via params kept
    assert env.transport.messages()[0].top_via.branch == tx.branch
    tx.terminate()
    assert tx.state == "terminated"


def test_ict_keeps_given_branch_and_lower_vias(env):
    invite = make_request(branch=None)
    invite.headers.add("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKlower")
    tx = env.send(invite)
    vias = invite.headers.get_all("Via")
    assert len(vias) == 2 and vias[1] == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKlower"
    assert f"branch={tx.branch}" in vias[0]
    tx.terminate()


def test_ict_provisional_then_non2xx_final_sends_ack_and_timer_d_on_udp(env):
    invite = make_request(routes=("<sip:proxy1.example.com;lr>", "<sip:proxy2.example.com;lr>"))
    tx = env.send(invite)
    env.clock.advance(0.2)
    env.receive(answer(invite, 100, None))
    assert tx.state == "proceeding"
    env.receive(answer(invite, 180))
    assert statuses(env.responses) == [100, 180]
    advance_to(env.clock, 20)
    assert len(env.transport.sent) == 1  # Timer A stopped in proceeding, and Timer B too
    busy = answer(invite, 486)
    env.receive(busy)
    assert tx.state == "completed"
    assert statuses(env.responses) == [100, 180, 486]
    assert len(env.transport.sent) == 2
    t, ack, target = env.transport.sent[1]
    assert target == PEER_UDP and ack is tx.ack
    assert ack.method == "ACK" and ack.uri == invite.uri
    assert list(ack.headers) == [
        ("Via", invite.headers.get_all("Via")[0]),
        ("Max-Forwards", "70"),
        ("Route", "<sip:proxy1.example.com;lr>"),
        ("Route", "<sip:proxy2.example.com;lr>"),
        ("From", '"Alice" <sip:alice@example.com>;tag=ftag'),
        ("To", "<sip:bob@example.com>;tag=ttag"),
        ("Call-ID", "call-1@example.com"),
        ("CSeq", "1 ACK"),
    ]
    assert ack.body == b""
    # a retransmitted final response: the ACK again, the TU is not told
    env.clock.advance(1)
    env.receive(busy)
    assert len(env.transport.sent) == 3 and env.transport.messages()[2] is ack
    assert statuses(env.responses) == [100, 180, 486]
    advance_to(env.clock, 20 + 32 - 0.25)
    assert tx.state == "completed"
    advance_to(env.clock, 20 + 32)  # Timer D
    assert tx.state == "terminated"
    env.receive(busy)
    assert [r.status for r, _ in env.tu.strays] == [486]


def test_ict_non2xx_on_tcp_terminates_at_once(env):
    invite = make_request(transport="TCP")
    tx = env.send(invite, PEER_TCP)
    env.receive(answer(invite, 603), PEER_TCP)
    assert tx.state == "terminated"  # Timer D = 0 on a reliable transport
    assert [m.method for m in env.transport.messages()] == ["INVITE", "ACK"]
    assert statuses(env.responses) == [603]


def test_ict_final_without_provisional(env):
    invite = make_request()
    tx = env.send(invite)
    env.receive(answer(invite, 404))
    assert tx.state == "completed"
    assert [getattr(m, "method", None) for m in env.transport.messages()] == ["INVITE", "ACK"]
    advance_to(env.clock, 33)
    assert len(env.transport.sent) == 2  # no Timer A after the final response
    assert tx.state == "terminated"


def test_ict_2xx_accepted_passes_retransmissions_and_timer_m(env):
    invite = make_request()
    tx = env.send(invite)
    env.receive(answer(invite, 180))
    ok = answer(invite, 200)
    env.receive(ok)
    assert tx.state == "accepted"
    assert statuses(env.responses) == [180, 200]
    env.clock.advance(0.5)
    env.receive(ok)  # RFC 6026: the TU (dialog) sees 2xx retransmissions and ACKs them itself
    env.receive(answer(invite, 200, to_tag="fork2"))  # a forked 2xx too
    assert statuses(env.responses) == [180, 200, 200, 200]
    env.receive(answer(invite, 180))  # anything else is dropped
    assert statuses(env.responses) == [180, 200, 200, 200]
    assert [m.method for m in env.transport.messages()] == ["INVITE"]  # no ACK for 2xx here
    advance_to(env.clock, 32.25)  # Timer M
    assert tx.state == "terminated"
    env.receive(ok)  # after the transaction: a stray for the dialog layer
    assert [r.status for r, _ in env.tu.strays] == [200]
    assert len(env.responses) == 4


def test_ict_2xx_on_tcp_still_uses_timer_m(env):
    invite = make_request(transport="TCP")
    tx = env.send(invite, PEER_TCP)
    env.receive(answer(invite, 200), PEER_TCP)
    assert tx.state == "accepted"
    advance_to(env.clock, 31.75)
    assert tx.state == "accepted"
    advance_to(env.clock, 32)
    assert tx.state == "terminated"


def test_ict_transport_error_on_first_send_is_a_local_503_later(env):
    env.transport.fail = True
    invite = make_request()
    tx = env.send(invite)  # no exception into the caller
    assert tx.state == "terminated" and env.layer.count() == ZERO
    assert env.responses == []  # not re-entering the caller of send_request
    env.clock.advance(0)
    assert statuses(env.responses) == [503] and env.responses[0].local
    assert env.responses[0].headers.get("CSeq") == "1 INVITE"


def test_ict_transport_error_on_retransmission(env):
    tx = env.send(make_request())
    env.transport.fail = True
    env.clock.advance(0.5)  # Timer A retransmission fails
    assert statuses(env.responses) == [503] and env.responses[0].local
    assert tx.state == "terminated"


def test_ict_transport_error_on_ack_ends_the_transaction(env):
    invite = make_request()
    tx = env.send(invite)
    env.transport.fail = True
    env.receive(answer(invite, 486))
    assert statuses(env.responses) == [486]  # the TU still gets the final response
    assert tx.state == "terminated"


def test_ict_abandoned_in_proceeding_is_gone_64_t1_later(env):
    """§9.1: once the TU has CANCELled, an ICT with no final response is destroyed after 64*T1
    (in proceeding it has no timer of its own: without this it would live for ever)."""
    invite = make_request()
    tx = env.send(invite)
    env.receive(answer(invite, 183))
    tx.abandon(64 * 0.5)
    advance_to(env.clock, 32 - 0.01)
    assert tx.state == "proceeding"
    advance_to(env.clock, 32)
    assert tx.state == "terminated" and env.layer.count() == ZERO
    assert statuses(env.responses) == [183]  # the TU is not called
    env.receive(answer(invite, 200))
    assert len(env.tu.strays) == 1


def test_ict_abandoned_then_487_completes_normally(env):
    invite = make_request()
    tx = env.send(invite)
    env.receive(answer(invite, 180))
    tx.abandon(32)
    env.receive(answer(invite, 487, "x1"))
    assert tx.state == "completed" and statuses(env.responses) == [180, 487]
    advance_to(env.clock, 32)  # Timer D (32 s on UDP), not the abandon timer, ends it
    assert tx.state == "terminated" and env.layer.count() == ZERO


def test_ict_abandon_in_calling_leaves_it_to_timer_b(env):
    invite = make_request()
    tx = env.send(invite)
    tx.abandon(1)
    advance_to(env.clock, 2)
    assert tx.state == "calling"
    advance_to(env.clock, 32)
    assert tx.state == "terminated" and statuses(env.responses) == [408]


def test_ict_terminate_forgets_it(env):
    invite = make_request()
    tx = env.send(invite)
    env.receive(answer(invite, 183))
    tx.terminate()
    assert env.layer.count() == ZERO
    env.receive(answer(invite, 200))
    assert len(env.tu.strays) == 1


def test_make_non2xx_ack_and_make_cancel():
    invite = make_request(routes=("<sip:p.example.com;lr>",))
    ack = make_non2xx_ack(invite, answer(invite, 487, "x1"))
    assert ack.headers.get("To") == "<sip:bob@example.com>;tag=x1"
    assert ack.cseq == (1, "ACK")
    cancel = make_cancel(invite)
    assert cancel.method == "CANCEL" and cancel.uri == invite.uri
    assert list(cancel.headers) == [
        ("Via", invite.headers.get_all("Via")[0]),
        ("Max-Forwards", "70"),
        ("Route", "<sip:p.example.com;lr>"),
        ("From", '"Alice" <sip:alice@example.com>;tag=ftag'),
        ("To", "<sip:bob@example.com>"),
        ("Call-ID", "call-1@example.com"),
        ("CSeq", "1 CANCEL"),
    ]


def test_client_cancel_is_its_own_transaction(env):
    invite = make_request()
    ict = env.send(invite)
    env.receive(answer(invite, 180))
    cancel_responses: list[Response] = []
    nict = env.layer.send_request(make_cancel(invite), PEER_UDP, cancel_responses.append)
    assert isinstance(nict, NonInviteClientTransaction) and nict.branch == ict.branch
    assert env.layer.count() == {"ict": 1, "nict": 1, "ist": 0, "nist": 0}
    env.receive(answer(make_cancel(invite), 200))
    assert statuses(cancel_responses) == [200] and statuses(env.responses) == [180]
    env.receive(answer(invite, 487))
    assert statuses(env.responses) == [180, 487]
    assert env.transport.messages()[-1].method == "ACK"
    advance_to(env.clock, 33)
    assert ict.state == nict.state == "terminated"


# --------------------------------------------------------------------------- non-INVITE client


def test_nict_timer_e_schedule_and_timer_f_on_udp(env):
    register = make_request("REGISTER")
    tx = env.send(register)
    assert isinstance(tx, NonInviteClientTransaction) and tx.state == "trying"
    advance_to(env.clock, 31.9)
    times = env.transport.times()
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]
    assert times == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert env.responses == []
    advance_to(env.clock, 32)  # Timer F
    assert statuses(env.responses) == [408] and env.responses[0].local
    assert env.responses[0].headers.get("CSeq") == "1 REGISTER"
    assert tx.state == "terminated" and len(env.transport.sent) == 11


def test_nict_timer_e_is_t2_in_proceeding(env):
    options = make_request("OPTIONS")
    tx = env.send(options)
    env.clock.advance(0.25)
    env.receive(answer(options, 100, None))
    assert tx.state == "proceeding" and statuses(env.responses) == [100]
    advance_to(env.clock, 13)
    assert env.transport.times() == [0, 0.5, 4.5, 8.5, 12.5]
    env.receive(answer(options, 200))
    assert tx.state == "completed" and statuses(env.responses) == [100, 200]
    advance_to(env.clock, 17.75)
    assert tx.state == "completed"
    advance_to(env.clock, 18)  # Timer K = T4 after 13
    assert tx.state == "terminated"
    assert len(env.transport.sent) == 5


def test_nict_final_absorbs_retransmissions_and_timer_k(env):
    register = make_request("REGISTER")
    tx = env.send(register)
    ok = answer(register, 200)
    env.receive(ok)
    assert tx.state == "completed"
    env.receive(ok)
    env.receive(answer(register, 100, None))
    assert statuses(env.responses) == [200]
    advance_to(env.clock, 4.75)
    assert tx.state == "completed" and len(env.transport.sent) == 1  # no Timer E in completed
    advance_to(env.clock, 5)
    assert tx.state == "terminated"
    env.receive(ok)
    assert len(env.tu.strays) == 1


class _TU:
    """A TU object whose lifetime the test watches (a transaction must not keep it alive)."""

    def __init__(self) -> None:
        self.responses: list[Response] = []

    def on_response(self, response: Response) -> None:
        self.responses.append(response)


@pytest.mark.parametrize("method,status", [("INVITE", 407), ("INVITE", 486), ("REGISTER", 200)])
def test_completed_client_transaction_lets_go_of_its_tu(env, method, status):
    import gc
    import weakref

    request = make_request(method)
    tu = _TU()
    tx = env.layer.send_request(request, PEER_UDP, tu.on_response)
    final = answer(request, status)
    env.receive(final)
    assert tx.state == "completed" and statuses(tu.responses) == [status]
    alive = weakref.ref(tu)
    del tu
    gc.collect()
    assert alive() is None  # the lingering transaction (Timer D / K) does not hold the TU
    env.receive(final)  # a retransmitted final: absorbed (INVITE: ACKed again), nothing raised
    sent = [getattr(m, "method", None) for m in env.transport.messages()]
    assert sent == ([method, "ACK", "ACK"] if method == "INVITE" else [method])
    advance_to(env.clock, 32)
    assert tx.state == "terminated"


def test_accepted_ict_keeps_its_tu_for_2xx_retransmissions(env):
    import gc
    import weakref

    invite = make_request()
    tu = _TU()
    tx = env.layer.send_request(invite, PEER_UDP, tu.on_response)
    ok = answer(invite, 200)
    env.receive(ok)
    alive = weakref.ref(tu)
    del tu
    gc.collect()
    assert alive() is not None and tx.state == "accepted"
    env.receive(ok)
    assert statuses(alive().responses) == [200, 200]
    advance_to(env.clock, 32)
    assert tx.state == "terminated"


def test_nict_on_tcp(env):
    register = make_request("REGISTER", transport="TCP")
    tx = env.send(register, PEER_TCP)
    env.receive(answer(register, 401), PEER_TCP)
    assert tx.state == "terminated"  # Timer K = 0
    assert statuses(env.responses) == [401]
    tx2 = env.send(make_request("REGISTER", transport="TCP", cseq=2, branch="z9hG4bKsecond"), PEER_TCP)
    advance_to(env.clock, 31.75)
    assert len(env.transport.sent) == 2  # no Timer E on TCP
    advance_to(env.clock, 32)
    assert statuses(env.responses) == [401, 408] and tx2.state == "terminated"


def test_nict_transport_error_is_a_local_503(env):
    env.transport.fail = True
    tx = env.send(make_request("MESSAGE"))
    assert tx.state == "terminated"
    env.clock.advance(0)
    assert statuses(env.responses) == [503] and env.responses[0].local


def test_ack_through_send_request_is_sent_once(env):
    ack = make_request("ACK", branch=None)
    tx = env.send(ack)
    assert tx.state == "terminated" and env.layer.count() == ZERO
    assert env.transport.messages() == [ack] and ack.top_via.branch.startswith(MAGIC_COOKIE)
    advance_to(env.clock, 40)
    assert len(env.transport.sent) == 1 and env.responses == []


def test_duplicate_client_branch_is_refused(env):
    tx = env.send(make_request("OPTIONS"))
    with pytest.raises(ValueError):
        env.send(make_request("OPTIONS"))
    tx.terminate()


# --------------------------------------------------------------------------- response matching


def test_response_matching_needs_branch_and_cseq_method(env):
    invite = make_request()
    tx = env.send(invite)
    other_branch = answer(make_request(branch="z9hG4bKother"), 180)
    other_method = answer(make_request(), 200)
    other_method.headers.set("CSeq", "1 BYE")
    env.receive(other_branch)
    env.receive(other_method)
    assert env.responses == []
    assert [r.status for r, _ in env.tu.strays] == [180, 200]
    assert env.tu.strays[0][1] == PEER_UDP
    tx.terminate()


def test_malformed_message_is_dropped(env):
    r = Response(status=200)
    r.headers.add("CSeq", "1 INVITE")
    env.layer.message_received(r, PEER_UDP)  # no Via: dropped, nothing raised
    assert env.tu.strays == [] and env.tu.requests == []


# --------------------------------------------------------------------------- INVITE server


def test_ist_sends_100_trying_after_200ms(env):
    invite = make_request()
    env.receive(invite)
    (_, tx, source), = env.tu.requests
    assert isinstance(tx, InviteServerTransaction) and tx.state == "proceeding" and source == PEER_UDP
    env.clock.advance(0.19)
    assert env.transport.sent == []
    env.clock.advance(0.01)
    (_, trying, target), = env.transport.sent
    assert trying.status == 100 and target == PEER_UDP
    assert trying.headers.get("To") == "<sip:bob@example.com>"  # no tag on 100
    env.receive(invite)  # retransmission: absorbed, the 100 resent
    assert len(env.tu.requests) == 1
    assert [m.status for m in env.transport.messages()] == [100, 100]
    ringing = answer(tx.request, 180)
    tx.respond(ringing)
    env.receive(invite)
    assert env.transport.messages()[2:] == [ringing, ringing]
    tx.respond(answer(tx.request, 486))
    env.receive(make_non2xx_ack(invite, answer(invite, 486)))
    advance_to(env.clock, 6)
    assert tx.state == "terminated"


def test_ist_no_automatic_100_when_the_tu_answers_at_once(env):
    env.tu.on_request = lambda request, tx, source: tx.respond(answer(request, 180))
    env.receive(make_request())
    _, tx, _ = env.tu.requests[0]
    env.clock.advance(1)
    assert [m.status for m in env.transport.messages()] == [180]
    tx.respond(answer(tx.request, 200))
    advance_to(env.clock, 33)
    assert tx.state == "terminated"


def test_ist_no_invite_retransmission_resend_before_any_response(env):
    invite = make_request()
    env.receive(invite)
    env.clock.advance(0.1)
    env.receive(invite)  # absorbed, nothing to resend yet
    assert env.transport.sent == [] and len(env.tu.requests) == 1
    _, tx, _ = env.tu.requests[0]
    tx.respond(answer(invite, 500))
    tx.respond(answer(invite, 503))  # ignored: already completed
    assert [m.status for m in env.transport.messages()] == [500]
    env.receive(make_non2xx_ack(invite, answer(invite, 500)))
    advance_to(env.clock, 6)


def test_ist_timer_g_schedule_and_timer_h_on_udp(env):
    invite = make_request()
    env.receive(invite)
    _, tx, _ = env.tu.requests[0]
    timeouts: list[bool] = []
    tx.on_timeout = lambda: timeouts.append(True)
    env.clock.advance(0.2)  # the automatic 100
    env.transport.clear()
    busy = answer(invite, 486)
    tx.respond(busy)
    assert tx.state == "completed"
    advance_to(env.clock, 0.2 + 31.9)
    times = [round(t - 0.2, 6) for t in env.transport.times()]
    # Timer G: T1 doubling, capped at T2
    assert times == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(m is busy for m in env.transport.messages())
    assert timeouts == []
    advance_to(env.clock, 0.2 + 32)  # Timer H
    assert timeouts == [True] and tx.state == "terminated"


def test_ist_ack_confirms_and_timer_i_on_udp(env):
    invite = make_request()
    env.receive(invite)
    _, tx, _ = env.tu.requests[0]
    busy = answer(invite, 486)
    tx.respond(busy)
    env.clock.advance(0.25)
    env.receive(invite)  # a retransmitted INVITE gets the final response again
    assert env.transport.messages() == [busy, busy]
    ack = make_non2xx_ack(invite, busy)
    env.receive(ack)
    assert tx.state == "confirmed"
    assert len(env.tu.requests) == 1  # the ACK is absorbed by the transaction
    env.receive(ack)
    env.receive(invite)
    assert len(env.tu.requests) == 1
    advance_to(env.clock, 5.0)
    assert len(env.transport.sent) == 2  # Timer G stopped
    assert tx.state == "confirmed"
    advance_to(env.clock, 5.25)  # Timer I = T4
    assert tx.state == "terminated"


def test_ist_on_tcp(env):
    invite = make_request(transport="TCP")
    env.receive(invite, PEER_TCP)
    _, tx, _ = env.tu.requests[0]
    timeouts: list[bool] = []
    tx.on_timeout = lambda: timeouts.append(True)
    tx.respond(answer(invite, 480))
    advance_to(env.clock, 31.75)
    assert len(env.transport.sent) == 1  # no Timer G on TCP
    assert env.transport.sent[0][2] == PEER_TCP
    advance_to(env.clock, 32)  # Timer H still applies
    assert timeouts == [True] and tx.state == "terminated"
    # and with an ACK: Timer I = 0
    invite2 = make_request(transport="TCP", branch="z9hG4bKtwo", cseq=2)
    env.receive(invite2, PEER_TCP)
    _, tx2, _ = env.tu.requests[1]
    tx2.respond(answer(invite2, 480))
    env.receive(make_non2xx_ack(invite2, answer(invite2, 480)), PEER_TCP)
    assert tx2.state == "terminated"


def test_ist_2xx_accepted_and_timer_l(env):
    invite = make_request()
    env.receive(invite)
    _, tx, _ = env.tu.requests[0]
    ok = answer(invite, 200)
    tx.respond(ok)
    assert tx.state == "accepted"
    env.clock.advance(0.5)
    tx.respond(ok)  # the TU/dialog retransmits its 2xx through the transaction
    env.receive(invite)  # a retransmitted INVITE: absorbed, the last 2xx resent
    assert env.transport.messages() == [ok, ok, ok]
    assert len(env.tu.requests) == 1
    tx.respond(answer(invite, 486))  # no non-2xx after a 2xx
    assert len(env.transport.sent) == 3
    ack = make_request("ACK", branch="z9hG4bKackfor2xx")  # an ACK for 2xx is a new transaction
    env.receive(ack)
    assert len(env.tu.requests) == 2
    req, none, _ = env.tu.requests[1]
    assert req.method == "ACK" and none is None
    assert tx.state == "accepted"
    advance_to(env.clock, 31.75)
    assert tx.state == "accepted"
    advance_to(env.clock, 32)  # Timer L
    assert tx.state == "terminated"
    env.receive(invite)  # after Timer L, an INVITE with that branch is new again
    assert len(env.tu.requests) == 3
    _, tx3, _ = env.tu.requests[2]
    tx3.respond(answer(invite, 200))
    advance_to(env.clock, 64.5)


def test_ist_ack_matching_an_accepted_transaction_goes_to_the_tu(env):
    invite = make_request()
    env.receive(invite)
    _, tx, _ = env.tu.requests[0]
    tx.respond(answer(invite, 200))
    env.receive(make_request("ACK"))  # same branch (a non-compliant peer): RFC 6026 passes it up
    assert [(r.method, t) for r, t, _ in env.tu.requests] == [("INVITE", tx), ("ACK", None)]
    advance_to(env.clock, 32)


def test_stray_ack_goes_to_the_tu_without_transaction(env):
    env.receive(make_request("ACK", branch="z9hG4bKnothing"))
    (req, tx, source), = env.tu.requests
    assert req.method == "ACK" and tx is None and source == PEER_UDP
    assert env.layer.count() == ZERO


def test_ist_transport_error_tells_the_tu(env):
    invite = make_request(transport="TCP")
    env.receive(invite, PEER_TCP)
    _, tx, _ = env.tu.requests[0]
    errors: list[Exception] = []
    tx.on_transport_error = errors.append
    env.transport.fail = True
    tx.respond(answer(invite, 200))  # nothing raised into the TU
    assert len(errors) == 1 and isinstance(errors[0], TransportError)
    assert tx.state == "terminated"


def test_ist_automatic_100_transport_error(env):
    env.receive(make_request())
    _, tx, _ = env.tu.requests[0]
    env.transport.fail = True
    env.clock.advance(0.2)
    assert tx.state == "terminated"


# --------------------------------------------------------------------------- non-INVITE server


def test_nist_on_udp(env):
    options = make_request("OPTIONS")
    env.receive(options)
    (_, tx, _), = env.tu.requests
    assert isinstance(tx, NonInviteServerTransaction) and tx.state == "trying"
    env.clock.advance(1)
    assert env.transport.sent == []  # no automatic 100 for non-INVITE
    env.receive(options)  # absorbed in trying, nothing to resend
    assert env.transport.sent == [] and len(env.tu.requests) == 1
    trying = answer(options, 100, None)
    tx.respond(trying)
    assert tx.state == "proceeding"
    env.receive(options)
    assert env.transport.messages() == [trying, trying]
    ok = answer(options, 200)
    tx.respond(ok)
    assert tx.state == "completed"
    env.receive(options)
    assert env.transport.messages() == [trying, trying, ok, ok]
    tx.respond(answer(options, 500))  # ignored
    assert len(env.transport.sent) == 4
    assert len(env.tu.requests) == 1
    advance_to(env.clock, 1 + 31.75)
    assert tx.state == "completed" and len(env.transport.sent) == 4  # no retransmission of its own
    advance_to(env.clock, 1 + 32)  # Timer J = 64*T1
    assert tx.state == "terminated"
    env.receive(options)  # a new transaction now
    assert len(env.tu.requests) == 2
    env.tu.requests[1][1].respond(answer(options, 200))
    advance_to(env.clock, 70)


def test_nist_on_tcp(env):
    register = make_request("REGISTER", transport="TCP")
    env.receive(register, PEER_TCP)
    _, tx, _ = env.tu.requests[0]
    tx.respond(answer(register, 200))
    assert tx.state == "terminated"  # Timer J = 0
    assert env.transport.sent[0][2] == PEER_TCP


def test_nist_transport_error(env):
    options = make_request("OPTIONS")
    env.receive(options)
    _, tx, _ = env.tu.requests[0]
    env.transport.fail = True
    tx.respond(answer(options, 200))
    assert tx.state == "terminated"


# --------------------------------------------------------------------------- request matching, CANCEL


def test_server_matching_by_branch_sent_by_and_method(env):
    env.receive(make_request("OPTIONS"))
    env.receive(make_request("OPTIONS", sent_by="192.0.2.10:5060"))  # other sent-by: new
    env.receive(make_request("OPTIONS", sent_by="192.0.2.9"))  # default port 5060: same
    env.receive(make_request("INFO"))  # other method: new
    assert [r.method for r, _, _ in env.tu.requests] == ["OPTIONS", "OPTIONS", "INFO"]
    assert env.layer.count()["nist"] == 3
    for _, tx, _ in env.tu.requests:
        tx.respond(answer(tx.request, 200))
    advance_to(env.clock, 32)


def test_cancel_matching(env):
    invite = make_request()
    env.receive(invite)
    _, ist, _ = env.tu.requests[0]
    ist.respond(answer(invite, 180))
    cancel = make_cancel(invite)
    env.receive(cancel)
    req, cancel_tx, _ = env.tu.requests[1]
    assert req.method == "CANCEL" and isinstance(cancel_tx, NonInviteServerTransaction)
    assert cancel_tx is not ist
    assert env.layer.count() == {"ict": 0, "nict": 0, "ist": 1, "nist": 1}
    assert env.layer.find_invite_server_transaction(req) is ist
    other = make_cancel(make_request(branch="z9hG4bKelse"))
    assert env.layer.find_invite_server_transaction(other) is None
    elsewhere = make_cancel(make_request(sent_by="192.0.2.77:5070"))
    assert env.layer.find_invite_server_transaction(elsewhere) is None
    cancel_tx.respond(answer(req, 200))
    env.receive(cancel)  # retransmitted CANCEL: the 200 again, not the INVITE's 180
    assert env.transport.messages()[-1].cseq == (1, "CANCEL")
    ist.respond(answer(invite, 487))
    env.receive(make_non2xx_ack(invite, answer(invite, 487)))
    assert ist.state == "confirmed"
    advance_to(env.clock, 33)
    assert env.layer.find_invite_server_transaction(req) is None


def test_rfc2543_requests_without_magic_cookie(env):
    invite = make_request(branch="oldbranch1")
    env.receive(invite)
    env.receive(invite)  # retransmission matched by branch, sent-by, Call-ID, CSeq and From tag
    assert len(env.tu.requests) == 1
    _, tx, _ = env.tu.requests[0]
    assert env.layer.find_invite_server_transaction(make_cancel(invite)) is tx
    tx.respond(answer(invite, 486))
    env.receive(make_non2xx_ack(invite, answer(invite, 486)))
    assert tx.state == "confirmed"
    no_branch = make_request("OPTIONS", branch=None)
    env.receive(no_branch)
    env.receive(no_branch)
    env.receive(make_request("OPTIONS", branch=None, cseq=2))  # other CSeq: a new transaction
    env.receive(make_request("OPTIONS", branch=None, from_tag="other"))  # other From tag: new
    assert [r.method for r, _, _ in env.tu.requests] == ["INVITE", "OPTIONS", "OPTIONS", "OPTIONS"]
    for _, t, _ in env.tu.requests[1:]:
        t.respond(answer(t.request, 200))
    advance_to(env.clock, 33)


# --------------------------------------------------------------------------- robustness


def test_failing_tu_callbacks_are_logged_not_raised(env, monkeypatch):
    events: list[dict] = []
    monkeypatch.setattr(txmod, "log", Logger(observer=events.append))

    def boom(*args):
        raise RuntimeError("TU bug")

    env.tu.request_received = boom
    env.tu.stray_response = boom
    env.receive(make_request("OPTIONS"))  # a NIST exists although the TU failed
    assert env.layer.count()["nist"] == 1
    invite = make_request(branch="z9hG4bKout")
    tx = env.layer.send_request(invite, PEER_UDP, boom)
    env.receive(answer(invite, 180))
    env.receive(answer(invite, 486))
    assert tx.state == "completed"  # carried on
    env.receive(answer(make_request(branch="z9hG4bKnone"), 200))  # stray → failing TU
    advance_to(env.clock, 40)  # timers (F of nothing, D, J) run; Timer B would call boom too
    assert sum(1 for e in events if "log_failure" in e) == 4
    env.layer.close()


def test_timeout_callback_failure_is_contained(env, monkeypatch):
    monkeypatch.setattr(txmod, "log", Logger(observer=lambda e: None))
    env.receive(make_request())
    _, tx, _ = env.tu.requests[0]
    tx.on_timeout = lambda: 1 / 0
    tx.respond(answer(tx.request, 500))
    advance_to(env.clock, 33)
    assert tx.state == "terminated"


def test_close_cancels_everything(env):
    env.send(make_request())
    env.send(make_request("REGISTER", branch="z9hG4bKreg"))
    env.receive(make_request(branch="z9hG4bKin"))
    env.receive(make_request("OPTIONS", branch="z9hG4bKopt"))
    env.transport.fail = True
    env.send(make_request("OPTIONS", branch="z9hG4bKfail"))  # a pending local 503
    assert env.layer.count() == {"ict": 1, "nict": 1, "ist": 1, "nist": 1}
    assert env.clock.getDelayedCalls()
    env.layer.close()
    assert env.layer.count() == ZERO and env.clock.getDelayedCalls() == []
    assert env.responses == []


def test_counts_return_to_zero_after_a_mixed_workload(env):
    invites = [make_request(branch=f"z9hG4bKi{i}", call_id=f"c{i}") for i in range(5)]
    for i, inv in enumerate(invites):
        env.send(inv, PEER_UDP if i % 2 else PEER_TCP)
    for i in range(5):
        env.receive(make_request("MESSAGE", branch=f"z9hG4bKm{i}", call_id=f"m{i}"))
    assert env.layer.count() == {"ict": 5, "nict": 0, "ist": 0, "nist": 5}
    env.receive(answer(invites[0], 200), PEER_TCP)
    env.receive(answer(invites[1], 486))
    for _, tx, _ in env.tu.requests:
        tx.respond(answer(tx.request, 202))
    advance_to(env.clock, 70)
    assert statuses(env.responses) == [200, 486, 408, 408, 408]
