"""INVITE session usage (RFC 3261 §13–15, RFC 6026, RFC 4028), driven with task.Clock and a fake stack."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock

from b2bua.sip.invite import InviteSession, InviteStateError
from b2bua.sip.transaction import Target
from b2bua.wire.digest import DigestClient
from b2bua.wire.sip import Request, make_response
from b2bua.wire.sipuri import SipUri

T1 = 0.5
TIMER_C = 180.0
PBX = Target("UDP", "10.0.0.1", 5060)
CHALLENGE = 'Digest realm="pbx.example", nonce="abc123", qop="auth", algorithm=MD5'
OFFER = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
ANSWER = b"v=0\r\no=- 2 2 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"
OFFER2 = ANSWER.replace(b"5000", b"5002")
ANSWER2 = OFFER.replace(b"4000", b"4002")
OFFER3 = OFFER.replace(b"4000", b"4004")
RR1 = "<sip:p1.example;lr>"
RR2 = "<sip:p2.example:5070;lr>"
REMOTE_CONTACT = "<sip:bob@10.0.0.9:5062>"
LOCAL_CONTACT = "<sip:mp-abc@127.0.0.1:5070>"


class ClientTxn:
    def __init__(self):
        self.abandoned = []  # delays given to abandon() (§9.1: the INVITE was CANCELled)

    def abandon(self, delay):
        self.abandoned.append(delay)


class ServerTxn:
    def __init__(self, source=PBX):
        self.source = source
        self.responses = []

    def respond(self, response):
        self.responses.append(response)

    @property
    def statuses(self):
        return [r.status for r in self.responses]


class FakeStack:
    domain = "pbx.example"

    def __init__(self):
        self.reactor = Clock()
        self.config = SimpleNamespace(t1=T1, timer_c=TIMER_C, session_expires=0)
        self.requests = []  # (request, on_response, target) through send_request
        self.raw = []  # (message, target, time) through send (retransmissions)
        self.dialogs = {}
        self.forgotten = []
        self._branch = 0
        self._invites = []

    def aor(self, user):
        return f"sip:{user}@{self.domain}"

    def contact_uri(self, contact_user):
        return SipUri(host="127.0.0.1", user=contact_user, port=5070)

    def new_request(self, method, uri, from_uri, from_tag, to_uri, call_id, cseq, target=None, to_tag=None):
        self._branch += 1
        r = Request(method=method, uri=uri)
        r.headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bK{self._branch}")
        r.headers.add("Max-Forwards", 70)
        r.headers.add("From", f"<{from_uri}>;tag={from_tag}")
        r.headers.add("To", f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else ""))
        r.headers.add("Call-ID", call_id)
        r.headers.add("CSeq", f"{cseq} {method}")
        return r

    def send_request(self, request, on_response, target=None):
        self.requests.append((request, on_response, target))
        if request.method == "INVITE":
            self._invites.append(request)
        return ClientTxn()

    def send(self, message, target):
        self.raw.append((message, target, self.reactor.seconds()))

    def register_dialog(self, session):
        self.dialogs[session.dialog.key] = session

    def forget_session(self, session):
        self.forgotten.append(session)
        if session.dialog is not None:
            self.dialogs.pop(session.dialog.key, None)

    # -- helpers for the tests
    def sent(self, method):
        return [r for r, _, _ in self.requests if r.method == method]

    def last(self, method):
        return next(item for item in reversed(self.requests) if item[0].method == method)

    def respond(self, method, status, headers=(), sdp=None, to_tag="rtag", local=False):
        request, on_response, _ = self.last(method)
        resp = make_response(request, status, to_tag=to_tag if status > 100 else None, headers=list(headers))
        if sdp is not None:
            resp.headers.add("Content-Type", "application/sdp")
            resp.body = sdp
        resp.local = local
        on_response(resp)
        return resp


class Listener:
    def __init__(self):
        self.events = []
        self.offer_answer = ANSWER2
        self.request_status = 200
        self.new_offer = OFFER3

    def invite_progress(self, session, status, sdp):
        self.events.append(("progress", status, sdp))

    def invite_answered(self, session, sdp):
        self.events.append(("answered", sdp))

    def invite_ended(self, session, status, reason_headers, by, why):
        self.events.append(("ended", status, reason_headers, by, why))

    def invite_offer(self, session, sdp):
        self.events.append(("offer", sdp))
        return self.offer_answer

    def invite_request(self, session, request):
        self.events.append(("request", request.method))
        return self.request_status

    def invite_make_offer(self, session):
        self.events.append(("make_offer",))
        return self.new_offer

    def invite_answer(self, session, sdp):
        self.events.append(("ack_answer", sdp))


def make_reg():
    return SimpleNamespace(user="1000", contact_user="mp-abc", digest=DigestClient("1000", password="1234"))


def ended(listener):
    return [e for e in listener.events if e[0] == "ended"]


def run_until(clock, when):
    """Advance ``clock`` to ``when``, stopping at every call on the way (Clock.advance runs the calls
    due but schedules their follow-ups from the end of the step, not from when they were due)."""
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= when]
        if not due:
            break
        clock.advance(min(due) - clock.seconds())
    clock.advance(when - clock.seconds())


def no_timers(stack):
    return stack.reactor.getDelayedCalls() == []


# == UAC ================================================================================================
def outgoing(headers=()):
    stack, listener = FakeStack(), Listener()
    session = InviteSession.outgoing(stack, make_reg(), "sip:2000@pbx.example", OFFER, listener, headers)
    session.start()
    return stack, listener, session


def answer_2xx(stack, record_routes=(RR1, RR2), extra=(), sdp=ANSWER):
    headers = [("Record-Route", rr) for rr in record_routes] + [("Contact", REMOTE_CONTACT), *extra]
    return stack.respond("INVITE", 200, headers, sdp=sdp)


def confirmed_uac(extra=()):
    stack, listener, session = outgoing()
    answer_2xx(stack, extra=extra)
    assert session.state == "confirmed"
    return stack, listener, session


def stack_invite(stack):
    return stack._invites[-1]


def test_uac_invite_has_sdp_contact_supported():
    stack, listener, session = outgoing(headers=[("X-Test", "1")])
    (invite,) = stack.sent("INVITE")
    assert session.state == "calling"
    assert invite.uri == "sip:2000@pbx.example"
    assert invite.body == OFFER and invite.headers.get("Content-Type") == "application/sdp"
    assert invite.headers.get("Contact") == LOCAL_CONTACT
    assert "timer" in invite.headers.get("Supported")
    assert invite.headers.get("X-Test") == "1"
    assert invite.headers.get("From") == f"<sip:1000@pbx.example>;tag={session.local_tag}"
    assert invite.headers.get("To") == "<sip:2000@pbx.example>"
    assert "Authorization" not in invite.headers and "Proxy-Authorization" not in invite.headers
    assert session.call_id == invite.call_id
    stack.respond("INVITE", 100)
    assert listener.events == []


def test_uac_407_is_answered_once_then_auth_failure():
    stack, listener, session = outgoing()
    first = stack.sent("INVITE")[0]
    stack.respond("INVITE", 407, [("Proxy-Authenticate", CHALLENGE)])
    second = stack.sent("INVITE")[1]
    auth = second.headers.get("Proxy-Authorization")
    assert auth.startswith("Digest ") and 'username="1000"' in auth and 'uri="sip:2000@pbx.example"' in auth
    assert "Authorization" not in second.headers
    assert second.cseq == (first.cseq[0] + 1, "INVITE")
    assert second.call_id == first.call_id
    assert second.headers.get("From") == first.headers.get("From")
    assert second.body == OFFER
    assert listener.events == [] and session.state == "calling"
    stack.respond("INVITE", 407, [("Proxy-Authenticate", CHALLENGE.replace("abc123", "def456"))])
    assert len(stack.sent("INVITE")) == 2
    assert ended(listener) == [("ended", 407, [], "remote", "rejected")]
    assert session.state == "terminated" and stack.forgotten == [session]
    assert no_timers(stack)


def test_uac_401_uses_authorization_and_the_ack_carries_it():
    stack, listener, session = outgoing()
    stack.respond("INVITE", 401, [("WWW-Authenticate", CHALLENGE)])
    invite = stack.sent("INVITE")[1]
    assert "Authorization" in invite.headers and "Proxy-Authorization" not in invite.headers
    answer_2xx(stack)
    ack = stack.last("ACK")[0]
    assert ack.headers.get("Authorization") == invite.headers.get("Authorization")


def test_uac_provisionals_report_progress():
    stack, listener, session = outgoing()
    stack.respond("INVITE", 180)
    assert listener.events == [("progress", 180, None)]
    assert session.state == "early"
    stack.respond("INVITE", 183, sdp=ANSWER)
    assert listener.events[-1] == ("progress", 183, ANSWER)
    assert session.remote_sdp == ANSWER


def test_uac_2xx_acks_along_the_route_set_and_answers():
    stack, listener, session = outgoing()
    invite = stack.sent("INVITE")[0]
    stack.respond("INVITE", 180)
    answer_2xx(stack)
    ack, _, target = stack.last("ACK")
    assert ack.cseq == (invite.cseq[0], "ACK")
    assert ack.uri == "sip:bob@10.0.0.9:5062"
    assert ack.headers.get_all("Route") == [RR2, RR1]
    assert target == Target("UDP", "p2.example", 5070)
    assert ack.headers.get("To") == "<sip:2000@pbx.example>;tag=rtag"
    assert ack.call_id == invite.call_id
    assert stack.dialogs == {(invite.call_id, session.local_tag, "rtag"): session}
    assert listener.events[-1] == ("answered", ANSWER)
    assert session.state == "confirmed" and session.remote_sdp == ANSWER
    assert no_timers(stack)  # no session timer asked for

    # a retransmitted 2xx (our ACK was lost) gets the very same ACK again
    answer_2xx(stack)
    assert stack.raw == [(ack, target, 0)]
    assert len(stack.sent("ACK")) == 1
    assert [e for e in listener.events if e[0] == "answered"] == [("answered", ANSWER)]


def test_uac_2xx_without_sdp_keeps_early_sdp():
    stack, listener, session = outgoing()
    stack.respond("INVITE", 183, sdp=ANSWER)
    answer_2xx(stack, sdp=None)
    assert listener.events[-1] == ("answered", ANSWER)


def test_uac_2xx_without_contact_ends_the_call():
    stack, listener, session = outgoing()
    stack.respond("INVITE", 200)
    assert session.state == "terminated"
    (event,) = ended(listener)
    assert event[1] == 200 and event[3] == "remote" and event[4].startswith("bad 2xx")


def test_uac_486_is_rejected_by_remote_with_reason():
    stack, listener, session = outgoing()
    stack.respond("INVITE", 180)
    stack.respond("INVITE", 486, [("Reason", "Q.850;cause=17")])
    assert ended(listener) == [("ended", 486, ["Q.850;cause=17"], "remote", "rejected")]
    assert session.state == "terminated" and stack.forgotten == [session]
    assert no_timers(stack)


def test_uac_local_408_is_timeout():
    stack, listener, session = outgoing()
    stack.respond("INVITE", 408, to_tag=None, local=True)
    assert ended(listener) == [("ended", 408, [], "local", "timeout")]


def test_uac_hangup_before_provisional_defers_cancel():
    stack, listener, session = outgoing()
    invite = stack.sent("INVITE")[0]
    session.hangup()
    assert session.state == "cancelling"
    assert stack.sent("CANCEL") == []  # §9.1: not before a provisional response
    stack.respond("INVITE", 180)
    (cancel,) = stack.sent("CANCEL")
    assert cancel.uri == invite.uri
    assert cancel.cseq == (invite.cseq[0], "CANCEL")
    assert cancel.headers.get("Via") == invite.headers.get("Via")  # same branch
    assert cancel.headers.get("From") == invite.headers.get("From")
    assert cancel.headers.get("To") == invite.headers.get("To")
    assert cancel.call_id == invite.call_id
    assert listener.events == []  # no progress reported once cancelling
    stack.respond("CANCEL", 200)
    stack.respond("INVITE", 487)
    assert ended(listener) == [("ended", 487, [], "local", "cancelled")]
    assert session.ended_by == "local"
    assert no_timers(stack)


def test_uac_hangup_in_early_cancels_at_once():
    stack, listener, session = outgoing()
    stack.respond("INVITE", 183, sdp=ANSWER)
    session.hangup()
    assert len(stack.sent("CANCEL")) == 1
    session.hangup()  # a second hangup does nothing more
    assert len(stack.sent("CANCEL")) == 1
    stack.respond("INVITE", 487)
    assert ended(listener) == [("ended", 487, [], "local", "cancelled")]
    assert no_timers(stack)


def test_uac_hangup_after_100_trying_cancels_at_once():
    """§9.1: any provisional response, 100 Trying included, allows the CANCEL."""
    stack, listener, session = outgoing()
    invite = stack.sent("INVITE")[0]
    stack.respond("INVITE", 100)
    session.hangup()
    (cancel,) = stack.sent("CANCEL")
    assert cancel.headers.get("Via") == invite.headers.get("Via")
    assert session._txn.abandoned == [64 * T1]  # §9.1: the INVITE transaction goes at 64*T1
    stack.respond("INVITE", 487)
    assert ended(listener) == [("ended", 487, [], "local", "cancelled")]
    assert no_timers(stack)


def test_uac_cancel_queued_before_any_provisional_goes_out_on_100():
    stack, listener, session = outgoing()
    session.hangup()
    assert stack.sent("CANCEL") == []
    stack.respond("INVITE", 100)
    assert len(stack.sent("CANCEL")) == 1
    stack.respond("INVITE", 180)  # a later provisional sends no second CANCEL
    assert len(stack.sent("CANCEL")) == 1 and listener.events == []


def test_uac_timer_c_after_180_cancels_and_ends_the_call():
    """Timer C (§16.6): a 180 and then nothing (a PBX that died) is given up after timer_c."""
    stack, listener, session = outgoing()
    stack.respond("INVITE", 100)
    stack.respond("INVITE", 180)
    stack.reactor.advance(TIMER_C - 1)
    assert stack.sent("CANCEL") == [] and ended(listener) == []
    stack.respond("INVITE", 183)  # each provisional (but 100) re-arms it
    stack.reactor.advance(TIMER_C - 1)
    stack.respond("INVITE", 100)  # a 100 does not
    stack.reactor.advance(1)
    (cancel,) = stack.sent("CANCEL")
    assert cancel.cseq == (stack.sent("INVITE")[0].cseq[0], "CANCEL")
    assert ended(listener) == [("ended", 408, [], "local", "no progress")]
    assert session.state == "terminated" and no_timers(stack)
    assert session._txn.abandoned == [64 * T1]  # the INVITE transaction does not live for ever
    answer_2xx(stack)  # an answer that crosses the CANCEL is ACKed and BYEd by what is left
    assert len(stack.sent("ACK")) == 1 and len(stack.sent("BYE")) == 1
    assert len(ended(listener)) == 1


def test_uac_timer_c_without_provisional_ends_without_cancel():
    stack, listener, session = outgoing()
    stack.config.timer_c = 5.0  # shorter than Timer B: as if a 408 had come (§16.8)
    session._arm_timer_c()
    stack.reactor.advance(5.0)
    assert stack.sent("CANCEL") == []
    assert ended(listener) == [("ended", 408, [], "local", "no progress")]


def test_uac_timer_c_stops_on_answer_rejection_and_hangup():
    stack, listener, session = outgoing()
    stack.respond("INVITE", 180)
    answer_2xx(stack)
    assert no_timers(stack)
    stack, listener, session = outgoing()
    stack.respond("INVITE", 180)
    stack.respond("INVITE", 486)
    assert no_timers(stack)
    stack, listener, session = outgoing()
    stack.respond("INVITE", 180)
    session.hangup()
    assert [c.getTime() for c in stack.reactor.getDelayedCalls()] == [64 * T1]  # only the CANCEL guard


def test_x_fs_support_on_our_invite_and_on_our_responses_to_an_invite():
    """FreeSWITCH reads X-FS-Support from the INVITE it gets and from the 180/183/200 to its
    INVITE; with send_info in it, uuid_send_info reaches us without fs_send_unsupported_info."""
    stack, listener, session = outgoing()
    assert b"\r\nX-FS-Support: send_info\r\n" in bytes(stack.sent("INVITE")[0])  # FreeSWITCH's spelling
    stack, listener, session, txn = incoming()
    session.ring()
    session.ring(183)
    session.answer(ANSWER)
    assert [r.headers.get("X-FS-Support") for r in txn.responses] == ["send_info"] * 3
    stack, listener, session, txn = incoming()
    session.reject(486)
    assert "X-FS-Support" not in txn.responses[0].headers


def test_timer_c_must_be_positive():
    from b2bua.config import ConfigError, SipConfig

    assert SipConfig().timer_c == 180.0
    for bad in (0, -1.0):
        with pytest.raises(ConfigError, match="timer_c"):
            SipConfig(timer_c=bad)


def test_session_expires_is_off_or_at_least_min_se():
    from b2bua.config import ConfigError, SipConfig

    assert SipConfig().session_expires == 1800
    assert SipConfig(session_expires=0).session_expires == 0
    for bad in (-1, 30, 89, 86401):
        with pytest.raises(ConfigError, match="sip.session_expires"):
            SipConfig(session_expires=bad)


def test_uac_200_crossing_cancel_is_acked_and_byed():
    stack, listener, session = outgoing()
    invite = stack.sent("INVITE")[0]
    stack.respond("INVITE", 180)
    session.hangup()
    answer_2xx(stack)
    (ack,) = stack.sent("ACK")
    (bye,) = stack.sent("BYE")
    assert ack.cseq == (invite.cseq[0], "ACK")
    assert bye.cseq == (invite.cseq[0] + 1, "BYE")
    assert bye.headers.get_all("Route") == [RR2, RR1] and bye.uri == "sip:bob@10.0.0.9:5062"
    assert stack.last("BYE")[2] == Target("UDP", "p2.example", 5070)
    assert ("answered", ANSWER) not in listener.events
    assert ended(listener) == [("ended", 487, [], "local", "cancelled")]
    assert stack.dialogs == {}
    assert no_timers(stack)


@pytest.mark.parametrize("provisional", [True, False])
def test_uac_cancel_guard_fires_after_64_t1(provisional):
    stack, listener, session = outgoing()
    if provisional:
        stack.respond("INVITE", 180)
    session.hangup()
    assert len(stack.sent("CANCEL")) == (1 if provisional else 0)
    stack.reactor.advance(64 * T1 - 0.01)
    assert ended(listener) == []
    stack.reactor.advance(0.01)
    assert ended(listener) == [("ended", 487, [], "local", "cancelled")]
    assert no_timers(stack)


def test_uac_late_2xx_after_termination_is_acked_and_byed():
    stack, listener, session = outgoing()
    invite = stack.sent("INVITE")[0]
    stack.respond("INVITE", 180)
    session.hangup()
    stack.reactor.advance(64 * T1)
    assert session.state == "terminated"
    answer_2xx(stack)
    (ack,) = stack.sent("ACK")
    (bye,) = stack.sent("BYE")
    assert ack.cseq == (invite.cseq[0], "ACK") and bye.headers.get("To").endswith("tag=rtag")
    assert stack.last("BYE")[2] == Target("UDP", "p2.example", 5070)
    assert len(ended(listener)) == 1
    assert stack.dialogs == {}


def test_uac_2xx_retransmission_after_bye_is_acked_again_without_a_second_bye():
    stack, listener, session = confirmed_uac()
    txn = session._txn
    (ack,) = stack.sent("ACK")
    session.hangup()
    assert len(stack.sent("BYE")) == 1
    ok = answer_2xx(stack)  # our ACK was lost: the far end retransmits its 2xx (through the session)
    txn.on_response(ok)  # and through what the INVITE transaction now calls
    assert [(m, t) for m, t, _ in stack.raw] == [(ack, Target("UDP", "p2.example", 5070))] * 2
    assert len(stack.sent("BYE")) == 1 and len(stack.sent("ACK")) == 1
    assert len(ended(listener)) == 1


def test_uac_ended_session_is_not_kept_alive_by_its_invite_transaction():
    import gc
    import weakref

    stack, listener, session = confirmed_uac()
    txn = session._txn
    session.hangup()
    stack.requests.clear()  # the fake stack's own references to the session
    stack.forgotten.clear()
    alive = weakref.ref(session)
    del session, listener
    gc.collect()
    assert alive() is None
    late = make_response(stack_invite(stack), 200, to_tag="fork2", headers=[("Contact", REMOTE_CONTACT)])
    txn.on_response(late)  # a forked 2xx after the end: ACKed and BYEd, by what the txn kept
    assert [r.method for r, _, _ in stack.requests] == ["ACK", "BYE"]
    assert all(r.headers.get("To").endswith("tag=fork2") for r, _, _ in stack.requests)


def test_uac_hangup_when_confirmed_sends_bye():
    stack, listener, session = confirmed_uac()
    session.hangup()
    (bye,) = stack.sent("BYE")
    assert bye.headers.get("To").endswith(";tag=rtag")
    assert ended(listener) == [("ended", None, [], "local", "bye")]
    assert stack.dialogs == {}
    assert no_timers(stack)


# == UAS ================================================================================================
def incoming_invite(headers=(), sdp=OFFER, cseq=1):
    r = Request(method="INVITE", uri="sip:mp-abc@127.0.0.1:5070")
    r.headers.add("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKin1")
    r.headers.add("Record-Route", RR1)
    r.headers.add("Record-Route", RR2)
    r.headers.add("From", "<sip:3000@pbx.example>;tag=ftag")
    r.headers.add("To", "<sip:1000@pbx.example>")
    r.headers.add("Call-ID", "in-call@pbx")
    r.headers.add("CSeq", f"{cseq} INVITE")
    r.headers.add("Contact", "<sip:3000@10.0.0.1:5060>")
    for name, value in headers:
        r.headers.add(name, value)
    if sdp is not None:
        r.headers.add("Content-Type", "application/sdp")
        r.body = sdp
    return r


def incoming(headers=()):
    stack, listener = FakeStack(), Listener()
    txn = ServerTxn()
    request = incoming_invite(headers)
    session = InviteSession.incoming(stack, make_reg(), request, txn, listener)
    return stack, listener, session, txn


def in_dialog(session, method, cseq, headers=(), sdp=None):
    """A request from the remote party inside the session's dialog."""
    d = session.dialog
    r = Request(method=method, uri="sip:mp-abc@127.0.0.1:5070")
    r.headers.add("Via", f"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK{method}{cseq}")
    r.headers.add("From", f"<{d.remote_uri}>;tag={d.remote_tag}")
    r.headers.add("To", f"<{d.local_uri}>;tag={d.local_tag}")
    r.headers.add("Call-ID", d.call_id)
    r.headers.add("CSeq", f"{cseq} {method}")
    for name, value in headers:
        r.headers.add(name, value)
    if sdp is not None:
        r.headers.add("Content-Type", "application/sdp")
        r.body = sdp
    return r


