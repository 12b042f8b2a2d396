"""Load generator for one mpb2bua node: simulated mini-program users, no ffmpeg per user.

    python bench/loadgen.py media    [--steps 10,25,50,100,150,200,250,300] [--window 20] [--hooks] [--out F]
    python bench/loadgen.py register [--users 10000] [--expires 60] [--window 90] [--out F]
    python bench/loadgen.py setup    [--rate 50] [--rates 100,200,400,600,800] [--out F]

Every process placement: the gateway runs alone on core 0 (``taskset -c 0 python
bench/gwrunner.py``); this process, Kamailio (registrar/proxy, tests/peers/kamailio.py) and the
far end (bench/echo_uas.py: answers and echoes RTP, records arrival times) run on core 1.

A simulated user = one autobahn WebSocket client (tests/peers/wsclient.py) that logs in and
calls the far end, plus, for media, a Python RTMP publisher (pre-encoded 1 kHz AAC 44.1 kHz
mono, 1024/44100 s per frame, ``--burst`` frames per TCP write) and a Python RTMP player that
time-stamps every audio message (bench/rtmpclient.py). Gateway CPU is read from
/proc/<pid>/stat (utime+stime) over each steady window. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import rtmpclient  # noqa: E402
from gwrunner import proc_cpu, proc_rss  # noqa: E402
from twisted.internet import defer, protocol, reactor, task  # noqa: E402

from tests.peers.kamailio import Kamailio  # noqa: E402
from tests.peers.sipp import Sipp  # noqa: E402
from tests.peers.wsclient import WsClient  # noqa: E402

ECHO_USER = "10999"
GW_CORE, LOAD_CORE = 0, 1


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def sleep(s: float) -> defer.Deferred:
    return task.deferLater(reactor, s, lambda: None)


def pct(values, p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


class LineProc(protocol.ProcessProtocol):
    """A child process speaking one JSON line at start, then ``ok`` per command."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hello = defer.Deferred()
        self.waiting: list[defer.Deferred] = []
        self.buf = b""
        self.info: dict = {}
        self.ended = defer.Deferred()
        self.err = open(f"/tmp/bench-{name}-{os.getpid()}.log", "wb")

    def outReceived(self, data: bytes) -> None:  # noqa: N802
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.strip()
            if not self.hello.called and line.startswith(b"{"):
                self.info = json.loads(line)
                self.hello.callback(self.info)
            elif line == b"ok" and self.waiting:
                self.waiting.pop(0).callback(None)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.err.write(data)

    def command(self, line: str) -> defer.Deferred:
        d = defer.Deferred()
        self.waiting.append(d)
        self.transport.write(line.encode() + b"\n")
        return d.addTimeout(60, reactor)

    @defer.inlineCallbacks
    def stats(self, tmp: Path) -> dict:
        path = tmp / f"{self.name}-stats.json"
        yield self.command(f"stats {path}")
        return json.loads(path.read_text())

    def processEnded(self, reason) -> None:  # noqa: N802
        self.err.close()
        if not self.ended.called:
            self.ended.callback(None)
        if not self.hello.called:
            self.hello.errback(RuntimeError(f"{self.name} exited at start, see {self.err.name}"))

    def quit(self) -> defer.Deferred:
        try:
            self.transport.write(b"quit\n")
        except Exception:
            pass
        timer = reactor.callLater(5, lambda: self.transport.signalProcess("KILL"))
        self.ended.addBoth(lambda _: timer.active() and timer.cancel())
        return self.ended


def spawn(name: str, args: list[str], core: int | None = None) -> LineProc:
    proto = LineProc(name)
    argv = [sys.executable, *args]
    if core is not None:
        argv = ["taskset", "-c", str(core), *argv]
    reactor.spawnProcess(
        proto, argv[0] if core is None else "/usr/bin/taskset", argv, env=os.environ.copy(), path=str(ROOT)
    )
    return proto


