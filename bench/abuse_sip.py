"""SIP abuse probes of issue 12 against a gateway with Kamailio, on loopback only.

    python bench/abuse_sip.py [udp|tcp|all] [--out FILE]

- ``probe_sip_udp_flood``: 20,000 SIP requests with random methods over UDP from 127.0.0.2,
  an address that is not the PBX's (127.0.0.1; all of 127.0.0.0/8 is loopback on Linux);
- ``probe_sip_tcp_conns``: 1,100 TCP connections to the SIP port from 127.0.0.2, held for a
  few seconds, against a gateway that talks TCP to the PBX (``sip.pbx_transport: tcp``).

Each probe starts Kamailio, the echo UAS (bench/echo_uas.py) and the gateway in its own process
(bench/gwrunner.py, with its log on stderr), logs a separate user in, and reports: the
gateway's RSS before, at its peak and after; that user's ping round trips (p50/p99/max) during
the probe and a call placed to the echo UAS during it; the size of /metrics before and after;
the gateway's counters and log lines about the flood; /healthz after. The attacker runs in its
own process (tests/peers/sipflood.py), so its CPU does not skew the user's figures. Every loop
is bounded in count and time.

Both probe functions return a Deferred that fires with a JSON-able dict, and start and stop
everything themselves: a registry maps a name to them, e.g.
``{"sip_udp_flood": abuse_sip.probe_sip_udp_flood, "sip_tcp_conns": abuse_sip.probe_sip_tcp_conns}``
(call each with a temporary folder; every other argument has a default).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from twisted.internet import defer, reactor, task, threads  # noqa: E402
from twisted.internet.utils import getProcessOutput  # noqa: E402

from tests.integration.helpers import http_get  # noqa: E402
from tests.peers.ports import free_port  # noqa: E402

PING_INTERVAL = 0.02


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def sleep(s: float) -> defer.Deferred:
    return task.deferLater(reactor, s, lambda: None)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


# -- the gateway, with its log ---------------------------------------------------------------------
def run_gateway() -> None:
    """``abuse_sip.py --gateway ARGS``: bench/gwrunner.py with Twisted's log on stderr (gwrunner
    itself starts no log), so the probes can count what the gateway logged."""
    import gwrunner
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    sys.argv = ["gwrunner.py", *sys.argv[2:]]
    gwrunner.main()


class SipPeers:
    """Kamailio + echo UAS + the gateway (``--gateway``), like bench/loadgen.py's Peers."""

    def __init__(self, tmp: Path, gw_set: list[str]) -> None:
        from loadgen import ECHO_USER

        self.tmp = tmp
        self.users = [1000, 1001, ECHO_USER]
        self.http_port = free_port("tcp")
        self.gw_set = [f"http__listen=tcp:{self.http_port}:interface=127.0.0.1", *gw_set]
        self.kam = self.echo = self.gw = None

    @defer.inlineCallbacks
    def start(self):
        from loadgen import ECHO_USER, spawn

        from tests.peers.kamailio import Kamailio
        from tests.peers.sipp import Sipp

        (self.tmp / "kam").mkdir(parents=True, exist_ok=True)
        self.kam = Kamailio(self.tmp / "kam", users=self.users).start()
        self.echo = spawn("echo", [str(ROOT / "bench" / "echo_uas.py")])
        info = yield self.echo.hello
        reg = Sipp(self.tmp, "uas_answer.xml", self.kam, user=ECHO_USER, expires=3600)
        reg._port = info["sip_port"]
        reg.workdir = self.tmp / "echo-reg"
        reg.workdir.mkdir(exist_ok=True)
        reg.register()
        args = [str(Path(__file__).resolve()), "--gateway", "--pbx", f"127.0.0.1:{self.kam.port}"]
        for item in self.gw_set:
            args += ["--set", item]
        self.gw = spawn("gateway", args)
        self.info = yield self.gw.hello
        self.pid = self.info["pid"]
        log(f"kamailio {self.kam.port}, gateway pid {self.pid} sip {self.info['sip_port']}")
        return self

    @property
    def log_path(self) -> Path:
        return Path(self.gw.err.name)

    def get(self, path: str) -> defer.Deferred:
        return threads.deferToThread(http_get, f"http://127.0.0.1:{self.http_port}{path}")

    @defer.inlineCallbacks
    def stop(self):
        for p in (self.gw, self.echo):
            if p is not None:
                yield p.quit()
        if self.kam is not None:
            self.kam.close()