def deliver(session, method, cseq, headers=(), sdp=None):
    txn = ServerTxn()
    session.handle_request(in_dialog(session, method, cseq, headers, sdp), txn)
    return txn


def ack(session, cseq, sdp=None):
    session.handle_request(in_dialog(session, "ACK", cseq, sdp=sdp), None)


def confirmed_uas(headers=()):
    stack, listener, session, txn = incoming(headers)
    session.answer(ANSWER)
    ack(session, 1)
    assert session.state == "confirmed"
    return stack, listener, session, txn


def test_uas_incoming_registers_the_dialog():
    stack, listener, session, txn = incoming()
    assert session.state == "incoming" and session.role == "uas"
    assert stack.dialogs == {("in-call@pbx", session.local_tag, "ftag"): session}
    assert session.remote_sdp == OFFER
    assert session.dialog.route_set == [RR1, RR2]


def test_uas_ring_sends_180_with_tag_contact_and_record_route():
    stack, listener, session, txn = incoming()
    session.ring()
    (r,) = txn.responses
    assert r.status == 180
    assert r.headers.get("To") == f"<sip:1000@pbx.example>;tag={session.local_tag}"
    assert r.headers.get("Contact") == LOCAL_CONTACT
    assert r.headers.get_all("Record-Route") == [RR1, RR2]
    assert r.headers.get("Via") == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKin1"
    session.ring(183)
    assert txn.statuses == [180, 183]
    assert session.state == "incoming"


