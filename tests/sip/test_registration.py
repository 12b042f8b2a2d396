"""REGISTER client state machine, driven with task.Clock and a recording fake stack."""

from __future__ import annotations

import hashlib
import random

from twisted.internet.task import Clock

from b2bua.sip.registration import STOP_TIMEOUT, Registration
from b2bua.wire.digest import DigestClient
from b2bua.wire.sip import Request, make_response
from b2bua.wire.sipuri import SipUri

CHALLENGE = 'Digest realm="127.0.0.1", nonce="abc123", qop="auth", algorithm=MD5'


class FakeTxn:
    def __init__(self):
        self.terminated = False

    def terminate(self):
        self.terminated = True


class FakeStack:
    registrar_uri = "sip:127.0.0.1:5080"

    def __init__(self):
        self.reactor = Clock()
        self.sent: list[tuple[Request, object]] = []
        self.forgotten = []

    def aor(self, user):
        return f"sip:{user}@127.0.0.1"

    def contact_uri(self, contact_user):
        return SipUri(host="127.0.0.1", user=contact_user, port=5070)

    def new_request(self, method, uri, from_uri, from_tag, to_uri, call_id, cseq, target=None, to_tag=None):
        r = Request(method=method, uri=uri)
        r.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bKx")
        r.headers.add("From", f"<{from_uri}>;tag={from_tag}")
        r.headers.add("To", f"<{to_uri}>")
        r.headers.add("Call-ID", call_id)
        r.headers.add("CSeq", f"{cseq} {method}")
        return r

    def send_request(self, request, on_response, target=None):
        self.sent.append((request, on_response))
        return FakeTxn()

    def forget_registration(self, reg):
        self.forgotten.append(reg)

    def answer(self, status, headers=(), local=False):
        request, on_response = self.sent[-1]
        resp = make_response(request, status, to_tag="t", headers=list(headers))
        resp.local = local
        on_response(resp)
        return resp


class Listener:
    def __init__(self):
        self.events = []
        self.details = []

    def registered(self, expires):
        self.events.append(("registered", expires))

    def registration_failed(self, reason, sip_status, retrying, detail=""):
        self.events.append(("failed", reason, sip_status, retrying))
        self.details.append(detail)

    def unregistered(self):
        self.events.append(("unregistered",))


def make(password="1234", expires=600, rng=None):
    stack = FakeStack()
    listener = Listener()
    reg = Registration(stack, "1000", DigestClient("1000", password=password), "mp-abc", listener, expires,
                       rng=rng or random.Random(1))
    return stack, listener, reg


def contact_ok(expires):
    return ("Contact", f"<sip:mp-abc@127.0.0.1:5070>;expires={expires}")


def test_challenge_then_registered_and_refresh_at_half():
    stack, listener, reg = make()
    reg.start()
    first = stack.sent[0][0]
    assert first.method == "REGISTER" and first.headers.get("Expires") == "600"
    assert "Authorization" not in first.headers
    assert first.headers.get("Contact") == "<sip:mp-abc@127.0.0.1:5070>"
    stack.answer(401, [("WWW-Authenticate", CHALLENGE)])
    second = stack.sent[1][0]
    auth = second.headers.get("Authorization")
    assert auth.startswith("Digest ") and 'username="1000"' in auth and 'uri="sip:127.0.0.1:5080"' in auth
    assert second.cseq[0] == first.cseq[0] + 1 and second.call_id == first.call_id
    stack.answer(200, [contact_ok(120)])
    assert listener.events == [("registered", 120)]
    assert reg.state == "registered" and reg.granted == 120
    (call,) = stack.reactor.getDelayedCalls()
    assert 0.2 * 120 <= call.getTime() <= 0.6 * 120  # the first refresh: a wide window
    stack.reactor.advance(call.getTime())
    refresh = stack.sent[2][0]
    assert refresh.call_id == first.call_id and refresh.cseq[0] == second.cseq[0] + 1
    # the cached challenge is answered pre-emptively, with the nonce count incremented
    assert "nc=00000002" in refresh.headers.get("Authorization")
    t = stack.reactor.seconds()
    stack.answer(200, [contact_ok(120)])
    assert listener.events == [("registered", 120)]  # a refresh is not a new event
    (call,) = stack.reactor.getDelayedCalls()
    assert 0.45 * 120 <= call.getTime() - t <= 0.55 * 120  # later ones: about half


