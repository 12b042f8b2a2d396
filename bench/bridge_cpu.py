"""CPU of the media path alone, in one process, without network peers: N bridges driven by
their media clock's phases, fed as the bench's publishers and far ends feed them.

    python bench/bridge_cpu.py --calls 50 --seconds 10 [--profile out.prof] [--udp]

Each call gets a pusher's AAC frames (44.1 kHz, two per write every 46 ms, at a random phase)
and a far end's PCMU packet every 20 ms; the players are fakes that only count. ``--udp``
sends the RTP on a real loopback socket (one per call, as the gateway does), otherwise RTP
leaves through a fake socket (no system call). Reports ms of CPU per call-second per phase and
for RTMP-side input (``publisher_audio``) against the codec floor of the same streams
(``codec_floor`` of bench/loadgen.py, N streams side by side), measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from b2bua.media.bridge import AudioBridge  # noqa: E402
from b2bua.media.leg import RtpSocket  # noqa: E402
from b2bua.media.transcode import RtpAudioEncoder  # noqa: E402
from b2bua.wire import flv  # noqa: E402
from b2bua.wire.rtp import RtpSender  # noqa: E402
from b2bua.wire.sdp import NegotiatedMedia, NegotiatedStream  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import rtmpclient  # noqa: E402

FAR = ("127.0.0.1", 9)  # discard


class Sock(RtpSocket):
    def __init__(self, kind: str, udp: socket.socket | None) -> None:
        super().__init__(kind)
        self.udp = udp
        self.count = 0

    def send(self, data: bytes, addr) -> None:
        self.count += 1
        if self.udp is not None:
            self.udp.sendto(data, addr)


class Leg:
    def __init__(self, udp: bool) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if udp else None
        self.audio_rtp, self.audio_rtcp = Sock("audio-rtp", s), Sock("audio-rtcp", None)
        self.video_rtp, self.video_rtcp = Sock("video-rtp", None), Sock("video-rtcp", None)


class Players:
    def __init__(self) -> None:
        self.frames = 0

    def set_audio_header(self, payload: bytes) -> None:
        pass

    def send_audio(self, ts: int, payload: bytes) -> None:
        self.frames += 1


def negotiated() -> NegotiatedMedia:
    return NegotiatedMedia(audio=NegotiatedStream(
        kind="audio", codec="PCMU", payload_type=0, clock_rate=8000, channels=1, fmtp={},
        remote_addr=FAR[0], remote_port=FAR[1], remote_rtcp_port=FAR[1] + 1, rtcp_mux=False,
        direction="sendrecv", on_hold=False, dtmf_payload_type=101, dtmf_clock_rate=8000,
    ))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--udp", action="store_true")
    ap.add_argument("--profile")
    ap.add_argument("--no-floor", action="store_true")
    args = ap.parse_args()
    rng = random.Random(1)
    asc, frames = rtmpclient.encode_tone(max(args.seconds, 3.0) + 1)
    header = flv.build_aac_sequence_header(44100, 1)
    tags = [flv.build_aac_raw(f) for f in frames]
    enc = RtpAudioEncoder("PCMU")
    import numpy as np

    t = np.arange(8000 * 2) / 8000
    pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()
    payloads = [enc.encode(pcm[i * 320:(i + 1) * 320]) for i in range(100)]

    now = [1000.0]
    calls = []
    for _ in range(args.calls):
        b = AudioBridge(Leg(args.udp), negotiated(), Players(), lambda d: None, clock=lambda: now[0])
        b.publisher_audio(0, header)
        sender = RtpSender()
        calls.append((b, sender, rng.uniform(0, 46.4), rng.uniform(0, 20)))
    frame_ms = 1024 / 44.1
    ticks = int(args.seconds * 50)
    phase_cpu = {"publisher_audio": 0.0, "rtp_in": 0.0, "tick_up": 0.0, "tick_down": 0.0, "tick_prepare": 0.0}
    pt = time.process_time
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    sent_tags = [0] * len(calls)
    for k in range(ticks):
        t0_ms = k * 20.0
        now[0] = 1000.0 + t0_ms / 1000
        # input that arrived since the last tick: the pusher's 2-frame writes and the far end's RTP
        c = pt()
        for i, (b, _s, phase, _rp) in enumerate(calls):
            while True:
                j = sent_tags[i]
                due = phase + (j // 2 * 2 + 2) * frame_ms
                if due > t0_ms or j >= len(tags):
                    break
                b.publisher_audio(int(j * frame_ms), tags[j])
                sent_tags[i] = j + 1
        phase_cpu["publisher_audio"] += pt() - c
        c = pt()
        for b, s, _p, _rp in calls:
            pkt = s.packet(payloads[k % 100], 0, 160).serialize()
            b.session._rtp_in(pkt, FAR) if hasattr(b.session, "_rtp_in") else None
        phase_cpu["rtp_in"] += pt() - c
        for phase in ("tick_up", "tick_down", "tick_prepare"):
            c = pt()
            for b, *_ in calls:
                fn = getattr(b, phase, None)
                if fn is not None:
                    fn(now[0] * 1000)
            phase_cpu[phase] += pt() - c
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)
    call_s = args.calls * args.seconds
    total = sum(phase_cpu.values())
    out = {k: round(v * 1000 / call_s, 3) for k, v in phase_cpu.items()}
    out["total_ms_per_call_s"] = round(total * 1000 / call_s, 3)
    out["rtp_sent"] = sum(b.media.audio_rtp.count for b, *_ in calls)
    out["aac_out"] = sum(b.players.frames for b, *_ in calls)
    if not args.no_floor:
        from loadgen import codec_floor

        fl = codec_floor(asc, frames, 3.0, repeat=1, streams=args.calls)
        out["floor_ms_per_call_s"] = round(fl["total_ms_per_s"], 3)
        out["ratio"] = round(out["total_ms_per_call_s"] / fl["total_ms_per_s"], 2)
    print(out)


if __name__ == "__main__":
    main()