def test_uas_answer_retransmits_2xx_until_ack():
    stack, listener, session, txn = incoming()
    session.answer(ANSWER)
    (ok,) = txn.responses
    assert ok.status == 200 and ok.body == ANSWER
    assert ok.headers.get("Content-Type") == "application/sdp"
    assert ok.headers.get("Contact") == LOCAL_CONTACT
    assert ok.headers.get_all("Record-Route") == [RR1, RR2]
    assert session.state == "answering"
    with pytest.raises(InviteStateError):
        session.answer(ANSWER)
    session.ring()  # too late to ring: ignored
    assert len(txn.responses) == 1
    run_until(stack.reactor, 20)
    # T1, 2T1, 4T1, then capped at T2 = 4 s: 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5
    assert [t for _, _, t in stack.raw] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]
    assert all(m is ok and target == PBX for m, target, _ in stack.raw)
    ack(session, 2)  # an ACK for some other CSeq does not stop it
    assert session.state == "answering"
    ack(session, 1)
    assert session.state == "confirmed"
    assert listener.events == [("answered", OFFER)]
    assert no_timers(stack)
    stack.reactor.advance(60)
    assert len(stack.raw) == 7


def test_uas_ack_with_sdp_is_the_remote_sdp():
    stack, listener, session, txn = incoming()
    session.invite.body = b""
    session.remote_sdp = None
    session.answer(ANSWER)
    ack(session, 1, sdp=OFFER2)
    assert listener.events == [("answered", OFFER2)]