def proc_children(pid: int) -> list[int]:
    """The child processes of ``pid`` (/proc/<pid>/task/*/children): a node's media workers."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            continue
    return sorted(set(out))


def gw_cpu(pid: int) -> dict:
    """CPU seconds so far of the node process and of each of its children (media workers)."""
    kids = {}
    for c in proc_children(pid):
        try:
            kids[c] = proc_cpu(c)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return {"node": proc_cpu(pid), "workers": kids}


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


class Peers:
    """Kamailio + echo UAS + gateway, started in order; ``stop()`` ends them all."""

    def __init__(
        self, tmp: Path, users, gw_args=(), kam_kwargs=None, echo=True, gw_core: int = GW_CORE
    ) -> None:
        self.tmp, self.users, self.gw_args, self.echo_wanted = tmp, users, list(gw_args), echo
        self.gw_core = gw_core
        self.kam_kwargs = kam_kwargs or {}
        self.kam = self.echo = self.gw = None

    @defer.inlineCallbacks
    def start(self):
        self.kam = Kamailio(self.tmp / "kam", users=self.users, **self.kam_kwargs)
        (self.tmp / "kam").mkdir(exist_ok=True)
        self.kam.start()  # inherits this process's affinity: core 1
        log(f"kamailio on {self.kam.port} (pid {self.kam.pid})")
        if self.echo_wanted:
            self.echo = spawn("echo", [str(ROOT / "bench" / "echo_uas.py")])
            info = yield self.echo.hello
            reg = Sipp(self.tmp, "uas_answer.xml", self.kam, user=ECHO_USER, expires=3600)
            reg._port = info["sip_port"]
            reg.workdir = self.tmp / "echo-reg"
            reg.workdir.mkdir(exist_ok=True)
            reg.register()
            log(f"echo UAS sip {info['sip_port']} rtp {info['rtp_port']} registered as {ECHO_USER}")
        self.gw = spawn(
            "gateway",
            [str(ROOT / "bench" / "gwrunner.py"), "--pbx", f"127.0.0.1:{self.kam.port}", *self.gw_args],
            core=self.gw_core,
        )
        info = yield self.gw.hello
        self.gw_pid = info["pid"]
        log(f"gateway pid {self.gw_pid} on core {self.gw_core}: {info}")
        return self

    @defer.inlineCallbacks
    def stop(self):
        for p in (self.gw, self.echo):
            if p is not None:
                yield p.quit()
        if self.kam is not None:
            self.kam.close()


class User:
    """One simulated mini-program user: WS session, one call, RTMP publisher and player."""

    def __init__(self, n: int) -> None:
        self.user = str(n)
        self.ws: WsClient | None = None
        self.call = None
        self.pub = self.play = None
        self.events: dict[tuple[str, str], defer.Deferred | dict] = {}

    @defer.inlineCallbacks
    def login(self, ws_url: str):
        self.ws = yield WsClient.connect(ws_url)
        orig = self.ws._message

        def route(payload, binary, _orig=orig):  # events keyed by (name, call): no linear scans
            msg = json.loads(payload)
            if "method" in msg and "id" not in msg:
                params = msg.get("params") or {}
                key = (msg["method"], params.get("call"))
                w = self.events.get(key)
                if isinstance(w, defer.Deferred):
                    del self.events[key]
                    w.callback(params)
                else:
                    self.events[key] = params
                return
            _orig(payload, binary)

        self.ws._message = route
        yield self.ws.request("login", {"user": self.user, "password": "1234"})

    def wait(self, name: str, call: str, timeout: float = 30) -> defer.Deferred:
        got = self.events.pop((name, call), None)
        if isinstance(got, dict):
            return defer.succeed(got)
        d = defer.Deferred()
        self.events[(name, call)] = d
        return d.addTimeout(timeout, reactor)

    @defer.inlineCallbacks
    def place_call(self):
        res = yield self.ws.request("call", {"to": ECHO_USER})
        self.call = res["call"]
        yield self.wait("answered", self.call)
        return res

    @defer.inlineCallbacks
    def hangup(self):
        call, self.call = self.call, None
        yield self.ws.request("hangup", {"call": call})
        ev = yield self.wait("hangup", call)
        return ev


# ------------------------------------------------------------------------------------------ media
def codec_floor(
    asc: bytes, frames: list[bytes], seconds: float, repeat: int = 3, streams: int = 1, aac_rate: int = 16000
) -> dict:
    """Bare PyAV cost of the calls' streams (single thread, this process): ms CPU per second of
    audio of one call. Uplink: AAC 44.1 kHz mono decode → resample s16 8 kHz → pcm_mulaw encode
    (160-sample frames). Downlink: pcm_mulaw decode → resample fltp at ``aac_rate`` (1024-sample
    frames) → AAC encode, configured as the gateway configures it for PCMU (aac_coder=fast,
    32 kb/s, bandwidth cut at 4 kHz).
    With ``streams`` > 1, that many independent calls run side by side, 20 ms of each in turn
    as a media tick does, so the codecs' working sets compete for the caches as they do in the
    gateway; ``seconds`` of audio each. Making the codec contexts is not counted."""
    from fractions import Fraction

    import av
    import numpy as np

    n = int(seconds * 44100 / 1024)
    packets = [frames[i % len(frames)] for i in range(n)]

    def up_pipeline():
        dec = av.CodecContext.create("aac", "r")
        dec.extradata = asc
        rs = av.AudioResampler(format="s16", layout="mono", rate=8000)
        enc = av.CodecContext.create("pcm_mulaw", "w")
        enc.format, enc.layout, enc.sample_rate = "s16", "mono", 8000
        enc.time_base = Fraction(1, 8000)
        enc.open()
        return dec, rs, enc, bytearray(), [0], []

    def up_step(state, data: bytes) -> None:
        dec, rs, enc, buf, pts, out = state
        for frame in dec.decode(av.Packet(data)):
            for r in rs.resample(frame):
                buf += bytes(r.planes[0])[: r.samples * 2]
        while len(buf) >= 320:
            f = av.AudioFrame.from_ndarray(
                np.frombuffer(bytes(buf[:320]), np.int16)[None, :], format="s16", layout="mono"
            )
            del buf[:320]
            f.sample_rate, f.pts = 8000, pts[0]
            pts[0] += 160
            out += [bytes(p) for p in enc.encode(f)]

    def down_pipeline():
        dec = av.CodecContext.create("pcm_mulaw", "r")
        dec.sample_rate, dec.layout = 8000, "mono"
        rs = av.AudioResampler(format="fltp", layout="mono", rate=aac_rate, frame_size=1024)
        enc = av.CodecContext.create("aac", "w")
        enc.format, enc.layout, enc.sample_rate = "fltp", "mono", aac_rate
        enc.time_base = Fraction(1, aac_rate)
        enc.bit_rate = 32000
        enc.options = {"aac_coder": "fast", "cutoff": "4000"}
        enc.open()
        return dec, rs, enc, [0]

    def down_step(state, data: bytes) -> None:
        dec, rs, enc, pts = state
        for frame in dec.decode(av.Packet(data)):
            for r in rs.resample(frame):
                r.pts = pts[0]
                pts[0] += r.samples
                for _ in enc.encode(r):
                    pass

    def up() -> tuple[float, list[list[bytes]]]:
        states = [up_pipeline() for _ in range(streams)]
        t0 = time.process_time()
        for data in packets:
            for st in states:
                up_step(st, data)
        return time.process_time() - t0, [st[-1] for st in states]

    def down(payloads: list[list[bytes]]) -> float:
        states = [down_pipeline() for _ in range(streams)]
        t0 = time.process_time()
        for k in range(min(len(p) for p in payloads)):
            for st, p in zip(states, payloads, strict=True):
                down_step(st, p[k])
        return time.process_time() - t0

    down(up()[1])  # warm-up
    ups, downs = [], []
    for _ in range(repeat):
        t, payloads = up()
        ups.append(t)
        downs.append(down(payloads))
    audio_s = streams * seconds
    return {
        "seconds": seconds,
        "streams": streams,
        "uplink_ms_per_s": min(ups) * 1000 / audio_s,
        "downlink_ms_per_s": min(downs) * 1000 / audio_s,
        "total_ms_per_s": (min(ups) + min(downs)) * 1000 / audio_s,
        "rtp_packets": sum(len(p) for p in payloads),
    }


def core_steal(core: int) -> float:
    """Seconds the hypervisor ran something else while this VM's ``core`` wanted to run (the
    'steal' column of /proc/stat): a stall no code of ours causes."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                return int(line.split()[8]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def late_by_worker(streams: list[dict], workers: int) -> list[dict]:
    """The far end's late-packet counts split by the media worker that sent them: worker i
    binds RTP in its own slice of media.rtp_port_min–max (b2bua.media.worker.worker_port_range)."""
    if not workers:
        return []
    from b2bua.config import MediaConfig
    from b2bua.media.worker import worker_port_range

    media = MediaConfig()
    ranges = [worker_port_range(media.rtp_port_min, media.rtp_port_max, i, workers) for i in range(workers)]
    out = [{"streams": 0, "received": 0, "late": 0, "max_late_ms": 0.0} for _ in range(workers)]
    for st in streams:
        port = int(st["addr"].rsplit(":", 1)[1])
        for i, (low, high) in enumerate(ranges):
            if low <= port <= high:
                o = out[i]
                o["streams"] += 1
                o["received"] += st["received"]
                o["late"] += st["late"]
                o["max_late_ms"] = max(o["max_late_ms"], st["max_late_ms"])
    return out