def test_a_crowd_logging_in_at_once_refreshes_spread_out():
    """1,000 users registered in the same second: their first refreshes fill 20-60 % of the
    expiry evenly (no bucket of 10 % of that window holds more than 1.5x its share)."""
    times, rng = [], random.Random(7)
    for _ in range(1000):
        stack, listener, reg = make(rng=rng)
        reg.start()
        stack.answer(200, [contact_ok(100)])
        (call,) = stack.reactor.getDelayedCalls()
        times.append(call.getTime())
    assert 20 <= min(times) and max(times) <= 60
    buckets = [0] * 10
    for t in times:
        buckets[min(9, int((t - 20) / 4))] += 1
    assert max(buckets) <= 150 and min(buckets) >= 50, buckets


def test_refused_credentials_fail_without_retry():
    stack, listener, reg = make(password="wrong")
    reg.start()
    stack.answer(401, [("WWW-Authenticate", CHALLENGE)])
    stack.answer(401, [("WWW-Authenticate", CHALLENGE.replace("abc123", "def456"))])
    assert listener.events == [("failed", "auth_failed", 401, False)]
    assert reg.state == "failed"
    assert stack.reactor.getDelayedCalls() == []


def test_403_is_auth_failed():
    stack, listener, reg = make()
    reg.start()
    stack.answer(401, [("WWW-Authenticate", CHALLENGE)])
    stack.answer(403)
    assert listener.events == [("failed", "auth_failed", 403, False)]


def test_stale_nonce_is_answered_again():
    stack, listener, reg = make()
    reg.start()
    stack.answer(401, [("WWW-Authenticate", CHALLENGE)])
    stack.answer(401, [("WWW-Authenticate", CHALLENGE.replace("abc123", "n2") + ", stale=true")])
    assert 'nonce="n2"' in stack.sent[-1][0].headers.get("Authorization")
    stack.answer(200, [contact_ok(600)])
    assert listener.events == [("registered", 600)]


def test_407_uses_proxy_authorization():
    stack, listener, reg = make()
    reg.start()
    stack.answer(407, [("Proxy-Authenticate", CHALLENGE)])
    assert "Proxy-Authorization" in stack.sent[-1][0].headers
    assert "Authorization" not in stack.sent[-1][0].headers


def test_423_min_expires_retries_with_it():
    stack, listener, reg = make(expires=30)
    reg.start()
    stack.answer(423, [("Min-Expires", "60")])
    assert stack.sent[-1][0].headers.get("Expires") == "60"
    # our Contact listed without an expires parameter: the Expires header is the grant
    stack.answer(200, [("Contact", "<sip:mp-abc@127.0.0.1:5070>"), ("Expires", "60")])
    assert listener.events == [("registered", 60)]


def test_423_without_usable_min_expires_fails():
    stack, listener, reg = make(expires=30)
    reg.start()
    stack.answer(423, [("Min-Expires", "20")])
    assert listener.events == [("failed", "pbx_error", 423, False)]


def test_timeout_retries_with_backoff_then_recovers():
    stack, listener, reg = make()
    reg.start()
    delays = []
    for _ in range(4):
        stack.answer(408, local=True)
        (call,) = stack.reactor.getDelayedCalls()
        delays.append(call.getTime() - stack.reactor.seconds())
        stack.reactor.advance(delays[-1])
    assert all(e == ("failed", "pbx_unreachable", None, True) for e in listener.events)
    assert len(stack.sent) == 5
    # exponential backoff: each ceiling doubles (2, 4, 8, 16 s, jittered down to half)
    for i, d in enumerate(delays):
        assert 2 ** i <= d <= 2 ** (i + 1)
    stack.answer(200, [contact_ok(600)])
    assert listener.events[-1] == ("registered", 600)


