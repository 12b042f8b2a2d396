"""500 calls set up and torn down: nothing may be left behind (calls, dialogs, ports, timers)."""

from __future__ import annotations

import statistics
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from tests.integration.gateway import start_gateway
from tests.integration.helpers import wait_until
from tests.peers import require_binary
from tests.peers.sipp import Sipp
from tests.peers.wsclient import WsClient

pytestmark = pytest.mark.integration
CALLS = 500
BATCH = 25


@pytest_twisted.inlineCallbacks
def test_500_calls_leave_no_calls_dialogs_ports_or_timers(gateway, phone):
    gw = gateway
    if True:
        client = yield WsClient.connect(gw.ws_url)
        yield client.request("login", {"user": "1000", "password": "1234"})
        yield wait_until(
            lambda: not any(gw.stack.transactions.count().values()),
            timeout=10,
            what="login transactions to end",
        )
        baseline_timers = len(reactor.getDelayedCalls())
        baseline_ports = gw.node.calls.counts()["rtp_ports"]
        started = time.monotonic()
        done = 0

        @defer.inlineCallbacks
        def one_call():
            result = yield client.request("call", {"to": "1500"})
            call = result["call"]
            yield wait_event_for(client, "answered", call)
            yield client.request("hangup", {"call": call})
            hangup = yield wait_event_for(client, "hangup", call)
            assert hangup["cause"] == "NORMAL_CLEARING", hangup

        while done < CALLS:
            n = min(BATCH, CALLS - done)
            yield defer.gatherResults([one_call() for _ in range(n)], consumeErrors=True)
            done += n
        elapsed = time.monotonic() - started
        counts = gw.node.calls.counts()
        assert counts == {"calls": 0, "rtp_ports": baseline_ports}
        stack = gw.stack.counts()
        assert stack["dialogs"] == 0 and stack["incoming"] == 0
        # client transactions linger for Timers K (T4 = 5 s), M (64*T1) and D (32 s after the 407s of
        # the first INVITEs, RFC 3261 §17.1.1.2), then all are gone
        yield wait_until(
            lambda: not any(gw.stack.transactions.count().values()),
            timeout=40,
            what="SIP transactions to end",
        )
        yield wait_until(
            lambda: len(reactor.getDelayedCalls()) <= baseline_timers,
            timeout=5,
            what=f"timers back to {baseline_timers}",
        )
        samples = sorted(gw.node.calls.setup_samples)
        p50 = statistics.median(samples) * 1000
        p99 = samples[int(len(samples) * 0.99) - 1] * 1000
        print(
            f"\n{CALLS} calls in {elapsed:.1f} s ({CALLS / elapsed:.0f} calls/s, {BATCH} at a time); "
            f"WS call -> INVITE written: p50 {p50:.2f} ms, p99 {p99:.2f} ms; "
            f"left: calls {counts['calls']}, dialogs {stack['dialogs']}, "
            f"transactions {sum(gw.stack.transactions.count().values())}, "
            f"timers {len(reactor.getDelayedCalls()) - baseline_timers}"
        )
        assert len(samples) == CALLS
        yield client.close()


@pytest.fixture
def gateway(kamailio):
    gw = start_gateway(kamailio.host, kamailio.port, calls__max_per_session=BATCH, sip__t1=0.1)
    yield gw
    gw.stop()


@pytest.fixture
def phone(kamailio, tmp_path):
    require_binary("sipp")
    phone = Sipp(tmp_path / "sipp", "uas_answer.xml", kamailio, user="1500", calls=CALLS, timeout=240)
    phone.start()
    yield phone
    phone.stop()


def wait_event_for(client: WsClient, name: str, call: str, timeout: float = 30.0) -> defer.Deferred:
    """The event ``name`` of this call (events of other calls stay queued for their waiters)."""
    return wait_until(
        lambda: _take(client, name, call), timeout=timeout, interval=0.01, what=f"{name} of {call}"
    )


def _take(client: WsClient, name: str, call: str):
    for i, (n, params) in enumerate(client.events):
        if n == name and params.get("call") == call:
            del client.events[i]
            return params
    return None