def late_offer_incoming():
    stack, listener = FakeStack(), Listener()
    txn = ServerTxn()
    request = incoming_invite(sdp=None)
    session = InviteSession.incoming(stack, make_reg(), request, txn, listener)
    return stack, listener, session, txn


def test_uas_late_offer_the_ack_answer_goes_to_the_listener():
    """An INVITE without SDP: our 200 carries the offer and the ACK the answer (RFC 3264 §5)."""
    stack, listener, session, txn = late_offer_incoming()
    assert session.late_offer and session.remote_sdp is None
    session.answer(OFFER)
    assert txn.responses[0].body == OFFER
    ack(session, 1, sdp=ANSWER)
    assert listener.events == [("answered", ANSWER)] and session.remote_sdp == ANSWER


def test_uas_late_offer_ack_without_answer_is_reported_as_none():
    stack, listener, session, txn = late_offer_incoming()
    session.answer(OFFER)
    ack(session, 1)
    assert listener.events == [("answered", None)]  # the call hangs up on it


def test_uas_early_offer_is_not_a_late_offer():
    stack, listener, session, txn = incoming()
    assert not session.late_offer


def test_uas_no_ack_within_64_t1_ends_with_bye():
    stack, listener, session, txn = incoming()
    session.answer(ANSWER)
    run_until(stack.reactor, 64 * T1 - 0.01)
    assert stack.sent("BYE") == [] and session.state == "answering"
    assert len(stack.raw) == 10  # 0.5, 1.5, 3.5, 7.5 … 31.5
    run_until(stack.reactor, 64 * T1)
    (bye,) = stack.sent("BYE")
    assert bye.uri == "sip:3000@10.0.0.1:5060" and bye.headers.get_all("Route") == [RR1, RR2]
    assert bye.headers.get("From") == f"<sip:1000@pbx.example>;tag={session.local_tag}"
    assert bye.headers.get("To") == "<sip:3000@pbx.example>;tag=ftag"
    assert stack.last("BYE")[2] == Target("UDP", "p1.example", 5060)
    assert ended(listener) == [("ended", 408, [], "local", "no ACK")]
    assert no_timers(stack)
    assert stack.dialogs == {}


def test_uas_reject():
    stack, listener, session, txn = incoming()
    session.ring()
    session.reject(486)
    assert txn.statuses == [180, 486]
    assert txn.responses[-1].headers.get("To").endswith(f";tag={session.local_tag}")
    assert "Contact" not in txn.responses[-1].headers
    assert ended(listener) == [("ended", 486, [], "local", "rejected")]
    assert stack.dialogs == {} and stack.forgotten == [session]
    with pytest.raises(InviteStateError):
        session.reject(486)
    assert no_timers(stack)