def gateway_workers(gw_set: list[str]) -> int:
    """``media.workers`` of the gateway under test: a --gw-set override, else the config default."""
    from b2bua.config import MediaConfig

    for kv in gw_set:
        key, _, value = kv.partition("=")
        if key == "media__workers":
            return int(value)
    return MediaConfig().workers


def placement(args) -> tuple[int, list[int]]:
    """(node's core, workers' cores). In-process media: the node alone on core 0, as before.
    With workers: worker i on core i mod 2, the node (signalling only) on core 1 with the load
    generator, Kamailio and the far end, so that one worker has core 0 to itself."""
    n = gateway_workers(args.gw_set)
    if args.gw_core is not None:
        node = args.gw_core
    else:
        node = GW_CORE if n == 0 else LOAD_CORE
    if args.worker_cores:
        cores = [int(c) for c in args.worker_cores.split(",")]
    else:
        cores = [(GW_CORE, LOAD_CORE)[i % 2] for i in range(n)]
    return node, cores


def gateway_aac_rate(gw_set: list[str]) -> int:
    """The AAC rate the gateway under test uses: a --gw-set override, else the config default."""
    from b2bua.config import MediaConfig

    for kv in gw_set:
        key, _, value = kv.partition("=")
        if key == "media__aac_sample_rate":
            return int(value)
    return MediaConfig().aac_sample_rate


