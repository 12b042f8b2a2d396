"""A hostile SIP neighbour on loopback: floods of UDP requests and of TCP connections from an
address that is not the PBX's (127.0.0.2: the whole 127.0.0.0/8 is loopback on Linux).

Blocking code, bounded in count and time: call it from a thread (``threads.deferToThread``) or
another process. Used by tests/integration/test_sip_abuse.py and bench/abuse_sip.py.
"""

from __future__ import annotations

import errno
import random
import selectors
import socket
import string
import time

STRANGER = "127.0.0.2"


def random_request(rng: random.Random, port: int, n: int, source: str = STRANGER) -> bytes:
    """A well-formed SIP request with a random method name (a new metric label, once)."""
    method = "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(4, 12)))
    return (
        f"{method} sip:x@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source}:5060;branch=z9hG4bKflood{n}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:flood@{source}>;tag=f{n}\r\nTo: <sip:x@127.0.0.1>\r\n"
        f"Call-ID: flood{n}@{source}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def udp_flood(
    port: int,
    count: int = 20_000,
    source: str = STRANGER,
    host: str = "127.0.0.1",
    seconds: float = 60.0,
    rate: float | None = None,
    seed: int = 12,
) -> dict:
    """Send ``count`` requests with random methods from ``source`` (at most ``rate`` a second
    when given), for at most ``seconds``. Returns what was sent and how many answers came."""
    rng = random.Random(seed)
    answers = 0
    sent = 0
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.setblocking(False)
        for n in range(count):
            now = time.monotonic()
            if now - start > seconds:
                break
            if rate is not None:
                due = start + n / rate
                if due > now:
                    time.sleep(due - now)
            try:
                s.sendto(random_request(rng, port, n, source), (host, port))
                sent += 1
            except BlockingIOError:
                time.sleep(0.001)
            answers += _drain(s)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # the last answers
            got = _drain(s)
            answers += got
            if not got:
                time.sleep(0.05)
    return {"sent": sent, "answers": answers, "seconds": round(time.monotonic() - start, 2)}


def _drain(s: socket.socket) -> int:
    n = 0
    while n < 10_000:
        try:
            s.recv(65535)
        except (BlockingIOError, ConnectionRefusedError):
            return n
        n += 1
    return n


def tcp_flood(
    port: int,
    count: int = 1100,
    source: str = STRANGER,
    host: str = "127.0.0.1",
    hold: float = 3.0,
    seconds: float = 30.0,
) -> dict:
    """Open ``count`` TCP connections from ``source`` without sending anything, keep them
    ``hold`` seconds, then close them. Returns how many were established, and how many the
    gateway had closed (``reset``/``closed``) or left ``open`` when the hold ended."""
    start = time.monotonic()
    socks: list[socket.socket] = []
    established = failed = 0
    sel = selectors.DefaultSelector()
    try:
        for _ in range(count):
            if time.monotonic() - start > seconds:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.bind((source, 0))
                code = s.connect_ex((host, port))
            except OSError:
                s.close()
                failed += 1
                continue
            if code in (0, errno.EINPROGRESS):
                socks.append(s)
                if code == errno.EINPROGRESS:
                    sel.register(s, selectors.EVENT_WRITE)
                else:
                    established += 1
            else:
                s.close()
                failed += 1
        # wait (bounded) for the connects in progress
        deadline = time.monotonic() + 5.0
        while sel.get_map() and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                sel.unregister(key.fileobj)
                if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    established += 1
                else:
                    failed += 1
        hold_end = start + hold
        if time.monotonic() < hold_end:
            time.sleep(hold_end - time.monotonic())
        states = {"open": 0, "closed": 0, "reset": 0}
        for s in socks:
            states[_state(s)] += 1
        return {
            "attempted": count,
            "established": established,
            "failed": failed,
            **states,
            "seconds": round(time.monotonic() - start, 2),
        }
    finally:
        sel.close()
        for s in socks:
            s.close()


def _state(s: socket.socket) -> str:
    try:
        data = s.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return "open"
    except OSError:  # ECONNRESET, or the connect never completed
        return "reset"
    return "closed" if data == b"" else "open"
