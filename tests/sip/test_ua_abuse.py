"""SipStack under SIP from strangers: /metrics and the log stay bounded (issue 12).

The stack runs on a fake clock and its transport is not started: messages are handed to the
receive path as the transport would, and what it sends is recorded.
"""

from __future__ import annotations

import random
import string

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from b2bua.config import SipConfig
from b2bua.metrics import Registry
from b2bua.sip.transaction import Target
from b2bua.sip.ua import KNOWN_METHODS, SipStack
from b2bua.wire.sip import parse_message
from tests.test_metrics import s as series
from tests.test_metrics import scrape

PBX = Target("UDP", "127.0.0.1", 5060)
STRANGER = Target("UDP", "127.0.0.2", 40000)


def request(method: str, n: int) -> bytes:
    return (
        f"{method} sip:x@127.0.0.1:5070 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.2:40000;branch=z9hG4bK{n}\r\n"
        "From: <sip:a@127.0.0.2>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\n"
        f"Call-ID: {n}@flood\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def response(status: int, method: str, n: int) -> bytes:
    return (
        f"SIP/2.0 {status} Whatever\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKnone{n}\r\n"
        "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>;tag=2\r\n"
        f"Call-ID: {n}@flood\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def random_method(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(3, 12)))


@pytest.fixture
def stack():
    metrics = Registry()
    stack = SipStack(Clock(), SipConfig(pbx="127.0.0.1:5060", options_keepalive=0), metrics)
    stack.sent = []
    stack.transport.send = lambda message, target: stack.sent.append((message, target))
    stack.metrics = metrics
    return stack


@pytest.fixture
def log_lines():
    lines: list[dict] = []
    globalLogPublisher.addObserver(lines.append)
    yield lines
    globalLogPublisher.removeObserver(lines.append)


def test_metrics_stay_bounded_after_many_odd_methods(stack) -> None:
    rng = random.Random(12)
    stack._message_received(parse_message(request("OPTIONS", 0)), STRANGER)
    baseline = len(stack.metrics.render())
    for n in range(1, 5001):
        stack._message_received(parse_message(request(random_method(rng), n)), STRANGER)
        stack._message_received(
            parse_message(response(rng.randint(100, 699), random_method(rng), n)), STRANGER
        )
    text = stack.metrics.render().decode()
    assert len(text) - baseline < 2000, len(text) - baseline
    methods = {
        line.split('method="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("mpb2bua_sip_")
        if 'method="' in line
    }
    assert methods <= KNOWN_METHODS | {"other"}
    _, samples = scrape(stack.metrics)
    assert samples[series("mpb2bua_sip_requests_total", direction="in", method="other")] == 5000
    codes = {line.split('code="')[1].split('"')[0] for line in text.splitlines() if 'code="' in line}
    assert codes <= {"1xx", "2xx", "3xx", "4xx", "5xx", "6xx"}, codes
    assert samples[series("mpb2bua_sip_refused_total")] == 5001
    assert samples[series("mpb2bua_sip_stray_responses_total")] == 5000
    # every stranger's request was still answered 403
    assert len(stack.sent) == 5001 and all(m.status == 403 for m, _ in stack.sent)


def test_pbx_responses_keep_their_codes(stack) -> None:
    stack._message_received(parse_message(response(486, "INVITE", 1)), PBX)
    stack._message_received(parse_message(response(486, "FOO", 2)), PBX)
    _, samples = scrape(stack.metrics)
    name = "mpb2bua_sip_responses_total"
    assert samples[series(name, direction="in", method="INVITE", code="486")] == 1
    assert samples[series(name, direction="in", method="other", code="486")] == 1


def test_refusals_and_stray_responses_are_logged_rate_limited(stack, log_lines) -> None:
    for n in range(2000):
        stack._message_received(parse_message(request("OPTIONS", n)), STRANGER)
        stack._message_received(parse_message(response(200, "OPTIONS", n)), STRANGER)
    texts = [e.get("log_format", "") for e in log_lines]
    refused = [t for t in texts if t.startswith("refused ")]
    stray = [t for t in texts if t.startswith("stray SIP response")]
    assert len(refused) == stack.config.log_limit and len(stray) == stack.config.log_limit
    stack.reactor.advance(stack.config.log_limit_interval)
    summaries = [e for e in log_lines if e.get("log_format", "").startswith("... {n} more")]
    assert {(e["kind"], e["n"]) for e in summaries} == {
        ("refused", 2000 - stack.config.log_limit),
        ("stray responses", 2000 - stack.config.log_limit),
    }
    assert all("127.0.0.2 (" in e["sources"] for e in summaries)
