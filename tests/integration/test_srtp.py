"""SRTP toward the phone (SDES keys), proven by what comes out.

baresip with mandatory SRTP (``mediaenc=srtp-mand``) is the far end, registered at Kamailio: it
plays a 440 Hz WAV into the call and records what it hears. ffmpeg is live-pusher (a 1 kHz tone,
AAC) and live-player. The gateway calls it with ``media.srtp: require`` (RTP/SAVP): 1 kHz must
reach baresip and 440 Hz the player, through SRTP PCMU both ways. Against a plain-RTP phone
(sipp), ``require`` ends the call with INCOMPATIBLE_DESTINATION "SRTP required", and ``offer``
(RTP/AVP with keys) falls back to plain RTP.

Signalling is UDP here (media.srtp_allow_insecure_signalling: for tests and labs only). Each
test runs with the media in the node and in two worker processes.
"""

from __future__ import annotations

import socket
import wave

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import threads

from tests.integration.gateway import MEDIA_MODE_IDS, MEDIA_MODES
from tests.integration.helpers import http_get, sleep, tone_wav, wait_until
from tests.integration.test_media import decode_to_pcm, onset_ms, player, publisher, run_round_trip
from tests.media.audio import dominant_frequency
from tests.peers import require_binary
from tests.peers.baresip import Baresip
from tests.peers.sipp import Sipp
from tests.peers.wsclient import WsClient

pytestmark = pytest.mark.integration
FORGED = 20
INSECURE = {"media__srtp_allow_insecure_signalling": True}


@pytest.fixture(params=MEDIA_MODES, ids=MEDIA_MODE_IDS)
def media_workers(request) -> int:
    return request.param


