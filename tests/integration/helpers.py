"""Reactor-friendly waiting for integration tests (the reactor keeps running while we wait)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

from twisted.internet import defer, reactor, task


def http_get(url: str) -> tuple[int, bytes]:
    """(status, body) of a GET, blocking (call it from a thread); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.2, what: str = ""):
    """Poll ``predicate`` until it is truthy; fail after ``timeout`` seconds. Returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        yield sleep(interval)


@defer.inlineCallbacks
def exit_code(phone, timeout: float = 20.0):
    """A sipp's exit code, waited for without blocking the reactor (the gateway runs in it)."""
    yield wait_until(lambda: phone.poll() is not None, timeout=timeout, what=f"sipp {phone.scenario} to end")
    return phone.poll()


def no_leaks(gw) -> bool:
    """No call, RTP port, dialog or unanswered INVITE left in the gateway."""
    calls = gw.node.calls.counts()
    stack = gw.stack.counts()
    return not (calls["calls"] or calls["rtp_ports"] or stack["dialogs"] or stack["incoming"])
