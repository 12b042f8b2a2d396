"""Dead calls end (issue 12): RTP inactivity (media.rtp_timeout, hold-aware) and session timers,
against sipp far ends through Kamailio.

A PBX killed mid-call sends no BYE: the gateway must notice the silence, send its BYE (with the
Reason FreeSWITCH itself would send) and tell the client `hangup` MEDIA_TIMEOUT. A call on hold,
where no RTP is due, must not be ended by the same limit. Each test runs with the media in the
node and in two worker processes (whose packet counts reach the watchdog once a second)."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.integration.gateway import MEDIA_MODE_IDS, MEDIA_MODES
from tests.integration.helpers import exit_code, logged_in, no_leaks, sleep, wait_until
from tests.peers import require_binary

pytestmark = pytest.mark.integration

RTP_TIMEOUT = 2.0


@pytest.fixture(params=MEDIA_MODES, ids=MEDIA_MODE_IDS)
def media_workers(request) -> int:
    return request.param


@pytest.fixture
def gateway(kamailio, gateway_factory):
    require_binary("sipp")
    return gateway_factory(kamailio.host, kamailio.port, media__rtp_timeout=RTP_TIMEOUT)


def hangups(client):
    return [p for n, p in client.events if n == "hangup"]


@pytest_twisted.inlineCallbacks
def test_silent_far_end_is_hung_up_with_media_timeout(gateway, far):
    """The far end answers (taking the session timer our INVITE asked for) and then sends no
    RTP and no BYE: after media.rtp_timeout the gateway BYEs it and reports MEDIA_TIMEOUT."""
    phone = far("uas_answer_timer_silent.xml")
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    call = gateway.node.calls.calls[result["call"]]
    assert call.invite.session_expires == 1800 and call.invite.refresher == "uas"
    yield sleep(RTP_TIMEOUT - 0.5)
    assert hangups(client) == []  # not before the timeout
    hangup = yield client.wait_event("hangup", timeout=3)
    assert hangup["call"] == result["call"]
    assert hangup["cause"] == "MEDIA_TIMEOUT" and hangup["by"] == "local"
    assert hangup["reason"] == "no RTP for 2 s" and "sip_status" not in hangup
    assert (yield exit_code(phone)) == 0, phone.explain()  # it got our BYE and answered it
    logs = phone.logs_text()
    assert "INVITE Session-Expires=1800 Min-SE=90" in logs
    assert 'BYE reason=FreeSWITCH;cause=604;text="MEDIA_TIMEOUT"' in logs
    yield wait_until(lambda: no_leaks(gateway), timeout=5, what="the call freed")


@pytest_twisted.inlineCallbacks
def test_far_end_killed_mid_call_is_hung_up_with_media_timeout(gateway, far):
    """kill -9 of the far end (as of a FreeSWITCH) while RTP flows: no BYE ever comes."""
    phone = far("uas_answer.xml", rtp_echo=True)
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    call = gateway.node.calls.calls[result["call"]]
    yield wait_until(lambda: call.media_packets() > 50, timeout=5, what="echoed RTP")
    yield sleep(RTP_TIMEOUT + 1)  # RTP flowing: longer than the timeout, the call stays
    assert hangups(client) == [] and call.state == "active"
    phone.kill()
    hangup = yield client.wait_event("hangup", timeout=RTP_TIMEOUT + 3)
    assert hangup["cause"] == "MEDIA_TIMEOUT" and hangup["by"] == "local"
    assert hangup["media"]["rtp_received"] > 50
    yield wait_until(lambda: no_leaks(gateway), timeout=5, what="the call freed")


@pytest_twisted.inlineCallbacks
def test_call_held_by_the_far_end_is_not_ended(gateway, far):
    """The far end holds us (re-INVITE a=sendonly, then no RTP, as FreeSWITCH without music on
    hold): media.rtp_hold_timeout (0: off) applies, not media.rtp_timeout."""
    phone = far("uas_reinvite_hold.xml", rtp_echo=True, variables={"hold_ms": "300"})
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    hold = yield client.wait_event("hold", timeout=5)
    assert hold["held"] is True
    yield sleep(3 * RTP_TIMEOUT)
    assert hangups(client) == []
    yield client.request("hangup", {"call": result["call"]})
    hangup = yield client.wait_event("hangup")
    assert hangup["cause"] == "NORMAL_CLEARING"
    assert (yield exit_code(phone)) == 0, phone.explain()
    yield wait_until(lambda: no_leaks(gateway), timeout=5, what="the call freed")


@pytest_twisted.inlineCallbacks
def test_call_we_hold_is_not_ended_and_unhold_restarts_the_count(gateway, far):
    """Our `hold` (a=sendonly: the PBX sends nothing) keeps a silent call up; after `unhold` the
    full media.rtp_timeout runs again, and a still silent far end is then ended."""
    phone = far("uas_answer_hold_unhold.xml")  # never sends RTP
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    yield client.request("hold", {"call": result["call"]})
    yield sleep(3 * RTP_TIMEOUT)
    assert hangups(client) == []
    yield client.request("unhold", {"call": result["call"]})
    yield sleep(RTP_TIMEOUT - 0.5)
    assert hangups(client) == []
    hangup = yield client.wait_event("hangup", timeout=3)
    assert hangup["cause"] == "MEDIA_TIMEOUT" and hangup["reason"] == "no RTP for 2 s"
    assert (yield exit_code(phone)) == 0, phone.explain()
    yield wait_until(lambda: no_leaks(gateway), timeout=5, what="the call freed")


@pytest_twisted.inlineCallbacks
def test_inbound_call_from_a_pbx_supporting_timers_gets_one(gateway, far):
    """A caller with Supported: timer and no Session-Expires: our 200 asks for one (the caller
    refreshes), and the talking call (RTP echoed both ways) is not ended by the RTP watchdog."""
    client = yield logged_in(gateway)
    caller = far("uac_call_timer.xml", register=False, rtp_echo=True,
                 variables={"callee": "1000", "hold_ms": str(int(3 * RTP_TIMEOUT * 1000))})
    incoming = yield client.wait_event("incoming")
    yield client.request("answer", {"call": incoming["call"]})
    yield client.wait_event("answered")
    hangup = yield client.wait_event("hangup", timeout=3 * RTP_TIMEOUT + 5)
    assert hangup["cause"] == "NORMAL_CLEARING" and hangup["by"] == "remote"
    assert (yield exit_code(caller)) == 0, caller.explain()
    assert "200 Session-Expires=1800;refresher=uac Require=timer" in caller.logs_text()
    yield wait_until(lambda: no_leaks(gateway), timeout=5, what="the call freed")
