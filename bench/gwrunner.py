"""Run one mpb2bua node in its own process for the benchmarks (``bench/loadgen.py`` starts it).

    taskset -c 0 python bench/gwrunner.py --pbx 127.0.0.1:5060 [--hooks] [--set section__key=value ...]

Binds free loopback ports, prints one JSON line ``{"ws_url", "rtmp_port", "sip_port", "pid"}``
on stdout once listening, then takes commands on stdin, one per line:

- ``stats PATH``: write a JSON snapshot to PATH (CPU, RSS, call/port counts, media clock
  counters, call setup samples, REGISTER send times, and the latency hooks' samples when
  ``--hooks``), then clear the samples; prints ``ok`` when written.
- ``quit``: stop the node and exit.

No b2bua/ code is changed: the optional hooks (bench/hooks.py) monkeypatch the bridge.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import reactor, stdio  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

from b2bua.config import Config  # noqa: E402
from b2bua.service import make_node  # noqa: E402
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


def build_config(pbx: str, sets: list[str]) -> Config:
    config = Config()
    ws_port, http_port, sip_port, rtmp_port = (
        free_port("tcp"),
        free_port("tcp"),
        free_port("both"),
        free_port("tcp"),
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
            },
            "setup_samples": samples,
            "register_sends": regs,
            "gc": GC.take(),
        }
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
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pbx", required=True)
    parser.add_argument("--hooks", action="store_true", help="latency instrumentation (bench/hooks.py)")
    parser.add_argument("--set", action="append", default=[], metavar="section__key=value")
    args = parser.parse_args()
    hooks = None
    if args.hooks:
        import hooks as hooks_mod  # bench/hooks.py, next to this file

        hooks_mod.install()
        hooks = hooks_mod
    config = build_config(args.pbx, args.set)
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
    node.startService()
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
                    "pid": os.getpid(),
                    "register_hook": transport_send is not None,
                }
            ),
            flush=True,
        )

    reactor.callWhenRunning(lambda: reactor.callLater(0.3, announce))
    reactor.run()


if __name__ == "__main__":
    main()
