"""SIP over TLS to a real Kamailio (tls module) with certificates from a test CA: login, calls
both ways over the gateway's own TLS connection, certificate failures reported at once, a client
certificate when Kamailio asks for one, and the connection re-made (and re-registered) after
Kamailio restarts."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.integration.helpers import exit_code, no_leaks, sleep, wait_until
from tests.peers import require_binary
from tests.peers.certs import TestCA
from tests.peers.kamailio import module_dir
from tests.peers.wsclient import RpcError, WsClient

pytestmark = pytest.mark.integration


def _require_tls_module() -> None:
    import os

    require_binary("kamailio")
    if not os.path.isfile(os.path.join(module_dir(), "tls.so")):
        if os.environ.get("CI") == "true":
            pytest.fail("Kamailio's tls.so is missing: apt-get install kamailio-tls-modules")
        pytest.skip("Kamailio's tls.so is missing (kamailio-tls-modules)")


@pytest.fixture
def pki(tmp_path):
    ca = TestCA(tmp_path / "pki")
    return {
        "ca": ca,
        "other": TestCA(tmp_path / "pki", name="other-ca"),
        "pbx": ca.issue("pbx", ["127.0.0.1", "pbx.test"]),
        "gw": ca.issue("gw", ["gw.test"]),
    }


@pytest.fixture
def kamailio(kamailio_factory, pki):
    """Kamailio in TLS mode (the ``far`` fixture's phones register with it over UDP)."""
    _require_tls_module()
    return kamailio_factory(tls_cert=pki["pbx"].cert, tls_key=pki["pbx"].key)


def _tls_gateway(gateway_factory, kam, pki, **overrides):
    overrides.setdefault("sip__tls_ca_file", str(pki["ca"].cert_path))
    return gateway_factory(
        kam.host, kam.tls_port, sip__pbx_transport="tls", calls__ring_timeout=6.0, **overrides
    )


@defer.inlineCallbacks
def _login(gw, user="1000"):
    client = yield WsClient.connect(gw.ws_url)
    yield client.request("login", {"user": user, "password": "1234"})
    return client


@pytest_twisted.inlineCallbacks
def test_login_call_and_hangup_over_tls(kamailio, gateway_factory, pki, far):
    require_binary("sipp")
    gw = _tls_gateway(gateway_factory, kamailio, pki)
    client = yield _login(gw)
    (contact,) = kamailio.contacts()["1000"]
    assert str(contact["Address"]).endswith(";transport=tls")
    assert "tls:" in str(contact["Socket"]).lower()  # it came over Kamailio's TLS listener
    phone = far("uas_answer.xml")
    result = yield client.request("call", {"to": "1500"})
    answered = yield client.wait_event("answered")
    assert answered["call"] == result["call"]
    yield sleep(0.3)
    yield client.request("hangup", {"call": result["call"]})
    hangup = yield client.wait_event("hangup")
    assert hangup["by"] == "local" and hangup["cause"] == "NORMAL_CLEARING"
    assert (yield exit_code(phone)) == 0, phone.explain()
    # one connection carried it all: REGISTER, INVITE, ACK, BYE
    assert gw.stack.transport.tcp_counts() == {"pbx": 1, "other": 0}
    assert gw.stack.health()["pbx_connection"] == "connected"
    assert no_leaks(gw)
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_inbound_call_comes_over_the_gateways_connection(kamailio, gateway_factory, pki, far):
    """The gateway has no TLS listener: Kamailio reaches it only over the connection its
    REGISTER came on."""
    require_binary("sipp")
    gw = _tls_gateway(gateway_factory, kamailio, pki)
    assert "TLS" not in gw.stack.transport.transports
    client = yield _login(gw)
    caller = far("uac_call.xml", register=False, variables={"callee": "1000", "hold_ms": "800"})
    incoming = yield client.wait_event("incoming")
    assert incoming["from"] == "1500"
    yield client.request("answer", {"call": incoming["call"]})
    yield client.wait_event("answered")
    hangup = yield client.wait_event("hangup")
    assert hangup["by"] == "remote" and hangup["cause"] == "NORMAL_CLEARING"
    assert (yield exit_code(caller)) == 0, caller.explain()
    assert gw.stack.transport.tcp_counts() == {"pbx": 1, "other": 0}
    assert no_leaks(gw)
    yield client.close()


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"sip__tls_ca_file": "OTHER"}, "certificate verify failed"),
        ({"sip__tls_server_name": "wrong.test"}, "the certificate does not name the PBX"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_untrusted_pbx_certificate_fails_the_login_at_once(kamailio, gateway_factory, pki, overrides, why):
    if overrides.get("sip__tls_ca_file") == "OTHER":
        overrides = {"sip__tls_ca_file": str(pki["other"].cert_path)}
    gw = _tls_gateway(gateway_factory, kamailio, pki, **overrides)
    client = yield WsClient.connect(gw.ws_url)
    started = time.monotonic()
    with pytest.raises(RpcError) as err:
        yield client.request("login", {"user": "1000", "password": "1234"})
    assert err.value.reason == "pbx_unreachable"
    assert why in err.value.data.get("detail", ""), err.value.data  # the client is told why
    assert time.monotonic() - started < 5  # not the 32 s transaction timeout
    health = gw.stack.health()
    assert health["pbx_connection"] == "failed" and why in health["pbx_connection_error"]
    assert kamailio.registrations() == {}
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_client_certificate_when_the_pbx_requires_one(kamailio_factory, gateway_factory, pki):
    _require_tls_module()
    pbx = pki["pbx"]
    kam = kamailio_factory(tls_cert=pbx.cert, tls_key=pbx.key, tls_client_ca=pki["ca"].cert_path)
    anonymous = _tls_gateway(gateway_factory, kam, pki)
    client = yield WsClient.connect(anonymous.ws_url)
    with pytest.raises(RpcError) as err:
        yield client.request("login", {"user": "1000", "password": "1234"})
    assert err.value.reason == "pbx_unreachable"
    yield client.close()
    mine = pki["gw"]
    keys = {"sip__tls_cert_file": str(mine.cert), "sip__tls_key_file": str(mine.key)}
    gw = _tls_gateway(gateway_factory, kam, pki, **keys)
    client = yield _login(gw)
    assert list(kam.registrations()) == ["1000"]
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_connection_lost_is_made_again_and_the_registration_renewed(kamailio, gateway_factory, pki):
    """Kamailio restarts (its location table in memory is lost, and the TLS connection with
    it): the gateway reconnects and re-registers at once, not at the next refresh."""
    gw = _tls_gateway(gateway_factory, kamailio, pki, sip__reregister_window=1.0, sip__register_expires=600)
    client = yield _login(gw)
    assert list(kamailio.registrations()) == ["1000"]
    kamailio.restart()
    yield wait_until(
        lambda: list(kamailio.registrations()) == ["1000"], timeout=10, what="the registration renewed"
    )
    (contact,) = kamailio.contacts()["1000"]
    assert "tls:" in str(contact["Socket"]).lower()
    assert gw.stack.transport.tcp_counts() == {"pbx": 1, "other": 0}
    assert gw.stack.registrations and all(r.state == "registered" for r in gw.stack.registrations.values())
    yield client.close()
