"""Dialog state (RFC 3261 §12): creation on both sides, in-dialog request building and routing."""

from __future__ import annotations

import pytest

from b2bua.sip.dialog import Dialog, DialogError, target_of
from b2bua.sip.transaction import Target
from b2bua.wire.sip import Request, make_response
from b2bua.wire.sipuri import SipUri


class FakeStack:
    def __init__(self):
        self.built = []

    def new_request(self, method, uri, from_uri, from_tag, to_uri, call_id, cseq, target=None, to_tag=None):
        r = Request(method=method, uri=uri)
        r.headers.add("Via", "SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bKx")
        r.headers.add("From", f"<{from_uri}>;tag={from_tag}")
        r.headers.add("To", f"<{to_uri}>" + (f";tag={to_tag}" if to_tag else ""))
        r.headers.add("Call-ID", call_id)
        r.headers.add("CSeq", f"{cseq} {method}")
        self.built.append((r, target))
        return r


def invite(record_routes=(), contact="<sip:bob@10.0.0.9:5062>", from_tag="ftag", cseq=7):
    r = Request(method="INVITE", uri="sip:bob@pbx.example")
    r.headers.add("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc")
    r.headers.add("From", "<sip:alice@pbx.example>" + (f";tag={from_tag}" if from_tag else ""))
    r.headers.add("To", "<sip:bob@pbx.example>")
    r.headers.add("Call-ID", "cid-1@x")
    r.headers.add("CSeq", f"{cseq} INVITE")
    if contact is not None:
        r.headers.add("Contact", contact)
    for rr in record_routes:
        r.headers.add("Record-Route", rr)
    return r


def answer(request, record_routes=(), contact="<sip:bob@10.0.0.9:5062;transport=tcp>", to_tag="rtag"):
    headers = [("Record-Route", rr) for rr in record_routes]
    if contact is not None:
        headers.append(("Contact", contact))
    return make_response(request, 200, to_tag=to_tag, headers=headers)


RR1 = "<sip:p1.example;lr>"
RR2 = "<sip:p2.example:5070;lr;transport=tcp>"


# -- creation ------------------------------------------------------------------------------------------------
def test_for_uac_reverses_record_route_and_takes_contact_and_tags():
    req = invite()
    d = Dialog.for_uac(req, answer(req, record_routes=[RR1, RR2]))
    assert d.route_set == [RR2, RR1]
    assert d.remote_target == "sip:bob@10.0.0.9:5062;transport=tcp"
    assert (d.call_id, d.local_tag, d.remote_tag) == ("cid-1@x", "ftag", "rtag")
    assert d.key == ("cid-1@x", "ftag", "rtag")
    assert d.local_uri == "sip:alice@pbx.example" and d.remote_uri == "sip:bob@pbx.example"
    assert d.local_cseq == 7 and d.remote_cseq is None


def test_for_uac_comma_separated_record_route_is_split_then_reversed():
    req = invite()
    d = Dialog.for_uac(req, answer(req, record_routes=[f"{RR1}, {RR2}"]))
    assert d.route_set == [RR2, RR1]


def test_for_uas_keeps_record_route_order():
    req = invite(record_routes=[RR1, RR2])
    d = Dialog.for_uas(req, "mytag")
    assert d.route_set == [RR1, RR2]
    assert d.remote_target == "sip:bob@10.0.0.9:5062"
    assert (d.local_tag, d.remote_tag) == ("mytag", "ftag")
    assert d.local_uri == "sip:bob@pbx.example" and d.remote_uri == "sip:alice@pbx.example"
    assert d.remote_cseq == 7 and d.local_cseq == 0


def test_uac_without_to_tag_is_an_error():
    req = invite()
    resp = make_response(req, 200, headers=[("Contact", "<sip:b@h>")])
    with pytest.raises(DialogError, match="To tag"):
        Dialog.for_uac(req, resp)


def test_uas_without_from_tag_is_an_error():
    with pytest.raises(DialogError, match="From tag"):
        Dialog.for_uas(invite(from_tag=None), "t")


def test_missing_contact_is_an_error_both_ways():
    req = invite(contact=None)
    with pytest.raises(DialogError, match="missing Contact"):
        Dialog.for_uas(req, "t")
    req = invite()
    with pytest.raises(DialogError, match="missing Contact"):
        Dialog.for_uac(req, answer(req, contact=None))


def test_wildcard_contact_is_an_error():
    with pytest.raises(DialogError, match="wildcard"):
        Dialog.for_uas(invite(contact="*"), "t")


def test_bad_contact_is_an_error():
    with pytest.raises(DialogError, match="bad Contact"):
        Dialog.for_uas(invite(contact="<http://nope>"), "t")


