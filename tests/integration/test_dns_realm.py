"""A PBX found through DNS (SRV → A, RFC 3263) and the digest realm check, against Kamailio."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.logger import formatEvent, globalLogPublisher

from tests.integration.helpers import http_get
from tests.peers.dns_zone import DnsServer, a, srv
from tests.peers.wsclient import RpcError, WsClient

pytestmark = pytest.mark.integration


@pytest.fixture
def dns_server():
    server = DnsServer(reactor)
    yield server
    pytest_twisted.blockon(server.stop())


@pytest.fixture
def log_lines():
    lines: list[str] = []

    def observe(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.inlineCallbacks
def test_pbx_name_without_port_is_found_by_srv_and_a_login_registers(kamailio_factory, gateway_factory,
                                                                      dns_server):
    kamailio = kamailio_factory(domain="pbx.test")  # realm pbx.test, like FreeSWITCH's domain
    dns_server.zone.set("_sip._udp.pbx.test", srv(10, 0, kamailio.port, "sip1.pbx.test", ttl=60))
    dns_server.zone.set("sip1.pbx.test", a(kamailio.host, ttl=60))
    gw = gateway_factory(
        kamailio.host,
        kamailio.port,
        sip__pbx="pbx.test",
        sip__domain="pbx.test",
        sip__dns_servers=[dns_server.address],
    )
    client = yield WsClient.connect(gw.ws_url)
    result = yield client.request("login", {"user": "1000", "password": "1234"})
    assert result["user"] == "1000"
    assert gw.stack.pbx_target == ("UDP", kamailio.host, kamailio.port)
    assert dns_server.zone.asked("SRV") == ["_sip._udp.pbx.test"]
    (contact,) = kamailio.registrations()["1000"]
    assert f":{gw.sip_port}" in contact
    status, body = yield threads.deferToThread(http_get, f"http://127.0.0.1:{gw.http_port}/healthz")
    health = json.loads(body)
    assert status == 200 and health["pbx_target"] == f"{kamailio.host}:{kamailio.port}"
    assert health["pbx_dns"]["pbx.test"]["ok"] is True
    status, body = yield threads.deferToThread(http_get, f"http://127.0.0.1:{gw.http_port}/metrics")
    assert b'mpb2bua_pbx_dns_ok{name="pbx.test"} 1' in body
    yield client.request("logout")
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_challenge_for_another_realm_is_refused(kamailio_factory, gateway_factory, log_lines):
    kamailio = kamailio_factory(realm="other.example")  # domain 127.0.0.1, realm other.example
    gw = gateway_factory(kamailio.host, kamailio.port)  # sip.realm unset: the domain's host
    client = yield WsClient.connect(gw.ws_url)
    with pytest.raises(RpcError) as err:
        yield client.request("login", {"user": "1000", "password": "1234"})
    assert err.value.reason == "auth_failed"
    assert kamailio.registrations() == {}
    # one REGISTER went out, no answer to the challenge
    assert kamailio.log_text().count("REQ REGISTER") == 1
    realm_lines = [line for line in log_lines if "'other.example'" in line]
    assert realm_lines and "'127.0.0.1'" in realm_lines[0] and "auth_failed" in realm_lines[0]
    assert not any("1234" in line for line in realm_lines)
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_configured_realm_or_any_is_answered(kamailio_factory, gateway_factory):
    kamailio = kamailio_factory(realm="other.example")
    for realm in ("other.example", ["pbx.example", "OTHER.example"], "*"):
        gw = gateway_factory(kamailio.host, kamailio.port, sip__realm=realm)
        client = yield WsClient.connect(gw.ws_url)
        result = yield client.request("login", {"user": "1000", "password": "1234"})
        assert result["user"] == "1000", realm
        yield client.request("logout")
        yield client.close()
        yield gw.node.stopService()  # one gateway at a time
