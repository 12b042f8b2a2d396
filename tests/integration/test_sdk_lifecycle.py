"""The SDK's lifecycle layer on a phone's life, against a real gateway, Kamailio and sipp.

Each case runs one test of ``sdk/miniprogram/test/lifecycle.gateway.test.js`` (node, with the
WeChat stand-in of ``test/wx-shim.js``: background suspends JS and cuts sockets, a network switch
leaves the old socket silently dead, audio interruptions, live-pusher/player state codes) while
this process serves the gateway. Grace periods are short so that the suite stays quick: 15 s where
a 10 s background must survive, 2 s where it must not.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.integration.gateway import start_gateway
from tests.integration.helpers import exit_code, no_leaks, wait_until
from tests.integration.test_sdk import check_passed, node_sdk, run_node_case  # noqa: F401 - fixture
from tests.peers import require_binary

pytestmark = pytest.mark.integration

NODE_FILE = "test/lifecycle.gateway.test.js"


def _gateway(kamailio, grace: float):
    require_binary("sipp")
    overrides = {"websocket__login_attempts_per_minute": 100_000, "websocket__grace_period": grace}
    return start_gateway(kamailio.host, kamailio.port, **overrides)


@pytest.fixture
def gateway(kamailio):
    gw = _gateway(kamailio, 15.0)
    yield gw
    gw.stop()


@pytest.fixture
def short_grace_gateway(kamailio):
    gw = _gateway(kamailio, 2.0)
    yield gw
    gw.stop()


@defer.inlineCallbacks
def lifecycle_case(node, name, gw, tmp_path, timeout=90.0):
    proc = run_node_case(node, name, gw, tmp_path, timeout=timeout, test_file=NODE_FILE)
    yield proc.ended
    check_passed(proc, name)
    return proc


@defer.inlineCallbacks
def clean_end(gw, phone, bye=True):
    assert (yield exit_code(phone, timeout=30)) == 0, phone.explain()
    if bye:
        assert "BYE sip:" in phone.messages_text()
    yield wait_until(lambda: no_leaks(gw), timeout=5, what="call freed")
    yield wait_until(lambda: gw.controller.sessions.count == 0, timeout=10, what="sessions ended")


@pytest_twisted.inlineCallbacks
def test_background_10s_same_session_and_call(node_sdk, gateway, far, tmp_path):  # noqa: F811
    phone = far("uas_answer.xml", timeout=60)
    yield lifecycle_case(
        node_sdk, "background for 10 s and back: the same session and call continue", gateway, tmp_path
    )
    yield clean_end(gateway, phone)


@pytest_twisted.inlineCallbacks
def test_background_past_grace_clear_hangup(node_sdk, short_grace_gateway, far, tmp_path):  # noqa: F811
    phone = far("uas_answer.xml", timeout=60)
    name = "background past the grace period: a clear hangup reason on return"
    yield lifecycle_case(node_sdk, name, short_grace_gateway, tmp_path)
    # the gateway ended the call itself when the grace period ran out: the far end got a BYE
    yield clean_end(short_grace_gateway, phone)


@pytest_twisted.inlineCallbacks
def test_network_switch_resumed_within_2s(node_sdk, gateway, far, tmp_path):  # noqa: F811
    phone = far("uas_answer.xml", timeout=60)
    yield lifecycle_case(node_sdk, "network switch: resumed within 2 s of the new network", gateway, tmp_path)
    yield clean_end(gateway, phone)


@pytest_twisted.inlineCallbacks
def test_audio_interruption_held_and_unheld(node_sdk, gateway, far, tmp_path):  # noqa: F811
    phone = far("uas_answer_hold_unhold.xml", timeout=60)
    yield lifecycle_case(node_sdk, "audio interruption: the call is held, then unheld", gateway, tmp_path)
    yield clean_end(gateway, phone)
    logs = phone.logs_text()
    assert "sendonly" in logs and "sendrecv" in logs, logs


@pytest_twisted.inlineCallbacks
def test_player_3004_ends_call_without_retry(node_sdk, gateway, far, tmp_path):  # noqa: F811
    phone = far("uas_answer_then_bye.xml", variables={"hold_ms": "1500"}, timeout=60)
    yield lifecycle_case(
        node_sdk, "3004 from the player: the call ends and nothing retries", gateway, tmp_path
    )
    yield clean_end(gateway, phone, bye=False)


@pytest_twisted.inlineCallbacks
def test_call_ended_while_socket_dead_learned_from_resume(node_sdk, gateway, far, tmp_path):  # noqa: F811
    phone = far("uas_answer_then_bye.xml", variables={"hold_ms": "1500"}, timeout=60)
    name = "a call that ends while the socket is silently dead is ended by the resume result"
    yield lifecycle_case(node_sdk, name, gateway, tmp_path)
    yield clean_end(gateway, phone, bye=False)


@pytest_twisted.inlineCallbacks
def test_hangup_while_reconnecting_reaches_far_end(node_sdk, gateway, far, tmp_path):  # noqa: F811
    phone = far("uas_answer.xml", timeout=60)
    name = "hang-up while reconnecting: sent after the resume, the far end gets its BYE"
    yield lifecycle_case(node_sdk, name, gateway, tmp_path)
    yield clean_end(gateway, phone)


@pytest_twisted.inlineCallbacks
def test_cold_restart_resumes_session_and_call(node_sdk, gateway, far, tmp_path):  # noqa: F811
    phone = far("uas_answer.xml", timeout=60)
    name = "cold restart within the grace period resumes the same session and call"
    yield lifecycle_case(node_sdk, name, gateway, tmp_path)
    yield clean_end(gateway, phone)
