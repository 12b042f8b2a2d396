"""Media through the gateway, proven by what comes out.

ffmpeg plays live-pusher (a 1 kHz tone, AAC 44.1 kHz, over RTMP), sipp answers through Kamailio
and echoes the RTP, ffmpeg plays live-player (RTMP → WAV). The WAV must hold the tone: 1 kHz ±2%,
no gap longer than 60 ms once it runs. The round trip is measured at the gateway's own edges: the
wall time the RTMP message carrying the tone's onset arrived, against the wall time the AAC frame
carrying it back left toward the player.

Every test runs with the media in the node process (``workers0``) and in two media worker
processes (``workers2``), judged by the same evidence: what the peers receive, the events, and
the leg's statistics returned at its close (``closed_media``).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import wave

import av
import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer

from tests.integration.gateway import MEDIA_MODE_IDS, MEDIA_MODES, start_gateway
from tests.integration.helpers import closed_media, sleep, tone_wav, wait_until
from tests.media.audio import dominant_frequency, rms_windows
from tests.peers import require_binary
from tests.peers.sipp import SCENARIO_DIR, Sipp
from tests.peers.wsclient import WsClient

pytestmark = pytest.mark.integration
TONE_START_S = 2.0  # the publisher sends silence first, so the onset can be found on both sides
TONE_SECONDS = 5.0
WAV_RATE = 16000


@pytest.fixture(params=MEDIA_MODES, ids=MEDIA_MODE_IDS)
def media_workers(request) -> int:
    return request.param


@pytest.fixture
def gateway(kamailio, media_workers):
    require_binary("ffmpeg")
    require_binary("sipp")
    gw = start_gateway(kamailio.host, kamailio.port, media__workers=media_workers)
    yield gw
    gw.stop()


def ffmpeg(args: list[str], log) -> subprocess.Popen:
    """An ffmpeg process (quiet, no stdin), its output to ``log``."""
    return subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", *args], stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )


@defer.inlineCallbacks
def streaming_player(play_url: str, tmp_path):
    """An ffmpeg player recording ``play_url`` to ``held.flv`` with wall-clock timestamps, once it
    writes as frames come: ffmpeg reads nothing for its first seconds, then takes what queued up
    at once. Fires with (process, recording)."""
    log = open(tmp_path / "ffmpeg.log", "wb")
    heard = tmp_path / "held.flv"
    play = ffmpeg(
        ["-probesize", "32", "-analyzeduration", "100000", "-use_wallclock_as_timestamps", "1",
         "-i", play_url, "-t", "30", "-c", "copy", "-flush_packets", "1", "-y", str(heard)],
        log,
    )
    sizes = [0]

    def streaming() -> bool:
        size = heard.stat().st_size if heard.exists() else 0
        grew = size > sizes[-1] > 2000
        sizes.append(size)
        return grew

    yield wait_until(streaming, timeout=20, interval=0.5, what="ffmpeg recording as frames come")
    yield sleep(1.0)
    return play, heard


def publisher(url: str, log) -> subprocess.Popen:
    total = TONE_START_S + TONE_SECONDS
    return ffmpeg(
        [
            "-re",
            "-f",
            "lavfi",
            "-i",
            f"sine=f=1000:sample_rate=44100:duration={total}",
            "-af",
            f"volume=enable='lt(t,{TONE_START_S})':volume=0",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-ar",
            "44100",
            "-ac",
            "1",
            "-f",
            "flv",
            url,
        ],
        log,
    )


def player(url: str, out, seconds: float, log) -> subprocess.Popen:
    """live-player: records what it receives as it is (FLV), decoded to a WAV afterwards."""
    return ffmpeg(
        [
            "-i",
            url,
            "-t",
            str(seconds),
            "-c",
            "copy",
            "-y",
            str(out),
        ],
        log,
    )


def decode_to_pcm(path) -> np.ndarray:
    wav = path.with_suffix(".wav")
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            str(path),
            "-vn",
            "-ac",
            "1",
            "-ar",
            str(WAV_RATE),
            "-c:a",
            "pcm_s16le",
            "-y",
            str(wav),
        ],
        check=True,
        timeout=30,
    )
    with wave.open(str(wav)) as w:
        assert w.getframerate() == WAV_RATE
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768


def onset_ms(pcm: np.ndarray, rate: int, threshold: float = 0.05) -> float:
    rms = rms_windows(pcm, rate, 10)
    loud = np.nonzero(rms > threshold)[0]
    assert len(loud), "no tone at all"
    return float(loud[0] * 10)


def wall_at(log: list[tuple[float, int]], ts_ms: float) -> float:
    """Wall time at which stream timestamp ``ts_ms`` crossed the gateway (linear between entries)."""
    walls = np.array([w for w, _ in log])
    stamps = np.array([t for _, t in log], dtype=float)
    return float(np.interp(ts_ms, stamps, walls))


def scenario_with_ptime(tmp_path, ptime: int):
    """uas_answer.xml answering with ``a=ptime:<ptime>``: what it asks us to send, and (echoing
    it) what it sends back."""
    text = (SCENARIO_DIR / "uas_answer.xml").read_text()
    assert text.count("a=ptime:20") == 1
    path = tmp_path / f"uas_answer_ptime{ptime}.xml"
    path.write_text(text.replace("a=ptime:20", f"a=ptime:{ptime}"))
    return path


@pytest_twisted.inlineCallbacks
def run_round_trip(gateway, kamailio, tmp_path, codec: str, ptime: int = 20):
    scenario = "uas_answer.xml" if ptime == 20 else scenario_with_ptime(tmp_path, ptime)
    phone = Sipp(
        tmp_path / "sipp", scenario, kamailio, user="1500", rtp_echo=True, codec=codec, timeout=60
    )
    phone.start()
    procs = []
    try:
        client = yield WsClient.connect(gateway.ws_url)
        yield client.request("login", {"user": "1000", "password": "1234"})
        result = yield client.request("call", {"to": "1500"})
        answered = yield client.wait_event("answered")
        t_answered = time.monotonic()
        assert answered["codec"].lower() == codec.lower()
        closed = closed_media(gateway)
        call = gateway.node.calls.calls[result["call"]]
        uplink: list[tuple[float, int]] = []
        downlink: list[tuple[float, int]] = []
        # The round trip at the gateway's own edges is timed by hooks on the RTMP publish sink and
        # the players' group; in a worker they are in another process, where the test cannot
        # hook: there the tone, its gaps, the packet counts and the ptimes are judged, not the time.
        in_node = gateway.workers == 0
        if in_node:
            sink_audio = call.engine.audio  # the publish sink
            call.engine.audio = lambda ts, payload: (
                uplink.append((time.monotonic(), ts)), sink_audio(ts, payload)
            )
            send_audio = call.players.send_audio
            group = call.players

            def tap(ts, payload):  # only what the player actually got: from its joining on
                if group.players:
                    downlink.append((time.monotonic(), ts))
                send_audio(ts, payload)

            call.players.send_audio = tap
        log = open(tmp_path / "ffmpeg.log", "wb")
        heard = tmp_path / "heard.flv"
        procs.append(player(result["play_url"], heard, TONE_START_S + TONE_SECONDS + 1, log))
        procs.append(publisher(result["push_url"], log))
        yield wait_until(
            lambda: all(p.poll() is not None for p in procs),
            timeout=40,
            what="ffmpeg publisher and player to finish",
        )
        assert [p.returncode for p in procs] == [0, 0], (tmp_path / "ffmpeg.log").read_text()
        expected = (time.monotonic() - t_answered) * 1000 / ptime
        yield client.request("hangup", {"call": result["call"]})
        hangup = yield client.wait_event("hangup")
        (stats,) = closed
        # what we send is packetized at the far end's ptime, and what comes back is played at it
        sent = stats.rtp_sent
        assert hangup["media"]["rtp_sent"] == sent
        assert abs(sent - expected) <= 0.05 * expected + 10, (sent, expected)
        extra = stats.extra
        assert extra["ptime"] == ptime and extra["jitter_ptime_ms"] == ptime, extra
        assert extra["jitter"]["late"] == 0 and extra["jitter"]["resyncs"] == 0, extra
        pcm = decode_to_pcm(heard)
        start = onset_ms(pcm, WAV_RATE)
        tone = pcm[int((start / 1000 + 1.0) * WAV_RATE) : int((start / 1000 + TONE_SECONDS - 0.5) * WAV_RATE)]
        freq = dominant_frequency(tone, WAV_RATE)
        rms = rms_windows(tone, WAV_RATE, 20)
        quiet = rms < 0.2 * float(np.median(rms))
        longest_gap_ms = max(
            (len(run) * 20 for run in "".join("1" if q else "0" for q in quiet).split("0")), default=0
        )
        rtt_ms = None
        if in_node:  # round trip at the gateway: onset in (RTMP ts 2000) → the AAC frame carrying it out
            first_down_ts = downlink[0][1]
            rtt_ms = (wall_at(downlink, first_down_ts + start) - wall_at(uplink, TONE_START_S * 1000)) * 1000
        print(
            f"\n{codec} ptime {ptime}: heard {freq:.1f} Hz, longest gap {longest_gap_ms} ms, "
            f"round trip {'(in a worker: not timed)' if rtt_ms is None else f'{rtt_ms:.0f} ms'} "
            f"(RTMP in → RTP → sipp echo → RTP → RTMP out); media {hangup.get('media')}"
        )
        assert abs(freq - 1000) <= 20, freq
        assert longest_gap_ms <= 60, longest_gap_ms
        assert rtt_ms is None or 0 < rtt_ms < 400, rtt_ms
        yield client.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        phone.stop()


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722", "opus"])
def test_audio_round_trip_through_an_echoing_phone(gateway, kamailio, tmp_path, codec):
    return run_round_trip(gateway, kamailio, tmp_path, codec)


@pytest.mark.parametrize("ptime", [30, 40])
def test_ptime_from_the_phone_is_honoured_both_ways(gateway, kamailio, tmp_path, ptime):
    return run_round_trip(gateway, kamailio, tmp_path, "PCMU", ptime)


@defer.inlineCallbacks
def answered_call(gateway, client, to="1500", video=False):
    yield client.request("login", {"user": "1000", "password": "1234"})
    result = yield client.request("call", {"to": to, "video": video})
    yield client.wait_event("answered")
    return result


@pytest.fixture
def echo_phone(kamailio, tmp_path):
    phones = []

    def start(scenario="uas_answer.xml", variables=None):
        phone = Sipp(
            tmp_path / f"sipp{len(phones)}",
            scenario,
            kamailio,
            user="1500",
            rtp_echo=True,
            timeout=60,
            variables=variables,
        )
        phones.append(phone)
        return phone.start()

    yield start
    for phone in phones:
        phone.stop()


@pytest_twisted.inlineCallbacks
def test_dtmf_rfc4733_out_and_back(gateway, echo_phone):
    echo_phone()
    client = yield WsClient.connect(gateway.ws_url)
    result = yield answered_call(gateway, client)
    reply = yield client.request("dtmf", {"call": result["call"], "digits": "19#"})
    assert reply == {"via": "rfc4733"}
    # the phone echoes our telephone-event packets: they come back and are decoded as digits
    digits = []
    for _ in range(3):
        event = yield client.wait_event("dtmf", timeout=10)
        assert event["call"] == result["call"] and event["via"] == "rfc4733"
        digits.append(event["digits"])
    assert "".join(digits) == "19#"
    yield client.request("hangup", {"call": result["call"]})
    yield client.wait_event("hangup")


@pytest_twisted.inlineCallbacks
def test_garbage_and_foreign_rtp_do_not_disturb_the_call(gateway, echo_phone):
    echo_phone()
    client = yield WsClient.connect(gateway.ws_url)
    closed = closed_media(gateway)
    result = yield answered_call(gateway, client)
    call = gateway.node.calls.calls[result["call"]]
    port = call.media.audio_port
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.2", 0))
    local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    local.bind(("127.0.0.1", 0))
    local_port = local.getsockname()[1]
    try:
        yield wait_until(lambda: call.media_packets() > 20, timeout=5, what="echoed RTP")
        rtp = bytes([0x80, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4]) + b"\xff" * 160
        for i in range(50):
            stranger.sendto(rtp, ("127.0.0.1", port))  # well-formed, but not from the far end
            local.sendto(b"\x00garbage" * (i % 7 + 1), ("127.0.0.1", port))  # from the right host, not RTP
            local.sendto(b"\x81\xc9\x00\x01junk", ("127.0.0.1", port + 1))  # broken RTCP
        yield sleep(1.5)  # a worker's report (each second) has counted the garbage
        # the real far end is still heard (the datagrams counted for the dead-call watchdog,
        # reported each second by a worker: over 2 s, 100 RTP packets at 20 ms)
        before = call.media_packets()
        yield sleep(2.0)
        assert call.media_packets() - before >= 60
    finally:
        stranger.close()
        local.close()
    yield client.request("hangup", {"call": result["call"]})
    hangup = yield client.wait_event("hangup")
    assert hangup["media"]["rtp_foreign"] >= 50 and hangup["media"]["rtp_bad"] >= 50, hangup
    # ... and still answered to: RTP goes to where the far end sends from, not to the garbage
    (stats,) = closed
    assert stats.extra["audio_remote"][0] == "127.0.0.1"
    assert stats.extra["audio_remote"][1] != local_port
    assert stats.rtp_received >= 150  # 3 s and more of the echo


@pytest_twisted.inlineCallbacks
def test_publisher_reconnect_resumes_the_uplink(gateway, echo_phone, tmp_path):
    echo_phone()
    client = yield WsClient.connect(gateway.ws_url)
    result = yield answered_call(gateway, client)
    log = open(tmp_path / "ffmpeg.log", "wb")
    for _ in range(2):  # the pusher drops (network change) and comes back on the same URL
        pub = ffmpeg(
            [
                "-re",
                "-f",
                "lavfi",
                "-i",
                "sine=f=1000:sample_rate=44100:duration=2",
                "-c:a",
                "aac",
                "-f",
                "flv",
                result["push_url"],
            ],
            log,
        )
        yield wait_until(lambda p=pub: p.poll() is not None, timeout=20, what="publisher")
        assert pub.returncode == 0, (tmp_path / "ffmpeg.log").read_text()
    states = [(p["stream"], p["state"]) for n, p in client.events if n == "media"]
    assert states.count(("publisher", "connected")) == 2 and states.count(("publisher", "gone")) == 2
    assert "hangup" not in [n for n, _ in client.events]
    yield client.request("hangup", {"call": result["call"]})
    yield client.wait_event("hangup")


@pytest_twisted.inlineCallbacks
def test_h264_video_passes_through_both_ways(gateway, echo_phone, tmp_path):
    echo_phone("uas_answer_video.xml")
    client = yield WsClient.connect(gateway.ws_url)
    result = yield answered_call(gateway, client, video=True)
    call = gateway.node.calls.calls[result["call"]]
    assert call.media.negotiated.video is not None and call.media.negotiated.video.codec == "H264"
    log = open(tmp_path / "ffmpeg.log", "wb")
    heard = tmp_path / "seen.flv"
    play = ffmpeg(
        [
            "-i",
            result["play_url"],
            "-t",
            "6",
            "-c",
            "copy",
            "-y",
            str(heard),
        ],
        log,
    )
    pub = ffmpeg(
        [
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=15",
            "-f",
            "lavfi",
            "-i",
            "sine=f=1000:sample_rate=44100",
            "-t",
            "6",
            "-c:v",
            "libx264",
            "-tune",
            "zerolatency",
            "-g",
            "15",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-f",
            "flv",
            result["push_url"],
        ],
        log,
    )
    yield wait_until(lambda: pub.poll() is not None and play.poll() is not None, timeout=40, what="ffmpeg")
    assert pub.returncode == 0 and play.returncode == 0, (tmp_path / "ffmpeg.log").read_text()
    yield client.request("hangup", {"call": result["call"]})
    stats = (yield client.wait_event("hangup"))["media"]
    # what went to the phone as RFC 6184 came back byte for byte (sipp echoes it) and was rebuilt
    assert stats["video_sent"] > 50 and stats["video_received"] > 50, stats
    frames = 0
    with av.open(str(heard)) as container:
        for frame in container.decode(video=0):
            assert frame.width == 320 and frame.height == 240
            frames += 1
    print(
        f"\nvideo: {stats['video_sent']} RTP packets out, {stats['video_received']} back, "
        f"{frames} frames decoded"
    )
    assert frames >= 30


@pytest_twisted.inlineCallbacks
def test_far_end_tone_plays_in_live_player(gateway, kamailio, tmp_path):
    """The other way: a phone calls the mini-program user and plays a tone (PCMU RTP from a WAV)."""
    require_binary("sox")
    tone = tmp_path / "tone.wav"
    tone_wav(tone, 1000, 8, encoding="u-law")
    scenario = (
        (SCENARIO_DIR / "uac_call.xml")
        .read_text()
        .replace(
            '  <pause variable="hold"/>',
            f'  <nop><action><exec rtp_stream="{tone},-1,0"/></action></nop>\n  <pause variable="hold"/>',
            1,
        )
    )
    assert "rtp_stream" in scenario
    (tmp_path / "uac_call_play_tone.xml").write_text(scenario)
    client = yield WsClient.connect(gateway.ws_url)
    yield client.request("login", {"user": "1000", "password": "1234"})
    caller = Sipp(
        tmp_path / "caller",
        tmp_path / "uac_call_play_tone.xml",
        kamailio,
        user="1500",
        register=False,
        variables={"callee": "1000", "hold_ms": "6000"},
        timeout=60,
    )
    caller.start()
    try:
        incoming = yield client.wait_event("incoming")
        log = open(tmp_path / "ffmpeg.log", "wb")
        heard = tmp_path / "heard.flv"
        play = player(incoming["play_url"], heard, 4, log)
        yield client.request("answer", {"call": incoming["call"]})
        yield client.wait_event("answered")
        yield wait_until(lambda: play.poll() is not None, timeout=30, what="the player")
        assert play.returncode == 0, (tmp_path / "ffmpeg.log").read_text()
        pcm = decode_to_pcm(heard)
        start = onset_ms(pcm, WAV_RATE)
        tone_pcm = pcm[int((start / 1000 + 0.5) * WAV_RATE) :]
        assert len(tone_pcm) > WAV_RATE  # more than a second of it
        freq = dominant_frequency(tone_pcm, WAV_RATE)
        print(f"\nfar-end tone heard in live-player: {freq:.1f} Hz")
        assert abs(freq - 1000) <= 20
        hangup = yield client.wait_event("hangup", timeout=20)
        assert hangup["by"] == "remote"
        assert (yield wait_until(lambda: caller.poll() is not None, timeout=15, what="sipp")) is not None
        assert caller.poll() == 0, caller.explain()
    finally:
        caller.stop()


@pytest_twisted.inlineCallbacks
def test_reinvites_that_change_nothing_keep_the_media(gateway, echo_phone):
    """The phone refreshes the session twice (re-INVITEs with the SDP unchanged, like
    FreeSWITCH's session timer): the RTP session, its jitter buffer, the codecs and the counters
    go on untouched."""
    phone = echo_phone("uas_answer_refresh.xml", variables={"hold_ms": "1500"})
    closed = closed_media(gateway)
    client = yield WsClient.connect(gateway.ws_url)
    result = yield answered_call(gateway, client)
    call = gateway.node.calls.calls[result["call"]]
    yield wait_until(lambda: call.media_packets() > 20, timeout=5, what="echoed RTP")
    yield wait_until(
        lambda: phone.logs_text().count("REFRESH answer a=sendrecv") == 2, timeout=10, what="two refreshes"
    )
    received = call.media_packets()
    yield sleep(2.0)  # a worker reports its counts each second
    assert call.media_packets() > received + 60  # the echo goes on
    yield client.request("hangup", {"call": result["call"]})
    hangup = yield client.wait_event("hangup")
    (stats,) = closed
    extra = stats.extra
    # one bridge all along (one leg closed), its jitter buffer and decoder kept, never flushed
    assert (extra["pipeline_builds"], extra["jitter_rebuilds"], extra["decoder_rebuilds"]) == (1, 0, 0), extra
    js = extra["jitter"]
    assert (js["flushed"], js["resyncs"], js["late"], js["lost"]) == (0, 0, 0, 0), js
    assert hangup["media"]["rtp_received"] == stats.rtp_received > 150


def flv_audio_times_ms(path) -> list[float]:
    """Audio packet timestamps of an FLV, in ms."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "packet=pts_time",
         "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    return [float(line.strip(",")) * 1000 for line in out.split() if line.strip(",")]


@pytest_twisted.inlineCallbacks
def test_the_player_gets_frames_all_through_a_hold(gateway, echo_phone, tmp_path):
    """live-player must not starve while the call is held: it receives frames at the normal AAC
    rate before, during and after the hold. Measured twice: the wall time each frame left the
    gateway for the player, and ffmpeg stamping what it reads with its own wall clock."""
    echo_phone("uas_answer_hold_unhold.xml")
    client = yield WsClient.connect(gateway.ws_url)
    result = yield answered_call(gateway, client)
    sent: list[float] = []  # wall times of the frames sent while a player is there
    # the gateway's side is timed by a hook on the players' group: in a worker it is in another
    # process, where the test cannot hook; there ffmpeg's own record (below) is the measure
    in_node = gateway.workers == 0
    if in_node:
        group = gateway.node.calls.calls[result["call"]].players
        send_audio = group.send_audio

        def tap(ts, payload):
            if group.players:
                sent.append(time.monotonic() * 1000)
            send_audio(ts, payload)

        group.send_audio = tap
    play, heard = yield streaming_player(result["play_url"], tmp_path)
    hold_at = time.monotonic() * 1000
    reply = yield client.request("hold", {"call": result["call"]})
    assert reply["held"] is True
    yield sleep(3.0)
    yield client.request("unhold", {"call": result["call"]})
    yield sleep(1.5)
    play.send_signal(signal.SIGINT)
    yield wait_until(lambda: play.poll() is not None, timeout=10, what="the player")
    yield client.request("hangup", {"call": result["call"]})
    yield client.wait_event("hangup")
    frame_ms = 1024 * 1000 / 16000
    times = flv_audio_times_ms(heard)
    times = [t for t in times if t > times[0] + 20]  # after ffmpeg's start-up burst
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    span = times[-1] - times[0]
    print(f"\nheld call: ffmpeg read {len(times)} frames in {span:.0f} ms (its own clock), "
          f"longest gap {max(gaps):.0f} ms")
    if in_node:
        gw_gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
        print(f"gateway sent {len(sent)} frames, longest gap {max(gw_gaps):.0f} ms")
        assert max(gw_gaps) <= frame_ms + 40, max(gw_gaps)
        assert sent[-1] - hold_at >= 4000  # the gateway's record covers the hold
    assert max(gaps) <= frame_ms + 40, max(gaps)
    assert span >= 5000  # ffmpeg's record covers the hold, at its normal rate
    assert len(times) >= span / frame_ms - 3
