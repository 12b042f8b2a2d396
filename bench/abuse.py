"""Hostile-client probes against one gateway on loopback (issue 12), bounded in count and time.

    python bench/abuse.py                      # every probe
    python bench/abuse.py rtmp-partial-10 ws-no-read
    python bench/abuse.py --list

Starts Kamailio (registrar) and a gateway (bench/gwrunner.py) with the shipped limits, then runs
the selected probes one after another. A separate logged-in user pings the gateway every 50 ms
during each probe. Per probe it prints the gateway's RSS before, at its peak (sampled every
20 ms) and 2 s after, that user's ping p50/p99, and what the gateway did (the probe's own
findings and the counters of /metrics that moved).

Add a probe with ``@probe("name", "what it does")`` on an ``async def (ctx: Context) -> dict``;
it must stay bounded (connections, bytes and seconds) and use loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from b2bua.config import Config  # noqa: E402
from tests.peers.kamailio import Kamailio  # noqa: E402
from tests.peers.sipp import Sipp  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
PASSWORD = "1234"
WATCHER = "1990"  # the separate, well-behaved user
ABUSER = "1991"
CALLER = "1992"  # places a call during each probe
FAR = "1500"  # a sipp phone that answers those calls


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


# --- a minimal asyncio WebSocket client (RFC 6455), enough for the probes -------------------------


class Ws:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.next_id = 0

    @classmethod
    async def connect(cls, port: int, timeout: float = 5.0) -> Ws:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head[:80])
        return cls(reader, writer)

    def send_text(self, text: str) -> None:
        payload = text.encode()
        n = len(payload)
        header = bytes((0x81,))
        if n < 126:
            header += bytes((0x80 | n,))
        elif n < 65536:
            header += bytes((0x80 | 126,)) + struct.pack(">H", n)
        else:
            header += bytes((0x80 | 127,)) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)

    def request(self, method: str, params: dict | None = None) -> int:
        self.next_id += 1
        frame = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}}
        self.send_text(json.dumps(frame))
        return self.next_id

    async def frame(self) -> tuple[int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", await self.reader.readexactly(8))[0]
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def _next_text(self, wanted, timeout: float) -> dict:
        """The first JSON text message for which ``wanted(msg)`` holds (others are skipped)."""

        async def wait() -> dict:
            while True:
                opcode, payload = await self.frame()
                if opcode == 8:
                    raise ConnectionError(f"closed {payload[:2].hex()}")
                if opcode == 1:
                    msg = json.loads(payload)
                    if wanted(msg):
                        return msg

        return await asyncio.wait_for(wait(), timeout)

    async def result(self, rid: int, timeout: float = 10.0) -> dict:
        """The answer to request ``rid`` (events and pings in between are skipped)."""
        return await self._next_text(lambda msg: msg.get("id") == rid, timeout)

    async def event(self, name: str, timeout: float = 10.0) -> dict:
        """The params of the next event ``name`` (answers and other events are skipped)."""
        msg = await self._next_text(lambda m: m.get("method") == name and "id" not in m, timeout)
        return msg["params"]

    async def close_code(self, timeout: float) -> int | str:
        """Read until the server closes: its close code, or 'tcp' for a close without a frame."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    opcode, payload = await self.frame()
                    if opcode == 8:
                        return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
        except (asyncio.IncompleteReadError, ConnectionError):
            return "tcp"
        except TimeoutError:
            return "open"

    def abort(self) -> None:
        self.writer.transport.abort()


# --- the gateway and the watcher --------------------------------------------------------------------


@dataclass
class Context:
    pid: int
    ws_port: int
    rtmp_port: int
    http_port: int
    samples: list[int] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            m = re.match(r"(mpb2bua_(?:ws|rtmp)_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
            if m and ("refused" in m[1] or "dropped" in m[1] or "connections" in m[1] or "unauth" in m[1]):
                out[m[1]] = float(m[2])
        return out


class Watcher:
    """A logged-in user pinging every 50 ms; its round-trip times."""

    def __init__(self, ws: Ws) -> None:
        self.ws = ws
        self.rtts: list[float] = []
        self.failures = 0
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        while True:
            t0 = time.perf_counter()
            try:
                await self.ws.result(self.ws.request("ping"), timeout=5)
                self.rtts.append((time.perf_counter() - t0) * 1000)
            except Exception:
                self.failures += 1
            await asyncio.sleep(0.05)

    def take(self) -> dict:
        rtts, self.rtts = sorted(self.rtts), []
        if not rtts:
            return {"pings": 0, "failures": self.failures}
        return {
            "pings": len(rtts),
            "failures": self.failures,
            "p50_ms": round(rtts[len(rtts) // 2], 1),
            "p99_ms": round(rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))], 1),
        }


