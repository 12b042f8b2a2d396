"""Login over WebSocket → REGISTER at a real Kamailio registrar (digest auth, usrloc), and back."""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.integration.helpers import http_get, sleep, wait_until
from tests.peers.ports import free_port
from tests.peers.wsclient import RpcError, WsClient

pytestmark = pytest.mark.integration


def mine(gw, kamailio):
    """AOR → contacts at Kamailio that belong to this gateway."""
    port = f":{gw.sip_port}"
    return {aor: cs for aor, cs in kamailio.registrations().items() if any(port in c for c in cs)}


@pytest_twisted.inlineCallbacks
def test_login_registers_and_logout_unregisters(kamailio, gateway_factory):
    gw = gateway_factory(kamailio.host, kamailio.port)
    client = yield WsClient.connect(gw.ws_url)
    result = yield client.request("login", {"user": "1000", "password": "1234"})
    assert result["user"] == "1000" and result["session"] and result["expires"] > 0
    event = yield client.wait_event("registered")
    assert event["user"] == "1000"
    regs = kamailio.registrations()
    assert list(regs) == ["1000"]
    (contact,) = regs["1000"]
    assert contact.startswith("sip:mp-") and f"@127.0.0.1:{gw.sip_port}" in contact
    yield client.request("logout")
    assert kamailio.registrations() == {}
    assert gw.stack.registrations == {}
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_wrong_password_is_auth_failed(kamailio, gateway_factory):
    gw = gateway_factory(kamailio.host, kamailio.port)
    client = yield WsClient.connect(gw.ws_url)
    started = time.monotonic()
    with pytest.raises(RpcError) as err:
        yield client.request("login", {"user": "1001", "password": "nope"})
    assert err.value.reason == "auth_failed"
    assert err.value.sip_status in (401, 403)
    assert time.monotonic() - started < 5
    assert kamailio.registrations() == {}
    assert gw.stack.registrations == {}
    # the socket stays usable: a right password now works
    result = yield client.request("login", {"user": "1001", "password": "1234"})
    assert result["user"] == "1001"
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_unknown_user_is_refused(kamailio, gateway_factory):
    gw = gateway_factory(kamailio.host, kamailio.port)
    client = yield WsClient.connect(gw.ws_url)
    with pytest.raises(RpcError) as err:
        yield client.request("login", {"user": "4242", "password": "1234"})
    assert err.value.reason == "auth_failed" and err.value.sip_status == 403
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_pbx_down_is_pbx_unreachable_after_transaction_timeout(gateway_factory):
    silent = free_port("both")  # nothing listens there
    gw = gateway_factory("127.0.0.1", silent, sip__t1=0.1)  # Timer F = 64 × T1 = 6.4 s
    client = yield WsClient.connect(gw.ws_url)
    started = time.monotonic()
    with pytest.raises(RpcError) as err:
        yield client.request("login", {"user": "1000", "password": "1234"})
    elapsed = time.monotonic() - started
    assert err.value.reason == "pbx_unreachable"
    assert 6.0 <= elapsed < 10, elapsed
    assert gw.stack.registrations == {}
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_registrations_survive_several_refreshes(kamailio_factory, gateway_factory):
    kam = kamailio_factory(min_expires=5, default_expires=20)
    gw = gateway_factory(kam.host, kam.port, sip__register_expires=12)
    clients = []
    for user in ("1000", "1001", "1002"):
        c = yield WsClient.connect(gw.ws_url)
        yield c.request("login", {"user": user, "password": "1234"})
        clients.append(c)
    first = {aor: int(cs[0]["CSeq"]) for aor, cs in kam.contacts().items()}
    assert sorted(first) == ["1000", "1001", "1002"]
    yield sleep(26)  # two refresh periods of about 6 s each, and more than the 12 s lifetime twice
    now = kam.contacts()
    assert sorted(now) == ["1000", "1001", "1002"]
    for aor, cs in now.items():
        assert int(cs[0]["CSeq"]) >= first[aor] + 3, (aor, cs[0])
        assert int(cs[0]["Expires"]) > 0
    for c in clients:
        assert "registration_failed" not in [n for n, _ in c.events]
        yield c.close()