# -- requests ------------------------------------------------------------------------------------------------
def test_new_request_loose_routing():
    req = invite()
    d = Dialog.for_uac(req, answer(req, record_routes=[RR1, RR2]))
    stack = FakeStack()
    bye = d.new_request(stack, "BYE")
    assert bye.method == "BYE" and bye.uri == d.remote_target
    assert bye.headers.get_all("Route") == [RR2, RR1]
    assert bye.cseq == (8, "BYE") and d.local_cseq == 8
    assert bye.headers.get("From") == "<sip:alice@pbx.example>;tag=ftag"
    assert bye.headers.get("To") == "<sip:bob@pbx.example>;tag=rtag"
    assert bye.call_id == "cid-1@x"
    # the target handed to the stack is the first route (the next hop), transport from its URI
    assert stack.built[0][1] == Target("TCP", "p2.example", 5070)


def test_new_request_with_given_cseq_does_not_advance_local_cseq():
    req = invite()
    d = Dialog.for_uac(req, answer(req))
    ack = d.new_request(FakeStack(), "ACK", cseq=7)
    assert ack.cseq == (7, "ACK") and d.local_cseq == 7
    assert ack.headers.get_all("Route") == []


def test_new_request_strict_router():
    strict = "<sip:strict.example;maddr=1.2.3.4>"
    req = invite(record_routes=[strict, RR1])
    d = Dialog.for_uas(req, "t")
    r = d.new_request(FakeStack(), "INFO")
    # §12.2.1.1: the strict router's URI is the Request-URI, the remote target goes last
    assert r.uri == "sip:strict.example;maddr=1.2.3.4"
    assert r.headers.get_all("Route") == [RR1, "<sip:bob@10.0.0.9:5062>"]
    assert d.next_hop() == Target("UDP", "strict.example", 5060)
    assert r.cseq == (1, "INFO")


def test_next_hop_without_route_set_is_remote_target():
    req = invite()
    d = Dialog.for_uac(req, answer(req, contact="<sip:bob@[2001:db8::1]:5099;transport=TCP>"))
    assert d.next_hop() == Target("TCP", "2001:db8::1", 5099)


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("sip:h.example", Target("UDP", "h.example", 5060)),
        ("sip:h.example;transport=tcp", Target("TCP", "h.example", 5060)),
        ("sip:h.example;transport=tls", Target("TLS", "h.example", 5061)),
        ("sips:h.example", Target("TLS", "h.example", 5061)),
        ("sip:1.2.3.4:5080;lr", Target("UDP", "1.2.3.4", 5080)),
        ("sip:[::1]", Target("UDP", "::1", 5060)),
    ],
)
def test_target_of_default_ports(uri, expected):
    assert target_of(SipUri.parse(uri)) == expected


# -- CSeq and target refresh ---------------------------------------------------------------------------------
def _req(method, cseq):
    r = Request(method=method, uri="sip:x@y")
    r.headers.add("CSeq", f"{cseq} {method}")
    return r


def test_accept_remote_cseq_ordering():
    d = Dialog.for_uas(invite(cseq=10), "t")
    assert d.accept_remote_cseq(_req("ACK", 10))  # ACK and CANCEL carry the INVITE's number
    assert d.accept_remote_cseq(_req("CANCEL", 10))
    assert not d.accept_remote_cseq(_req("INFO", 10))  # equal is out of order too
    assert not d.accept_remote_cseq(_req("INFO", 9))
    assert d.accept_remote_cseq(_req("INFO", 11)) and d.remote_cseq == 11
    assert d.accept_remote_cseq(_req("BYE", 20)) and d.remote_cseq == 20
    assert not d.accept_remote_cseq(_req("BYE", 12))
    assert d.remote_cseq == 20


def test_accept_remote_cseq_without_previous_accepts_anything():
    req = invite()
    d = Dialog.for_uac(req, answer(req))
    assert d.accept_remote_cseq(_req("BYE", 1)) and d.remote_cseq == 1


def test_update_target():
    d = Dialog.for_uas(invite(), "t")
    r = _req("INVITE", 8)
    d.update_target(r)  # no Contact: unchanged
    assert d.remote_target == "sip:bob@10.0.0.9:5062"
    r.headers.add("Contact", "<sip:bob@10.0.0.10:6000>")
    d.update_target(r)
    assert d.remote_target == "sip:bob@10.0.0.10:6000"
    bad = _req("UPDATE", 9)
    bad.headers.add("Contact", "*")
    d.update_target(bad)  # an unusable Contact is ignored
    assert d.remote_target == "sip:bob@10.0.0.10:6000"