# --- probes ---------------------------------------------------------------------------------------

Probe = Callable[[Context], Awaitable[dict]]
PROBES: dict[str, tuple[str, Probe]] = {}


def probe(name: str, what: str) -> Callable[[Probe], Probe]:
    def register(fn: Probe) -> Probe:
        PROBES[name] = (what, fn)
        return fn

    return register


def _chunk0(csid: int, length: int, type_id: int, body: bytes, stream_id: int = 1) -> bytes:
    header = bytes((csid,)) + b"\0\0\0" + struct.pack(">I", length << 8 | type_id)
    return header + struct.pack("<I", stream_id) + body


async def _rtmp_partial(port: int, chunk_size: int, length: int, budget_bytes: int, seconds: float) -> dict:
    """Handshake, Set Chunk Size, then partial messages on 24 chunk streams until the server
    closes, ``budget_bytes`` are sent or ``seconds`` pass."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x03" + bytes(1536))
    await reader.readexactly(1 + 2 * 1536)
    writer.write(bytes(1536))
    writer.write(_chunk0(2, 4, 1, struct.pack(">I", chunk_size), stream_id=0))
    sent, closed, t0 = 0, False, time.monotonic()
    first = b"".join(_chunk0(4 + s, length, 9, b"z" * chunk_size) for s in range(24))
    cont = b"".join(bytes((0xC0 | (4 + s),)) + b"z" * chunk_size for s in range(24))
    batch = first + cont * max(1, 16384 // len(cont))
    try:
        while sent < budget_bytes and time.monotonic() - t0 < seconds:
            writer.write(batch)
            sent += len(batch)
            batch = cont * max(1, 16384 // len(cont))
            await asyncio.wait_for(writer.drain(), 2)
            if reader.at_eof():
                closed = True
                break
            try:
                await asyncio.wait_for(reader.read(65536), 0.001)
            except TimeoutError:
                pass
            if reader.at_eof():
                closed = True
                break
    except (ConnectionError, TimeoutError):
        closed = True
    elapsed = time.monotonic() - t0
    writer.transport.abort()
    return {"sent": sent, "closed_by_gateway": closed, "seconds": round(elapsed, 2)}


async def _rtmp_partial_many(ctx: Context, conns: int, chunk_size: int, length: int = 1 << 19) -> dict:
    """``length``: each message's declared size (512 KiB by default): never completed."""
    results = await asyncio.gather(
        *(_rtmp_partial(ctx.rtmp_port, chunk_size, length, 20_000_000, 15.0) for _ in range(conns)),
        return_exceptions=True,
    )
    ok = [r for r in results if isinstance(r, dict)]
    return {
        "connections": conns,
        "sent_MB": round(sum(r["sent"] for r in ok) / 1e6, 2),
        "closed_by_gateway": sum(r["closed_by_gateway"] for r in ok),
        "max_seconds_open": max((r["seconds"] for r in ok), default=None),
        "errors": [repr(r)[:80] for r in results if not isinstance(r, dict)][:3],
    }


@probe("rtmp-partial-1", "RTMP: Set Chunk Size 2, then partial messages on 24 chunk streams, 1 connection")
async def rtmp_partial_1(ctx: Context) -> dict:
    return await _rtmp_partial_many(ctx, 1, 2)


@probe("rtmp-partial-10", "RTMP: the same with 10 connections")
async def rtmp_partial_10(ctx: Context) -> dict:
    return await _rtmp_partial_many(ctx, 10, 2)


@probe("rtmp-partial128-10", "RTMP: partial 60 KB messages on 24 chunk streams at chunk size 128, 10 conns")
async def rtmp_partial128_10(ctx: Context) -> dict:
    return await _rtmp_partial_many(ctx, 10, 128, length=60_000)