def test_uas_hangup_while_incoming_rejects():
    stack, listener, session, txn = incoming()
    session.hangup()
    assert txn.statuses == [486]
    assert ended(listener) == [("ended", 486, [], "local", "rejected")]


def test_uas_cancelled():
    stack, listener, session, txn = incoming()
    session.ring()
    cancel = Request(method="CANCEL", uri=session.invite.uri)
    for name in ("Via", "From", "To", "Call-ID"):
        cancel.headers.add(name, session.invite.headers.get(name))
    cancel.headers.add("CSeq", "1 CANCEL")
    cancel.headers.add("Reason", 'SIP;cause=200;text="Call completed elsewhere"')
    cancel_txn = ServerTxn()
    session.cancelled(cancel_txn, cancel)
    assert cancel_txn.statuses == [200]
    assert cancel_txn.responses[0].headers.get("To").endswith(f";tag={session.local_tag}")
    assert txn.statuses == [180, 487]
    assert txn.responses[-1].headers.get("To").endswith(f";tag={session.local_tag}")
    assert ended(listener) == [
        ("ended", 487, ['SIP;cause=200;text="Call completed elsewhere"'], "remote", "cancelled")
    ]
    assert session.ended_by == "remote"
    assert no_timers(stack)


def test_uas_cancel_after_answer_only_answers_the_cancel():
    stack, listener, session, txn = incoming()
    session.answer(ANSWER)
    cancel = Request(method="CANCEL", uri=session.invite.uri)
    cancel.headers.add("CSeq", "1 CANCEL")
    cancel_txn = ServerTxn()
    session.cancelled(cancel_txn, cancel)
    assert cancel_txn.statuses == [200]
    assert txn.statuses == [200]
    assert ended(listener) == [] and session.state == "answering"


def test_uas_bye_in_early_dialog_answers_the_invite_487():
    stack, listener, session, txn = incoming()
    session.ring()
    bye = deliver(session, "BYE", 2)
    assert bye.statuses == [200]
    assert txn.statuses == [180, 487]  # §15.1.2: pending requests of the dialog still get a response
    assert ended(listener) == [("ended", None, [], "remote", "bye")]


# == in-dialog requests received =========================================================================
@pytest.fixture(params=["uac", "uas"])
def call(request):
    """A confirmed call in either role: (stack, listener, session, next remote CSeq)."""
    if request.param == "uac":
        stack, listener, session = confirmed_uac()
        return stack, listener, session, 1
    stack, listener, session, _ = confirmed_uas()
    return stack, listener, session, 2


def test_bye_ends_the_call(call):
    stack, listener, session, cseq = call
    txn = deliver(session, "BYE", cseq, headers=[("Reason", "Q.850;cause=16")])
    assert txn.statuses == [200]
    assert txn.responses[0].headers.get("To").endswith(f";tag={session.local_tag}")
    assert ended(listener) == [("ended", None, ["Q.850;cause=16"], "remote", "bye")]
    assert session.ended_by == "remote"
    assert stack.dialogs == {}
    assert no_timers(stack)


def test_reinvite_with_offer_is_answered_and_retransmitted_until_ack(call):
    stack, listener, session, cseq = call
    txn = deliver(session, "INVITE", cseq, headers=[("Contact", "<sip:moved@10.0.0.7:5070>")], sdp=OFFER2)
    assert ("offer", OFFER2) in listener.events
    (ok,) = txn.responses
    assert ok.status == 200 and ok.body == ANSWER2
    assert ok.headers.get("Content-Type") == "application/sdp"
    assert ok.headers.get("Contact") == LOCAL_CONTACT
    assert session.remote_sdp == OFFER2 and session.local_sdp == ANSWER2
    assert session.dialog.remote_target == "sip:moved@10.0.0.7:5070"
    stack.reactor.advance(T1)
    stack.reactor.advance(2 * T1)
    assert [(m.status, t) for m, _, t in stack.raw] == [(200, T1), (200, 3 * T1)]
    ack(session, cseq)
    assert no_timers(stack)
    assert session.state == "confirmed"
    assert [e for e in listener.events if e[0] == "answered"] == [listener.events[0]]  # not re-announced


def test_reinvite_without_sdp_gets_a_fresh_offer_and_the_ack_answer_goes_to_the_listener(call):
    stack, listener, session, cseq = call
    txn = deliver(session, "INVITE", cseq)
    (ok,) = txn.responses
    assert ok.status == 200 and ok.body == OFFER3  # a new offer from the call, not the old SDP
    assert ok.headers.get("Content-Type") == "application/sdp"
    assert listener.events[-1] == ("make_offer",) and session.local_sdp == OFFER3
    ack(session, cseq, sdp=ANSWER)  # the answer comes in the ACK
    assert listener.events[-1] == ("ack_answer", ANSWER)
    assert session.remote_sdp == ANSWER
    ack(session, cseq, sdp=ANSWER)  # a retransmitted ACK is not a second answer
    assert [e for e in listener.events if e[0] == "ack_answer"] == [("ack_answer", ANSWER)]
    assert no_timers(stack) and session.state == "confirmed"


def test_reinvite_without_sdp_whose_ack_has_no_answer_tells_the_listener(call):
    stack, listener, session, cseq = call
    deliver(session, "INVITE", cseq)
    ack(session, cseq)
    assert listener.events[-1] == ("ack_answer", None)  # the call decides: it hangs up


def test_reinvite_without_sdp_is_488_when_no_offer_can_be_made(call):
    stack, listener, session, cseq = call
    listener.new_offer = None
    txn = deliver(session, "INVITE", cseq)
    assert txn.statuses == [488] and session.state == "confirmed"
    assert no_timers(stack)


def test_refused_offer_is_488(call):
    stack, listener, session, cseq = call
    before = session.local_sdp
    listener.offer_answer = None
    txn = deliver(session, "INVITE", cseq, sdp=OFFER2)
    assert txn.statuses == [488]
    assert session.local_sdp == before
    assert no_timers(stack)
    assert session.state == "confirmed"


def test_reinvite_while_ours_is_pending_is_491(call):
    stack, listener, session, cseq = call
    d = session.reinvite(OFFER)
    txn = deliver(session, "INVITE", cseq, sdp=OFFER2)
    assert txn.statuses == [491]
    txn = deliver(session, "UPDATE", cseq + 1, sdp=OFFER2)
    assert txn.statuses == [491]
    assert not any(e[0] == "offer" for e in listener.events)
    assert not d.called


def test_reinvite_while_our_2xx_awaits_ack_is_491():
    stack, listener, session, txn = incoming()
    session.answer(ANSWER)
    r = deliver(session, "INVITE", 2, sdp=OFFER2)
    assert r.statuses == [491]


def test_update_is_answered_without_ack(call):
    stack, listener, session, cseq = call
    txn = deliver(session, "UPDATE", cseq, sdp=OFFER2)
    (ok,) = txn.responses
    assert ok.status == 200 and ok.body == ANSWER2
    assert ok.headers.get("Content-Type") == "application/sdp"
    assert "Allow" in ok.headers
    assert session.remote_sdp == OFFER2
    stack.reactor.advance(64 * T1)
    assert stack.raw == []
    assert session.state == "confirmed"
    assert no_timers(stack)


def test_update_without_sdp_has_no_body(call):
    stack, listener, session, cseq = call
    txn = deliver(session, "UPDATE", cseq)
    assert txn.statuses == [200] and txn.responses[0].body == b""
    assert "Content-Type" not in txn.responses[0].headers


