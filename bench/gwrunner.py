"""Run one mpb2bua node in its own process for the benchmarks (``bench/loadgen.py`` starts it).

    taskset -c 0 python bench/gwrunner.py --pbx 127.0.0.1:5060 [--hooks] [--set section__key=value ...]

Binds free loopback ports, prints one JSON line ``{"ws_url", "rtmp_port", "sip_port", "pid"}``
on stdout once listening, then takes commands on stdin, one per line:

- ``stats PATH``: write a JSON snapshot to PATH (CPU, RSS, call/port counts, media clock
  counters, call setup samples, REGISTER send times, and the latency hooks' samples when
  ``--hooks``), then clear the samples; prints ``ok`` when written.
- ``gc``: run a full collection.
- ``quit``: stop the node and exit.

No b2bua/ code is changed: the optional hooks (bench/hooks.py) monkeypatch the bridge, and
:class:`SetupTimer` wraps the WebSocket protocol, the ``call`` method and the SIP transport.

Environment (for GC experiments; the gateway's own GC set-up is b2bua.service.tune_gc):

- ``BENCH_GC=default|off|freeze|freeze+periodic|threshold=N``: ``default`` leaves the gateway's
  start-up choice alone; ``off`` undoes it (CPython defaults, nothing frozen); the others apply
  one remedy on top of CPython defaults (see :func:`apply_gc_variant`).
- ``BENCH_GC_AUDIT=1``: keep every object the cyclic GC finds unreachable (``gc.DEBUG_SAVEALL``)
  and report the commonest types of that garbage in each snapshot (``gc_garbage_types``).
- ``BENCH_STALLS=1``: sample the reactor's stack whenever it has been busy for 8 ms without
  returning to ``epoll`` (:class:`StallSampler`; costs CPU, so not for CPU figures).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import reactor, stdio  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

from b2bua.config import Config  # noqa: E402
from b2bua.service import make_node  # noqa: E402
from b2bua.ws.protocol import JsonRpcServerProtocol  # noqa: E402
from tests.peers.ports import free_port  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_cpu(pid: int | str = "self") -> float:
    """utime + stime of a process, seconds (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_rss(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def free_port_run(count: int, tries: int = 50) -> int:
    """A TCP port p such that p … p + count - 1 are all free on loopback: media worker i listens
    for RTMP on rtmp.listen's port + i."""
    import socket

    for _ in range(tries):
        base = free_port("tcp")
        socks = []
        try:
            for i in range(count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free TCP ports")


def workers_wanted(sets: list[str]) -> int:
    for item in sets:
        key, _, value = item.partition("=")
        if key == "media__workers":
            return int(value)
    return Config().media.workers


def build_config(pbx: str, sets: list[str]) -> Config:
    config = Config()
    ws_port, http_port, sip_port, rtmp_port = (
        free_port("tcp"),
        free_port("tcp"),
        free_port("both"),
        free_port_run(max(1, workers_wanted(sets))),
    )
    config.websocket.listen = f"tcp:{ws_port}:interface=127.0.0.1:backlog=4096"
    config.rtmp.listen = f"tcp:{rtmp_port}:interface=127.0.0.1:backlog=4096"
    config.rtmp.public_url = f"rtmp://127.0.0.1:{rtmp_port}/mp"
    config.http.listen = f"tcp:{http_port}:interface=127.0.0.1"
    config.sip.listen_host = "127.0.0.1"
    config.sip.listen_port = sip_port
    config.sip.pbx = pbx
    config.sip.domain = pbx  # Kamailio takes only "127.0.0.1:PORT" as itself
    config.sip.options_keepalive = 0
    config.auth.users_source = "none"
    # every simulated user comes from 127.0.0.1: the per-address login limit would refuse them
    config.websocket.login_attempts_per_minute = 10**9
    # load generators reuse sessions far beyond a person's pace
    config.websocket.calls_per_minute = config.websocket.messages_per_minute = 10**9
    config.websocket.dtmf_per_minute = config.websocket.requests_per_minute = 10**9
    # ...and the per-address caps on sockets not logged in yet and on RTMP connections
    config.websocket.max_unauthenticated_per_address = 10**6
    config.websocket.max_unauthenticated = 10**6
    config.rtmp.max_connections_per_address = 10**6
    config.calls.max_per_session = 1000
    for item in sets:
        key, _, value = item.partition("=")
        section, _, name = key.partition("__")
        target = getattr(config, section)
        old = getattr(target, name)
        setattr(target, name, type(old)(value) if old is not None else value)
    return config


class GcWatch:
    """Pause time of the cyclic GC per generation (gc.callbacks), to tell GC pauses from work."""

    def __init__(self) -> None:
        self.reset()
        self._t0 = 0.0
        gc.callbacks.append(self._cb)

    def reset(self) -> None:
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            g = info["generation"]
            ms = (time.perf_counter() - self._t0) * 1000
            self.count[g] += 1
            self.total_ms[g] += ms
            self.max_ms[g] = max(self.max_ms[g], ms)

    def take(self) -> dict:
        out = {
            "count": self.count,
            "total_ms": self.total_ms,
            "max_ms": self.max_ms,
            "objects": len(gc.get_objects()),
        }
        self.reset()
        return out


GC = GcWatch()


def _type_counts(objs, top: int = 40) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in objs:
        t = type(o)
        name = f"{t.__module__}.{t.__qualname__}"
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:top])


def _edge_name(src, dst) -> str:
    """How ``src`` refers to ``dst``: an attribute, dict key, cell or item."""
    d = getattr(src, "__dict__", None)
    if isinstance(d, dict):
        for k, v in d.items():
            if v is dst:
                return f".{k}"
        if d is dst:
            return ".__dict__"
    if isinstance(src, dict):
        for k, v in src.items():
            if v is dst:
                return f"[{k!r}]"[:40]
    for attr in ("__self__", "__func__", "__closure__", "cell_contents", "__defaults__"):
        try:
            if getattr(src, attr, None) is dst:
                return f".{attr}"
        except Exception:
            pass
    return "·"


def _cycles_through(garbage: list, kinds: tuple[str, ...], limit: int = 3) -> list[str]:
    """A shortest reference cycle through one garbage object of each type in ``kinds`` (BFS over
    the garbage only), written as ``Type.attr→Type…``: which references to break."""
    ids = {id(o) for o in garbage}
    out = []
    for kind in kinds:
        start = next((o for o in garbage if type(o).__qualname__ == kind), None)
        if start is None:
            continue
        prev = {id(start): None}
        objs = {id(start): start}
        queue = [start]
        found = None
        while queue and found is None and len(prev) < 20_000:
            nxt = []
            for o in queue:
                for r in gc.get_referents(o):
                    if r is start:
                        found = o
                        break
                    if id(r) in ids and id(r) not in prev:
                        prev[id(r)] = id(o)
                        objs[id(r)] = r
                        nxt.append(r)
                if found is not None:
                    break
            queue = nxt
        if found is None:
            continue
        path = [found]
        while prev[id(path[-1])] is not None:
            path.append(objs[prev[id(path[-1])]])
        path.reverse()  # start … found, and found refers to start
        chain = [type(path[0]).__qualname__]
        for a, b in zip(path, path[1:] + [start], strict=True):
            chain.append(f"{_edge_name(a, b)}→{type(b).__qualname__}")
        out.append(" ".join(chain))
        if len(out) >= limit:
            break
    return out


class SetupTimer:
    """Call setup latency as the client sees it at the gateway's socket: from the moment the
    bytes of a WS ``call`` request are read (``dataReceived`` of the WebSocket server protocol,
    before autobahn parses the frame and JSON) to the moment its first INVITE is handed to the
    SIP socket (``SipTransport.send``).

    Matching: ``dataReceived`` stamps the read; the ``call`` RPC handler runs synchronously
    inside it (autobahn → controller → ``maybeDeferred``) and picks up that stamp; after the
    handler returns, the call's SIP Call-ID (``call.invite.call_id``) is looked up in the send
    times of out-of-dialog INVITEs (no To tag; the first send per Call-ID wins, so the
    re-sent INVITE after a 407 does not count). If the INVITE has not gone out yet (e.g. a TCP
    connect in progress) the match is completed when it does. A frame split over two reads
    carries the stamp of the read that completed it. Time the bytes spent in the kernel before
    the reactor read them (e.g. during a GC pause) is *not* included; see ``client→INVITE``
    in bench/loadgen.py for that.
    """

    def __init__(self, node) -> None:
        self.samples: list[float] = []  # seconds, read → INVITE sent
        self.read_to_handler: list[float] = []  # seconds, read → handler entered
        self.invite_mono: dict[str, float] = {}  # RPC call id → time.monotonic() of INVITE send
        self._current_read: float | None = None
        self._sent: dict[str, float] = {}  # SIP Call-ID → perf_counter of first initial INVITE
        self._waiting: dict[str, tuple[float, str]] = {}  # SIP Call-ID → (read stamp, call id)
        self.unmatched = 0
        timer = self

        orig_data = JsonRpcServerProtocol.dataReceived

        def dataReceived(proto, data, _orig=orig_data):  # noqa: N802
            prev, timer._current_read = timer._current_read, time.perf_counter()
            try:
                return _orig(proto, data)
            finally:
                timer._current_read = prev

        JsonRpcServerProtocol.dataReceived = dataReceived

        controller, calls = node.controller, node.calls
        method = controller.methods["call"]
        orig_call = method.handler

        def call(client, params, _orig=orig_call):
            read = timer._current_read
            if read is not None:
                timer.read_to_handler.append(time.perf_counter() - read)
            result = _orig(client, params)
            c = calls.calls.get(result["call"]) if isinstance(result, dict) else None
            sip_id = getattr(getattr(c, "invite", None), "call_id", "")
            if read is None or not sip_id:
                timer.unmatched += 1
                return result
            sent = timer._sent.pop(sip_id, None)
            if sent is not None:
                timer._done(result["call"], read, sent[0], sent[1])
            else:
                timer._waiting[sip_id] = (read, result["call"])
            return result

        controller.methods["call"] = type(method)(call, method.needs_session)

        transport = node.stack.transport
        orig_send = transport.send

        def send(message, target, _orig=orig_send):
            out = _orig(message, target)
            if getattr(message, "method", None) == "INVITE" and "tag=" not in (
                message.headers.get("To") or ""
            ):
                sip_id = message.headers.get("Call-ID") or ""
                now, mono = time.perf_counter(), time.monotonic()
                waiting = timer._waiting.pop(sip_id, None)
                if waiting is not None:
                    timer._done(waiting[1], waiting[0], now, mono)
                elif sip_id not in timer._sent and len(timer._sent) < 100_000:
                    timer._sent[sip_id] = (now, mono)
            return out

        transport.send = send

    def _done(self, call_id: str, read: float, sent: float, mono: float) -> None:
        self.samples.append(sent - read)
        if len(self.invite_mono) < 200_000:
            self.invite_mono[call_id] = mono

    def take(self) -> dict:
        out = {
            "read_to_invite": self.samples,
            "read_to_handler": self.read_to_handler,
            "invite_mono": self.invite_mono,
            "unmatched": self.unmatched + len(self._waiting),
        }
        self.samples, self.read_to_handler, self.invite_mono = [], [], {}
        self.unmatched = 0
        self._sent.clear()  # INVITEs whose call handler never claimed them (none expected)
        self._waiting.clear()
        return out


def _msg_key(message) -> tuple:
    """What tells one SIP message from a retransmission of it: kind, top Via branch, CSeq, status."""
    via = message.headers.get("Via") or ""
    branch = via.split("branch=", 1)[1].split(";", 1)[0] if "branch=" in via else via
    status = getattr(message, "status", None)
    return (status is None, branch, message.headers.get("CSeq"), status)


class SipCounter:
    """SIP messages in and out of the gateway by kind (``INVITE`` or ``200 INVITE``) and how many
    of them were retransmissions (the same branch + CSeq + status seen before in this window)."""

    def __init__(self, transport) -> None:
        self.reset()
        orig_send, orig_handler = transport.send, transport.handler

        def send(message, target):
            self._count(message, self.out, self.out_seen, self.out_retrans)
            return orig_send(message, target)

        def handler(message, source):
            self._count(message, self.inc, self.in_seen, self.in_retrans)
            return orig_handler(message, source)

        transport.send, transport.handler = send, handler

    def reset(self) -> None:
        self.out: dict[str, int] = {}
        self.inc: dict[str, int] = {}
        self.out_retrans: dict[str, int] = {}
        self.in_retrans: dict[str, int] = {}
        self.out_seen: set = set()
        self.in_seen: set = set()

    @staticmethod
    def _count(message, counts, seen, retrans) -> None:
        status = getattr(message, "status", None)
        kind = message.method if status is None else f"{status} {message.headers.get('CSeq', '').split()[-1]}"
        counts[kind] = counts.get(kind, 0) + 1
        key = _msg_key(message)
        if key in seen:
            retrans[kind] = retrans.get(kind, 0) + 1
        elif len(seen) < 200_000:
            seen.add(key)

    def take(self) -> dict:
        out = {"out": self.out, "in": self.inc}
        out.update(out_retrans=self.out_retrans, in_retrans=self.in_retrans)
        self.reset()
        return out


class Control(LineReceiver):
    delimiter = b"\n"

    def __init__(self, node, hooks) -> None:
        self.node = node
        self.hooks = hooks
        self.register_sends: list[float] = []
        self.sip: SipCounter | None = None
        self.stalls: StallSampler | None = None
        self.setup: SetupTimer | None = None
        self.audit = False

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        cmd, _, arg = line.decode().strip().partition(" ")
        if cmd == "stats":
            Path(arg).write_text(json.dumps(self.snapshot()))
            self.transport.write(b"ok\n")
        elif cmd == "gc":
            gc.collect()
            self.transport.write(b"ok\n")
        elif cmd == "quit":
            self.node.stopService()
            reactor.callLater(0.2, reactor.stop)

    def worker_snapshots(self) -> list[dict]:
        """Each running media worker's own counters (bench/workerenv/sitecustomize.py: SIGUSR1
        makes it write them), with its CPU; waits at most 3 s for them."""
        pool = getattr(self.node, "media_workers", None)
        if pool is None:
            return []
        out_dir = Path(os.environ["BENCH_WORKER_STATS_DIR"])
        pids = [w.pid for w in pool.workers if w.pid is not None]
        for pid in pids:
            (out_dir / f"worker-{pid}.json").unlink(missing_ok=True)
            os.kill(pid, signal.SIGUSR1)
        snaps = []
        deadline = time.monotonic() + 3.0
        for pid in pids:
            path = out_dir / f"worker-{pid}.json"
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.005)
            if path.exists():
                snap = json.loads(path.read_text())
                snap["cpu_s"] = proc_cpu(pid)
                snap["rss"] = proc_rss(pid)
                snaps.append(snap)
        return snaps

    def snapshot(self) -> dict:
        node = self.node
        calls = node.calls
        clock = node.media_clock
        samples = list(calls.setup_samples)
        calls.setup_samples.clear()
        regs, self.register_sends = self.register_sends, []
        out = {
            "t": time.monotonic(),
            "cpu_s": proc_cpu(),
            "rss": proc_rss(),
            "counts": calls.counts(),
            "sessions": len(getattr(node.controller, "sessions", {}) or {}),
            "clock": {
                "ticks": clock.ticks,
                "late": clock.late_ticks,
                "skipped": clock.skipped_ticks,
                "members": len(clock.members),
                "lag_counts": list(clock.lag_counts),
                "lag_max_ms": clock.lag_max_ms,
                "busy_counts": list(clock.busy_counts),
                "busy_max_ms": clock.busy_max_ms,
            },
            "setup_samples": samples,
            "register_sends": regs,
            "gc": GC.take(),
            "gc_state": {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()},
        }
        if self.setup is not None:
            out["setup_wire"] = self.setup.take()
        if self.audit:
            gc.collect()  # everything unreachable so far lands in gc.garbage too
            out["gc_garbage"] = len(gc.garbage)
            out["gc_garbage_types"] = _type_counts(gc.garbage)
            out["gc_cycles"] = _cycles_through(
                gc.garbage,
                ("Call", "InviteSession", "MediaLeg", "RtpSocket", "PlayerGroup", "Deferred", "Response"),
                limit=10,
            )
            gc.set_debug(0)
            gc.garbage.clear()
            gc.collect()  # now really free it, so it is not counted again next time
            gc.set_debug(gc.DEBUG_SAVEALL)
            out["gc_live_types"] = _type_counts(gc.get_objects())
        stats = [c.bridge.stats for c in calls.calls.values() if getattr(c, "bridge", None) is not None]
        out["bridges"] = len(stats)
        out["uplink_underruns"] = sum(s.uplink_underruns for s in stats)
        out["uplink_dropped_ms"] = sum(s.uplink_dropped_ms for s in stats)
        out["concealed_ms"] = sum(s.concealed_ms for s in stats)
        if self.sip is not None:
            out["sip"] = self.sip.take()
        live = []
        for c in list(calls.calls.values())[:200]:  # where unfinished calls stand
            inv = getattr(c, "invite", None)
            txn = getattr(inv, "_txn", None)
            live.append(
                {
                    "call": c.id,
                    "state": c.state,
                    "invite": getattr(inv, "state", None),
                    "sip_call_id": getattr(inv, "call_id", None),
                    "txn": getattr(txn, "state", None),
                }
            )
        out["live_calls"] = live
        if self.hooks is not None:
            out["latency"] = self.hooks.take()
        workers = self.worker_snapshots()
        if workers:
            # the media runs in the workers: their clocks, bridges and latency samples are the
            # gateway's (the node's own clock is idle)
            out["node_clock"] = out["clock"]
            out["workers"] = workers
            clocks = [w["clock"] for w in workers]
            out["clock"] = {
                "ticks": sum(c["ticks"] for c in clocks),
                "late": sum(c["late"] for c in clocks),
                "skipped": sum(c["skipped"] for c in clocks),
                "members": sum(c["members"] for c in clocks),
                "lag_counts": [sum(x) for x in zip(*(c["lag_counts"] for c in clocks), strict=True)],
                "lag_max_ms": max(c["lag_max_ms"] for c in clocks),
                "busy_counts": [sum(x) for x in zip(*(c["busy_counts"] for c in clocks), strict=True)],
                "busy_max_ms": max(c["busy_max_ms"] for c in clocks),
            }
            for key in ("bridges", "uplink_underruns", "uplink_dropped_ms", "concealed_ms"):
                out[key] = out.get(key, 0) + sum(w[key] for w in workers)
            lat = [w["latency"] for w in workers if "latency" in w]
            if lat:
                out["latency"] = {k: [x for one in lat for x in one.get(k, [])] for k in lat[0]}
        if self.stalls is not None:
            out["stalls"] = self.stalls.take()
        return out