@probe("ws-unauth-300", "WebSocket: 300 connections that never log in (held up to 15 s)")
async def ws_unauth_300(ctx: Context) -> dict:
    async def one() -> Ws | str:
        try:
            return await Ws.connect(ctx.ws_port)
        except Exception as e:  # refused at TCP by the per-address/total cap
            return type(e).__name__

    opened = await asyncio.gather(*(one() for _ in range(300)))
    sockets = [w for w in opened if isinstance(w, Ws)]
    t0 = time.monotonic()
    codes = await asyncio.gather(*(w.close_code(15.0) for w in sockets))
    for w in sockets:
        w.abort()
    summary: dict[str, int] = {}
    for c in codes:
        summary[str(c)] = summary.get(str(c), 0) + 1
    return {
        "upgraded": len(sockets),
        "refused": 300 - len(sockets),
        "close_codes": summary,
        "all_closed_after_s": round(time.monotonic() - t0, 1),
    }


@probe("ws-no-read", "WebSocket: a logged-in client sends pings and never reads (20 s at most)")
async def ws_no_read(ctx: Context) -> dict:
    ws = await Ws.connect(ctx.ws_port)
    answer = await ws.result(ws.request("login", {"user": ABUSER, "password": PASSWORD}))
    assert "result" in answer, answer
    sock = ws.writer.get_extra_info("socket")
    ws.writer.transport.pause_reading()  # never read again
    import socket as socket_mod

    sock.setsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_RCVBUF, 4096)
    frame = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}})
    t0, sent, outcome = time.monotonic(), 0, "still open after 20 s"
    stalled_at = None
    while time.monotonic() - t0 < 20 and sent < 2_000_000:
        if stalled_at is None:
            for _ in range(200):
                ws.send_text(frame)
            sent += 200
        try:
            await asyncio.wait_for(ws.writer.drain(), 1)
        except ConnectionError:
            outcome = "dropped by the gateway"
            break
        except TimeoutError:
            if stalled_at is None:  # the gateway stopped reading us
                stalled_at = round(time.monotonic() - t0, 1)
        if ws.writer.transport.is_closing() or ws.reader.at_eof():
            outcome = "dropped by the gateway"
            break
        await asyncio.sleep(0.01 if stalled_at is not None else 0)
    ws.abort()
    return {
        "pings_sent": sent,
        "gateway_stopped_reading_after_s": stalled_at,
        "outcome": outcome,
        "seconds": round(time.monotonic() - t0, 1),
    }


# --- the runner -----------------------------------------------------------------------------------


def start_gateway(kam: Kamailio) -> tuple[subprocess.Popen, dict]:
    defaults = Config()
    sets = [  # gwrunner relaxes the per-address limits for load tests: put the shipped ones back
        f"websocket__max_unauthenticated_per_address={defaults.websocket.max_unauthenticated_per_address}",
        f"websocket__max_unauthenticated={defaults.websocket.max_unauthenticated}",
        f"rtmp__max_connections_per_address={defaults.rtmp.max_connections_per_address}",
        f"websocket__login_attempts_per_minute={defaults.websocket.login_attempts_per_minute}",
    ] + [
        f"websocket__{key}={getattr(defaults.websocket, key)}"
        for key in ("requests_per_minute", "calls_per_minute", "messages_per_minute", "dtmf_per_minute")
    ]
    args = [sys.executable, str(ROOT / "bench" / "gwrunner.py"), "--pbx", f"127.0.0.1:{kam.port}"]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, json.loads(line)


async def place_call(caller: Ws, delay: float) -> dict:
    """A call from a well-behaved user while the probe runs: setup time and outcome."""
    await asyncio.sleep(delay)
    t0 = time.perf_counter()
    stage = "call"
    try:
        answer = await caller.result(caller.request("call", {"to": FAR}), timeout=10)
        if "error" in answer:
            return {"ok": False, "error": answer["error"]["data"]}
        call = answer["result"]["call"]
        stage = "answered"
        await caller.event("answered", timeout=10)
        setup_ms = round((time.perf_counter() - t0) * 1000, 1)
        stage = "hangup"
        caller.request("hangup", {"call": call})  # its event may come before its answer
        hangup = await caller.event("hangup", timeout=10)
        return {"ok": True, "setup_ms": setup_ms, "hangup": hangup.get("cause")}
    except Exception as e:
        return {"ok": False, "stage": stage, "error": repr(e)[:120]}


