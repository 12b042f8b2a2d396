"""baresip as a headless phone registered at the test's Kamailio (docs: /work/shared/TEST-PEERS.md).

It answers calls by itself, plays a WAV into them (``aufile``) and records both directions
with ``sndfile`` (``dump-*-dec.wav``: what it heard). ``mediaenc`` turns on its SRTP
(``srtp-mand``: RTP/SAVP with SDES keys, nothing else accepted).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from tests.peers import require_binary
from tests.peers.ports import free_port

MODULE_DIR = Path("/usr/lib/baresip/modules")


class Baresip:
    def __init__(
        self,
        tmpdir: Path,
        kamailio,
        user: str = "1600",
        password: str = "1234",
        tone: Path | None = None,
        mediaenc: str | None = "srtp-mand",
        codecs: str = "PCMU",
    ) -> None:
        self.dir = Path(tmpdir)
        self.kamailio = kamailio
        self.user = user
        self.password = password
        self.tone = tone
        self.mediaenc = mediaenc
        self.codecs = codecs
        self.proc: subprocess.Popen | None = None
        self.rec = self.dir / "rec"

    def start(self, timeout: float = 15.0) -> Baresip:
        require_binary("baresip")
        for module in ("srtp.so", "aufile.so", "sndfile.so", "g711.so"):
            if not (MODULE_DIR / module).exists():
                require_binary(f"baresip module {module}")  # fails under CI, skips elsewhere
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rec.mkdir(exist_ok=True)
        sip_port = free_port("both")
        self.cons_port = cons_port = free_port("udp")
        source = f"aufile,{self.tone}" if self.tone else "aufile,/dev/null"
        modules = ["cons", "g711", "alsa", "aufile", "sndfile"] + (["srtp"] if self.mediaenc else [])
        config = [
            "poll_method\tepoll",
            f"sip_listen\t127.0.0.1:{sip_port}",
            "net_interface\t127.0.0.1",
            "audio_player\talsa,null",
            "audio_alert\talsa,null",
            f"audio_source\t{source}",
            "ausrc_srate\t8000",
            "auplay_srate\t8000",
            "audio_channels\t1",
            "rtcp_mux\tno",
            "jitter_buffer_delay\t1-10",
            f"snd_path\t{self.rec}",
            f"cons_listen\t127.0.0.1:{cons_port}",
            f"module_path\t{MODULE_DIR}",
            *(f"module\t{m}.so" for m in modules),
            "module_app\taccount.so",
            "module_app\tmenu.so",
        ]
        (self.dir / "config").write_text("\n".join(config) + "\n")
        params = f";auth_pass={self.password};answermode=auto;regint=300;audio_codecs={self.codecs}"
        if self.mediaenc:
            params += f";mediaenc={self.mediaenc}"
        kam = self.kamailio
        account = f"<sip:{self.user}@{kam.host}:{kam.port};transport=udp>{params}\n"
        (self.dir / "accounts").write_text(account)
        self.log = open(self.dir / "baresip.log", "wb")
        self.proc = subprocess.Popen(
            ["baresip", "-f", str(self.dir)], stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded: registered at Kamailio, or give up
            if self.user in kam.registrations():
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"baresip did not register:\n{self.log_text()}")

    def command(self, line: str) -> None:
        """A console command (``/dial sip:…``, ``/hangup``) over its UDP console."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(line.encode() + b"\n", ("127.0.0.1", self.cons_port))

    def log_text(self) -> str:
        path = self.dir / "baresip.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def heard(self) -> Path:
        """The WAV of what it received (decoded), once the call ended."""
        found = sorted(self.rec.glob("dump-*-dec.wav"))
        if not found:
            raise AssertionError(f"baresip recorded nothing:\n{self.log_text()}")
        return found[-1]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if getattr(self, "log", None) is not None:
            self.log.close()