def test_5xx_retry_after_is_honoured():
    stack, listener, reg = make()
    reg.start()
    stack.answer(503, [("Retry-After", "45")])
    (call,) = stack.reactor.getDelayedCalls()
    assert call.getTime() == 45
    assert listener.events == [("failed", "pbx_error", 503, True)]


def test_other_4xx_is_final():
    stack, listener, reg = make()
    reg.start()
    stack.answer(404)
    assert listener.events == [("failed", "not_found", 404, False)]
    assert stack.reactor.getDelayedCalls() == []


OTHER = ("Contact", "<sip:mp-other@127.0.0.2:5070>;expires=500")


def test_stop_queries_the_bindings_then_unregisters_ours():
    stack, listener, reg = make()
    reg.start()
    stack.answer(200, [contact_ok(600)])
    d = reg.stop()
    query = stack.sent[-1][0]
    # RFC 3261 §10.2.3: a REGISTER without Contact asks for the bindings and changes none
    assert query.method == "REGISTER" and "Contact" not in query.headers and "Expires" not in query.headers
    assert not d.called
    stack.answer(401, [("WWW-Authenticate", CHALLENGE)])  # the query is challenged too
    assert "Authorization" in stack.sent[-1][0].headers and "Contact" not in stack.sent[-1][0].headers
    stack.answer(200, [contact_ok(420)])
    unreg = stack.sent[-1][0]
    assert unreg.headers.get("Expires") == "0"
    assert unreg.headers.get("Contact") == "<sip:mp-abc@127.0.0.1:5070>"
    assert unreg.call_id == query.call_id and unreg.cseq[0] == query.cseq[0] + 2
    assert not d.called
    stack.answer(401, [("WWW-Authenticate", CHALLENGE.replace("abc123", "n3"))])
    assert stack.sent[-1][0].headers.get("Expires") == "0" and "Authorization" in stack.sent[-1][0].headers
    stack.answer(200)
    assert d.called and reg.state == "unregistered"
    assert listener.events[-1] == ("unregistered",)
    assert stack.forgotten == [reg]
    assert stack.reactor.getDelayedCalls() == []


def test_stop_leaves_a_binding_that_is_not_ours():
    """Another device or node took the user's single binding: an Expires: 0 would delete it on
    a FreeSWITCH, so none is sent."""
    stack, listener, reg = make()
    reg.start()
    stack.answer(200, [contact_ok(600)])
    d = reg.stop()
    n = len(stack.sent)
    stack.answer(200, [OTHER])
    assert d.called and reg.state == "unregistered"
    assert len(stack.sent) == n  # no un-REGISTER
    assert stack.reactor.getDelayedCalls() == []


def test_stop_sends_no_unregister_when_the_query_fails():
    for status, local in ((500, False), (408, True), (403, False)):
        stack, listener, reg = make()
        reg.start()
        stack.answer(200, [contact_ok(600)])
        d = reg.stop()
        n = len(stack.sent)
        stack.answer(status, local=local)
        assert d.called and len(stack.sent) == n, status


def test_stop_is_bounded_when_pbx_is_silent():
    stack, listener, reg = make()
    reg.start()
    stack.answer(200, [contact_ok(600)])
    d = reg.stop()
    stack.reactor.advance(STOP_TIMEOUT)
    assert d.called and reg.state == "unregistered"
    assert stack.reactor.getDelayedCalls() == []
    assert reg.stop() is d


def test_stop_before_any_answer_still_unregisters_if_bound():
    stack, listener, reg = make()
    reg.start()
    d = reg.stop()
    assert "Contact" not in stack.sent[-1][0].headers  # the query first
    stack.answer(200, [contact_ok(600)])  # the first REGISTER did bind us
    assert stack.sent[-1][0].headers.get("Expires") == "0"
    stack.answer(200)
    assert d.called