# -- what the separate user sees -------------------------------------------------------------------
class Bystander:
    """A logged-in user who pings every 20 ms and places one call during the probe."""

    def __init__(self) -> None:
        self.rtts: list[float] = []
        self.errors = 0
        self.call: dict = {}
        self._loop: task.LoopingCall | None = None
        self._busy = False

    @defer.inlineCallbacks
    def login(self, ws_url: str):
        from loadgen import User

        self.user = User(1000)
        yield self.user.login(ws_url)

    def start(self) -> None:
        self._loop = task.LoopingCall(self._ping)
        self._loop.start(PING_INTERVAL, now=True)

    @defer.inlineCallbacks
    def _ping(self):
        if self._busy:
            return  # one ping in flight; a late answer shows as a long round trip
        self._busy = True
        t0 = time.perf_counter()
        try:
            yield self.user.ws.request("ping").addTimeout(10, reactor)
            self.rtts.append(time.perf_counter() - t0)
        except Exception:
            self.errors += 1
        finally:
            self._busy = False

    @defer.inlineCallbacks
    def place_call(self):
        t0 = time.perf_counter()
        try:
            yield self.user.place_call()
            self.call = {"ok": True, "answered_after_s": round(time.perf_counter() - t0, 3)}
            yield sleep(0.5)
            yield self.user.hangup()
        except Exception as e:
            self.call = {"ok": False, "error": repr(e)[:200]}

    def stop(self) -> dict:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        ms = [r * 1000 for r in self.rtts]
        return {
            "pings": len(ms),
            "ping_errors": self.errors,
            "ping_p50_ms": _round(pct(ms, 50)),
            "ping_p99_ms": _round(pct(ms, 99)),
            "ping_max_ms": _round(max(ms) if ms else None),
            "call": self.call,
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


class RssWatch:
    def __init__(self, pid: int) -> None:
        from gwrunner import proc_rss

        self._rss = lambda: proc_rss(pid)
        self.before = self.peak = self._rss()
        self._loop = task.LoopingCall(self._sample)
        self._loop.start(0.05, now=False)

    def _sample(self) -> None:
        try:
            self.peak = max(self.peak, self._rss())
        except OSError:
            pass

    def stop(self) -> dict:
        self._loop.stop()
        after = self._rss()
        mb = 1 << 20
        return {
            "rss_before_mb": round(self.before / mb, 1),
            "rss_peak_mb": round(self.peak / mb, 1),
            "rss_after_mb": round(after / mb, 1),
            "rss_growth_mb": round((self.peak - self.before) / mb, 1),
        }


def attacker(call: str) -> defer.Deferred:
    """Run ``tests.peers.sipflood.<call>`` in another process; fires with its result."""
    code = f"import json; from tests.peers.sipflood import *; print(json.dumps({call}))"
    d = getProcessOutput(sys.executable, ["-c", code], env={"PYTHONPATH": str(ROOT)}, path=str(ROOT))
    return d.addCallback(lambda out: json.loads(out.decode().strip().splitlines()[-1]))


_METRIC = re.compile(
    rb"^(mpb2bua_sip_(?:refused|dropped|bad_messages|stray_responses|tcp_refused)_total\S*) (\S+)$", re.M
)


def sip_counters(metrics: bytes) -> dict[str, float]:
    return {m.group(1).decode(): float(m.group(2)) for m in _METRIC.finditer(metrics)}


def log_summary(path: Path, since: int) -> dict:
    text = path.read_bytes()[since:].decode("utf-8", "replace")
    lines = text.splitlines()
    warn = [ln for ln in lines if "#warn]" in ln]
    return {
        "log_lines": len(lines),
        "log_lines_refused": sum(" refused " in ln and "not a PBX address" in ln for ln in lines),
        "log_lines_tcp_refused": sum("SIP TCP connection from" in ln for ln in lines),
        "log_lines_bad": sum("bad SIP message" in ln for ln in lines),
        "log_lines_summary": sum("] ... " in ln and " more " in ln for ln in lines),
        "log_lines_warn": len(warn),
        "log_warn_sample": [ln.split("] ", 1)[-1][:160] for ln in warn[:3] + warn[-2:]],
    }


@defer.inlineCallbacks
def _probe(name: str, tmp: Path, gw_set: list[str], flood_call: str, settle: float):
    tmp.mkdir(parents=True, exist_ok=True)
    peers = SipPeers(tmp, gw_set)
    yield peers.start()
    flood_call = flood_call.format(port=peers.info["sip_port"])
    result: dict = {"probe": name, "attack": flood_call}
    user = Bystander()
    try:
        yield user.login(peers.info["ws_url"])
        _, metrics = yield peers.get("/metrics")
        result["metrics_bytes_before"] = len(metrics)
        counters_before = sip_counters(metrics)
        log_start = peers.log_path.stat().st_size
        rss = RssWatch(peers.pid)
        user.start()
        yield sleep(0.5)
        t0 = time.monotonic()
        flood = attacker(flood_call)
        yield sleep(1.0)
        call = user.place_call()  # while the flood runs
        result["attacker"] = yield flood
        yield call
        result["probe_seconds"] = round(time.monotonic() - t0, 2)
        yield sleep(settle)
        result.update(user.stop())
        result.update(rss.stop())
        _, metrics = yield peers.get("/metrics")
        result["metrics_bytes_after"] = len(metrics)
        after = sip_counters(metrics)
        result["gateway_counters"] = {k: v - counters_before.get(k, 0.0) for k, v in after.items() if v}
        code, health = yield peers.get("/healthz")
        result["healthz"] = {"code": code, **json.loads(health or b"{}")}
        result.update(log_summary(peers.log_path, log_start))
    finally:
        user.stop()
        ws = getattr(getattr(user, "user", None), "ws", None)
        if ws is not None:
            yield ws.close().addTimeout(5, reactor).addErrback(lambda _: None)
        yield peers.stop()
    return result


def probe_sip_udp_flood(tmp: Path, count: int = 20_000, rate: float | None = None, seconds: float = 60.0):
    """``count`` UDP requests with random methods from 127.0.0.2 (as fast as the attacker can
    send, or ``rate`` a second), bounded by ``seconds``."""
    return _probe(
        "sip_udp_flood",
        Path(tmp),
        [],
        f"udp_flood({{port}}, {count}, STRANGER, '127.0.0.1', {seconds}, {rate})",
        settle=1.0,
    )


def probe_sip_tcp_conns(tmp: Path, count: int = 1100, hold: float = 4.0, seconds: float = 30.0):
    """``count`` TCP connections from 127.0.0.2 to the SIP port, held ``hold`` seconds, while the
    gateway talks TCP to the PBX (its REGISTERs and the call's INVITE need a connection)."""
    return _probe(
        "sip_tcp_conns",
        Path(tmp),
        ["sip__pbx_transport=tcp"],
        f"tcp_flood({{port}}, {count}, STRANGER, '127.0.0.1', {hold}, {seconds})",
        settle=2.0,
    )


PROBES = {"udp": probe_sip_udp_flood, "tcp": probe_sip_tcp_conns}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--gateway":
        run_gateway()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", nargs="?", default="all", choices=[*PROBES, "all"])
    parser.add_argument("--out")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mpb2bua-abuse-sip-"))
    box: dict = {}

    @defer.inlineCallbacks
    def go():
        try:
            names = list(PROBES) if args.probe == "all" else [args.probe]
            box["results"] = []
            for name in names:
                log(f"probe {name}")
                result = yield PROBES[name](tmp / name)
                box["results"].append(result)
                log(json.dumps(result))
        except Exception:
            import traceback

            traceback.print_exc()
        finally:
            reactor.stop()

    reactor.callWhenRunning(go)
    reactor.run()
    if "results" not in box:
        sys.exit(1)
    out = json.dumps(box["results"], indent=1)
    if args.out:
        Path(args.out).write_text(out)
    else:
        print(out)


if __name__ == "__main__":
    main()
