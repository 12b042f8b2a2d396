"""A far-end phone for the benchmarks: SIP UAS that answers every INVITE at once (PCMU),
retransmits that 2xx until its ACK comes (RFC 3261 §13.3.1.4: no proxy does it), and echoes
RTP, recording each packet's arrival time, so RTP loss and lateness against the 20 ms grid are
measured where the packets land.

    python bench/echo_uas.py            # prints {"sip_port", "rtp_port"} then reads commands

One process, one thread, ``selectors`` over: the SIP UDP socket, one RTP socket shared by
every call (streams are told apart by their source address: each gateway call leg has its own
RTP port), the RTCP socket (drained), and stdin. Commands on stdin, one per line:
``reset`` (start a measurement window), ``stats PATH`` (write per-stream figures of the window
as JSON, print ``ok``), ``quit``.

Why not ``sipp -rtp_echo``: sipp echoes but records no arrival times, so lateness could not be
measured at the receiver; it also runs all echo through one thread per media port, whose cost
we could not separate. This UAS costs about 10 µs of CPU per echoed packet.
"""

from __future__ import annotations

import heapq
import json
import os
import selectors
import socket
import struct
import sys
import time
from array import array

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux
_TIMESPEC = struct.Struct("@qq")


def _kernel_time(ancillary) -> float:
    """The SCM_TIMESTAMPNS of a datagram (CLOCK_REALTIME, s); now if the kernel gave none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return sec + nsec * 1e-9
    return time.time()

HOST = "127.0.0.1"
PTIME = 0.020
LATE_MS = 5.0
T1, T2 = 0.5, 4.0  # RFC 3261 timers: the 2xx to an INVITE is retransmitted until its ACK (§13.3.1.4)


def _headers(msg: str) -> tuple[str, list[tuple[str, str]]]:
    head = msg.split("\r\n\r\n", 1)[0]
    lines = head.split("\r\n")
    out = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        out.append((name.strip(), value.strip()))
    return lines[0], out


COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length"}


def hget(headers, name: str) -> list[str]:
    return [v for n, v in headers if COMPACT.get(n.lower(), n.lower()) == name]


class EchoUas:
    def __init__(self) -> None:
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sip.bind((HOST, 0))
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        # the kernel stamps each packet as it reaches the socket (on loopback: within the
        # gateway's sendto), so lateness is the gateway's, not this process's scheduling on core 1
        self.rtp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        for port in range(31000, 40000, 2):
            try:
                self.rtp.bind((HOST, port))
                self.rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self.rtcp.bind((HOST, port + 1))
                break
            except OSError:
                continue
        self.sip_port = self.sip.getsockname()[1]
        self.rtp_port = self.rtp.getsockname()[1]
        self.answered: dict[str, bytes] = {}
        self.invites = self.byes = 0
        self.invite_retrans = self.bye_retrans = self.acks = self.ok_retrans = self.no_ack = 0
        # 2xx awaiting their ACK: Call-ID → (response, addr, interval, give-up time); the heap
        # holds (due time, Call-ID) and entries whose call was ACKed are skipped when they come up
        self.unacked: dict[str, tuple[bytes, tuple, float, float]] = {}
        self.retrans_heap: list[tuple[float, str]] = []
        self.calls_seen: dict[str, str] = {}  # Call-ID → requests seen, in order (I, A, B), for the window
        self.reset()

    def reset(self) -> None:
        # per source: arrival times and sequence numbers of the window
        self.t: dict[tuple, array] = {}
        self.seq: dict[tuple, array] = {}
        self.window_start = time.monotonic()
        self.calls_seen = {}

    # -- SIP ----------------------------------------------------------------------------------------
    def on_sip(self, data: bytes, addr) -> None:
        msg = data.decode(errors="replace")
        start, headers = _headers(msg)
        if start.startswith("SIP/2.0"):
            return
        method = start.split(" ", 1)[0]
        call_id = (hget(headers, "call-id") or [""])[0]
        if len(self.calls_seen) < 100_000 or call_id in self.calls_seen:
            self.calls_seen[call_id] = self.calls_seen.get(call_id, "") + method[0]
        if method == "ACK":
            self.acks += 1
            self.unacked.pop(call_id, None)
            return
        if method == "INVITE":
            if call_id in self.answered:
                self.invite_retrans += 1
                self.sip.sendto(self.answered[call_id], addr)
                return
            self.invites += 1
            sdp = (
                "v=0\r\no=echo 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                f"m=audio {self.rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
                "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
            )
            resp = self.response(headers, "200 OK", totag=True, body=sdp, rr=True)
            if len(self.answered) > 20000:
                self.answered.clear()
            self.answered[call_id] = resp
            self.sip.sendto(resp, addr)
            now = time.monotonic()
            self.unacked[call_id] = (resp, addr, T1, now + 64 * T1)
            heapq.heappush(self.retrans_heap, (now + T1, call_id))
        else:
            if method == "BYE":
                self.byes += 1
                if self.answered.pop(call_id, None) is None:
                    self.bye_retrans += 1
                self.unacked.pop(call_id, None)
            self.sip.sendto(self.response(headers, "200 OK"), addr)

    def response(self, headers, status: str, totag: bool = False, body: str = "", rr: bool = False) -> bytes:
        lines = [f"SIP/2.0 {status}"]
        lines += [f"Via: {v}" for v in hget(headers, "via")]
        if rr:
            lines += [f"Record-Route: {v}" for v in hget(headers, "record-route")]
        lines.append(f"From: {hget(headers, 'from')[0]}")
        to = hget(headers, "to")[0]
        if totag and ";tag=" not in to:
            to += ";tag=echo" + os.urandom(4).hex()
        lines.append(f"To: {to}")
        lines.append(f"Call-ID: {hget(headers, 'call-id')[0]}")
        lines.append(f"CSeq: {hget(headers, 'cseq')[0]}")
        lines.append(f"Contact: <sip:echo@{HOST}:{self.sip_port}>")
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def retransmit_2xx(self) -> float:
        """Resend the 2xx whose ACK is late (T1, 2·T1 … capped at T2; given up after 64·T1);
        returns the seconds until the next one is due (at most 1)."""
        heap, now = self.retrans_heap, time.monotonic()
        while heap and heap[0][0] <= now:
            _, call_id = heapq.heappop(heap)
            entry = self.unacked.get(call_id)
            if entry is None:
                continue
            resp, addr, interval, give_up = entry
            if now >= give_up:
                del self.unacked[call_id]
                self.no_ack += 1
                continue
            self.sip.sendto(resp, addr)
            self.ok_retrans += 1
            interval = min(2 * interval, T2)
            self.unacked[call_id] = (resp, addr, interval, give_up)
            heapq.heappush(heap, (now + interval, call_id))
        return min(1.0, heap[0][0] - now) if heap else 1.0

    # -- RTP ----------------------------------------------------------------------------------------
    def on_rtp(self) -> None:
        rtp, t_of, seq_of = self.rtp, self.t, self.seq
        for _ in range(64):
            try:
                data, ancillary, _flags, addr = rtp.recvmsg(2048, 64)
            except BlockingIOError:
                return
            now = _kernel_time(ancillary)
            rtp.sendto(data, addr)
            ta = t_of.get(addr)
            if ta is None:
                ta = t_of[addr] = array("d")
                seq_of[addr] = array("l")
            ta.append(now)
            seq_of[addr].append((data[2] << 8) | data[3])

    def stats(self) -> dict:
        streams = []
        for addr, ta in self.t.items():
            seqs = self.seq[addr]
            if len(ta) < 10:
                continue
            # unwrap sequence numbers; loss = expected - received over the window
            unwrapped, base, prev = [], 0, seqs[0]
            for s in seqs:
                if s < prev - 30000:
                    base += 65536
                prev = s
                unwrapped.append(s + base)
            s0 = unwrapped[0]
            expected = max(unwrapped) - s0 + 1
            offsets = [t - PTIME * (s - s0) for t, s in zip(ta, unwrapped, strict=False)]
            ref = min(offsets)
            lateness = sorted((o - ref) * 1000 for o in offsets)
            streams.append(
                {
                    "addr": f"{addr[0]}:{addr[1]}",
                    "received": len(ta),
                    "expected": expected,
                    "lost": expected - len(set(unwrapped)),
                    "late": sum(1 for x in lateness if x > LATE_MS),
                    "max_late_ms": lateness[-1],
                    "p99_late_ms": lateness[int(0.99 * (len(lateness) - 1))],
                }
            )
        return {
            "window_s": time.monotonic() - self.window_start,
            "streams": streams,
            "invites": self.invites,
            "byes": self.byes,
            "invite_retrans": self.invite_retrans,
            "bye_retrans": self.bye_retrans,
            "acks": self.acks,
            "ok_retrans": self.ok_retrans,
            "no_ack": self.no_ack,
            "calls_seen": self.calls_seen,
        }

    # -- loop -----------------------------------------------------------------------------------------
    def run(self) -> None:
        sel = selectors.DefaultSelector()
        for s in (self.sip, self.rtp, self.rtcp):
            s.setblocking(False)
        sel.register(self.sip, selectors.EVENT_READ, "sip")
        sel.register(self.rtp, selectors.EVENT_READ, "rtp")
        sel.register(self.rtcp, selectors.EVENT_READ, "rtcp")
        sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
        print(
            json.dumps({"sip_port": self.sip_port, "rtp_port": self.rtp_port, "pid": os.getpid()}), flush=True
        )
        stdin_buf = b""
        while True:
            for key, _ in sel.select(self.retransmit_2xx()):
                what = key.data
                if what == "rtp":
                    self.on_rtp()
                elif what == "sip":
                    for _ in range(64):
                        try:
                            data, addr = self.sip.recvfrom(65535)
                        except BlockingIOError:
                            break
                        self.on_sip(data, addr)
                elif what == "rtcp":
                    try:
                        self.rtcp.recvfrom(2048)
                    except BlockingIOError:
                        pass
                else:
                    chunk = os.read(sys.stdin.fileno(), 4096)
                    if not chunk:
                        return
                    stdin_buf += chunk
                    while b"\n" in stdin_buf:
                        line, stdin_buf = stdin_buf.split(b"\n", 1)
                        cmd, _, arg = line.decode().strip().partition(" ")
                        if cmd == "reset":
                            self.reset()
                        elif cmd == "stats":
                            with open(arg, "w") as f:
                                json.dump(self.stats(), f)
                            print("ok", flush=True)
                        elif cmd == "quit":
                            return


if __name__ == "__main__":
    EchoUas().run()
