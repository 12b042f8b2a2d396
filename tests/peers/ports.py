"""Free loopback ports for peers started by the tests."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def _bind(kind: int, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


def free_port(kind: str = "both", host: str = HOST) -> int:
    """A port on 127.0.0.1 free for UDP, TCP or both (``kind`` = 'udp' | 'tcp' | 'both').

    The port is released before returning, so a peer started right after can bind it;
    the usual small race with other processes remains.
    """
    if kind not in ("udp", "tcp", "both"):
        raise ValueError(f"kind must be 'udp', 'tcp' or 'both', not {kind!r}")
    if host != HOST:
        raise ValueError("only 127.0.0.1 is supported")
    first = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    for _ in range(200):
        sock = _bind(first, 0)
        port = sock.getsockname()[1]
        try:
            if kind != "both":
                return port
            try:
                _bind(socket.SOCK_DGRAM, port).close()
            except OSError:
                continue
            return port
        finally:
            sock.close()
    raise RuntimeError(f"no free {kind} port found on {HOST}")


def free_port_run(n: int, host: str = HOST) -> int:
    """A TCP port p on 127.0.0.1 with p … p+n-1 all free (media workers listen for RTMP on
    ``rtmp.listen``'s port + their index). Released before returning, like :func:`free_port`."""
    if host != HOST:
        raise ValueError("only 127.0.0.1 is supported")
    for _ in range(50):
        port = free_port("tcp")
        if port + n > 65536:
            continue
        socks: list[socket.socket] = []
        try:
            for p in range(port, port + n):
                socks.append(_bind(socket.SOCK_STREAM, p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no run of {n} free TCP ports found on {HOST}")
