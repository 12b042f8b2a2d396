"""SIP from a stranger (issue 12) against a gateway that talks TCP to Kamailio: 1,100 TCP
connections from 127.0.0.2 do not keep a login from reaching the PBX, 20,000 UDP requests with
random methods leave /metrics small, and the log holds a bounded number of refusal lines.

The PBX is 127.0.0.1; the stranger binds its sockets to 127.0.0.2 (all of 127.0.0.0/8 is
loopback on Linux)."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import threads
from twisted.logger import globalLogPublisher

from tests.integration.helpers import http_get, sleep
from tests.peers.sipflood import STRANGER, tcp_flood, udp_flood
from tests.peers.wsclient import WsClient

pytestmark = pytest.mark.integration


@pytest.fixture
def log_events():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def sample(metrics: bytes, name: str) -> float:
    (line,) = [ln for ln in metrics.decode().splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


def count(events: list[dict], prefix: str) -> int:
    return sum(1 for e in events if str(e.get("log_format", "")).startswith(prefix))


@pytest_twisted.inlineCallbacks
def test_tcp_and_udp_floods_from_a_stranger(kamailio, gateway_factory, log_events):
    gw = gateway_factory(kamailio.host, kamailio.port, sip__pbx_transport="tcp")
    sip = gw.config.sip
    code, body = yield threads.deferToThread(http_get, f"http://127.0.0.1:{gw.http_port}/metrics")
    metrics_before = len(body)

    # 1,100 connections from one address, held 4 s (within the 5 s first-message deadline)
    flood = threads.deferToThread(tcp_flood, gw.sip_port, 1100, STRANGER, "127.0.0.1", 4.0, 20.0)
    yield sleep(1.0)
    counts = gw.stack.transport.tcp_counts()
    assert counts["other"] <= sip.tcp_max_inbound_per_address, counts
    client = yield WsClient.connect(gw.ws_url)
    result = yield client.request("login", {"user": "1000", "password": "1234"})
    assert result["user"] == "1000"
    assert "1000" in kamailio.registrations()
    assert gw.stack.transport.tcp_counts()["pbx"] >= 1
    code, body = yield threads.deferToThread(http_get, f"http://127.0.0.1:{gw.http_port}/healthz")
    health = json.loads(body)
    assert health["pbx_connection"] == "connected" and health["sip_listening"] == {"udp": True, "tcp": True}
    stats = yield flood
    # every attempt got an answer: the few allowed stayed open, the others were reset (at once,
    # some even before the connecting side saw its connect complete: "failed")
    assert stats["established"] + stats["failed"] == 1100, stats
    assert stats["open"] <= sip.tcp_max_inbound_per_address, stats

    # 20,000 UDP requests with random methods
    sent = yield threads.deferToThread(udp_flood, gw.sip_port, 20_000, STRANGER, "127.0.0.1", 60.0)
    assert sent["sent"] == 20_000 and sent["answers"] > 0, sent
    yield sleep(0.5)
    code, body = yield threads.deferToThread(http_get, f"http://127.0.0.1:{gw.http_port}/metrics")
    assert len(body) - metrics_before < 4096, (metrics_before, len(body))
    assert b'mpb2bua_sip_requests_total{direction="in",method="other"}' in body
    assert b'mpb2bua_sip_tcp_refused_total{reason="per_address"}' in body
    # read at sip.stranger_messages_per_second_per_address, the rest dropped unread
    refused, dropped = (
        sample(body, name) for name in ("mpb2bua_sip_refused_total", "mpb2bua_sip_dropped_total")
    )
    assert refused <= sip.stranger_messages_per_second_per_address * (sent["seconds"] + 2), refused
    assert dropped > 10_000, dropped

    # the log: at most log_limit lines of each kind in this interval, the rest summarized later
    assert count(log_events, "refused ") <= sip.log_limit
    assert count(log_events, "SIP TCP connection from") <= sip.log_limit
    assert count(log_events, "bad SIP message") <= sip.log_limit
    assert len(log_events) < 500, len(log_events)

    # the logged-in user is unharmed and its registration goes on over TCP
    pong = yield client.request("ping")
    assert "pong" in pong
    yield client.request("logout")
    yield client.close()
