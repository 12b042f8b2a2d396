"""SIGTERM to ``twistd -n mpb2bua``: every WebSocket client gets the close frame 1001 ``shutdown``
(docs/protocol.md §5) before the process exits, not a bare TCP close."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import pytest_twisted

from b2bua.config import cores
from tests.integration.helpers import http_get, start_twistd, wait_until
from tests.peers.ports import free_port, free_port_run
from tests.peers.wsclient import WsClient

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent.parent
PASSWORD = "Shut-7down-pw"


@pytest_twisted.inlineCallbacks
def test_sigterm_sends_close_1001_to_every_client(kamailio_factory, tmp_path):
    kamailio = kamailio_factory(password=PASSWORD)
    ws, http, sip = free_port("tcp"), free_port("tcp"), free_port("both")
    rtmp = free_port_run(cores())  # media.workers unset: one worker per core, on rtmp + i
    config = tmp_path / "etc" / "mpb2bua.yaml"
    config.parent.mkdir()
    config.write_text(
        "auth: {users_source: none}\n"
        "sip: {options_keepalive: 0}\n"
        f"rtmp: {{listen: 'tcp:{rtmp}:interface=127.0.0.1'}}\n"
    )
    log = tmp_path / "twistd.log"
    proc = start_twistd(
        config,
        log,
            "--ws",
            f"tcp:{ws}:interface=127.0.0.1",
            "--http",
            f"tcp:{http}:interface=127.0.0.1",
            "--sip-listen",
            f"127.0.0.1:{sip}",
            "--pbx",
            f"{kamailio.host}:{kamailio.port}",
        cwd=ROOT,
    )
    try:
        health = f"http://127.0.0.1:{http}/healthz"
        yield wait_until(lambda: http_get(health)[0], timeout=20, what="twistd to serve /healthz")
        url = f"ws://127.0.0.1:{ws}/ws"
        user = yield WsClient.connect(url)
        yield user.request("login", {"user": "1010", "password": PASSWORD})
        idle = yield WsClient.connect(url)  # connected, never logged in
        proc.send_signal(signal.SIGTERM)
        event = yield user.wait_event("unregistered", timeout=15)
        assert event["reason"] == "shutdown"
        for client in (user, idle):
            yield wait_until(lambda c=client: c.close_code is not None, timeout=15, what="the close")
            assert client.close_code == 1001, client.close_code
        yield wait_until(lambda: proc.poll() is not None, timeout=15, what="twistd to exit")
        assert proc.returncode in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        print(log.read_text() if log.exists() else proc.stdout.read().decode())
