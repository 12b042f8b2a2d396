"""Calls both ways through a real Kamailio, with sipp as the far-end phone. The signalling is the
point here; the tests where media flows between the legs also run with two media workers."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.integration.gateway import both_media_modes, start_gateway
from tests.integration.helpers import exit_code, logged_in, no_leaks, sleep, wait_until
from tests.peers import require_binary
from tests.peers.wsclient import RpcError, WsClient

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway(kamailio, media_workers):
    require_binary("sipp")
    workers = {} if media_workers is None else {"media__workers": media_workers}
    gw = start_gateway(
        kamailio.host, kamailio.port, websocket__login_attempts_per_minute=100_000, calls__ring_timeout=6.0,
        **workers,
    )
    yield gw
    gw.stop()


@pytest_twisted.inlineCallbacks
def test_outbound_call_answered_then_local_hangup(gateway, far):
    phone = far("uas_answer.xml")
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    call = result["call"]
    assert result["push_url"].startswith("rtmp://127.0.0.1:") and "/mp/" in result["push_url"]
    assert result["play_url"].startswith("rtmp://127.0.0.1:") and "/mp/" in result["play_url"]
    assert result["push_url"] != result["play_url"]
    ringing = yield client.wait_event("ringing")
    assert ringing == {"call": call, "status": 180}
    answered = yield client.wait_event("answered")
    assert answered["call"] == call and answered["codec"] == "PCMU"
    # talk a little: our ACK and BYE pass different Kamailio children, so a BYE sent at once
    # can overtake the ACK, which this strict sipp scenario counts as an error
    yield sleep(0.3)
    yield client.request("hangup", {"call": call})
    hangup = yield client.wait_event("hangup")
    assert hangup["call"] == call and hangup["by"] == "local" and hangup["cause"] == "NORMAL_CLEARING"
    code = yield exit_code(phone)
    assert code == 0, phone.explain()
    assert no_leaks(gateway)
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_outbound_busy(gateway, far):
    phone = far("uas_busy.xml")
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    hangup = yield client.wait_event("hangup")
    assert hangup == {
        "call": result["call"],
        "sip_status": 486,
        "cause": "USER_BUSY",
        "reason": "rejected",
        "by": "remote",
    }
    assert (yield exit_code(phone)) == 0, phone.explain()
    assert no_leaks(gateway)


@pytest_twisted.inlineCallbacks
def test_outbound_no_answer_then_cancel(gateway, far):
    phone = far("uas_noanswer.xml")
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("ringing")
    yield client.request("hangup", {"call": result["call"]})
    hangup = yield client.wait_event("hangup")
    assert hangup["cause"] == "ORIGINATOR_CANCEL" and hangup["by"] == "local"
    assert (yield exit_code(phone)) == 0, phone.explain()
    assert "CANCEL sip:" in phone.messages_text()
    assert no_leaks(gateway)


@pytest_twisted.inlineCallbacks
def test_hangup_during_setup(gateway, far):
    phone = far("uas_noanswer.xml")
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.request("hangup", {"call": result["call"]})  # before any provisional response
    hangup = yield client.wait_event("hangup")
    assert hangup["call"] == result["call"] and hangup["by"] == "local"
    assert hangup["cause"] == "ORIGINATOR_CANCEL"
    yield sleep(1)
    # either the INVITE never reached the phone (the 407 came first), or it was CANCELled (§9.1)
    messages = phone.messages_text()
    assert "INVITE sip:" not in messages or "CANCEL sip:" in messages
    assert no_leaks(gateway)


@both_media_modes
@pytest_twisted.inlineCallbacks
def test_early_media_then_answer_then_remote_bye(gateway, far):
    phone = far("uas_early_media.xml", variables={"early_ms": "500"}, codec="PCMA")
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    early = yield client.wait_event("early_media")
    assert early == {"call": result["call"], "status": 183, "codec": "PCMA"}
    answered = yield client.wait_event("answered")
    assert answered["codec"] == "PCMA"
    yield sleep(0.3)  # as above: let the ACK reach the phone before our BYE
    yield client.request("hangup", {"call": result["call"]})
    yield client.wait_event("hangup")
    assert (yield exit_code(phone)) == 0, phone.explain()


@pytest_twisted.inlineCallbacks
def test_remote_bye_ends_the_call(gateway, far):
    phone = far("uas_answer_then_bye.xml", variables={"hold_ms": "500"})
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    hangup = yield client.wait_event("hangup")
    assert hangup["call"] == result["call"] and hangup["by"] == "remote"
    assert hangup["cause"] == "NORMAL_CLEARING" and "sip_status" not in hangup
    assert (yield exit_code(phone)) == 0, phone.explain()
    assert no_leaks(gateway)


@pytest_twisted.inlineCallbacks
def test_remote_reinvite_hold_is_answered_and_reported(gateway, far):
    phone = far("uas_reinvite_hold.xml", variables={"hold_ms": "300"})
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    held = yield client.wait_event("hold")
    assert held == {"call": result["call"], "held": True, "by": "remote"}
    yield client.request("hangup", {"call": result["call"]})
    yield client.wait_event("hangup")
    assert (yield exit_code(phone)) == 0, phone.explain()
    assert "a=recvonly" in phone.logs_text() or "recvonly" in phone.messages_text()


@pytest_twisted.inlineCallbacks
def test_info_and_message_in_dialog_become_info_events(gateway, far):
    phone = far("uas_info_message.xml", variables={"hold_ms": "300"})
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    info = yield client.wait_event("info")
    assert info == {
        "call": result["call"],
        "method": "INFO",
        "content_type": "application/json",
        "body": {"text": "hello world", "confidence": 0.9},
    }
    message = yield client.wait_event("info")
    assert message["method"] == "MESSAGE" and message["body"].strip() == "asr: hello"
    yield client.request("hangup", {"call": result["call"]})
    yield client.wait_event("hangup")
    assert (yield exit_code(phone)) == 0, phone.explain()


@pytest_twisted.inlineCallbacks
def test_dtmf_goes_out_as_info_dtmf_relay(gateway, far):
    phone = far("uas_expect_info_dtmf.xml", variables={"dtmf_digit": "5"})
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    reply = yield client.request("dtmf", {"call": result["call"], "digits": "5", "mode": "info"})
    assert reply == {"via": "info"}
    yield client.request("hangup", {"call": result["call"]})
    yield client.wait_event("hangup")
    assert (yield exit_code(phone)) == 0, phone.explain()
    assert "Signal=5" in phone.messages_text()


@pytest_twisted.inlineCallbacks
def test_hold_and_unhold_send_reinvites(gateway, far):
    phone = far("uas_answer_hold_unhold.xml")
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    assert (yield client.request("hold", {"call": result["call"]})) == {"call": result["call"], "held": True}
    assert (yield client.request("unhold", {"call": result["call"]}))["held"] is False
    yield client.request("hangup", {"call": result["call"]})
    yield client.wait_event("hangup")
    assert (yield exit_code(phone)) == 0, phone.explain()
    assert "REINVITE a=sendonly\nREINVITE a=sendrecv" in phone.logs_text()


@pytest_twisted.inlineCallbacks
def test_blind_transfer_reports_progress(gateway, far):
    phone = far("uas_answer_refer.xml")
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    reply = yield client.request("transfer", {"call": result["call"], "to": "9196"})
    assert reply == {"sip_status": 202}
    first = yield client.wait_event("transfer_progress")
    assert first == {"call": result["call"], "status": 100, "reason": "Trying", "final": False}
    last = yield client.wait_event("transfer_progress")
    assert last["status"] == 200 and last["final"] is True
    hangup = yield client.wait_event("hangup")
    assert hangup["by"] == "remote"
    assert (yield exit_code(phone)) == 0, phone.explain()
    assert "REFER to=sip:9196@" in phone.logs_text()


@pytest_twisted.inlineCallbacks
def test_malformed_sdp_answer_is_hung_up_with_a_reason(gateway, far):
    phone = far("uas_answer_bad_sdp.xml")
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    hangup = yield client.wait_event("hangup")
    assert hangup["call"] == result["call"] and hangup["by"] == "local"
    assert hangup["cause"] == "INCOMPATIBLE_DESTINATION" and hangup["reason"]
    assert (yield exit_code(phone)) == 0, phone.explain()  # it got its ACK and then our BYE
    assert no_leaks(gateway)


# -- inbound -------------------------------------------------------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_inbound_call_answered_then_caller_hangs_up(gateway, far):
    client = yield logged_in(gateway)
    caller = far("uac_call.xml", register=False, variables={"callee": "1000", "hold_ms": "800"})
    incoming = yield client.wait_event("incoming")
    assert incoming["from"] == "1500" and incoming["to"] == "1000" and incoming["video"] is False
    assert incoming["push_url"].startswith("rtmp://") and incoming["play_url"].startswith("rtmp://")
    answer = yield client.request("answer", {"call": incoming["call"]})
    assert answer == {"call": incoming["call"]}
    with pytest.raises(RpcError) as err:  # answer twice
        yield client.request("answer", {"call": incoming["call"]})
    assert err.value.reason == "bad_state"
    answered = yield client.wait_event("answered")
    assert answered["codec"] == "PCMU"
    hangup = yield client.wait_event("hangup")
    assert hangup["by"] == "remote" and hangup["cause"] == "NORMAL_CLEARING"
    assert (yield exit_code(caller)) == 0, caller.explain()
    assert no_leaks(gateway)


@pytest_twisted.inlineCallbacks
def test_inbound_call_rejected(gateway, far):
    client = yield logged_in(gateway)
    caller = far("uac_rejected.xml", register=False, variables={"callee": "1000"})
    incoming = yield client.wait_event("incoming")
    assert (yield client.request("reject", {"call": incoming["call"], "status": 603})) == {}
    hangup = yield client.wait_event("hangup")
    assert hangup["sip_status"] == 603 and hangup["by"] == "local" and hangup["cause"] == "CALL_REJECTED"
    assert (yield exit_code(caller)) == 0, caller.explain()
    assert "REJECTED 603" in caller.logs_text()


@pytest_twisted.inlineCallbacks
def test_inbound_caller_cancels(gateway, far):
    client = yield logged_in(gateway)
    caller = far("uac_cancel.xml", register=False, variables={"callee": "1000", "hold_ms": "500"})
    incoming = yield client.wait_event("incoming")
    hangup = yield client.wait_event("hangup")
    assert hangup["call"] == incoming["call"] and hangup["by"] == "remote"
    assert hangup["cause"] == "ORIGINATOR_CANCEL"
    assert (yield exit_code(caller)) == 0, caller.explain()
    assert no_leaks(gateway)


@pytest_twisted.inlineCallbacks
def test_inbound_unanswered_rings_out_with_480(gateway, far):
    client = yield logged_in(gateway)
    caller = far("uac_rejected.xml", register=False, variables={"callee": "1000"}, extra_args=())
    incoming = yield client.wait_event("incoming")
    hangup = yield client.wait_event("hangup", timeout=15)  # ring_timeout is 6 s in these tests
    assert hangup["call"] == incoming["call"] and hangup["sip_status"] == 480
    yield exit_code(caller)  # the scenario wants 486/603, so it reports the 480 as a failure
    assert "480 Temporarily Unavailable" in caller.messages_text()
    assert no_leaks(gateway)


@both_media_modes
@pytest_twisted.inlineCallbacks
def test_user_to_user_call_through_the_pbx(gateway):
    alice = yield logged_in(gateway, "1000")
    bob = yield logged_in(gateway, "1001")
    result = yield alice.request("call", {"to": "1001", "headers": {"X-Ticket": "42"}})
    incoming = yield bob.wait_event("incoming")
    assert incoming["from"] == "1000"
    # the calling node's INVITE carries FreeSWITCH's X-FS-Support too (a FreeSWITCH INVITE may)
    assert incoming["headers"] == {"X-Ticket": "42", "X-FS-Support": "send_info"}
    yield bob.request("answer", {"call": incoming["call"]})
    a = yield alice.wait_event("answered")
    b = yield bob.wait_event("answered")
    assert a["codec"] == b["codec"] == "PCMU"
    # each side's play_url/push_url are distinct keys
    keys = {result["push_url"], result["play_url"], incoming["push_url"], incoming["play_url"]}
    assert len(keys) == 4
    yield sleep(1.0)  # the two legs send each other RTP (with workers: from one worker to the other)
    yield bob.request("hangup", {"call": incoming["call"]})
    hangup_a = yield alice.wait_event("hangup")
    hangup_b = yield bob.wait_event("hangup")
    assert hangup_a["by"] == "remote" and hangup_b["by"] == "local"
    assert hangup_a["cause"] == hangup_b["cause"] == "NORMAL_CLEARING"
    for hangup in (hangup_a, hangup_b):
        assert hangup["media"]["rtp_received"] >= 30, hangup
    yield wait_until(lambda: no_leaks(gateway), timeout=5, what="both legs freed")


@both_media_modes  # with workers the legs are allocated later: calls being set up count too
@pytest_twisted.inlineCallbacks
def test_second_inbound_call_while_busy_and_limit(gateway, far):
    client = yield logged_in(gateway)
    callers = [
        far("uac_rejected.xml", register=False, variables={"callee": "1000"}, user=str(1500 + i))
        for i in range(3)
    ]
    first = yield client.wait_event("incoming")
    second = yield client.wait_event("incoming")
    assert first["call"] != second["call"]
    # the third is beyond calls.max_per_session (2): 486 without an event
    yield sleep(1)
    for call in (first["call"], second["call"]):
        yield client.request("reject", {"call": call})
    for phone in callers:
        assert (yield exit_code(phone)) == 0, phone.explain()
    assert sum("REJECTED 486" in p.logs_text() for p in callers) == 3
    assert no_leaks(gateway)


# -- bad requests ----------------------------------------------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_requests_for_unknown_calls_and_wrong_states(gateway, far):
    phone = far("uas_answer.xml")
    client = yield logged_in(gateway)
    other = yield logged_in(gateway, "1001")
    for method, params in (
        ("hangup", {"call": "cNoSuchCall123"}),
        ("answer", {"call": "cNoSuchCall123"}),
        ("dtmf", {"call": "cNoSuchCall123", "digits": "1"}),
    ):
        with pytest.raises(RpcError) as err:
            yield client.request(method, params)
        assert err.value.reason == "call_not_found"
    with pytest.raises(RpcError) as err:
        yield client.request("hangup", {"call": "../etc"})
    assert err.value.reason == "bad_request"
    result = yield client.request("call", {"to": "1500"})
    call = result["call"]
    with pytest.raises(RpcError) as err:  # someone else's call is not found, not even by its id
        yield other.request("hangup", {"call": call})
    assert err.value.reason == "call_not_found"
    with pytest.raises(RpcError) as err:  # an outbound call cannot be answered
        yield client.request("answer", {"call": call})
    assert err.value.reason == "bad_state"
    with pytest.raises(RpcError) as err:
        yield client.request("call", {"to": "1500\r\nX-Evil: 1"})
    assert err.value.reason == "bad_request"
    with pytest.raises(RpcError) as err:
        yield client.request("call", {"to": "1500", "headers": {"Via": "x"}})
    assert err.value.reason == "bad_request"
    yield client.wait_event("answered")
    with pytest.raises(RpcError) as err:
        yield client.request("dtmf", {"call": call, "digits": "12x"})
    assert err.value.reason == "bad_request"
    yield client.request("hangup", {"call": call})
    yield client.wait_event("hangup")
    with pytest.raises(RpcError) as err:  # hangup twice
        yield client.request("hangup", {"call": call})
    assert err.value.reason == "call_not_found"
    assert (yield exit_code(phone)) == 0, phone.explain()


# -- messages outside calls, INFO from the mini-program ---------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_message_out_of_dialog_both_ways(gateway, far):
    client = yield logged_in(gateway)
    inbox = far("uas_message.xml", user="1500")
    reply = yield client.request("message", {"to": "1500", "body": "hello from the mini-program"})
    assert reply == {"sip_status": 200}
    assert (yield exit_code(inbox)) == 0, inbox.explain()
    assert "MESSAGE type=text/plain body=hello from the mini-program" in inbox.logs_text()
    sender = far(
        "uac_message.xml",
        user="1501",
        register=False,
        variables={"callee": "1000", "message_text": "agent says hi"},
    )
    message = yield client.wait_event("message")
    assert message["from"] == "1501" and message["content_type"] == "text/plain"
    assert message["body"].strip() == "agent says hi"
    assert (yield exit_code(sender)) == 0, sender.explain()


@pytest_twisted.inlineCallbacks
def test_send_info_with_a_json_body(gateway, far):
    phone = far("uas_answer.xml")  # -aa: the phone answers in-call INFO with 200
    client = yield logged_in(gateway)
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    reply = yield client.request("send_info", {"call": result["call"], "body": {"intent": "balance"}})
    assert reply == {"sip_status": 200}
    yield client.request("hangup", {"call": result["call"]})
    yield client.wait_event("hangup")
    assert (yield exit_code(phone)) == 0, phone.explain()
    messages = phone.messages_text()
    assert "Content-Type: application/json" in messages and '{"intent":"balance"}' in messages


@pytest_twisted.inlineCallbacks
def test_dtmf_from_the_far_end_as_info_becomes_a_dtmf_event(gateway, far):
    client = yield logged_in(gateway)
    caller = far(
        "uac_call_send_info_dtmf.xml",
        register=False,
        variables={"callee": "1000", "hold_ms": "300", "dtmf_digit": "7"},
    )
    incoming = yield client.wait_event("incoming")
    yield client.request("answer", {"call": incoming["call"]})
    event = yield client.wait_event("dtmf")
    assert event == {"call": incoming["call"], "digits": "7", "via": "info"}
    yield client.wait_event("hangup")
    assert (yield exit_code(caller)) == 0, caller.explain()


@pytest_twisted.inlineCallbacks
def test_resume_lists_the_live_calls(gateway, far):
    """Events written to a socket that has silently died are lost: resume tells the client which
    calls are still up, and in which state."""
    phone = far("uas_answer.xml")
    client = yield WsClient.connect(gateway.ws_url)
    login = yield client.request("login", {"user": "1000", "password": "1234"})
    assert login["grace_period"] == gateway.config.websocket.grace_period
    result = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    client.drop()
    yield wait_until(
        lambda: gateway.controller.sessions.get(login["session"]).state == "detached", timeout=5
    )
    again = yield WsClient.connect(gateway.ws_url)
    resumed = yield again.request("resume", {"session": login["session"]})
    assert resumed["calls"] == [{
        "call": result["call"], "state": "active", "direction": "outbound",
        "push_url": result["push_url"], "play_url": result["play_url"],
    }]
    yield sleep(0.3)
    yield again.request("hangup", {"call": result["call"]})
    yield again.wait_event("hangup")
    assert (yield exit_code(phone)) == 0, phone.explain()
    resumed = yield again.request("ping")
    assert no_leaks(gateway)
    yield again.close()


@pytest_twisted.inlineCallbacks
def test_resume_lists_a_ringing_call_whose_incoming_event_was_lost(gateway, far):
    client = yield WsClient.connect(gateway.ws_url)
    login = yield client.request("login", {"user": "1000", "password": "1234"})
    client.drop()  # the socket dies before the INVITE comes: its incoming event is queued
    caller = far("uac_call.xml", register=False, variables={"callee": "1000", "hold_ms": "300"})
    yield wait_until(lambda: gateway.node.calls.calls, timeout=10, what="the INVITE")
    again = yield WsClient.connect(gateway.ws_url)
    resumed = yield again.request("resume", {"session": login["session"]})
    (entry,) = resumed["calls"]
    assert entry["state"] == "incoming" and entry["direction"] == "inbound"
    assert entry["from"] == "1500" and entry["to"] == "1000" and entry["video"] is False
    assert entry["play_url"].startswith("rtmp://") and entry["push_url"].startswith("rtmp://")
    yield again.request("answer", {"call": entry["call"]})
    yield again.wait_event("hangup")
    assert (yield exit_code(caller)) == 0, caller.explain()
    yield again.close()
