"""wss through the shipped nginx server block (etc/nginx/mpb2bua.conf, run as is with its port,
certificate and upstream substituted): Debian's nginx terminates TLS with a certificate made
here, the gateway listens on plain ws behind it and, with ``websocket.trusted_proxy_hops: 1``,
sees each client's own address (its login rate limit then counts per client)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, ssl

from tests.integration.helpers import exit_code, wait_until
from tests.integration.test_wss_token import self_signed
from tests.peers import require_binary
from tests.peers.nginx import Nginx
from tests.peers.ports import free_port
from tests.peers.wsclient import RpcError, WsClient

pytestmark = pytest.mark.integration


@pytest.fixture
def front(tmp_path):
    """``make(gateway)``: nginx in front of the gateway's plain WebSocket listener; stopped at
    the end (its error log printed)."""
    require_binary("nginx")
    started = []

    def make(gw):
        key, cert, pem = self_signed(tmp_path)
        upstream = gw.ws_url.split("//", 1)[1].split("/", 1)[0]
        proxy = Nginx(tmp_path / f"nginx{len(started)}", upstream, cert, key)
        started.append(proxy)
        proxy.start()
        proxy.tls = ssl.optionsForClientTLS("127.0.0.1", ssl.Certificate.loadPEM(pem))
        return proxy

    yield make
    for proxy in started:
        proxy.stop()
        print(f"----- nginx log -----\n{proxy.log_text()[-4000:]}")


def connect(proxy, bind_host="127.0.0.1", headers=None):
    return WsClient.connect(proxy.url, context_factory=proxy.tls, bind_host=bind_host, headers=headers)


@pytest_twisted.inlineCallbacks
def test_login_call_and_resume_through_nginx(kamailio, gateway_factory, far, front):
    require_binary("sipp")
    gw = gateway_factory(kamailio.host, kamailio.port, websocket__trusted_proxy_hops=1)
    proxy = front(gw)
    phone = far("uas_answer.xml", user="1500")
    client = yield connect(proxy, bind_host="127.0.0.2")
    login = yield client.request("login", {"user": "1000", "password": "1234"})
    (seen,) = list(gw.controller.clients)
    assert seen.peer_host == "127.0.0.2"  # not nginx's 127.0.0.1
    call = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")

    client.drop()  # the phone's network goes: nginx closes its upstream socket in turn
    yield wait_until(lambda: not gw.controller.clients, timeout=10, what="the gateway to see the socket go")
    again = yield connect(proxy, bind_host="127.0.0.3")  # back on another network
    resumed = yield again.request("resume", {"session": login["session"]})
    assert [c["call"] for c in resumed["calls"]] == [call["call"]]
    yield again.request("hangup", {"call": call["call"]})
    hangup = yield again.wait_event("hangup")
    assert hangup["by"] == "local"
    assert (yield exit_code(phone)) == 0, phone.explain()
    yield again.close()


@defer.inlineCallbacks
def bare_login(proxy, bind_host, headers=None):
    """A ``login`` without credentials: the rate limit is checked first, so it answers
    ``rate_limited`` once the address is over its budget, else invalid params."""
    client = yield connect(proxy, bind_host=bind_host, headers=headers)
    try:
        yield client.request("login", {})
    except RpcError as e:
        return e.reason or str(e.code)
    finally:
        yield client.close()
    return "ok"


@pytest.mark.parametrize("hops", [1, 0])
@pytest_twisted.inlineCallbacks
def test_login_rate_limit_counts_per_client_behind_nginx(gateway_factory, front, hops):
    """With trusted_proxy_hops 1, client 127.0.0.2 spending its login budget leaves 127.0.0.3
    alone, and a forged X-Forwarded-For does not get it a new budget; with 0 every client is
    nginx's 127.0.0.1 and shares one budget."""
    gw = gateway_factory(
        "127.0.0.1", free_port("both"), websocket__trusted_proxy_hops=hops,
        websocket__login_attempts_per_minute=3,
    )
    proxy = front(gw)
    first = []
    for _ in range(3):
        first.append((yield bare_login(proxy, "127.0.0.2")))
    assert "rate_limited" not in first, first
    assert (yield bare_login(proxy, "127.0.0.2")) == "rate_limited"
    forged = yield bare_login(proxy, "127.0.0.2", headers={"X-Forwarded-For": "203.0.113.9"})
    assert forged == "rate_limited"
    other = yield bare_login(proxy, "127.0.0.3")
    assert (other != "rate_limited") if hops == 1 else (other == "rate_limited"), other