@pytest.mark.parametrize("method", ["INFO", "MESSAGE", "NOTIFY"])
def test_info_message_notify_ask_the_listener(call, method):
    stack, listener, session, cseq = call
    listener.request_status = 415
    txn = deliver(session, method, cseq)
    assert txn.statuses == [415]
    assert listener.events[-1] == ("request", method)
    listener.request_status = 200
    txn = deliver(session, method, cseq + 1)
    assert txn.statuses == [200]


def test_options_is_200_without_the_listener(call):
    stack, listener, session, cseq = call
    before = list(listener.events)
    txn = deliver(session, "OPTIONS", cseq)
    assert txn.statuses == [200]
    assert listener.events == before


def test_unknown_method_is_501(call):
    stack, listener, session, cseq = call
    txn = deliver(session, "SUBSCRIBE", cseq)
    assert txn.statuses == [501]
    assert session.state == "confirmed"


def test_lower_cseq_is_500(call):
    stack, listener, session, cseq = call
    assert deliver(session, "INFO", cseq + 5).statuses == [200]
    txn = deliver(session, "INFO", cseq + 4)
    assert txn.statuses == [500]
    txn = deliver(session, "BYE", cseq + 5)
    assert txn.statuses == [500]
    assert session.state == "confirmed"


def test_requests_without_transaction_are_ignored(call):
    stack, listener, session, cseq = call
    session.handle_request(in_dialog(session, "BYE", cseq), None)
    assert session.state == "confirmed"


# == requests we send in the dialog =====================================================================
def test_in_dialog_request_answers_one_challenge(call):
    stack, listener, session, _ = call
    results = []
    d = session.request(
        "INFO", headers=[("X-A", "b")], body=b"Signal=1", content_type="application/dtmf-relay"
    )
    d.addCallback(results.append)
    first, _, target = stack.last("INFO")
    assert first.headers.get("X-A") == "b" and first.body == b"Signal=1"
    assert first.headers.get("Content-Type") == "application/dtmf-relay"
    assert first.headers.get("To").endswith(f";tag={session.dialog.remote_tag}")
    assert target == session.dialog.next_hop()
    stack.respond("INFO", 100)
    stack.respond("INFO", 401, [("WWW-Authenticate", CHALLENGE)])
    second = stack.last("INFO")[0]
    assert second is not first and second.cseq[0] == first.cseq[0] + 1
    assert 'uri="%s"' % first.uri in second.headers.get("Authorization")
    assert second.body == b"Signal=1" and second.headers.get("X-A") == "b"
    assert results == []
    stack.respond("INFO", 401, [("WWW-Authenticate", CHALLENGE)])  # refused again: given up
    assert [r.status for r in results] == [401]
    assert len(stack.sent("INFO")) == 2


def test_in_dialog_request_407_then_200(call):
    stack, listener, session, _ = call
    results = []
    session.request("MESSAGE").addCallback(results.append)
    stack.respond("MESSAGE", 407, [("Proxy-Authenticate", CHALLENGE)])
    assert "Proxy-Authorization" in stack.last("MESSAGE")[0].headers
    stack.respond("MESSAGE", 200)
    assert [r.status for r in results] == [200]


def test_request_without_dialog_fails():
    stack, listener, session = outgoing()
    failures = []
    session.request("INFO").addErrback(failures.append)
    assert failures and failures[0].check(InviteStateError)


# == our re-INVITE ======================================================================================
def test_our_reinvite_200_acks_and_fires(call):
    stack, listener, session, _ = call
    results = []
    session.reinvite(OFFER2).addCallback(results.append)
    reinvite, _, target = stack.last("INVITE")
    assert reinvite.body == OFFER2 and reinvite.headers.get("Content-Type") == "application/sdp"
    assert reinvite.headers.get("Contact") == LOCAL_CONTACT
    assert reinvite.headers.get("To").endswith(f";tag={session.dialog.remote_tag}")
    assert target == session.dialog.next_hop()
    stack.respond("INVITE", 100)
    stack.respond("INVITE", 200, [("Contact", "<sip:moved@10.0.0.8>")], sdp=ANSWER2,
                  to_tag=session.dialog.remote_tag)
    ack_request, _, ack_target = stack.last("ACK")
    assert ack_request.cseq == (reinvite.cseq[0], "ACK")
    assert ack_request.uri == "sip:moved@10.0.0.8"
    assert results == [(200, ANSWER2)]
    assert session.local_sdp == OFFER2 and session.remote_sdp == ANSWER2
    acks = len(stack.sent("ACK"))
    stack.respond("INVITE", 200, sdp=ANSWER2, to_tag=session.dialog.remote_tag)  # retransmission
    assert len(stack.sent("ACK")) == acks + 1 and results == [(200, ANSWER2)]
    assert no_timers(stack)


def test_our_reinvite_in_wrong_state_fails():
    stack, listener, session = outgoing()
    failures = []
    session.reinvite(OFFER2).addErrback(failures.append)
    assert failures[0].check(InviteStateError)


def test_our_reinvite_while_pending_fails(call):
    stack, listener, session, _ = call
    session.reinvite(OFFER2)
    failures = []
    session.reinvite(OFFER2).addErrback(failures.append)
    assert failures[0].check(InviteStateError)


@pytest.mark.parametrize("draw", ["low", "high"])
def test_our_reinvite_491_is_retried_once_after_a_random_wait(call, draw, monkeypatch):
    """§14.1: the owner of the Call-ID (we, when we sent the first INVITE) waits 2.1–4 s, the
    other side 0–2 s. ``draw`` pins random.uniform to either end of the range it is given."""
    stack, listener, session, _ = call
    ranges = []

    def uniform(a, b):
        ranges.append((a, b))
        return a if draw == "low" else b

    monkeypatch.setattr("b2bua.sip.invite.random.uniform", uniform)
    low, high = (2.1, 4.0) if session.role == "uac" else (0.0, 2.0)
    wait = low if draw == "low" else high
    results = []
    session.reinvite(OFFER2).addCallback(results.append)
    first = stack.last("INVITE")[0]
    stack.respond("INVITE", 491, to_tag=session.dialog.remote_tag)
    assert results == [] and ranges == [(low, high)]
    (glare,) = stack.reactor.getDelayedCalls()
    due = glare.getTime()
    assert due - stack.reactor.seconds() == pytest.approx(wait)
    if wait > 0:
        stack.reactor.advance(wait - 0.01)
        assert stack.last("INVITE")[0] is first
    stack.reactor.advance(due - stack.reactor.seconds())
    second = stack.last("INVITE")[0]
    assert second is not first and second.cseq[0] == first.cseq[0] + 1 and second.body == OFFER2
    stack.respond("INVITE", 491, to_tag=session.dialog.remote_tag)  # not retried again
    assert results == [(491, None)]
    assert no_timers(stack) and session.state == "confirmed"
    assert len(stack.sent("INVITE")) == (2 if session.role == "uas" else 3)


