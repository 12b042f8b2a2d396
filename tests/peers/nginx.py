"""Debian's nginx as a non-system instance in a temporary prefix, on free loopback ports.

:class:`Nginx` wraps the shipped ``etc/nginx/mpb2bua.conf`` in a minimal main configuration
(pid, logs and temp files in the prefix) after substituting the example's port, certificate
paths and upstream address; each substituted text must occur exactly once in the file, so the
example cannot drift away from what is tested. Runs ``nginx -p PREFIX -c CONF -g 'daemon off;'``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.peers import find_binary
from tests.peers.ports import free_port

ETC_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "nginx" / "mpb2bua.conf"

_MAIN = """# written by tests/peers/nginx.py
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {prefix}/mpb2bua.conf;
}}
"""


class NginxError(RuntimeError):
    pass


class Nginx:
    """nginx terminating TLS on 127.0.0.1:``port`` and proxying /ws to ``upstream`` (host:port)."""

    def __init__(self, prefix: str | os.PathLike[str], upstream: str, cert: str, key: str) -> None:
        self.prefix = Path(prefix)
        self.upstream = upstream
        self.cert = cert
        self.key = key
        self.port = free_port("tcp")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/ws"

    def config_text(self) -> str:
        text = ETC_CONFIG.read_text()
        for old, new in (
            ("listen 443 ssl;", f"listen 127.0.0.1:{self.port} ssl;"),
            ("/etc/letsencrypt/live/gw.example.com/fullchain.pem", self.cert),
            ("/etc/letsencrypt/live/gw.example.com/privkey.pem", self.key),
            ("server 127.0.0.1:8080;", f"server {self.upstream};"),
        ):
            if text.count(old) != 1:
                raise NginxError(f"{ETC_CONFIG}: expected {old!r} exactly once")
            text = text.replace(old, new)
        return text

    def log_text(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            try:
                parts.append((self.prefix / name).read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def start(self, timeout: float = 10.0) -> Nginx:
        nginx = find_binary("nginx")
        if nginx is None:
            raise NginxError("nginx not found (apt-get install nginx)")
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        (self.prefix / "mpb2bua.conf").write_text(self.config_text())
        main = self.prefix / "nginx.conf"
        main.write_text(_MAIN.format(prefix=self.prefix))
        self._log = open(self.prefix / "stderr.log", "wb")  # closed in stop()
        self._proc = subprocess.Popen(
            # -e: the error log before the configuration is read (not /var/log/nginx)
            [nginx, "-p", str(self.prefix), "-e", str(self.prefix / "error.log"), "-c", str(main),
             "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise NginxError(f"nginx exited with {self._proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise NginxError(f"nginx not listening after {timeout} s:\n{self.log_text()[-3000:]}")
                time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # SIGQUIT: graceful; SIGTERM: fast shutdown, which is what a test wants
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
