"""The operator's probe (``python -m b2bua.probe``) run as a command against a real gateway.

The gateway runs in the test process against Kamailio; a sipp UAS with ``-rtp_echo`` plays
FreeSWITCH's 9196 echo as user 1500. The probe is a subprocess, so what is proven is the real
command line: its exit code and what it prints.
"""

from __future__ import annotations

import os
import re
import sys
import time
import wave

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, utils

from tests.integration.gateway import start_gateway
from tests.integration.helpers import wait_until
from tests.peers import require_binary
from tests.peers.ports import free_port

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def gateway(kamailio):
    require_binary("ffmpeg")
    require_binary("sipp")
    gw = start_gateway(kamailio.host, kamailio.port)
    yield gw
    gw.stop()


@defer.inlineCallbacks
def probe(*args: str, env: dict[str, str] | None = None):
    """(exit code, output) of ``python -m b2bua.probe ARGS``, without blocking the reactor."""
    environ = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    started = time.monotonic()
    out, err, code = yield utils.getProcessOutputAndValue(
        sys.executable, ["-m", "b2bua.probe", *args], env=environ, path=ROOT, reactor=reactor
    )
    text = out.decode() + err.decode()
    print(f"\n$ mpb2bua-probe {' '.join(args)}  (exit {code}, {time.monotonic() - started:.1f} s)\n{text}")
    return code, text


@pytest_twisted.inlineCallbacks
def test_probe_hears_its_tone_through_an_echoing_phone(gateway, far, tmp_path):
    far("uas_answer.xml", rtp_echo=True, timeout=60)
    wav = tmp_path / "heard.wav"
    code, out = yield probe(
        "--url", gateway.ws_url, "--user", "1000", "--password", "1234", "--to", "1500",
        "--timeout", "40", "--record", str(wav),
    )  # fmt: skip
    assert code == 0, out
    registered = re.search(r"registered in (\d+) ms", out)
    answered = re.search(r"answered in (\d+) ms, codec (\w+)", out)
    heard = re.search(r"tone heard: ([\d.]+) Hz", out)
    rtt = re.search(r"round trip ≈ (-?\d+) ms", out)
    assert registered and answered and heard and rtt, out
    assert answered.group(2) == "PCMU"
    assert abs(float(heard.group(1)) - 1000) <= 20
    assert 0 < int(rtt.group(1)) < 1500, out  # an estimate: ffmpeg's buffering on both sides
    assert re.search(r"hung up in \d+ ms: NORMAL_CLEARING \(reason bye, by local\); media codec PCMU", out)
    assert "logged out" in out and "RESULT: OK" in out
    assert "/mp/" in out and not re.search(r"/mp/[A-Za-z0-9_-]{8}", out), "stream keys must be cut"
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 16000 and w.getnframes() > 16000 * 3
    # nothing is left behind on the gateway
    yield wait_until(lambda: not gateway.node.calls.calls and not gateway.controller.sessions.count, 5)


@pytest_twisted.inlineCallbacks
def test_probe_wrong_password_is_auth_failed(gateway):
    code, out = yield probe(
        "--url", gateway.ws_url, "--user", "1000", "--password", "wrong", "--timeout", "20"
    )  # fmt: skip
    assert code == 4, out
    assert re.search(r"login failed: auth_failed \(-32002 Authentication failed; sip_status 40[13]\)", out)
    assert "RESULT: FAILED: auth_failed (exit 4)" in out
    assert "wrong" not in out  # the password is not echoed


@pytest_twisted.inlineCallbacks
def test_probe_password_from_the_environment_and_an_unknown_number(gateway):
    code, out = yield probe(
        "--url", gateway.ws_url, "--user", "1000", "--to", "1599", "--timeout", "20",
        env={"MPB2BUA_PASSWORD": "1234"},
    )  # fmt: skip
    assert "logged in as 1000" in out, out
    assert code == 5  # nobody is registered as 1599: Kamailio answers 404
    assert re.search(r"call failed: UNALLOCATED_NUMBER \(sip_status 404", out), out


@pytest_twisted.inlineCallbacks
def test_probe_busy_number_gives_the_cause(gateway, far):
    far("uas_busy.xml", timeout=30)
    code, out = yield probe(
        "--url", gateway.ws_url, "--user", "1000", "--password", "1234", "--to", "1500", "--timeout", "20"
    )
    assert code == 5, out
    assert re.search(r"call failed: USER_BUSY \(sip_status 486, reason [^,]+, by remote\)", out), out
    assert "RESULT: FAILED: USER_BUSY (exit 5)" in out
    assert "logged out" in out


@pytest_twisted.inlineCallbacks
def test_probe_unanswered_call_times_out_and_cancels(gateway, far):
    far("uas_noanswer.xml", timeout=30)
    code, out = yield probe(
        "--url", gateway.ws_url, "--user", "1000", "--password", "1234", "--to", "1500", "--timeout", "4"
    )
    assert code == 6, out
    assert "timed out after 4 s while waiting for the answer" in out
    assert re.search(r"hung up: ORIGINATOR_CANCEL", out), out
    yield wait_until(lambda: not gateway.node.calls.calls and not gateway.controller.sessions.count, 5)


@pytest_twisted.inlineCallbacks
def test_probe_nothing_listening_is_a_connect_failure():
    port = free_port("tcp")
    code, out = yield probe("--url", f"ws://127.0.0.1:{port}/ws", "--user", "1000", "--password", "x")
    assert code == 3, out
    assert f"cannot connect to ws://127.0.0.1:{port}/ws" in out


@pytest_twisted.inlineCallbacks
def test_probe_against_a_gateway_whose_pbx_is_down_fails_fast(gateway_factory):
    """With OPTIONS keepalives on, a PBX that does not answer is known to be unreachable within
    sip.pbx_down_after, and a login then fails at once instead of after the REGISTER's 32 s."""
    require_binary("ffmpeg")
    silent = free_port("both")  # nothing listens there
    gw = gateway_factory("127.0.0.1", silent, sip__options_keepalive=0.5, sip__pbx_down_after=2)
    yield wait_until(lambda: gw.stack.pbx_reachable is False, 5, what="the PBX to be found unreachable")
    started = time.monotonic()
    code, out = yield probe("--url", gw.ws_url, "--user", "1000", "--password", "1234", "--timeout", "20")
    assert code == 4, out
    assert "login failed: pbx_unreachable" in out
    assert time.monotonic() - started < 5, out  # python start-up included


@pytest_twisted.inlineCallbacks
def test_probe_over_wss_verifies_the_certificate(kamailio, gateway_factory, tmp_path):
    from tests.integration.test_wss_token import self_signed

    require_binary("ffmpeg")
    key, cert, _ = self_signed(tmp_path)
    port = free_port("tcp")
    gateway_factory(
        kamailio.host, kamailio.port,
        websocket__tls_listen=f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
    )  # fmt: skip
    url = f"wss://127.0.0.1:{port}/ws"
    login = ("--url", url, "--user", "1000", "--password", "1234", "--to", "1599", "--timeout", "20")
    code, out = yield probe(*login)
    assert code == 3 and "cannot connect" in out and "certificate verify failed" in out, out
    for trust in (("--ca-file", cert), ("--insecure",)):
        code, out = yield probe(*login, *trust)
        assert "logged in as 1000" in out and code == 5, out  # 1599: nobody there, 404