def test_our_reinvite_401_is_resent_with_credentials(call):
    stack, listener, session, _ = call
    results = []
    session.reinvite(OFFER2).addCallback(results.append)
    first = stack.last("INVITE")[0]
    stack.respond("INVITE", 401, [("WWW-Authenticate", CHALLENGE)], to_tag=session.dialog.remote_tag)
    second = stack.last("INVITE")[0]
    assert second is not first and second.cseq[0] == first.cseq[0] + 1
    assert "Authorization" in second.headers and second.body == OFFER2
    stack.respond("INVITE", 200, sdp=ANSWER2, to_tag=session.dialog.remote_tag)
    assert results == [(200, ANSWER2)]
    assert stack.last("ACK")[0].cseq == (second.cseq[0], "ACK")


@pytest.mark.parametrize("status", [481, 408])
def test_our_reinvite_481_or_408_ends_the_call(call, status):
    stack, listener, session, _ = call
    results = []
    session.reinvite(OFFER2).addCallback(results.append)
    stack.respond("INVITE", status, to_tag=session.dialog.remote_tag, local=status == 408)
    assert results == [(status, None)]
    assert len(stack.sent("BYE")) == 1
    assert ended(listener) == [("ended", status, [], "remote", "re-INVITE failed")]
    assert no_timers(stack)


def test_our_reinvite_other_failure_keeps_the_call(call):
    stack, listener, session, _ = call
    before = session.local_sdp
    results = []
    session.reinvite(OFFER2).addCallback(results.append)
    stack.respond("INVITE", 488, to_tag=session.dialog.remote_tag)
    assert results == [(488, None)]
    assert session.state == "confirmed" and session.local_sdp == before
    assert stack.sent("BYE") == []


def test_call_ending_fires_a_pending_reinvite(call):
    stack, listener, session, cseq = call
    results = []
    session.reinvite(OFFER2).addCallback(results.append)
    deliver(session, "BYE", cseq)
    assert results == [(487, None)]


# == session timers (RFC 4028) ==========================================================================
def test_uas_session_timer_answer_and_expiry():
    stack, listener, session, txn = incoming([("Session-Expires", "120;refresher=uac"),
                                              ("Supported", "timer")])
    session.answer(ANSWER)
    ok = txn.responses[0]
    assert ok.headers.get("Session-Expires") == "120;refresher=uac"
    assert ok.headers.get("Require") == "timer"
    ack(session, 1)
    # not the refresher: the session expires at 120 - min(32, 120/3) s without a refresh
    stack.reactor.advance(120 - 32 - 0.01)
    assert session.state == "confirmed" and stack.sent("BYE") == []
    stack.reactor.advance(0.01)
    assert len(stack.sent("BYE")) == 1
    assert ended(listener) == [("ended", 408, [], "local", "session timer expired")]
    assert no_timers(stack)


def test_uas_refresh_reinvite_resets_the_session_timer():
    stack, listener, session, txn = incoming([("Session-Expires", "120;refresher=uac"),
                                              ("Supported", "timer")])
    session.answer(ANSWER)
    ack(session, 1)
    stack.reactor.advance(60)
    r = deliver(session, "INVITE", 2, headers=[("Session-Expires", "120;refresher=uac"),
                                              ("Supported", "timer")], sdp=OFFER2)
    assert r.statuses == [200]
    assert r.responses[0].headers.get("Session-Expires") == "120;refresher=uac"
    ack(session, 2)
    stack.reactor.advance(88 - 0.01)
    assert session.state == "confirmed"
    # an UPDATE refresh (no SDP) resets it too
    r = deliver(session, "UPDATE", 3, headers=[("Session-Expires", "120;refresher=uac")])
    assert r.statuses == [200]
    stack.reactor.advance(88 - 0.01)
    assert session.state == "confirmed" and stack.sent("BYE") == []
    stack.reactor.advance(0.01)
    assert ended(listener) == [("ended", 408, [], "local", "session timer expired")]
    assert no_timers(stack)


def test_uas_is_refresher_when_the_caller_has_no_timer_support():
    stack, listener, session, txn = incoming([("Session-Expires", "100")])
    session.answer(ANSWER)
    ok = txn.responses[0]
    assert ok.headers.get("Session-Expires") == "100;refresher=uas"
    assert "Require" not in ok.headers
    ack(session, 1)
    stack.reactor.advance(50)
    refresh = stack.last("INVITE")[0]
    assert refresh is not session.invite and refresh.body == ANSWER
    # we send this re-INVITE, so as its UAC we are the "uac" refresher (RFC 4028 §7.4)
    assert refresh.headers.get("Session-Expires") == "100;refresher=uac"
    stack.respond("INVITE", 200, sdp=OFFER, to_tag="ftag")
    stack.reactor.advance(50)
    assert len(stack.sent("INVITE")) == 2
    session.hangup()
    assert no_timers(stack)


def test_uas_small_session_expires_is_raised_to_min_se():
    stack, listener, session, txn = incoming(
        [("Session-Expires", "30;refresher=uac"), ("Supported", "timer")]
    )
    session.answer(ANSWER)
    assert txn.responses[0].headers.get("Session-Expires") == "90;refresher=uac"


def test_uac_session_timer_refreshes_at_half():
    stack, listener, session = confirmed_uac(extra=[("Session-Expires", "90;refresher=uac"),
                                                    ("Require", "timer")])
    stack.reactor.advance(45 - 0.01)
    assert len(stack.sent("INVITE")) == 1
    stack.reactor.advance(0.01)
    refresh = stack.last("INVITE")[0]
    assert len(stack.sent("INVITE")) == 2
    assert refresh.headers.get("Session-Expires") == "90;refresher=uac"
    assert refresh.body == OFFER and refresh.headers.get("To").endswith(";tag=rtag")
    stack.respond("INVITE", 200, sdp=ANSWER)
    assert stack.last("ACK")[0].cseq == (refresh.cseq[0], "ACK")
    assert session.state == "confirmed"
    stack.reactor.advance(45)
    assert len(stack.sent("INVITE")) == 3
    session.hangup()
    assert no_timers(stack)


def test_uac_not_refresher_stays_so_after_the_remote_refreshes():
    stack, listener, session = confirmed_uac(extra=[("Session-Expires", "90;refresher=uas")])
    stack.reactor.advance(40)
    # the remote refreshes; in its re-INVITE it is the UAC, hence refresher=uac
    r = deliver(session, "INVITE", 1, headers=[("Session-Expires", "90;refresher=uac"),
                                              ("Supported", "timer")], sdp=OFFER2)
    assert r.responses[0].headers.get("Session-Expires") == "90;refresher=uac"
    ack(session, 1)
    stack.reactor.advance(60 - 0.01)
    assert len(stack.sent("INVITE")) == 1  # we never refresh: the remote does
    assert session.state == "confirmed"
    stack.reactor.advance(0.01)
    assert ended(listener) == [("ended", 408, [], "local", "session timer expired")]
    assert no_timers(stack)


def outgoing_asking(session_expires=1800):
    stack, listener = FakeStack(), Listener()
    stack.config.session_expires = session_expires
    session = InviteSession.outgoing(stack, make_reg(), "sip:2000@pbx.example", OFFER, listener)
    session.start()
    return stack, listener, session