def apply_gc_variant(name: str, reactor) -> None:
    """GC set-up for the experiments in the report (BENCH_GC). ``default`` keeps the gateway's
    own (b2bua.service.tune_gc); anything else starts from CPython's defaults (nothing frozen,
    thresholds 700/10/10) and applies the ``+``-joined remedies: ``off`` (none), ``freeze``
    (gc.freeze() once started), ``periodic`` (freeze again 30 s later, after the logins),
    ``threshold=N`` (gen-0 threshold N)."""
    if name == "default":
        return
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)  # CPython's defaults

    def freeze() -> None:
        gc.collect()
        gc.freeze()

    for token in name.split("+"):
        if token == "off":
            pass
        elif token.startswith("threshold="):
            gc.set_threshold(int(token.split("=", 1)[1]), 10, 10)
        elif token == "freeze":
            freeze()
        elif token == "periodic":
            reactor.callLater(30, freeze)
        else:
            raise SystemExit(f"BENCH_GC: unknown remedy {token!r}")


class StallSampler:
    """When the reactor thread has not come back to the event loop for ``threshold_ms``, record
    the stack it is in (``BENCH_STALLS=1``): what delays the media ticks, by name. A thread that
    wakes every 2 ms; it needs the GIL to look, so a stall inside one C call that keeps the GIL
    is seen when that call returns (its caller is then on the stack)."""

    def __init__(self, threshold_ms: float = 8.0) -> None:
        import threading

        self.threshold = threshold_ms / 1000.0
        self.beat = time.perf_counter()
        self.idle = False
        self.stacks: dict[str, int] = {}
        self.main = threading.main_thread().ident
        threading.Thread(target=self._watch, daemon=True).start()

    def heartbeat(self) -> None:
        self.beat = time.perf_counter()

    def _watch(self) -> None:
        import sys
        import traceback

        seen_beat = None
        while True:
            time.sleep(0.002)
            beat = self.beat
            if self.idle or time.perf_counter() - beat < self.threshold or beat == seen_beat:
                continue
            seen_beat = beat  # one sample per stall
            frame = sys._current_frames().get(self.main)
            if frame is None:
                continue
            frames = traceback.extract_stack(frame)[-8:]
            stack = ";".join(f"{f.name} ({os.path.basename(f.filename)}:{f.lineno})" for f in frames)
            self.stacks[stack] = self.stacks.get(stack, 0) + 1

    def take(self) -> list:
        out = sorted(self.stacks.items(), key=lambda kv: -kv[1])[:15]
        self.stacks = {}
        return out