@pytest_twisted.inlineCallbacks
def test_pbx_restart_registrations_recover(kamailio_factory, gateway_factory):
    kam = kamailio_factory(min_expires=5, default_expires=20)
    gw = gateway_factory(kam.host, kam.port, sip__register_expires=10, sip__t1=0.1)
    clients = []
    for user in ("1000", "1001"):
        c = yield WsClient.connect(gw.ws_url)
        yield c.request("login", {"user": user, "password": "1234"})
        clients.append(c)
    assert sorted(kam.registrations()) == ["1000", "1001"]
    kam.stop()
    # the refresh due at ~5 s times out at ~11.4 s (Timer F = 6.4 s): the PBX must stay away that long
    yield sleep(14)
    kam.start()  # same port, empty location table
    yield wait_until(
        lambda: sorted(kam.registrations()) == ["1000", "1001"],
        timeout=40,
        what="registrations back at the restarted PBX",
    )
    for c in clients:
        names = [n for n, _ in c.events]
        assert "registration_failed" in names  # the client was told while the PBX was away
        assert names.count("registered") >= 2  # ... and told when it came back
        yield c.close()


@pytest_twisted.inlineCallbacks
def test_closed_socket_unregisters_after_grace_and_resume_keeps_registration(kamailio, gateway_factory):
    gw = gateway_factory(kamailio.host, kamailio.port, websocket__grace_period=2.0)
    a = yield WsClient.connect(gw.ws_url)
    login = yield a.request("login", {"user": "1003", "password": "1234"})
    contact_before = kamailio.registrations()["1003"]
    a.drop()
    yield sleep(0.5)
    b = yield WsClient.connect(gw.ws_url)
    resumed = yield b.request("resume", {"session": login["session"]})
    assert resumed["user"] == "1003"
    assert kamailio.registrations()["1003"] == contact_before  # same binding, no flap
    b.drop()
    yield wait_until(
        lambda: "1003" not in kamailio.registrations(), timeout=15, what="un-REGISTER after the grace period"
    )
    c = yield WsClient.connect(gw.ws_url)
    with pytest.raises(RpcError) as err:
        yield c.request("resume", {"session": login["session"]})
    assert err.value.reason == "session_not_found"
    yield c.close()


@pytest_twisted.inlineCallbacks
def test_thousand_users_register_concurrently_then_all_leave(kamailio, gateway_factory):
    n = 1000
    gw = gateway_factory(kamailio.host, kamailio.port)
    users = [str(1000 + i) for i in range(n)]
    started = time.monotonic()
    clients = yield defer.gatherResults([WsClient.connect(gw.ws_url) for _ in users], consumeErrors=True)
    connected = time.monotonic()
    results = yield defer.gatherResults(
        [c.request("login", {"user": u, "password": "1234"}) for c, u in zip(clients, users, strict=True)],
        consumeErrors=True,
    )
    registered = time.monotonic()
    assert [r["user"] for r in results] == users
    regs = kamailio.registrations()
    assert sorted(regs) == users
    assert all(len(cs) == 1 and f":{gw.sip_port}" in cs[0] for cs in regs.values())
    print(
        f"\n{n} users: WS connect {connected - started:.2f} s, login+REGISTER {registered - connected:.2f} s"
    )
    yield defer.gatherResults([c.request("logout") for c in clients], consumeErrors=True)
    print(f"{n} users: logout {time.monotonic() - registered:.2f} s")
    assert kamailio.registrations() == {}
    assert gw.stack.registrations == {}
    # client transactions linger for Timer K (T4 = 5 s on UDP), then none is left
    yield wait_until(
        lambda: not any(gw.stack.transactions.count().values()), timeout=8, what="all SIP transactions ended"
    )
    yield defer.gatherResults([c.close() for c in clients], consumeErrors=True)


@pytest_twisted.inlineCallbacks
def test_login_flood_and_bad_frames_leave_other_users_alone(kamailio, gateway_factory):
    gw = gateway_factory(kamailio.host, kamailio.port, websocket__login_attempts_per_minute=10)
    alice = yield WsClient.connect(gw.ws_url)
    yield alice.request("login", {"user": "1000", "password": "1234"})
    flooder = yield WsClient.connect(gw.ws_url)
    reasons = []
    for _ in range(30):
        try:
            yield flooder.request("login", {"user": "1001", "password": "wrong"})
        except RpcError as e:
            reasons.append(e.reason)
    # the first attempts reach the PBX (and fail there), then the address is throttled
    assert reasons[0] == "auth_failed" and reasons[-1] == "rate_limited"
    assert reasons.count("rate_limited") >= 15
    # malformed, oversized and unknown requests each get their answer on their own socket
    junk = yield WsClient.connect(gw.ws_url)
    junk.send_raw("{not json")
    junk.send_raw('{"jsonrpc":"2.0","id":7,"method":"no_such_method"}')
    junk.send_raw('{"jsonrpc":"2.0","id":8,"method":"call","params":{"to":"1"}}')
    yield wait_until(lambda: len(junk.raw) >= 3, timeout=5, what="three error answers")
    codes = sorted(m["error"]["code"] for m in junk.raw)
    assert codes == [-32700, -32601, -32001]  # parse error, no such method, not logged in
    junk.send_raw("x" * 70000)  # beyond max_message_size
    yield wait_until(lambda: junk.close_code is not None, timeout=5, what="the oversized frame to close")
    assert junk.close_code == 1009
    # alice never noticed
    pong = yield alice.request("ping")
    assert "pong" in pong
    assert list(kamailio.registrations()) == ["1000"]
    yield alice.close()


