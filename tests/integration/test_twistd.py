"""The real entry point: ``twistd -n mpb2bua --config FILE`` as a separate process, with the
shipped configuration: its media in one worker process per core (``media.workers: auto``)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import threads

from b2bua.config import cores
from tests.integration.helpers import http_get, sleep, start_twistd, wait_until
from tests.peers.ports import free_port, free_port_run
from tests.peers.sipp import Sipp
from tests.peers.wsclient import WsClient

pytestmark = pytest.mark.integration
PASSWORD = "Zebra-7pw-Q"  # distinctive, to search the log for it
ROOT = Path(__file__).resolve().parent.parent.parent


def rtmp_listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


@pytest_twisted.inlineCallbacks
def test_twistd_plugin_serves_login_health_metrics_and_media_in_workers(kamailio_factory, tmp_path):
    kamailio = kamailio_factory(password=PASSWORD)
    ws, http, sip = free_port("tcp"), free_port("tcp"), free_port("both")
    workers = cores()  # the shipped media.workers: auto
    assert workers >= 1
    rtmp = free_port_run(workers)
    shipped = (ROOT / "etc" / "mpb2bua.yaml").read_text()
    config = tmp_path / "etc" / "mpb2bua.yaml"
    config.parent.mkdir()
    config.write_text(shipped)  # the shipped file must load as it is; the flags override addresses
    (config.parent / "users.yaml").write_text((ROOT / "etc" / "users.yaml").read_text())
    log = tmp_path / "twistd.log"
    proc = start_twistd(
        config,
        log,
            "--ws",
            f"tcp:{ws}:interface=127.0.0.1",
            "--http",
            f"tcp:{http}:interface=127.0.0.1",
            "--rtmp",
            f"tcp:{rtmp}:interface=127.0.0.1",
            "--sip-listen",
            f"127.0.0.1:{sip}",
            "--pbx",
            f"{kamailio.host}:{kamailio.port}",
        cwd=ROOT,
    )
    phone = None
    try:
        health = f"http://127.0.0.1:{http}/healthz"
        status = yield wait_until(lambda: http_get(health)[0], timeout=20, what="twistd to serve /healthz")
        body = json.loads((yield threads.deferToThread(http_get, health))[1])
        assert status == 200 and body["status"] == "ok", body
        client = yield WsClient.connect(f"ws://127.0.0.1:{ws}/ws")
        result = yield client.request("login", {"user": "1010", "password": PASSWORD})
        assert result["user"] == "1010"
        assert list(kamailio.registrations()) == ["1010"]
        code, metrics = yield threads.deferToThread(http_get, f"http://127.0.0.1:{http}/metrics")
        text = metrics.decode()
        assert code == 200
        samples = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert samples[("mpb2bua_registrations", frozenset({("state", "registered")}))] == 1
        requests = ("mpb2bua_sip_requests_total", frozenset({("direction", "out"), ("method", "REGISTER")}))
        assert samples[requests] == 2
        responses = frozenset({("direction", "in"), ("method", "REGISTER"), ("code", "401")})
        assert samples[("mpb2bua_sip_responses_total", responses)] == 1
        assert "mpb2bua_sessions" in text
        # the media clock has not run (no call): no tick has lagged
        assert "mpb2bua_media_tick_lag_max_seconds 0" in text
        assert "mpb2bua_media_ticks_lagging_5ms 0" in text
        # one media worker per core, each listening for RTMP on the port + its index
        for i in range(workers):
            assert f"media worker {i} started (pid " in log.read_text()
            yield wait_until(lambda i=i: rtmp_listens(rtmp + i), timeout=30, what=f"worker {i}'s RTMP port")
        # a call's media runs in a worker: RTP both ways with an echoing phone
        phone = Sipp(tmp_path / "sipp", "uas_answer.xml", kamailio, user="1500", password=PASSWORD,
                     rtp_echo=True, timeout=60)
        phone.start()
        # the shipped sip.domain is the PBX's host: Kamailio takes itself only with its port
        call = yield client.request("call", {"to": f"sip:1500@{kamailio.host}:{kamailio.port}"})
        yield client.wait_event("answered", timeout=15)
        ports = [int(call[k].split("/")[2].rsplit(":", 1)[1]) for k in ("push_url", "play_url")]
        assert ports[0] == ports[1] and ports[0] in range(rtmp, rtmp + workers), call
        yield sleep(1.5)
        yield client.request("hangup", {"call": call["call"]})
        hangup = yield client.wait_event("hangup")
        assert hangup["media"]["rtp_sent"] > 30 and hangup["media"]["rtp_received"] > 30, hangup
        # a graceful stop un-registers everyone before the process exits
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        yield wait_until(lambda: proc.poll() is not None, timeout=15, what="twistd to exit")
        assert proc.returncode in (0, -signal.SIGTERM)  # twistd re-raises the signal it stopped on
        assert time.monotonic() - started < 10
        assert list(kamailio.registrations()) == ["1500"]  # only the phone's, not the gateway's user
        text = log.read_text()
        assert PASSWORD not in text
        assert "response=" not in text
    finally:
        if phone is not None:
            phone.stop()
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        print(log.read_text() if log.exists() else proc.stdout.read().decode())


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("media:\n  codecs: [G729]\n", "media.codecs"),
        ("media:\n  aac_sample_rate: 12345\n", "media.aac_sample_rate"),
        ("sip:\n  t1: -1\n", "sip.t1"),
        ("auth:\n  token_secret: 0123456789abcdef0123\n  users_path: nowhere.yaml\n", "auth.users_path"),
    ],
)
def test_twistd_refuses_a_wrong_config_in_one_line(tmp_path, text, key):
    """The config sits outside any etc/ folder; a wrong value stops the start with the key's name
    and no traceback."""
    config = tmp_path / "gw.yaml"
    config.write_text(text)
    res = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "mpb2bua", "--config", str(config)],
        cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False,
    )
    out = (res.stdout + res.stderr).decode(errors="replace")
    assert res.returncode != 0
    assert key in out and "Traceback" not in out, out