def test_a_2xx_that_does_not_list_our_contact_is_not_a_registration():
    stack, listener, reg = make()
    reg.start()
    stack.answer(200, [OTHER])
    assert listener.events == [("failed", "not_bound", 200, True)]
    assert listener.details == ["our Contact is not listed"]
    assert reg.state == "registering"
    (call,) = stack.reactor.getDelayedCalls()  # retried with backoff
    stack.reactor.advance(call.getTime())
    stack.answer(200, [OTHER, contact_ok(300)])  # several bindings: ours among them
    assert listener.events[-1] == ("registered", 300) and reg.state == "registered"
    # a refresh whose 2xx drops us is reported, not taken as registered
    (call,) = stack.reactor.getDelayedCalls()
    stack.reactor.advance(call.getTime() - stack.reactor.seconds())
    stack.answer(200, [("Contact", "<sip:mp-abc@127.0.0.1:5999>;expires=300")])  # another port: not us
    assert listener.events[-1] == ("failed", "not_bound", 200, True)


def test_a_changed_expiry_is_reported():
    stack, listener, reg = make()
    reg.start()
    stack.answer(200, [contact_ok(600)])
    (call,) = stack.reactor.getDelayedCalls()
    stack.reactor.advance(call.getTime())
    stack.answer(200, [contact_ok(600)])
    assert listener.events == [("registered", 600)]  # the same grant: routine, no event
    (call,) = stack.reactor.getDelayedCalls()
    stack.reactor.advance(call.getTime() - stack.reactor.seconds())
    stack.answer(200, [contact_ok(120)])  # the registrar shortened it
    assert listener.events == [("registered", 600), ("registered", 120)]


def test_refresh_soon_brings_the_next_register_forward():
    stack, listener, reg = make()
    reg.start()
    stack.answer(408, local=True)
    for _ in range(6):  # a long outage: the backoff has grown
        (call,) = stack.reactor.getDelayedCalls()
        stack.reactor.advance(call.getTime() - stack.reactor.seconds())
        stack.answer(408, local=True)
    (call,) = stack.reactor.getDelayedCalls()
    assert call.getTime() - stack.reactor.seconds() >= 32
    reg.refresh_soon(3.0)
    (call,) = stack.reactor.getDelayedCalls()
    assert call.getTime() - stack.reactor.seconds() == 3.0
    n = len(stack.sent)
    stack.reactor.advance(3.0)
    assert len(stack.sent) == n + 1 and stack.sent[-1][0].headers.get("Contact")
    reg.refresh_soon(1.0)  # a REGISTER is in flight: nothing more
    assert stack.reactor.getDelayedCalls() == []
    stack.answer(200, [contact_ok(600)])
    assert listener.events[-1] == ("registered", 600)
    d = reg.stop()
    reg.refresh_soon(1.0)  # stopping: nothing either
    assert len(stack.reactor.getDelayedCalls()) == 1  # only the stop guard
    stack.reactor.advance(STOP_TIMEOUT)
    assert d.called


def test_set_credentials_answers_the_next_challenge_with_them():
    stack, listener, reg = make(password="old")
    reg.start()
    reg.set_credentials("new", None)
    stack.answer(401, [("WWW-Authenticate", CHALLENGE)])
    sent = stack.sent[-1][0].headers.get("Authorization")

    def md5(text):
        return hashlib.md5(text.encode()).hexdigest()

    def response_for(password):
        ha1 = md5(f"1000:127.0.0.1:{password}")
        ha2 = md5(f"REGISTER:{stack.registrar_uri}")
        fields = ("nonce", "nc", "cnonce", "qop")
        return md5(":".join([ha1, *(_param(sent, f) for f in fields), ha2]))

    assert _param(sent, "response") == response_for("new") != response_for("old")


def _param(header, name):
    for part in header[len("Digest "):].split(","):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value.strip('"')
    return None


def test_stop_after_failure_is_immediate():
    stack, listener, reg = make()
    reg.start()
    stack.answer(403)
    d = reg.stop()
    assert d.called and len(stack.sent) == 1


def test_stop_while_retrying_without_binding_is_immediate():
    stack, listener, reg = make()
    reg.start()
    stack.answer(408, local=True)  # PBX unreachable: a retry is scheduled, nothing in flight
    d = reg.stop()
    assert d.called and reg.state == "unregistered"
    assert len(stack.sent) == 1  # no un-REGISTER toward a PBX that never bound us
    assert stack.reactor.getDelayedCalls() == []
