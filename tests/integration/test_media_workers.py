"""What only media workers do (``media.workers: 2``): each call placed on the least-loaded
worker, its RTMP URLs naming that worker's port, and a worker's death ending only its own calls.

The media itself (audio in every codec, DTMF, video, hold, re-INVITEs) is proven in both modes by
the parametrized tests (test_media.py and the others, ``workers0`` / ``workers2``).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import pytest_twisted

from tests.integration.gateway import start_gateway
from tests.integration.helpers import sleep, wait_until
from tests.integration.test_media import (
    TONE_SECONDS,
    TONE_START_S,
    WAV_RATE,
    answered_call,
    decode_to_pcm,
    onset_ms,
    player,
    publisher,
)
from tests.media.audio import dominant_frequency
from tests.peers import require_binary
from tests.peers.sipp import Sipp
from tests.peers.wsclient import WsClient

pytestmark = pytest.mark.integration
WORKERS = 2


@pytest.fixture
def gateway(kamailio):
    require_binary("ffmpeg")
    require_binary("sipp")
    gw = start_gateway(kamailio.host, kamailio.port, media__workers=WORKERS)  # returns once they run
    yield gw
    gw.stop()


def worker_of(gateway, call_id):
    return gateway.node.calls.calls[call_id].engine.worker


@pytest_twisted.inlineCallbacks
def tone_round_trip(result, tmp_path, name="heard"):
    """ffmpeg pushes a tone to the call and records its player: the tone must come back (sipp echoes)."""
    log = open(tmp_path / f"{name}.log", "wb")
    heard = tmp_path / f"{name}.flv"
    procs = [player(result["play_url"], heard, TONE_START_S + TONE_SECONDS + 1, log),
             publisher(result["push_url"], log)]
    try:
        yield wait_until(lambda: all(p.poll() is not None for p in procs), timeout=40, what="ffmpeg")
        assert [p.returncode for p in procs] == [0, 0], (tmp_path / f"{name}.log").read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    pcm = decode_to_pcm(heard)
    start = onset_ms(pcm, WAV_RATE)
    tone = pcm[int((start / 1000 + 1.0) * WAV_RATE): int((start / 1000 + TONE_SECONDS - 0.5) * WAV_RATE)]
    return dominant_frequency(tone, WAV_RATE)


def echo_phones(kamailio, tmp_path, timeout: int) -> Sipp:
    """An echoing phone (user 1500) that takes up to three calls."""
    phone = Sipp(tmp_path / "sipp", "uas_answer.xml", kamailio, user="1500", rtp_echo=True, timeout=timeout,
                 calls=3)
    phone.start()
    return phone


@pytest_twisted.inlineCallbacks
def two_calls(gateway):
    """A client with two answered calls to the echoing phone: (client, first, second)."""
    client = yield WsClient.connect(gateway.ws_url)
    first = yield answered_call(gateway, client)
    second = yield client.request("call", {"to": "1500"})
    yield client.wait_event("answered")
    return client, first, second


@pytest_twisted.inlineCallbacks
def test_calls_go_to_the_least_loaded_worker_whose_port_their_urls_name(gateway, kamailio, tmp_path):
    phone = echo_phones(kamailio, tmp_path, timeout=60)
    try:
        client, first, second = yield two_calls(gateway)
        workers = [worker_of(gateway, c["call"]) for c in (first, second)]
        assert sorted(w.index for w in workers) == [0, 1]  # the second call to the idle worker
        port = int(gateway.config.rtmp.listen.split(":")[1])
        for call, worker in zip((first, second), workers, strict=True):
            for url in (call["push_url"], call["play_url"]):
                assert url.startswith(f"rtmp://127.0.0.1:{port + worker.index}/mp/"), url
        # the first call ends: its worker is the least loaded again
        yield client.request("hangup", {"call": first["call"]})
        yield client.wait_event("hangup")
        third = yield client.request("call", {"to": "1500"})
        yield client.wait_event("answered")
        assert worker_of(gateway, third["call"]) is workers[0]
        assert [len(w.legs) for w in gateway.node.media_workers.workers] == [1, 1]
        for call in (second, third):
            yield client.request("hangup", {"call": call["call"]})
            yield client.wait_event("hangup")
        yield client.close()
    finally:
        phone.stop()


@pytest_twisted.inlineCallbacks
def test_a_killed_worker_ends_only_its_calls_and_comes_back(gateway, kamailio, tmp_path):
    phone = echo_phones(kamailio, tmp_path, timeout=90)
    try:
        client, first, second = yield two_calls(gateway)
        doomed, survivor = worker_of(gateway, first["call"]), worker_of(gateway, second["call"])
        assert doomed is not survivor  # the least-loaded worker took the second call
        pid = doomed.pid
        # a tone through the surviving call, with the other worker killed in the middle of it
        tone = tone_round_trip(second, tmp_path, "survivor")
        yield sleep(TONE_START_S + 1.0)
        os.kill(pid, signal.SIGKILL)
        hangup = yield client.wait_event("hangup", timeout=10)
        assert hangup["call"] == first["call"]
        assert hangup["cause"] == "MEDIA_WORKER_FAILED" and hangup["by"] == "local"
        assert "killed by SIGKILL" in hangup["reason"], hangup
        freq = yield tone
        assert abs(freq - 1000) <= 20, freq  # the other worker's call went on
        assert second["call"] in gateway.node.calls.calls
        yield wait_until(lambda: "NORMAL_TEMPORARY_FAILURE" in phone.messages_text(), timeout=10,
                         what="sipp to receive the BYE")
        assert 'Reason: Q.850;cause=41;text="NORMAL_TEMPORARY_FAILURE"' in phone.messages_text()
        # the worker is started again, and takes new calls
        yield wait_until(lambda: doomed.ready and doomed.pid != pid, timeout=15, what="the restart")
        t0 = time.monotonic()
        third = yield client.request("call", {"to": "1500"})
        yield client.wait_event("answered")
        assert worker_of(gateway, third["call"]) is doomed  # the least loaded again
        print(f"\nrestarted worker took a call {time.monotonic() - t0:.2f} s after")
        for call in (second, third):
            yield client.request("hangup", {"call": call["call"]})
        yield client.close()
    finally:
        phone.stop()
