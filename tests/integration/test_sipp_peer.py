"""Self-test of the sipp harness (tests/peers/sipp.py): every scenario in tests/peers/scenarios
is run against its counterpart, sipp to sipp through Kamailio, so a failing gateway test can be
blamed on the gateway and not on the far end. No gateway is involved here."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers import require_binary
from tests.peers.kamailio import Kamailio
from tests.peers.sipp import EXIT_CALLS_FAILED, SCENARIO_DIR, Sipp, scenario_path, scenario_role

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CALLEE = "1500"
CALLER = "1501"
HOLD_MS = "300"


@pytest.fixture
def sipp_factory(tmp_path: Path) -> Iterator[Callable[..., Sipp]]:
    """``sipp_factory(scenario, kamailio, user=..., ...)`` -> a Sipp (not started); all are
    stopped (and un-registered) at teardown and their logs printed (shown for failed tests)."""
    require_binary("sipp")
    made: list[Sipp] = []

    def make(scenario: str, kamailio: Kamailio | None = None, **kwargs: object) -> Sipp:
        sipp = Sipp(tmp_path, scenario, kamailio, **kwargs)  # type: ignore[arg-type]
        made.append(sipp)
        return sipp

    yield make
    for sipp in made:
        sipp.stop()
    for sipp in made:
        if sipp.workdir is not None:
            print(f"\n===== {sipp.name} =====\n{sipp.explain(3000)}")


def _pair(
    sipp_factory: Callable[..., Sipp],
    kamailio: Kamailio,
    uas_scenario: str,
    uac_scenario: str,
    uas_vars: dict[str, str] | None = None,
    uac_vars: dict[str, str] | None = None,
    **uas_kwargs: object,
) -> tuple[Sipp, Sipp]:
    """Start a UAS registered as CALLEE, then a UAC (CALLER) calling it; wait for both."""
    uas = sipp_factory(
        uas_scenario,
        kamailio,
        user=CALLEE,
        timeout=15,
        variables={"hold_ms": HOLD_MS, **(uas_vars or {})},
        **uas_kwargs,
    ).start()
    uac = sipp_factory(
        uac_scenario,
        kamailio,
        user=CALLER,
        register=False,
        timeout=15,
        variables={"callee": CALLEE, "hold_ms": HOLD_MS, **(uac_vars or {})},
    ).start()
    uac.wait_ok(20)
    uas.wait_ok(20)
    return uas, uac


# -- no binaries needed ------------------------------------------------------------------------


def test_scenarios_are_found_and_have_a_role() -> None:
    names = sorted(p.name for p in SCENARIO_DIR.glob("*.xml"))
    assert "uas_answer.xml" in names and "uac_call.xml" in names
    for name in names:
        role = scenario_role(scenario_path(name))
        expected = "uas" if name.startswith("uas_") else "uac"  # register.xml sends first
        assert role == expected, name
    assert scenario_path("uas_busy") == SCENARIO_DIR / "uas_busy.xml"


# -- sipp to sipp through Kamailio -------------------------------------------------------------


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_answer_caller_hangs_up(sipp_factory: Callable[..., Sipp], kamailio: Kamailio, codec: str) -> None:
    uas = sipp_factory("uas_answer.xml", kamailio, user=CALLEE, codec=codec, rtp_echo=True, timeout=15)
    uas.start()
    # the UAS is reachable: its own port is the contact registered for 1500
    assert uas.contact_uri in kamailio.registrations().get(CALLEE, [])

    uac = sipp_factory(
        "uac_call.xml",
        kamailio,
        user=CALLER,
        register=False,
        codec=codec,
        timeout=15,
        variables={"callee": CALLEE, "hold_ms": HOLD_MS},
    ).start()
    uac.wait_ok(20)
    uas.wait_ok(20)

    pt = {"PCMU": "0", "PCMA": "8"}[codec]
    answer = uas.messages_text()
    assert f"a=rtpmap:{pt} {codec}/8000" in answer
    assert "a=rtpmap:101 telephone-event/8000" in answer
    assert f"m=audio {uas.media_port} RTP/AVP {pt} 101" in answer
    # ACK and BYE went through Kamailio (Record-Route echoed, Route set used by the caller)
    sent_by_uac = uac.messages_text()
    assert f"Route: <sip:127.0.0.1:{kamailio.port};lr" in sent_by_uac
    assert "BYE sip:1500@127.0.0.1" in answer

    uas.stop()
    assert uas.contact_uri not in kamailio.registrations().get(CALLEE, [])


def test_rtp_echo(sipp_factory: Callable[..., Sipp], kamailio: Kamailio) -> None:
    uas = sipp_factory("uas_answer.xml", kamailio, user=CALLEE, rtp_echo=True, timeout=10).start()
    rtp = bytes([0x80, 0x00, 0x00, 0x01]) + b"\x00" * 8 + b"\xff" * 160
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2.0)
        sock.sendto(rtp, ("127.0.0.1", uas.media_port))
        data, addr = sock.recvfrom(2048)
    assert data == rtp
    assert addr == ("127.0.0.1", uas.media_port)


def test_callee_hangs_up(sipp_factory: Callable[..., Sipp], kamailio: Kamailio) -> None:
    uas, uac = _pair(sipp_factory, kamailio, "uas_answer_then_bye.xml", "uac_call_wait_bye.xml")
    assert "BYE sip:1501@127.0.0.1" in uac.messages_text()


@pytest.mark.parametrize(
    "scenario,code,reason", [("uas_busy.xml", "486", "Busy Here"), ("uas_decline.xml", "603", "Decline")]
)
def test_rejected(
    sipp_factory: Callable[..., Sipp], kamailio: Kamailio, scenario: str, code: str, reason: str
) -> None:
    uas, uac = _pair(sipp_factory, kamailio, scenario, "uac_rejected.xml")
    assert f"REJECTED {code}" in uac.logs_text()
    assert f"SIP/2.0 {code} {reason}" in uas.messages_text()


def test_caller_cancels_while_ringing(sipp_factory: Callable[..., Sipp], kamailio: Kamailio) -> None:
    uas, uac = _pair(sipp_factory, kamailio, "uas_noanswer.xml", "uac_cancel.xml")
    assert "SIP/2.0 487 Request Terminated" in uac.messages_text()
    assert "CANCEL sip:1500@" in uas.messages_text()


def test_early_media(sipp_factory: Callable[..., Sipp], kamailio: Kamailio) -> None:
    uas, uac = _pair(
        sipp_factory, kamailio, "uas_early_media.xml", "uac_call.xml", uas_vars={"early_ms": "300"}
    )
    caller_saw = uac.messages_text()
    assert "SIP/2.0 183 Session Progress" in caller_saw
    assert caller_saw.index("183 Session Progress") < caller_saw.index("SIP/2.0 200 OK")


def test_reinvite_hold(sipp_factory: Callable[..., Sipp], kamailio: Kamailio) -> None:
    uas, uac = _pair(sipp_factory, kamailio, "uas_reinvite_hold.xml", "uac_call_accept_reinvite.xml")
    assert "re-INVITE a=sendonly" in uac.logs_text()
    assert "HOLD answer a=recvonly" in uas.logs_text()


def test_info_and_message(sipp_factory: Callable[..., Sipp], kamailio: Kamailio) -> None:
    uas, uac = _pair(sipp_factory, kamailio, "uas_info_message.xml", "uac_call_accept_info.xml")
    logs = uac.logs_text()
    assert 'INFO application/json {"text":"hello world","confidence":0.9}' in logs
    assert "MESSAGE text/plain asr: hello" in logs


def test_info_dtmf(sipp_factory: Callable[..., Sipp], kamailio: Kamailio) -> None:
    uas, uac = _pair(sipp_factory, kamailio, "uas_expect_info_dtmf.xml", "uac_call_send_info_dtmf.xml")
    assert "Signal=5" in uas.logs_text()


def test_info_dtmf_wrong_digit_fails(sipp_factory: Callable[..., Sipp], kamailio: Kamailio) -> None:
    """The UAS really checks the digit: 7 sent where 5 is expected fails its call."""
    uas = sipp_factory("uas_expect_info_dtmf.xml", kamailio, user=CALLEE, timeout=10).start()
    uac = sipp_factory(
        "uac_call_send_info_dtmf.xml",
        kamailio,
        user=CALLER,
        register=False,
        timeout=10,
        variables={"callee": CALLEE, "hold_ms": HOLD_MS, "dtmf_digit": "7"},
    ).start()
    assert uas.wait(15) == EXIT_CALLS_FAILED, uas.explain()
    uac.wait(15)  # its fate (BYE or timeout) does not matter here


def test_unregistered_callee_is_not_found(sipp_factory: Callable[..., Sipp], kamailio: Kamailio) -> None:
    """Without a registration Kamailio answers 404: the caller's call fails, quickly."""
    start = time.monotonic()
    uac = sipp_factory(
        "uac_call.xml", kamailio, user=CALLER, register=False, timeout=10, variables={"callee": "1599"}
    ).start()
    assert uac.wait(15) == EXIT_CALLS_FAILED, uac.explain()
    assert "SIP/2.0 404" in uac.messages_text()
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    "uas_scenario,uac_scenario",
    [
        ("uas_answer.xml", "uac_call.xml"),
        ("uas_answer_then_bye.xml", "uac_call_wait_bye.xml"),
        ("uas_busy.xml", "uac_rejected.xml"),
        ("uas_noanswer.xml", "uac_cancel.xml"),
        ("uas_reinvite_hold.xml", "uac_call_accept_reinvite.xml"),
    ],
)
def test_direct_without_proxy(
    sipp_factory: Callable[..., Sipp], uas_scenario: str, uac_scenario: str
) -> None:
    """The same scenarios with no proxy in between (as when the gateway is called directly):
    no 407, no Record-Route, a single Via."""
    uas = sipp_factory(uas_scenario, None, user=CALLEE, timeout=10, variables={"hold_ms": HOLD_MS}).start()
    uac = sipp_factory(
        uac_scenario,
        None,
        user=CALLER,
        timeout=10,
        remote=f"127.0.0.1:{uas.port}",
        variables={"callee": CALLEE, "hold_ms": HOLD_MS},
    ).start()
    uac.wait_ok(15)
    uas.wait_ok(15)
    assert "SIP/2.0 407" not in uac.messages_text()
    assert "Record-Route" not in uas.messages_text()


def test_uas_over_tcp(sipp_factory: Callable[..., Sipp], kamailio: Kamailio) -> None:
    """A UAS on TCP registers a ;transport=tcp contact and Kamailio reaches it over TCP."""
    uas = sipp_factory("uas_answer.xml", kamailio, user=CALLEE, transport="t1", timeout=10).start()
    assert kamailio.registrations()[CALLEE] == [f"sip:{CALLEE}@127.0.0.1:{uas.port};transport=tcp"]
    uac = sipp_factory(
        "uac_call.xml",
        kamailio,
        user=CALLER,
        register=False,
        timeout=10,
        variables={"callee": CALLEE, "hold_ms": HOLD_MS},
    ).start()
    uac.wait_ok(15)
    uas.wait_ok(15)
    assert "TCP message received" in uas.messages_text()