def wav_pcm(path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768, rate


@pytest_twisted.inlineCallbacks
def test_srtp_tone_round_trip_through_baresip(gateway_factory, kamailio, tmp_path):
    for binary in ("ffmpeg", "sox", "baresip"):
        require_binary(binary)
    tone = tmp_path / "tone440.wav"
    tone_wav(tone, 440, 30)
    phone = Baresip(tmp_path / "baresip", kamailio, user="1600", tone=tone, mediaenc="srtp-mand").start()
    gw = gateway_factory(
        kamailio.host, kamailio.port, media__srtp="require", media__codecs=["PCMU"], **INSECURE
    )
    procs = []
    try:
        yield gw.workers_up()
        client = yield WsClient.connect(gw.ws_url)
        yield client.request("login", {"user": "1000", "password": "1234"})
        result = yield client.request("call", {"to": "1600"})
        answered = yield client.wait_event("answered", timeout=20)
        assert answered["codec"] == "PCMU"
        call = gw.node.calls.calls[result["call"]]
        assert call.media.negotiated.audio.srtp is not None  # SRTP agreed with baresip
        log = open(tmp_path / "ffmpeg.log", "wb")
        heard = tmp_path / "heard.flv"
        procs.append(player(result["play_url"], heard, 8, log))
        procs.append(publisher(result["push_url"], log))
        # a forger on the phone's host: RTP with our payload type and a made-up auth tag
        yield sleep(2.0)
        forged = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for seq in range(FORGED):
            header = bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big")
            forged.sendto(
                header + b"\x11\x22\x33\x44" + bytes(160) + bytes(10), ("127.0.0.1", call.media.audio_port)
            )
        forged.close()
        yield wait_until(
            lambda: all(p.poll() is not None for p in procs), timeout=40, what="ffmpeg to finish"
        )
        assert [p.returncode for p in procs] == [0, 0], (tmp_path / "ffmpeg.log").read_text()
        yield client.request("hangup", {"call": result["call"]})
        hangup = yield client.wait_event("hangup")
        media = hangup["media"]
        assert media["srtp"] == "AES_CM_128_HMAC_SHA1_80" and media["srtp_auth_failed"] == FORGED, media
        assert media["rtp_received"] > 100, media  # the forgeries dropped, the call went on
        _, metrics = yield threads.deferToThread(http_get, f"http://127.0.0.1:{gw.http_port}/metrics")
        assert f'mpb2bua_media_events_total{{what="srtp_auth_failed"}} {FORGED}.0' in metrics.decode()
        # downlink: baresip's 440 Hz, decrypted by us, out to the player
        pcm = decode_to_pcm(heard)
        start = onset_ms(pcm, 16000)
        down = dominant_frequency(pcm[int((start / 1000 + 0.5) * 16000) :], 16000)
        # uplink: the pusher's 1 kHz, encrypted by us, decrypted and recorded by baresip
        yield wait_until(
            lambda: list(phone.rec.glob("dump-*-dec.wav")), timeout=10, what="baresip's recording"
        )
        phone.stop()  # closes the WAV
        up_pcm, rate = wav_pcm(phone.heard())
        up_start = onset_ms(up_pcm, rate)
        up = dominant_frequency(up_pcm[int((up_start / 1000 + 0.5) * rate) :], rate)
        print(f"\nSRTP: baresip heard {up:.1f} Hz, the player {down:.1f} Hz; media {media}")
        assert abs(up - 1000) <= 20, up
        assert abs(down - 440) <= 10, down
        yield client.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        phone.stop()
        print(phone.log_text()[-3000:])


@pytest_twisted.inlineCallbacks
def test_an_inbound_savp_offer_is_answered_with_our_key(gateway_factory, kamailio, tmp_path):
    """baresip (srtp-mand) calls the mini-program user: its RTP/SAVP offer, refused before SRTP,
    is answered with our key, and its tone reaches the player through SRTP."""
    require_binary("ffmpeg")
    tone = tmp_path / "tone440.wav"
    tone_wav(tone, 440, 30)
    phone = Baresip(tmp_path / "baresip", kamailio, user="1601", tone=tone, mediaenc="srtp-mand").start()
    gw = gateway_factory(kamailio.host, kamailio.port, media__srtp="offer", **INSECURE)
    try:
        yield gw.workers_up()
        client = yield WsClient.connect(gw.ws_url)
        yield client.request("login", {"user": "1000", "password": "1234"})
        phone.command(f"/dial sip:1000@{kamailio.host}:{kamailio.port}")
        incoming = yield client.wait_event("incoming", timeout=15)
        yield client.request("answer", {"call": incoming["call"]})
        yield client.wait_event("answered", timeout=10)
        call = gw.node.calls.calls[incoming["call"]]
        assert call.media.negotiated.audio.srtp is not None
        yield wait_until(lambda: call.media_packets() > 100, timeout=15, what="SRTP from baresip")
        yield client.request("hangup", {"call": incoming["call"]})
        hangup = yield client.wait_event("hangup")
        media = hangup["media"]
        assert media["srtp"] == "AES_CM_128_HMAC_SHA1_80", hangup
        assert media["rtp_received"] > 100 and "srtp_auth_failed" not in media, media  # 0: left out
        yield client.close()
    finally:
        phone.stop()
        print(phone.log_text()[-2000:])


@pytest_twisted.inlineCallbacks
def test_require_against_a_plain_rtp_phone_ends_the_call(gateway_factory, kamailio, tmp_path):
    require_binary("sipp")
    phone = Sipp(tmp_path / "sipp", "uas_answer.xml", kamailio, user="1500", codec="PCMU", timeout=30)
    phone.start()
    gw = gateway_factory(kamailio.host, kamailio.port, media__srtp="require", **INSECURE)
    try:
        client = yield WsClient.connect(gw.ws_url)
        yield client.request("login", {"user": "1000", "password": "1234"})
        yield client.request("call", {"to": "1500"})
        hangup = yield client.wait_event("hangup", timeout=20)
        assert hangup["cause"] == "INCOMPATIBLE_DESTINATION", hangup
        assert hangup["reason"].startswith("SRTP required"), hangup
        assert hangup["by"] == "local", hangup
        yield client.close()
    finally:
        phone.stop()
        print(phone.explain())


def test_offer_falls_back_to_plain_rtp_with_a_plain_phone(gateway_factory, kamailio, tmp_path):
    """RTP/AVP with a=crypto: sipp ignores the keys, answers plain RTP/AVP, and the call runs
    in plain RTP (the tone round trip of test_media through its echo)."""
    require_binary("ffmpeg")
    gw = gateway_factory(kamailio.host, kamailio.port, media__srtp="offer", **INSECURE)
    return run_round_trip(gw, kamailio, tmp_path, "PCMU")