async def run_probe(ctx: Context, watcher: Watcher, name: str, caller: Ws | None = None) -> dict:
    what, fn = PROBES[name]
    before_metrics = ctx.metrics()
    before = rss(ctx.pid)
    peak = before
    done = False

    async def sample() -> None:
        nonlocal peak
        while not done:
            peak = max(peak, rss(ctx.pid))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    watcher.take()
    t0 = time.monotonic()
    call = asyncio.create_task(place_call(caller, 1.0)) if caller is not None else None
    try:
        found = await asyncio.wait_for(fn(ctx), 60)
    except Exception as e:
        found = {"error": repr(e)[:200]}
    duration = time.monotonic() - t0
    call_result = await call if call is not None else None
    await asyncio.sleep(2)
    done = True
    await sampler
    after = rss(ctx.pid)
    after_metrics = ctx.metrics()
    moved = {
        k: v - before_metrics.get(k, 0) for k, v in after_metrics.items() if v != before_metrics.get(k, 0)
    }
    return {
        "probe": name,
        "what": what,
        "rss_MB": {k: round(v / 2**20, 1) for k, v in (("before", before), ("peak", peak), ("after", after))},
        "seconds": round(duration, 1),
        "watcher": watcher.take(),
        "call_during_probe": call_result,
        "gateway": found,
        "metrics": moved,
    }


async def main_async(names: list[str]) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="abuse-"))
    kam = Kamailio(tmp / "kam", users=[WATCHER, ABUSER, CALLER, FAR], password=PASSWORD)
    (tmp / "kam").mkdir(exist_ok=True)
    kam.start()
    phone = Sipp(tmp / "far", "uas_answer.xml", kam, user=FAR, password=PASSWORD, calls=len(names),
                 timeout=600)
    phone.start()
    proc, info = start_gateway(kam)
    try:
        ws_port = int(info["ws_url"].rsplit(":", 1)[1].split("/")[0])
        http_port = int(info.get("http_port") or 0)
        ctx = Context(info["pid"], ws_port, info["rtmp_port"], http_port)
        ws = await Ws.connect(ws_port)
        answer = await ws.result(ws.request("login", {"user": WATCHER, "password": PASSWORD}))
        assert "result" in answer, answer
        watcher = Watcher(ws)
        watcher.task = asyncio.create_task(watcher.run())
        caller = await Ws.connect(ws_port)
        answer = await caller.result(caller.request("login", {"user": CALLER, "password": PASSWORD}))
        assert "result" in answer, answer
        results = []
        for name in names:
            result = await run_probe(ctx, watcher, name, caller)
            print(json.dumps(result), flush=True)
            results.append(result)
        watcher.task.cancel()
        return results
    finally:
        if proc.stdin is not None:
            try:
                proc.stdin.write(b"quit\n")
                proc.stdin.flush()
            except BrokenPipeError:
                pass
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        phone.stop()
        kam.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("probes", nargs="*", help="probe names (default: all)")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        for name, (what, _) in PROBES.items():
            print(f"{name:20} {what}")
        for name, (what, _) in SIP_PROBES.items():
            print(f"{name:20} {what}")
        return
    names = args.probes or [*PROBES, *SIP_PROBES]
    unknown = [n for n in names if n not in PROBES and n not in SIP_PROBES]
    if unknown:
        parser.error(f"unknown probe(s): {', '.join(unknown)} (see --list)")
    ws_rtmp = [n for n in names if n in PROBES]
    if ws_rtmp:
        asyncio.run(main_async(ws_rtmp))
    for name in names:
        if name in SIP_PROBES:
            # Twisted-based, with its own Kamailio, echo UAS and gateway: bench/abuse_sip.py
            subprocess.run(
                [sys.executable, str(ROOT / "bench" / "abuse_sip.py"), SIP_PROBES[name][1]],
                cwd=ROOT, check=False, timeout=600,
            )


#: probes run by bench/abuse_sip.py: name -> (what, its name there)
SIP_PROBES = {
    "sip-udp-flood": ("SIP: 20,000 UDP requests with random methods from a non-PBX address", "udp"),
    "sip-tcp-conns": ("SIP: 1,100 TCP connections from one non-PBX address", "tcp"),
}


if __name__ == "__main__":
    main()
