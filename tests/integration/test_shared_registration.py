"""One registration per user, shared by that user's sessions, against a registrar that behaves
like a stock FreeSWITCH: one binding per user, replaced by every new REGISTER and deleted by any
``Expires: 0`` whatever its Contact (Kamailio ``single_binding``)."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.integration.helpers import exit_code, logged_in, no_leaks, sleep, wait_until
from tests.peers import require_binary

pytestmark = pytest.mark.integration


@pytest.fixture
def kamailio(kamailio_factory):
    """Overrides the shared fixture (``far`` phones register here too): FreeSWITCH's default."""
    require_binary("sipp")
    return kamailio_factory(single_binding=True)


def contacts_of(kamailio, user="1000"):
    return kamailio.registrations().get(user, [])


@pytest_twisted.inlineCallbacks
def test_the_registrar_mode_replaces_and_deletes_like_freeswitch(kamailio, gateway_factory):
    """The stand-in itself: two gateways register user 1000, the second replaces the first;
    an un-REGISTER from the first would delete the second's binding (here it is not sent)."""
    gw1 = gateway_factory(kamailio.host, kamailio.port)
    gw2 = gateway_factory(kamailio.host, kamailio.port)
    a = yield logged_in(gw1)
    (first,) = contacts_of(kamailio)
    assert f":{gw1.sip_port}" in first
    b = yield logged_in(gw2)
    (second,) = contacts_of(kamailio)
    assert f":{gw2.sip_port}" in second  # one binding per user: replaced
    # node 1 leaves: its bindings query shows the binding is node 2's, so no Expires: 0
    yield a.request("logout")
    assert contacts_of(kamailio) == [second]
    assert gw1.stack.registrations == {}
    # node 2 leaves: its binding is still its own, so it is removed
    yield b.request("logout")
    assert contacts_of(kamailio) == []
    yield a.close()
    yield b.close()


@pytest_twisted.inlineCallbacks
def test_two_sessions_of_a_user_share_one_binding_and_both_ring(kamailio, gateway_factory, far):
    gw = gateway_factory(kamailio.host, kamailio.port, calls__ring_timeout=8.0)
    a = yield logged_in(gw)
    b = yield logged_in(gw)
    assert a.session_id != b.session_id
    (contact,) = contacts_of(kamailio)
    assert len(gw.stack.registrations) == 1
    caller = far("uac_call.xml", register=False, variables={"callee": "1000", "hold_ms": "600"})
    ring_a = yield a.wait_event("incoming")
    ring_b = yield b.wait_event("incoming")
    assert ring_a["call"] != ring_b["call"] and ring_a["play_url"] != ring_b["play_url"]
    assert ring_a["to"] == ring_b["to"] == "1000" and ring_a["from"] == "1500"
    yield b.request("answer", {"call": ring_b["call"]})
    lost = yield a.wait_event("hangup")
    assert lost["call"] == ring_a["call"] and lost["cause"] == "LOSE_RACE" and lost["by"] == "local"
    answered = yield b.wait_event("answered")
    assert answered["call"] == ring_b["call"] and answered["codec"] == "PCMU"
    hangup = yield b.wait_event("hangup")
    assert hangup["by"] == "remote" and hangup["cause"] == "NORMAL_CLEARING"
    assert (yield exit_code(caller)) == 0, caller.explain()
    assert "answered" not in [name for name, _ in a.events]
    assert no_leaks(gw)
    assert contacts_of(kamailio) == [contact]
    yield a.close()
    yield b.close()


@pytest_twisted.inlineCallbacks
def test_one_session_rejecting_leaves_the_other_ringing(kamailio, gateway_factory, far):
    gw = gateway_factory(kamailio.host, kamailio.port, calls__ring_timeout=8.0)
    a = yield logged_in(gw)
    b = yield logged_in(gw)
    caller = far("uac_rejected.xml", register=False, variables={"callee": "1000"})
    ring_a = yield a.wait_event("incoming")
    ring_b = yield b.wait_event("incoming")
    yield a.request("reject", {"call": ring_a["call"], "status": 486})
    gone = yield a.wait_event("hangup")
    assert gone["call"] == ring_a["call"] and gone["cause"] == "USER_BUSY"
    yield sleep(0.5)
    assert caller.poll() is None  # the caller still rings: B has not answered
    assert "hangup" not in [name for name, _ in b.events]
    yield b.request("reject", {"call": ring_b["call"], "status": 603})
    hangup = yield b.wait_event("hangup")
    assert hangup["sip_status"] == 603
    assert (yield exit_code(caller)) == 0, caller.explain()
    assert "REJECTED 603" in caller.logs_text()
    assert no_leaks(gw)
    yield a.close()
    yield b.close()


@pytest_twisted.inlineCallbacks
def test_logout_of_one_of_two_sessions_keeps_the_other_callable(kamailio, gateway_factory, far):
    gw = gateway_factory(kamailio.host, kamailio.port)
    a = yield logged_in(gw)
    b = yield logged_in(gw)
    (contact,) = contacts_of(kamailio)
    yield a.request("logout")
    assert contacts_of(kamailio) == [contact]  # no Expires: 0: B still uses the binding
    caller = far("uac_call.xml", register=False, variables={"callee": "1000", "hold_ms": "300"})
    ring = yield b.wait_event("incoming")
    yield b.request("answer", {"call": ring["call"]})
    yield b.wait_event("hangup")
    assert (yield exit_code(caller)) == 0, caller.explain()
    assert "incoming" not in [name for name, _ in a.events]
    yield b.request("logout")
    assert contacts_of(kamailio) == []  # the last one out un-registers
    yield a.close()
    yield b.close()


@pytest_twisted.inlineCallbacks
def test_a_stale_session_running_out_of_grace_does_not_unregister_the_new_one(
    kamailio, gateway_factory, far
):
    """The mini-program is killed and reopened: it logs in afresh; the old session's grace
    period ends later and must not take the user's binding with it."""
    gw = gateway_factory(kamailio.host, kamailio.port, websocket__grace_period=1.5)
    old = yield logged_in(gw)
    old.drop()
    new = yield logged_in(gw)
    yield wait_until(lambda: gw.controller.sessions.count == 1, timeout=10, what="the grace period to end")
    yield sleep(0.5)
    assert len(contacts_of(kamailio)) == 1
    caller = far("uac_call.xml", register=False, variables={"callee": "1000", "hold_ms": "300"})
    ring = yield new.wait_event("incoming")
    yield new.request("answer", {"call": ring["call"]})
    yield new.wait_event("hangup")
    assert (yield exit_code(caller)) == 0, caller.explain()
    yield new.close()


@pytest_twisted.inlineCallbacks
def test_incoming_reports_the_user_when_to_names_the_contact(kamailio, gateway_factory, far):
    """FreeSWITCH's user/1000 puts the registered Contact in To: the client sees the user."""
    gw = gateway_factory(kamailio.host, kamailio.port)
    client = yield logged_in(gw)
    (contact,) = contacts_of(kamailio)
    contact_user = contact.split(":", 1)[1].split("@", 1)[0]
    assert contact_user.startswith("mp-")
    caller = far(
        "uac_call.xml",
        register=False,
        remote=f"127.0.0.1:{gw.sip_port}",  # straight to the gateway, as FreeSWITCH sends it
        variables={"callee": contact_user, "hold_ms": "300"},
    )
    ring = yield client.wait_event("incoming")
    assert ring["to"] == "1000"
    yield client.request("answer", {"call": ring["call"]})
    yield client.wait_event("hangup")
    assert (yield exit_code(caller)) == 0, caller.explain()
    yield client.close()