def test_uac_invite_asks_for_a_session_timer():
    """A session timer whenever the PBX supports one: our INVITE asks (RFC 4028 §7.1), the UAS
    picks the refresher; with sip.session_expires 0 it asks for none."""
    stack, listener, session = outgoing_asking(1800)
    (invite,) = stack.sent("INVITE")
    assert "timer" in invite.headers.get("Supported")
    assert invite.headers.get("Session-Expires") == "1800"
    assert invite.headers.get("Min-SE") == "90"
    stack, listener, session = outgoing_asking(0)
    assert "Session-Expires" not in stack.sent("INVITE")[0].headers


def test_uac_422_asks_again_with_the_far_ends_min_se():
    stack, listener, session = outgoing_asking(100)
    first = stack.sent("INVITE")[0]
    stack.respond("INVITE", 422, [("Min-SE", "600")])
    second = stack.sent("INVITE")[1]
    assert second.cseq == (first.cseq[0] + 1, "INVITE") and second.call_id == first.call_id
    assert second.headers.get("Session-Expires") == "600" and second.headers.get("Min-SE") == "600"
    assert ended(listener) == []
    # a 422 that asks for no more than we did is final (no loop)
    stack.respond("INVITE", 422, [("Min-SE", "600")])
    assert len(stack.sent("INVITE")) == 2
    assert ended(listener) == [("ended", 422, [], "remote", "rejected")]
    assert no_timers(stack)


def test_uac_session_timer_chosen_by_the_uas_expires_without_refresh():
    stack, listener, session = outgoing_asking(1800)
    answer_2xx(stack, extra=[("Session-Expires", "1800;refresher=uas"), ("Require", "timer")])
    assert session.state == "confirmed"
    run_until(stack.reactor, 1800 - 32 - 0.01)
    assert len(stack.sent("INVITE")) == 1 and stack.sent("BYE") == []  # the PBX refreshes, not us
    run_until(stack.reactor, 1800 - 32)
    assert len(stack.sent("BYE")) == 1
    assert ended(listener) == [("ended", 408, [], "local", "session timer expired")]
    assert no_timers(stack)


def test_uac_2xx_without_session_expires_has_no_session_timer():
    """§7.2: the UAS did not take the timer: there is none, whatever we asked for."""
    stack, listener, session = outgoing_asking(1800)
    answer_2xx(stack)
    assert session.state == "confirmed" and no_timers(stack)


def test_uas_asks_for_a_session_timer_when_the_pbx_supports_them_without_asking():
    """RFC 4028 §9: an INVITE with Supported: timer and no Session-Expires (the PBX can do them
    but asks for none): our 2xx asks, the PBX refreshes; no refresh ends the call."""
    stack, listener, session, txn = incoming([("Supported", "timer, 100rel")])
    stack.config.session_expires = 1800
    session.answer(ANSWER)
    ok = txn.responses[0]
    assert ok.headers.get("Session-Expires") == "1800;refresher=uac"
    assert ok.headers.get("Require") == "timer"
    ack(session, 1)
    run_until(stack.reactor, 1000)
    r = deliver(session, "UPDATE", 2, headers=[("Session-Expires", "1800;refresher=uac")])
    assert r.statuses == [200] and r.responses[0].headers.get("Session-Expires") == "1800;refresher=uac"
    run_until(stack.reactor, 1000 + 1800 - 32 - 0.01)
    assert session.state == "confirmed" and stack.sent("INVITE") == []
    run_until(stack.reactor, 1000 + 1800 - 32)
    assert len(stack.sent("BYE")) == 1
    assert ended(listener) == [("ended", 408, [], "local", "session timer expired")]
    assert no_timers(stack)


def test_uas_timer_asked_for_respects_the_callers_min_se():
    stack, listener, session, txn = incoming([("Supported", "timer"), ("Min-SE", "2400")])
    stack.config.session_expires = 1800
    session.answer(ANSWER)
    assert txn.responses[0].headers.get("Session-Expires") == "2400;refresher=uac"


def test_uas_asks_for_no_timer_when_the_pbx_does_not_support_them():
    stack, listener, session, txn = incoming()
    stack.config.session_expires = 1800
    session.answer(ANSWER)
    ok = txn.responses[0]
    assert "Session-Expires" not in ok.headers and "Require" not in ok.headers
    ack(session, 1)
    assert no_timers(stack)


def test_refresher_whose_refresh_fails_ends_the_call_at_expiry():
    """We refresh at half the interval; a refresh refused (500, not 408/481) does not keep the
    session alive: without a successful refresh it ends at the interval (§10), BYE sent."""
    stack, listener, session = confirmed_uac(extra=[("Session-Expires", "90;refresher=uac")])
    run_until(stack.reactor, 45)
    assert len(stack.sent("INVITE")) == 2
    stack.respond("INVITE", 500, to_tag="rtag")
    assert session.state == "confirmed"
    run_until(stack.reactor, 60 - 0.01)
    assert stack.sent("BYE") == []
    run_until(stack.reactor, 60)
    assert len(stack.sent("BYE")) == 1
    assert ended(listener) == [("ended", 408, [], "local", "session timer expired")]
    assert no_timers(stack)


def test_refresher_busy_with_another_reinvite_still_ends_a_dead_session():
    """A hold re-INVITE outstanding when the refresh is due (the PBX died): the refresh is not
    sent, and the session still ends at expiry instead of staying up for ever."""
    stack, listener, session = confirmed_uac(extra=[("Session-Expires", "90;refresher=uac")])
    run_until(stack.reactor, 40)
    session.reinvite(OFFER2)  # never answered
    run_until(stack.reactor, 60)
    assert len(stack.sent("BYE")) == 1
    assert ended(listener) == [("ended", 408, [], "local", "session timer expired")]


def test_hangup_with_a_reason_puts_it_on_the_bye():
    stack, listener, session = confirmed_uac()
    session.hangup(reason='FreeSWITCH;cause=604;text="MEDIA_TIMEOUT"')
    (bye,) = stack.sent("BYE")
    assert bye.headers.get("Reason") == 'FreeSWITCH;cause=604;text="MEDIA_TIMEOUT"'
    assert ended(listener) == [("ended", None, [], "local", "bye")]


def test_hangup_while_2xx_is_unacknowledged_waits_for_the_ack_then_byes():
    stack, listener, session, txn = incoming([("Session-Expires", "120;refresher=uac")])
    session.answer(ANSWER)
    stack.reactor.advance(1)
    session.hangup()
    assert ended(listener) == [] and stack.sent("BYE") == []  # RFC 3261 §15: not before the ACK
    ack(session, 1)
    assert len(stack.sent("BYE")) == 1
    assert ended(listener) == [("ended", None, [], "local", "bye")]
    assert no_timers(stack)


def test_ended_session_lets_go_of_its_listener():
    # The call (listener) holds its session; the session must not hold the call once ended, or
    # every ended call is a reference cycle that only the cyclic GC (long pauses) can free.
    import gc
    import weakref

    stack, listener, session = confirmed_uac()
    listener.session = session  # like Call.invite
    gone = weakref.ref(listener)
    session.hangup()
    assert ended(listener) == [("ended", None, [], "local", "bye")]
    enabled = gc.isenabled()
    gc.disable()
    try:
        del listener
        assert gone() is None  # freed by reference counting alone
    finally:
        if enabled:
            gc.enable()
    # what still reaches the ended session (a late request, a late 2xx) finds nobody home
    assert session.listener.invite_request(session, Request(method="INFO", uri="sip:x@y")) == 481
    assert session.listener.invite_offer(session, OFFER) is None
