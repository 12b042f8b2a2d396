"""The media in worker processes (``media.workers: 2``): the same media through the gateway,
and a worker's death ending only its own calls.

What the in-process tests (test_media.py) read inside the bridge is in the worker here: these
tests judge by what the peers receive (ffmpeg's recordings, sipp's messages) and the events.
"""

from __future__ import annotations

import os
import signal
import socket
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
    echo_phone,  # noqa: F401 (a fixture)
    flv_audio_times_ms,
    onset_ms,
    player,
    publisher,
    streaming_player,
)
from tests.media.audio import dominant_frequency
from tests.peers import require_binary
from tests.peers.ports import free_port
from tests.peers.sipp import Sipp
from tests.peers.wsclient import WsClient

pytestmark = pytest.mark.integration
WORKERS = 2


def free_port_run(n: int) -> int:
    """A TCP port p on 127.0.0.1 with p … p+n-1 all free (the workers' RTMP ports)."""
    for _ in range(50):
        port = free_port("tcp")
        socks = []
        try:
            for p in range(port, port + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


@pytest.fixture
def gateway(kamailio):
    require_binary("ffmpeg")
    require_binary("sipp")
    rtmp = free_port_run(WORKERS)
    gw = start_gateway(
        kamailio.host, kamailio.port, media__workers=WORKERS,
        rtmp__listen=f"tcp:{rtmp}:interface=127.0.0.1", rtmp__public_url=f"rtmp://127.0.0.1:{rtmp}/mp",
    )
    pool = gw.node.media_workers
    pytest_twisted.blockon(wait_until(lambda: all(w.ready for w in pool.workers), timeout=20,
                                      what="media workers"))
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


@pytest.mark.parametrize("codec", ["PCMU", "G722"])
@pytest_twisted.inlineCallbacks
def test_audio_round_trip_in_a_worker(gateway, kamailio, tmp_path, codec):
    phone = Sipp(tmp_path / "sipp", "uas_answer.xml", kamailio, user="1500", rtp_echo=True, codec=codec,
                 timeout=60)
    phone.start()
    try:
        client = yield WsClient.connect(gateway.ws_url)
        result = yield answered_call(gateway, client)
        assert worker_of(gateway, result["call"]).index in range(WORKERS)
        # the URLs name the worker's own RTMP port
        port = int(gateway.config.rtmp.listen.split(":")[1])
        assert f":{port + worker_of(gateway, result['call']).index}/mp/" in result["push_url"]
        freq = yield tone_round_trip(result, tmp_path)
        print(f"\n{codec} through a media worker: heard {freq:.1f} Hz")
        assert abs(freq - 1000) <= 20, freq
        yield client.request("hangup", {"call": result["call"]})
        hangup = yield client.wait_event("hangup")
        media = hangup["media"]  # the worker's statistics came back with the close
        assert media["codec"].upper() == codec and media["rtp_sent"] > 200 and media["rtp_received"] > 200
        yield client.close()
    finally:
        phone.stop()


@pytest_twisted.inlineCallbacks
def test_dtmf_in_a_worker(gateway, echo_phone):  # noqa: F811
    echo_phone()
    client = yield WsClient.connect(gateway.ws_url)
    result = yield answered_call(gateway, client)
    reply = yield client.request("dtmf", {"call": result["call"], "digits": "19#"})
    assert reply == {"via": "rfc4733"}
    digits = []
    for _ in range(3):
        event = yield client.wait_event("dtmf", timeout=10)
        digits.append(event["digits"])
    assert "".join(digits) == "19#"
    yield client.request("hangup", {"call": result["call"]})
    yield client.wait_event("hangup")


@pytest_twisted.inlineCallbacks
def test_hold_in_a_worker_keeps_the_player_fed(gateway, echo_phone, tmp_path):  # noqa: F811
    echo_phone("uas_answer_hold_unhold.xml")
    client = yield WsClient.connect(gateway.ws_url)
    result = yield answered_call(gateway, client)
    play, heard = yield streaming_player(result["play_url"], tmp_path)
    reply = yield client.request("hold", {"call": result["call"]})
    assert reply["held"] is True
    yield sleep(3.0)
    reply = yield client.request("unhold", {"call": result["call"]})
    assert reply["held"] is False
    yield sleep(1.5)
    play.send_signal(signal.SIGINT)
    yield wait_until(lambda: play.poll() is not None, timeout=10, what="the player")
    yield client.request("hangup", {"call": result["call"]})
    yield client.wait_event("hangup")
    frame_ms = 1024 * 1000 / 16000
    times = flv_audio_times_ms(heard)
    times = [t for t in times if t > times[0] + 20]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert times[-1] - times[0] >= 5000
    assert max(gaps) <= frame_ms + 40, max(gaps)


@pytest_twisted.inlineCallbacks
def test_a_killed_worker_ends_only_its_calls_and_comes_back(gateway, kamailio, tmp_path):
    phone = Sipp(tmp_path / "sipp", "uas_answer.xml", kamailio, user="1500", rtp_echo=True, timeout=90,
                 calls=3)
    phone.start()
    try:
        client = yield WsClient.connect(gateway.ws_url)
        first = yield answered_call(gateway, client)
        second = yield client.request("call", {"to": "1500"})
        yield client.wait_event("answered")
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
