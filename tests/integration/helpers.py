"""Reactor-friendly waiting for integration tests (the reactor keeps running while we wait)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable

from twisted.internet import defer, reactor, task

from tests.peers.wsclient import WsClient


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


@defer.inlineCallbacks
def logged_in(gw, user: str = "1000", password: str = "1234"):
    """A WebSocket client logged in at ``gw``; ``client.session_id`` is its session."""
    client = yield WsClient.connect(gw.ws_url)
    result = yield client.request("login", {"user": user, "password": password})
    client.session_id = result["session"]
    return client


def start_twistd(config: str, log: str, *options: str, cwd: str | None = None):
    """``twistd -n mpb2bua --config CONFIG OPTIONS…`` as a child process (stdout+stderr piped)."""
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         f"--logfile={log}", "mpb2bua", "--config", str(config), *options],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def closed_media(gw) -> list:
    """The :class:`~b2bua.media.stats.LegStats` of every leg closed at ``gw`` from now on, as the
    node records them: the same with the media in the node or in a worker (which returns them at
    close). ``extra`` holds the bridge's internals (b2bua/media/engine.py ``close_details``)."""
    seen: list = []
    manager = gw.node.calls
    record = manager.record_media

    def tap(stats) -> None:
        seen.append(stats)
        record(stats)

    manager.record_media = tap
    return seen


def tone_wav(path, freq: int, seconds: float, *, encoding: str = "signed") -> None:
    """A sine WAV at 8 kHz mono made by sox: 16-bit (``signed``) or G.711 μ-law (``u-law``)."""
    import subprocess

    bits = ["-b", "16"] if encoding == "signed" else ["-e", encoding]
    subprocess.run(
        ["sox", "-n", "-r", "8000", "-c", "1", *bits, str(path), "synth", str(seconds), "sine", str(freq),
         "vol", "0.5"],
        check=True,
        timeout=30,
    )