@defer.inlineCallbacks
def run_media(args, tmp: Path) -> dict:
    steps = [int(s) for s in args.steps.split(",")]
    users_needed = max(steps)
    node_core, worker_cores = placement(args)
    gw_args = (["--hooks"] if args.hooks else []) + [a for kv in args.gw_set for a in ("--set", kv)]
    if worker_cores:
        gw_args += ["--worker-cores", ",".join(map(str, worker_cores))]
    users_list = list(range(1000, 1000 + users_needed)) + [ECHO_USER]
    peers = Peers(tmp, users_list, gw_args=gw_args, gw_core=node_core)
    yield peers.start()
    workers = gateway_workers(args.gw_set)
    if workers:
        for _ in range(100):  # ≤ 10 s for the workers to start
            if len(proc_children(peers.gw_pid)) >= workers:
                break
            yield sleep(0.1)
        log(f"media workers {proc_children(peers.gw_pid)} on cores {worker_cores}")
    asc, frames = rtmpclient.encode_tone(10.0, signal=args.signal)
    users: list[User] = []
    result = {
        "kind": "media",
        "hooks": args.hooks,
        "burst": args.burst,
        "window_s": args.window,
        "media_workers": workers,
        "node_core": node_core,
        "worker_cores": worker_cores,
        "loadavg_start": loadavg(),
        "steps": [],
        "command": " ".join(sys.argv),
    }
    started = time.monotonic()
    publishers: list[rtmpclient.Publisher] = []

    def pace():
        now = time.monotonic()
        for p in publishers:
            p.send_due(now)

    pacer = task.LoopingCall(pace)
    pacer.start(0.005)
    ws_url = peers.gw.info["ws_url"]
    try:
        for n in steps:
            if time.monotonic() - started > args.budget:
                log(f"time budget {args.budget} s spent: stop before N={n}")
                result["stopped"] = "time budget"
                break
            log(f"ramping to {n} calls")

            @defer.inlineCallbacks
            def add_one(i):
                u = User(1000 + i)
                yield u.login(ws_url)
                res = yield u.place_call()
                u.play = rtmpclient.player_for(res["play_url"])
                yield rtmpclient.connect(res["play_url"], u.play)
                u.pub = rtmpclient.publisher_for(res["push_url"], asc, frames, args.burst)
                yield rtmpclient.connect(res["push_url"], u.pub)
                u.pub.begin(time.monotonic())
                publishers.append(u.pub)
                users.append(u)

            ramp_t0 = time.monotonic()
            i = len(users)
            failures = []
            while i < n:  # 10 at a time, 50 ms apart: the start-up burst stays small
                batch = list(range(i, min(n, i + 10)))
                res = yield defer.DeferredList([add_one(j) for j in batch], consumeErrors=True)
                failures += [str(r[1].value) for r in res if not r[0]]
                i += len(batch)
                yield sleep(0.05)
            if failures:
                log(f"{len(failures)} calls failed to start: {failures[:3]}")
            log(f"{len(users)} calls up in {time.monotonic() - ramp_t0:.1f} s; warm-up {args.warmup} s")
            yield sleep(args.warmup)
            # ---- steady window
            # the gateway's snapshot walks the GC's objects (tens of ms): taken outside the window
            gw0 = yield peers.gw.stats(tmp)  # clears samples
            yield sleep(0.5)
            for u in users:
                u.play.take_gaps()
            peers.echo.transport.write(b"reset\n")
            steal0 = core_steal(GW_CORE)
            la0 = loadavg()
            g0, t0 = gw_cpu(peers.gw_pid), time.monotonic()
            own0 = proc_cpu()
            echo0 = proc_cpu(peers.echo.info["pid"])
            sent0 = sum(p.sent for p in publishers)
            yield sleep(args.window)
            g1, t1 = gw_cpu(peers.gw_pid), time.monotonic()
            own1, echo1 = proc_cpu(), proc_cpu(peers.echo.info["pid"])
            sent1 = sum(p.sent for p in publishers)
            steal1 = core_steal(GW_CORE)
            echo = yield peers.echo.stats(tmp)
            gaps = [u.play.take_gaps() for u in users]
            gw = yield peers.gw.stats(tmp)
            wall = t1 - t0
            streams = echo["streams"]
            lost = sum(s["lost"] for s in streams)
            late = sum(s["late"] for s in streams)
            received = sum(s["received"] for s in streams)
            stalls = sum(1 for _, g in gaps if g > 100)
            by_worker = late_by_worker(streams, workers)
            # node + its workers; a worker that (re)started in the window counts from 0
            worker_cpu = {pid: c - g0["workers"].get(pid, 0.0) for pid, c in g1["workers"].items()}
            node_cpu = g1["node"] - g0["node"]
            cpu0, cpu1 = 0.0, node_cpu + sum(worker_cpu.values())
            step = {
                "calls": len(users),
                "start_failures": len(failures),
                "window_s": wall,
                "loadavg": la0,
                "gw_cpu_s": cpu1 - cpu0,
                "gw_cpu_util": (cpu1 - cpu0) / wall,
                "gw_cpu_ms_per_call_s": (cpu1 - cpu0) * 1000 / (len(users) * wall),
                "node_cpu_util": node_cpu / wall,
                "node_cpu_ms_per_call_s": node_cpu * 1000 / (len(users) * wall),
                "worker_cpu_util": [c / wall for _, c in sorted(worker_cpu.items())],
                "worker_pids_changed": sorted(g0["workers"]) != sorted(g1["workers"]),
                "worker_bridges": [w["bridges"] for w in gw.get("workers", [])],
                **({"rtp_late_by_worker": by_worker} if by_worker else {}),
                "loadgen_cpu_util": (own1 - own0) / wall,
                "echo_cpu_util": (echo1 - echo0) / wall,
                "rtp_streams_seen": len(streams),
                "rtp_received": received,
                "rtp_lost": lost,
                "rtp_late": late,
                "rtp_late_fraction": late / received if received else None,
                "rtp_late_ms_max": max((s["max_late_ms"] for s in streams), default=None),
                "rtp_late_ms_p99_worst_stream": max((s["p99_late_ms"] for s in streams), default=None),
                "aac_frames_sent_per_s": (sent1 - sent0) / wall,
                "player_frames": sum(f for f, _ in gaps),
                "player_max_gap_ms": max((g for _, g in gaps), default=None),
                "player_stalls_gt_100ms": stalls,
                "gw_late_ticks": gw["clock"]["late"] - gw0["clock"]["late"],
                # ticks by how late they began against the 20 ms grid (≤1, 2, 5, 10, 20, >20 ms)
                "gw_tick_lag_counts": [
                    b - a for a, b in zip(gw0["clock"]["lag_counts"], gw["clock"]["lag_counts"], strict=True)
                ],
                # ticks by how long their own work ran (≤ 2, 5, 10, 15, 20, > 20 ms)
                "gw_tick_busy_counts": [
                    b - a
                    for a, b in zip(gw0["clock"]["busy_counts"], gw["clock"]["busy_counts"], strict=True)
                ],
                "gw_core_steal_ms": (steal1 - steal0) * 1000.0,
                **({"gw_stall_stacks": gw["stalls"]} if "stalls" in gw else {}),
                "gw_skipped_ticks": gw["clock"]["skipped"] - gw0["clock"]["skipped"],
                "gw_uplink_underruns_total": gw["uplink_underruns"],
                "gw_uplink_dropped_ms_total": gw["uplink_dropped_ms"],
                "gw_concealed_ms_total": gw["concealed_ms"],
                "gw_rss": gw["rss"],
                "gw_gc": gw.get("gc"),
            }
            if args.hooks and "latency" in gw:
                lat = gw["latency"]
                for k in ("uplink_ms", "uplink_first_ms", "downlink_ms", "downlink_first_ms"):
                    if k not in lat:
                        continue
                    step[k] = {
                        "n": len(lat[k]),
                        "p50": pct(lat[k], 50),
                        "p99": pct(lat[k], 99),
                        "max": max(lat[k], default=None),
                    }
            # strict = the DESIGN §10 wording (not one packet > 5 ms late); the stepping goes on while
            # the relaxed criterion holds (late ≤ 0.1 % of packets and none > 20 ms), so that the
            # curve continues past scheduler noise; both are reported.
            base_ok = not failures and lost == 0 and stalls == 0 and len(streams) >= len(users)
            step["pass_strict"] = base_ok and late == 0
            ok = base_ok and received > 0 and late / received <= 1e-3 and (step["rtp_late_ms_max"] or 0) <= 20
            step["pass"] = ok
            result["steps"].append(step)
            log(
                json.dumps(
                    {
                        k: (round(v, 3) if isinstance(v, float) else v)
                        for k, v in step.items()
                        if not isinstance(v, dict)
                    }
                )
            )
            # --keep-going steps on past lateness only; loss, stalls or failed call starts end it
            if not ok and (not args.keep_going or not base_ok):
                result["stopped"] = f"first failure at N={len(users)}"
                break
        if args.profile:
            out = Path(args.profile)
            log(f"py-spy on the gateway at {len(users)} calls, {args.profile_seconds} s → {out}")
            yield task.deferLater(reactor, 0, lambda: None)
            proc = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-p",
                    str(proc_children(peers.gw_pid)[0] if workers else peers.gw_pid),
                    "-d",
                    str(args.profile_seconds),
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + args.profile_seconds + 30
            while proc.poll() is None and time.monotonic() < deadline:
                yield sleep(0.5)
            if proc.poll() is None:
                proc.kill()
            result["profile"] = {"file": str(out), "calls": len(users), "seconds": args.profile_seconds}
        # the bare codec cost of the same streams, same run, on the gateway's core, gateway idle
        pacer.stop()
        log("hanging up")
        yield defer.DeferredList([u.hangup() for u in users if u.call], consumeErrors=True)
        os.sched_setaffinity(0, {GW_CORE})
        aac_rate = gateway_aac_rate(args.gw_set)
        result["codec_floor"] = codec_floor(asc, frames, args.window, aac_rate=aac_rate)
        # the same codec work for as many calls side by side as each step had, caches shared alike
        result["codec_floor_interleaved"] = {
            str(s["calls"]): codec_floor(asc, frames, 3.0, repeat=1, streams=s["calls"], aac_rate=aac_rate)
            for s in result["steps"]
        }
        os.sched_setaffinity(0, {LOAD_CORE})
        floor = result["codec_floor"]["total_ms_per_s"]
        for s in result["steps"]:
            s["ratio_to_codec_floor"] = s["gw_cpu_ms_per_call_s"] / floor
            inter = result["codec_floor_interleaved"].get(str(s["calls"]))
            if inter:
                s["ratio_to_codec_floor_interleaved"] = s["gw_cpu_ms_per_call_s"] / inter["total_ms_per_s"]
        log(f"codec floor {result['codec_floor']}")
        log(f"codec floor, interleaved {result['codec_floor_interleaved']}")
    finally:
        for u in users:
            for c in (u.pub, u.play):
                if c is not None and c.transport is not None:
                    c.transport.loseConnection()
        yield peers.stop()
    return result


