"""The SIP/SDP seams of issue 10 against real peers: sipp as the far end, through Kamailio.

Late offer (INVITE or re-INVITE without SDP, answer in the ACK), CANCEL after 100 Trying,
Timer C, what `answered`/`incoming` say about a refused video stream, and the X-FS-Support
header FreeSWITCH looks for (checked on the wire by the scenarios: sipp fails a call whose
message lacks it). The tests where media flows run with the media in the node and in two worker
processes (``both_media_modes``)."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.integration.gateway import both_media_modes, start_gateway
from tests.integration.helpers import exit_code, logged_in, no_leaks, sleep, wait_until
from tests.peers import require_binary

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway(kamailio, media_workers):
    require_binary("sipp")
    workers = {} if media_workers is None else {"media__workers": media_workers}
    gw = start_gateway(kamailio.host, kamailio.port, websocket__login_attempts_per_minute=100_000, **workers)
    yield gw
    gw.stop()


# -- late offer ----------------------------------------------------------------------------------------------
@both_media_modes
@pytest_twisted.inlineCallbacks
def test_inbound_late_offer_takes_the_answer_from_the_ack_and_media_flows(gateway, far):
    client = yield logged_in(gateway)
    caller = far(
        "uac_call_late_offer.xml",
        register=False,
        rtp_echo=True,
        variables={"callee": "1000", "hold_ms": "2500"},
    )
    incoming = yield client.wait_event("incoming")
    assert incoming["video"] is False
    yield client.request("answer", {"call": incoming["call"]})
    answered = yield client.wait_event("answered")
    assert answered == {"call": incoming["call"], "codec": "PCMU"}
    call = gateway.node.calls.calls[incoming["call"]]
    # our RTP reaches the caller (at the address of the ACK's answer) and its echo comes back
    yield wait_until(lambda: call.media_packets() >= 10, timeout=5, what="echoed RTP")
    hangup = yield client.wait_event("hangup", timeout=10)
    assert hangup["by"] == "remote" and hangup["cause"] == "NORMAL_CLEARING"
    assert hangup["media"]["rtp_sent"] > 0 and hangup["media"]["rtp_received"] > 0
    assert (yield exit_code(caller)) == 0, caller.explain()
    assert "X-FS-Support: send_info" in caller.messages_text()
    assert no_leaks(gateway)


@pytest_twisted.inlineCallbacks
def test_inbound_late_offer_with_an_ack_without_answer_is_hung_up(gateway, far):
    client = yield logged_in(gateway)
    caller = far("uac_call_late_offer_no_answer.xml", register=False, variables={"callee": "1000"})
    incoming = yield client.wait_event("incoming")
    yield client.request("answer", {"call": incoming["call"]})
    hangup = yield client.wait_event("hangup")
    assert hangup["call"] == incoming["call"] and hangup["by"] == "local"
    assert hangup["cause"] == "INCOMPATIBLE_DESTINATION" and "ACK without SDP answer" in hangup["reason"]
    assert (yield exit_code(caller)) == 0, caller.explain()  # it got our BYE
    assert no_leaks(gateway)


@both_media_modes
@pytest_twisted.inlineCallbacks
def test_reinvite_without_sdp_gets_our_offer_and_the_ack_answer_is_applied(gateway, far):
    phone = far("uas_answer_reinvite_no_sdp.xml", rtp_echo=True, variables={"hold_ms": "300"})
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    answered = yield client.wait_event("answered")
    assert answered["codec"] == "PCMU"
    call = gateway.node.calls.calls[result["call"]]
    # the ACK answers our new offer with PCMA: the media follows it
    yield wait_until(lambda: call.media.codec_name == "PCMA", timeout=5, what="the ACK's answer applied")
    received = call.media_packets()
    yield wait_until(lambda: call.media_packets() > received + 10, timeout=5, what="RTP after it")
    yield client.request("hangup", {"call": result["call"]})
    hangup = yield client.wait_event("hangup")
    assert hangup["cause"] == "NORMAL_CLEARING"
    assert hangup["media"]["codec"] == "PCMA", hangup  # the bridge went over to it
    assert (yield exit_code(phone)) == 0, phone.explain()
    assert "REINVITE offer m=audio" in phone.logs_text()


# -- CANCEL timing, Timer C ----------------------------------------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_hangup_after_100_trying_cancels_at_once(gateway, far):
    """RFC 3261 §9.1: a CANCEL may go once any provisional response (100 included) came: the
    phone sends 100 and nothing else, the gateway must not wait for an 18x."""
    phone = far("uas_trying_only.xml")
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield wait_until(lambda: "SIP/2.0 100 Trying" in phone.messages_text(), timeout=5, what="the phone's 100")
    yield client.request("hangup", {"call": result["call"]})
    hangup = yield client.wait_event("hangup", timeout=5)  # not after 32 s of waiting
    assert hangup["call"] == result["call"] and hangup["by"] == "local"
    assert hangup["cause"] == "ORIGINATOR_CANCEL" and hangup["sip_status"] == 487
    assert (yield exit_code(phone)) == 0, phone.explain()
    messages = phone.messages_text()
    assert "CANCEL sip:" in messages and "X-FS-Support: send_info" in messages
    assert no_leaks(gateway)


@pytest_twisted.inlineCallbacks
def test_no_progress_after_180_ends_the_call_on_timer_c(kamailio, gateway_factory, far):
    require_binary("sipp")
    gw = gateway_factory(kamailio.host, kamailio.port, sip__timer_c=2.0)
    phone = far("uas_noanswer.xml")
    client = yield logged_in(gw)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("ringing")
    hangup = yield client.wait_event("hangup", timeout=6)
    assert hangup == {
        "call": result["call"],
        "cause": "RECOVERY_ON_TIMER_EXPIRE",
        "reason": "no progress",
        "by": "local",
    }
    assert (yield exit_code(phone)) == 0, phone.explain()  # it got the CANCEL, we ACKed its 487
    assert "CANCEL sip:" in phone.messages_text()
    yield wait_until(lambda: no_leaks(gw), timeout=5, what="the call freed")


# -- video ---------------------------------------------------------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_video_refused_by_the_answer_is_reported_as_refused(gateway, far):
    phone = far("uas_answer_video_rejected.xml")
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500", "video": True})
    answered = yield client.wait_event("answered")
    assert answered == {"call": result["call"], "codec": "PCMU", "video": False}
    yield sleep(0.3)  # let the ACK reach the phone before our BYE
    yield client.request("hangup", {"call": result["call"]})
    yield client.wait_event("hangup")
    assert (yield exit_code(phone)) == 0, phone.explain()


@pytest_twisted.inlineCallbacks
def test_inbound_video_the_gateway_cannot_take_is_not_announced(gateway, far):
    client = yield logged_in(gateway)
    caller = far("uac_call_video_vp8.xml", register=False, variables={"callee": "1000", "hold_ms": "800"})
    incoming = yield client.wait_event("incoming")
    assert incoming["video"] is False  # VP8 only: our answer rejects it with m=video 0
    yield client.request("answer", {"call": incoming["call"]})
    answered = yield client.wait_event("answered")
    assert answered["codec"] == "PCMU" and answered["video"] is False
    yield client.wait_event("hangup")
    assert (yield exit_code(caller)) == 0, caller.explain()  # checked m=video 0 in our 200
    assert no_leaks(gateway)