class _PollProxy:
    """The reactor's epoll object, with the sampler told when the thread sleeps in it."""

    def __init__(self, poller, sampler: StallSampler) -> None:
        self._poller, self._sampler = poller, sampler

    def poll(self, *args):
        self._sampler.idle = True
        try:
            return self._poller.poll(*args)
        finally:
            self._sampler.idle = False
            self._sampler.heartbeat()

    def __getattr__(self, name):
        return getattr(self._poller, name)


def install_stall_sampler(reactor_) -> StallSampler:
    """A stall is busy time since the reactor last returned from epoll_wait."""
    sampler = StallSampler()
    reactor_._poller = _PollProxy(reactor_._poller, sampler)
    return sampler


def prepare_workers(hooks: bool, cores: list[int]) -> None:
    """Media workers inherit this environment: bench/workerenv/sitecustomize.py instruments them
    (and with ``hooks``, bench/hooks.py too). With ``cores``, worker i is pinned to cores[i % n]
    at each (re)spawn."""
    bench = Path(__file__).resolve().parent
    out_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"mpb2bua-bench-workers-{os.getpid()}"
    out_dir.mkdir(exist_ok=True)
    path = [str(bench / "workerenv"), str(bench), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    os.environ["BENCH_WORKER_STATS_DIR"] = str(out_dir)
    if hooks:
        os.environ["BENCH_WORKER_HOOKS"] = "1"
    if not cores:
        return
    from b2bua.media.workers import MediaWorker

    orig_spawn = MediaWorker.spawn

    def spawn(worker, _orig=orig_spawn):
        _orig(worker)
        os.sched_setaffinity(worker.pid, {cores[worker.index % len(cores)]})

    MediaWorker.spawn = spawn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pbx", required=True)
    parser.add_argument("--hooks", action="store_true", help="latency instrumentation (bench/hooks.py)")
    parser.add_argument("--set", action="append", default=[], metavar="section__key=value")
    parser.add_argument(
        "--worker-cores",
        default="",
        help="comma-separated CPU per media worker (worker i on the i-th; default: this process's)",
    )
    args = parser.parse_args()
    hooks = None
    if args.hooks:
        import hooks as hooks_mod  # bench/hooks.py, next to this file

        hooks_mod.install()
        hooks = hooks_mod
    config = build_config(args.pbx, args.set)
    if config.media.workers:
        prepare_workers(args.hooks, [int(c) for c in args.worker_cores.split(",") if c])
    node = make_node(config, reactor)
    control = Control(node, hooks)
    # REGISTER send times, for the refresh-spreading histogram (a wrapper on the SIP transport)
    transport_send = node.stack.transport.send if hasattr(node.stack, "transport") else None
    if transport_send is not None:

        def send(message, target, _orig=transport_send):
            if getattr(message, "method", None) == "REGISTER":
                control.register_sends.append(time.time())
            return _orig(message, target)

        node.stack.transport.send = send
    if transport_send is not None:
        control.sip = SipCounter(node.stack.transport)
        control.setup = SetupTimer(node)
    node.startService()
    variant = os.environ.get("BENCH_GC", "default")
    reactor.callWhenRunning(apply_gc_variant, variant, reactor)
    if os.environ.get("BENCH_STALLS"):
        control.stalls = install_stall_sampler(reactor)
    if os.environ.get("BENCH_GC_AUDIT"):
        control.audit = True
        gc.set_debug(gc.DEBUG_SAVEALL)
    stdio.StandardIO(control)

    def announce() -> None:
        ws_port = config.websocket.listen.split(":")[1]
        rtmp_port = config.rtmp.listen.split(":")[1]
        print(
            json.dumps(
                {
                    "ws_url": f"ws://127.0.0.1:{ws_port}/ws",
                    "rtmp_port": int(rtmp_port),
                    "sip_port": config.sip.listen_port,
                    "http_port": int(config.http.listen.split(":")[1]),
                    "pid": os.getpid(),
                    "register_hook": transport_send is not None,
                    "gc_variant": variant,
                }
            ),
            flush=True,
        )

    def announce_when_ready(deadline: float) -> None:
        # with media workers, RTMP listens in the workers: announce once each has reported (at
        # most 20 s), so no probe connects before the port is open
        pool = node.media_workers
        if pool is None or all(w.reported for w in pool.workers) or reactor.seconds() > deadline:
            announce()
        else:
            reactor.callLater(0.05, announce_when_ready, deadline)

    reactor.callWhenRunning(lambda: reactor.callLater(0.3, announce_when_ready, reactor.seconds() + 20))
    reactor.run()


if __name__ == "__main__":
    main()