# ----------------------------------------------------------------------------------- registration
# what the gateway's GC audit (BENCH_GC_AUDIT=1) reports, kept in the phase's result
GC_AUDIT_KEYS = ("gc_garbage", "gc_garbage_types", "gc_live_types", "gc_cycles")


@defer.inlineCallbacks
def run_register(args, tmp: Path) -> dict:
    peers = Peers(
        tmp,
        list(range(1000, 1000 + args.users)),
        gw_args=["--set", f"sip__register_expires={args.expires}"],
        kam_kwargs={"min_expires": min(args.expires, 60), "default_expires": args.expires},
        echo=False,
    )
    yield peers.start()
    result = {"kind": "register", "users": args.users, "expires": args.expires, "command": " ".join(sys.argv)}
    users = [User(1000 + i) for i in range(args.users)]
    try:
        yield peers.gw.command("gc")
        yield sleep(1)
        rss0 = proc_rss(peers.gw_pid)
        cpu0 = proc_cpu(peers.gw_pid)
        t0 = time.monotonic()
        failures = []
        sem = defer.DeferredSemaphore(args.concurrency)
        dl = yield defer.DeferredList(
            [sem.run(u.login, peers.gw.info["ws_url"]) for u in users], consumeErrors=True
        )
        failures = [str(r[1].value) for r in dl if not r[0]]
        t_login = time.monotonic() - t0
        cpu_login = proc_cpu(peers.gw_pid) - cpu0
        log(
            f"{args.users - len(failures)} logged in and registered in {t_login:.1f} s, {len(failures)} failed "  # noqa: E501
            f"{failures[:3]}"
        )
        gw_login = yield peers.gw.stats(tmp)  # drop the initial REGISTERs from the refresh window
        result.update({k: gw_login[k] for k in GC_AUDIT_KEYS if k in gw_login})  # BENCH_GC_AUDIT=1 only
        # idle sessions: the login storm's REGISTER transactions linger for Timer K (5 s on UDP)
        yield sleep(6)
        yield peers.gw.command("gc")
        yield sleep(1)
        rss1 = proc_rss(peers.gw_pid)
        regs = {}
        try:
            regs = peers.kam.registrations()
        except Exception as e:  # noqa: BLE001
            log(f"kamcmd failed: {e}")
        result.update(
            {
                "login_register_s": t_login,
                "logins_per_s": (args.users - len(failures)) / t_login,
                "failures": len(failures),
                "failure_examples": failures[:5],
                "gw_cpu_login_s": cpu_login,
                "rss_before": rss0,
                "rss_after": rss1,
                "rss_per_session_bytes": (rss1 - rss0) / max(1, args.users - len(failures)),
                "kamailio_registered": len(regs),
            }
        )
        log(
            f"RSS {rss0 / 2**20:.1f} → {rss1 / 2**20:.1f} MiB: {result['rss_per_session_bytes'] / 1024:.1f} KiB/session;"  # noqa: E501
            f" Kamailio has {len(regs)} AORs; refresh window {args.window} s"
        )
        cpu_w0 = proc_cpu(peers.gw_pid)
        w0 = time.time()
        yield sleep(args.window)
        gw = yield peers.gw.stats(tmp)
        sends = [t - w0 for t in gw["register_sends"] if t >= w0]
        hist = [0] * int(args.window)
        for t in sends:
            if int(t) < len(hist):
                hist[int(t)] += 1
        result.update(
            {
                "refresh_window_s": args.window,
                "refresh_histogram_per_s": hist,
                "refresh_total": len(sends),
                "refresh_max_per_s": max(hist),
                "refresh_mean_per_s": statistics.mean(hist),
                "gw_cpu_idle_refresh_util": (proc_cpu(peers.gw_pid) - cpu_w0) / args.window,
                "sessions_at_end": gw["sessions"],
            }
        )
        log(
            f"refreshes: {len(sends)} in {args.window} s, max {max(hist)}/s, mean {statistics.mean(hist):.1f}/s"  # noqa: E501
        )
    finally:
        yield (
            defer.DeferredList(
                [u.ws.close() for u in users if u.ws is not None and u.ws.close_code is None],
                consumeErrors=True,
            )
            .addTimeout(30, reactor)
            .addErrback(lambda _: None)
        )
        yield peers.stop()
    return result