@pytest_twisted.inlineCallbacks
def test_pbx_failover_every_user_registers_again_within_the_window(kamailio_factory, gateway_factory):
    """A PBX that comes back without its bindings (a fresh instance, a standby behind the same
    address): noticed within sip.pbx_down_after, reported to the clients and /healthz, and all
    1,000 users registered again within sip.reregister_window, once each."""
    n, window = 1000, 5.0
    kam = kamailio_factory()
    gw = gateway_factory(
        kam.host, kam.port, sip__options_keepalive=0.5, sip__pbx_down_after=2.0, sip__reregister_window=window
    )
    users = [str(1000 + i) for i in range(n)]
    clients = yield defer.gatherResults([WsClient.connect(gw.ws_url) for _ in users], consumeErrors=True)
    yield defer.gatherResults(
        [c.request("login", {"user": u, "password": "1234"}) for c, u in zip(clients, users, strict=True)],
        consumeErrors=True,
    )
    assert sorted(kam.registrations()) == users
    yield wait_until(lambda: gw.stack.pbx_reachable is True, timeout=5, what="the PBX seen as reachable")

    kam.stop()
    stopped = time.monotonic()
    yield wait_until(lambda: gw.stack.pbx_reachable is False, timeout=5, what="the PBX seen as down")
    noticed = time.monotonic() - stopped
    assert noticed <= 2.0 + 0.5 + 1.0, noticed  # pbx_down_after + one keepalive + slack
    code, body = yield threads.deferToThread(http_get, f"http://127.0.0.1:{gw.http_port}/healthz")
    assert code == 503 and json.loads(body)["pbx_reachable"] is False
    _, metrics = yield threads.deferToThread(http_get, f"http://127.0.0.1:{gw.http_port}/metrics")
    assert b"mpb2bua_pbx_reachable 0" in metrics
    yield wait_until(
        lambda: all(("pbx", {"reachable": False}) in c.events for c in clients), timeout=5, what="pbx events"
    )

    kam.start()  # same port, empty location table (usrloc db_mode 0)
    restarted = time.monotonic()
    yield wait_until(lambda: len(kam.registrations()) == n, timeout=window + 15, what="every user back")
    took = time.monotonic() - restarted
    print(f"\n{n} users registered again {took:.1f} s after the PBX came back (window {window} s)")
    assert took <= window + 3.0, took
    regs = kam.registrations()
    assert sorted(regs) == users
    assert all(len(cs) == 1 and f":{gw.sip_port}" in cs[0] for cs in regs.values())  # no duplicates
    assert gw.controller.sessions.count == n  # nobody lost their session
    yield wait_until(
        lambda: all(("pbx", {"reachable": True}) in c.events for c in clients), timeout=5, what="pbx back"
    )
    code, _ = yield threads.deferToThread(http_get, f"http://127.0.0.1:{gw.http_port}/healthz")
    assert code == 200
    yield defer.gatherResults([c.close() for c in clients], consumeErrors=True)


@pytest_twisted.inlineCallbacks
def test_a_changed_expiry_is_reported_to_the_client(kamailio_factory, gateway_factory):
    kam = kamailio_factory(min_expires=5, max_expires=20)
    gw = gateway_factory(kam.host, kam.port, sip__register_expires=30)
    client = yield WsClient.connect(gw.ws_url)
    result = yield client.request("login", {"user": "1000", "password": "1234"})
    assert result["expires"] == 20
    first = yield client.wait_event("registered")
    assert first["expires"] == 20
    # the operator lowers the registrar's maximum; the next refresh (4-12 s away) is granted less
    kam.stop()
    kam.max_expires = 10
    kam.start()
    again = yield client.wait_event("registered", timeout=20)
    assert again == {"user": "1000", "expires": 10}
    yield client.close()