# ------------------------------------------------------------------------------------- call setup
def group_cpu(pgid: int) -> float:
    """utime + stime, seconds, summed over the live processes of process group ``pgid``
    (Kamailio runs in its own group: main process + UDP/TCP/timer children)."""
    total = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def udp_drops(ports: dict[str, int]) -> dict[str, int]:
    """The kernel's receive-drop counter of the UDP sockets bound to 127.0.0.1:<port>
    (/proc/net/udp "drops", cumulative since the socket was made), by name."""
    by_port = {}
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            by_port[int(cols[1].split(":")[1], 16)] = int(cols[12])
    return {name: by_port.get(port, -1) for name, port in ports.items()}


def udp_snmp() -> dict[str, int]:
    """Host-wide UDP counters (/proc/net/snmp): InErrors, RcvbufErrors, SndbufErrors."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    d = dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=True))
    return {k: d.get(k, 0) for k in ("InErrors", "RcvbufErrors", "SndbufErrors")}


@defer.inlineCallbacks
def run_setup(args, tmp: Path) -> dict:
    peers = Peers(tmp, list(range(1000, 1000 + args.sessions)) + [ECHO_USER])
    yield peers.start()
    result = {"kind": "setup", "sessions": args.sessions, "command": " ".join(sys.argv), "rates": []}
    result["gw_gc_variant"] = peers.gw.info.get("gc_variant")  # BENCH_GC, see bench/gwrunner.py
    users = [User(1000 + i) for i in range(args.sessions)]
    try:
        yield defer.DeferredList([u.login(peers.gw.info["ws_url"]) for u in users])
        calls_by_user = {u: 0 for u in users}

        stages: dict[str, int] = {}  # where each failed call stopped
        stuck: list[str] = []  # gateway call ids of the calls that never saw "answered"
        sent_at: dict[str, float] = {}  # gateway call id → time.monotonic() the `call` was sent

        @defer.inlineCallbacks
        def one_call(u: User):
            calls_by_user[u] += 1
            stage, call = "call request", None
            try:
                t_sent = time.monotonic()  # one clock for all processes (CLOCK_MONOTONIC)
                res = yield u.ws.request("call", {"to": ECHO_USER})
                call = res["call"]
                sent_at[call] = t_sent
                stage = "answered event"
                yield u.wait("answered", call)
                stage = "hangup request"
                yield u.ws.request("hangup", {"call": call})
                stage = "hangup event"
                ev = yield u.wait("hangup", call)
                if ev.get("cause") != "NORMAL_CLEARING":
                    raise RuntimeError(f"hangup cause {ev.get('cause')}")
            except Exception:
                stages[stage] = stages.get(stage, 0) + 1
                if stage == "answered event" and call is not None:
                    stuck.append(call)
                raise

        ports = {"gateway": peers.gw.info["sip_port"], "kamailio": peers.kam.port}
        if peers.echo is not None:
            ports["echo"] = peers.echo.info["sip_port"]

        def cpu_now() -> dict[str, float]:
            out = {"gateway": proc_cpu(peers.gw_pid), "loadgen": proc_cpu()}
            out["kamailio"] = group_cpu(peers.kam.pid)
            if peers.echo is not None:
                out["echo"] = proc_cpu(peers.echo.info["pid"])
            return out

        def util(a: dict, b: dict, secs: float) -> dict[str, float]:
            return {k: round((b[k] - a[k]) / secs, 3) for k in a}

        @defer.inlineCallbacks
        def offer(rate: float, seconds: float) -> dict:
            yield peers.gw.stats(tmp)
            if peers.echo is not None:
                peers.echo.transport.write(b"reset\n")  # echo answers no "ok" to reset
            stages.clear()
            stuck.clear()
            sent_at.clear()
            drops0, snmp0 = udp_drops(ports), udp_snmp()
            cpu_all0 = cpu_now()
            cpu0 = proc_cpu(peers.gw_pid)
            total = int(rate * seconds)
            ds = []
            t0 = time.monotonic()
            tick = 0.01
            per_tick = rate * tick
            k = 0
            acc = 0.0
            while k < total and time.monotonic() - t0 < seconds * 3:  # bounded even if we fall behind
                elapsed = time.monotonic() - t0
                due = min(total, int(elapsed * rate) + 1)
                while k < due:
                    u = users[k % len(users)]
                    ds.append(one_call(u))
                    k += 1
                acc += per_tick
                yield sleep(tick)
            offered_s = time.monotonic() - t0
            cpu_all1 = cpu_now()
            res = yield defer.DeferredList(ds, consumeErrors=True)
            done_s = time.monotonic() - t0
            cpu_all2 = cpu_now()
            drops1, snmp1 = udp_drops(ports), udp_snmp()
            fails = [str(r[1].value)[:120] for r in res if not r[0]]
            gw = yield peers.gw.stats(tmp)
            echo = (yield peers.echo.stats(tmp)) if peers.echo is not None else {}
            seen = echo.pop("calls_seen", {})
            live = {c["call"]: c for c in gw.get("live_calls", [])}
            stuck_detail = []
            for call in stuck[:20]:
                c = live.get(call, {"call": call, "state": "gone"})
                c["echo_saw"] = seen.get(c.get("sip_call_id") or "", "")
                stuck_detail.append(c)
            samples = [s * 1000 for s in gw["setup_samples"]]
            wire = gw.get("setup_wire") or {}
            read_ms = [s * 1000 for s in wire.get("read_to_invite", [])]
            invite_at = wire.get("invite_mono", {})
            client_ms = [(invite_at[c] - t) * 1000 for c, t in sent_at.items() if c in invite_at]
            return {
                "offered_rate": rate,
                "calls": k,
                "offered_in_s": offered_s,
                "all_done_s": done_s,
                "achieved_rate": (k - len(fails)) / done_s,
                "failures": len(fails),
                "failure_examples": fails[:3],
                # handler-based (b2bua CallManager.setup_samples): `call` handler entered →
                # INVITE written; misses any wait before the handler runs
                "setup_ms_p50": pct(samples, 50),
                "setup_ms_p99": pct(samples, 99),
                "setup_ms_max": max(samples, default=None),
                # gateway socket read of the WS `call` bytes → INVITE handed to the SIP socket
                # (bench/gwrunner.py SetupTimer); misses only time in the kernel's socket buffer
                "read_to_invite_ms_p50": pct(read_ms, 50),
                "read_to_invite_ms_p99": pct(read_ms, 99),
                "read_to_invite_ms_max": max(read_ms, default=None),
                "read_to_invite_n": len(read_ms),
                "read_to_invite_unmatched": wire.get("unmatched"),
                # load generator's send of the `call` frame → INVITE handed to the SIP socket:
                # an upper bound (adds the load generator's own write delay and loopback TCP)
                "client_to_invite_ms_p50": pct(client_ms, 50),
                "client_to_invite_ms_p99": pct(client_ms, 99),
                "client_to_invite_ms_max": max(client_ms, default=None),
                "gw_rss": gw.get("rss"),
                "gw_gc_state": gw.get("gc_state"),
                "gw_cpu_util": (proc_cpu(peers.gw_pid) - cpu0) / done_s,
                # CPU (fraction of one core) while calls were being offered, and over the whole step
                "cpu_util_offering": util(cpu_all0, cpu_all1, offered_s),
                "cpu_util_step": util(cpu_all0, cpu_all2, done_s),
                "udp_drops": {k: drops1[k] - drops0[k] for k in drops0},
                "udp_snmp": {k: snmp1[k] - snmp0[k] for k in snmp0},
                "gw_sip": gw.get("sip"),
                "gw_gc": gw.get("gc"),
                "echo_sip": {
                    k: echo.get(k)
                    for k in ("invites", "invite_retrans", "acks", "ok_retrans", "no_ack", "byes")
                    + ("bye_retrans",)
                },
                "failed_at": dict(stages),
                "stuck_calls": stuck_detail,
                **{k: gw[k] for k in GC_AUDIT_KEYS if k in gw},  # BENCH_GC_AUDIT=1 only
            }

        yield offer(20, 2)  # warm-up
        steady = yield offer(args.rate, args.seconds)
        result["steady"] = steady
        log(f"steady {json.dumps(steady)}")
        for rate in [float(r) for r in args.rates.split(",")]:
            r = yield offer(rate, args.step_seconds)
            r["pass"] = r["failures"] == 0 and r["achieved_rate"] >= 0.9 * rate
            result["rates"].append(r)
            log(json.dumps(r))
            if not r["pass"]:
                break
            yield sleep(2)
    finally:
        yield (
            defer.DeferredList([u.ws.close() for u in users if u.ws is not None], consumeErrors=True)
            .addTimeout(20, reactor)
            .addErrback(lambda _: None)
        )
        yield peers.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    m = sub.add_parser("media")
    m.add_argument(
        "--gw-set",
        action="append",
        default=[],
        metavar="section__key=value",
        help="gateway config override, e.g. media__uplink_buffer_ms=20",
    )
    m.add_argument("--steps", default="10,25,50,100,150,200,250,300,400")
    m.add_argument("--window", type=float, default=20.0)
    m.add_argument("--warmup", type=float, default=4.0)
    m.add_argument("--burst", type=int, default=2, help="AAC frames per publisher write")
    m.add_argument("--signal", choices=("tone", "speech"), default="tone",
                   help="what the publishers send (and the far end echoes): a 1 kHz tone, or speech-like")
    m.add_argument("--budget", type=float, default=900.0, help="stop stepping after this many seconds")
    m.add_argument("--hooks", action="store_true")
    m.add_argument("--keep-going", action="store_true")
    m.add_argument("--profile", help="py-spy raw (collapsed) profile of the gateway at the last step")
    m.add_argument("--profile-seconds", type=int, default=15)
    m.add_argument(
        "--workers",
        help="comma-separated media.workers values, one gateway each, run one after the other "
        "in this process (e.g. 0,1,2); the result holds one run per value",
    )
    m.add_argument("--gw-core", type=int, help="the node process's core (default: see placement())")
    m.add_argument("--worker-cores", help="comma-separated core per media worker (default: alternate 0, 1)")
    r = sub.add_parser("register")
    r.add_argument("--users", type=int, default=10000)
    r.add_argument("--expires", type=int, default=60)
    r.add_argument("--window", type=float, default=90.0)
    r.add_argument("--concurrency", type=int, default=200)
    s = sub.add_parser("setup")
    s.add_argument("--sessions", type=int, default=100)
    s.add_argument("--rate", type=float, default=50.0)
    s.add_argument("--seconds", type=float, default=10.0)
    s.add_argument("--rates", default="100,200,300,400,600,800")
    s.add_argument("--step-seconds", type=float, default=5.0)
    for p in (m, r, s):
        p.add_argument("--out")
    args = parser.parse_args()
    os.sched_setaffinity(0, {LOAD_CORE})
    tmp = Path(tempfile.mkdtemp(prefix="mpb2bua-bench-"))
    box = {}

    @defer.inlineCallbacks
    def go():
        try:
            fn = {"media": run_media, "register": run_register, "setup": run_setup}[args.kind]
            if args.kind == "media" and args.workers:
                runs = []
                for n in [int(x) for x in args.workers.split(",")]:
                    one = argparse.Namespace(**vars(args))
                    one.gw_set = [kv for kv in args.gw_set if not kv.startswith("media__workers=")]
                    one.gw_set.append(f"media__workers={n}")
                    log(f"=== media.workers = {n}")
                    runs.append((yield fn(one, tmp)))
                box["result"] = {"kind": "media-workers", "command": " ".join(sys.argv), "runs": runs}
            else:
                box["result"] = yield fn(args, tmp)
        except Exception:
            import traceback

            traceback.print_exc()
        finally:
            reactor.stop()

    reactor.callWhenRunning(go)
    reactor.run()
    if "result" not in box:
        sys.exit(1)
    out = json.dumps(box["result"], indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(out)
    else:
        print(out)


if __name__ == "__main__":
    main()
