"""sipp (Debian ``sip-tester`` 3.6.1) as a scripted far-end phone, on loopback, for the tests.

A :class:`Sipp` runs one scenario from ``tests/peers/scenarios`` (or any XML path) on a free
SIP port and a free media port, with every log written into its own directory under the test's
``tmpdir``. The scenario decides the role: UAS scenarios (``uas_*.xml``, first command is a
``<recv>``) wait for a call; UAC scenarios (``uac_*.xml``) place one through the proxy.

A UAS reachable through Kamailio as user 1500, called by the gateway (user 1000)::

    from tests.peers import require_binary
    from tests.peers.sipp import Sipp

    def test_gateway_calls_a_phone(kamailio, tmp_path, gateway):
        require_binary("sipp")
        far = Sipp(tmp_path, "uas_answer.xml", kamailio, user="1500", rtp_echo=True,
                   variables={"codec_name": "PCMA", "codec_pt": "8"})   # or codec="PCMA"
        far.start()          # sipp listens, then 1500 is registered at Kamailio -> far.contact_uri
        try:
            ...              # log the WS client in as 1000, send {"method": "call", "params": {"to": "1500"}}
            ...              # wait for "answered", check media, send "hangup"
            assert far.wait(10) == 0, far.explain()   # 0: the call went as the scenario says
            assert "BYE sip:" in far.messages_text()
        finally:
            far.stop()       # kills sipp if still running and un-registers 1500

The gateway calling ``1500`` sends ``INVITE sip:1500@127.0.0.1:<kamailio port>``; Kamailio
looks 1500 up and relays to the sipp. For the other direction (a phone calls the gateway
user 1000, which must be logged in and registered), a UAC::

    caller = Sipp(tmp_path, "uac_call.xml", kamailio, user="1500", register=False,
                  variables={"callee": "1000", "hold_ms": "2000"}).start()
    ...                        # the WS client gets "incoming", answers
    assert caller.wait(15) == 0, caller.explain()

Why the registration is a separate sipp: a sipp in UAS mode cannot send anything before its
first INVITE, and a sipp in UAC mode that REGISTERs and then waits for the INVITE drops it
("Discarding message which can't be mapped to a known SIPp call": the INVITE's Call-ID is not
one sipp created). So ``start()`` runs ``register.xml`` in a short-lived second sipp which
REGISTERs (digest on 401) the contact ``sip:USER@127.0.0.1:PORT`` of the scenario's sipp, and
``stop()`` removes that contact again (Expires: 0), so a later Sipp for the same user does not
leave Kamailio forking to a dead contact.

Scenario keys (``-key NAME VALUE``; sipp refuses a scenario that uses a key not given, so
every key below always gets a default, see :data:`DEFAULT_VARIABLES`):

- ``user`` (own user: From of a UAC, AOR/Contact of a UAS), ``domain`` (127.0.0.1),
  ``callee`` (UAC target user, default 1000)
- ``codec_pt`` / ``codec_name`` / ``codec_rate`` (SDP, default 0 PCMU 8000; ``codec=`` sets all
  three from :data:`CODECS`); telephone-event/8000 is always offered as payload type 101
- ``hold_ms`` (talk time before the scripted BYE / re-INVITE / INFO), ``early_ms`` (183 -> 200)
- ``dtmf_digit`` (INFO dtmf-relay sent / expected, default 5)
- ``info_json`` / ``message_text`` (bodies of the INFO and MESSAGE of uas_info_message.xml)

Results: :meth:`Sipp.wait` returns sipp's exit code: 0 every call succeeded, 1 some call
failed (unexpected message, regexp check failed, retransmission timeout …), 99 no call was
processed, 255 fatal error or the global ``-timeout`` was hit, 254 could not bind its socket.
:meth:`Sipp.messages_text` is the ``-trace_msg`` log (every SIP message sent and received),
:meth:`Sipp.errors_text` the ``-trace_err`` log, :meth:`Sipp.logs_text` the ``<log>`` actions
(scenarios log what they checked there, e.g. ``HOLD answer a=recvonly``), and
:meth:`Sipp.explain` a summary of all of them for assertion messages.

Pitfalls of sipp 3.6.1 met while writing this (see also the scenario headers):

- ``-timeout`` without ``-timeout_error`` does not stop a sipp with a call in progress: it
  waits for the call forever. This class always passes both.
- ``-key`` values are only substituted in message text and ``<assignstr value>``: ``<pause
  milliseconds="[hold_ms]">`` is an error, so scenarios do assignstr -> todouble -> ``<pause
  variable=...>``.
- ``[last_Via:]`` of a CANCEL relayed by a proxy is the proxy's Via only: uas_noanswer.xml
  keeps the INVITE's Via headers to build its 487.
- The status code of a response we send is parsed when the scenario loads: it cannot come
  from a ``-key`` (hence uas_busy.xml 486 and uas_decline.xml 603 as separate files).
- ``-mp`` defaults to 6000 and sipp binds it (and +2) even without ``-rtp_echo``: two sipps
  started without ``-mp`` collide, so a free media port is always passed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tests.peers import find_binary
from tests.peers.ports import HOST, free_port

if TYPE_CHECKING:
    from tests.peers.kamailio import Kamailio

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"

#: codec name -> (payload type, rate as in a=rtpmap) for the ``codec=`` shortcut
CODECS: dict[str, tuple[str, str]] = {
    "PCMU": ("0", "8000"),
    "PCMA": ("8", "8000"),
    "G722": ("9", "8000"),
    "opus": ("111", "48000/2"),
}

#: every key some scenario uses; ``user`` is added from the constructor
DEFAULT_VARIABLES: dict[str, str] = {
    "domain": "127.0.0.1",
    "callee": "1000",
    "codec_pt": "0",
    "codec_name": "PCMU",
    "codec_rate": "8000",
    "hold_ms": "1000",
    "early_ms": "1000",
    "dtmf_digit": "5",
    "info_json": '{"text":"hello world","confidence":0.9}',
    "message_text": "asr: hello",
}

#: sipp exit codes
EXIT_OK = 0
EXIT_CALLS_FAILED = 1
EXIT_INTERNAL_CMD = 97
EXIT_NO_CALLS = 99
EXIT_FATAL = 255
EXIT_BIND_FAILED = 254


class SippError(RuntimeError):
    pass


class SippTimeout(SippError, TimeoutError):
    pass


def scenario_path(scenario: str | os.PathLike[str]) -> Path:
    """A file name under tests/peers/scenarios (``.xml`` optional) or a path to an XML file."""
    text = os.fspath(scenario)
    for candidate in (SCENARIO_DIR / text, SCENARIO_DIR / f"{text}.xml"):
        if os.sep not in text and candidate.is_file():
            return candidate
    path = Path(text)
    if not path.is_file():
        raise SippError(f"scenario {text!r} not found (neither a path nor in {SCENARIO_DIR})")
    return path.resolve()


def scenario_role(path: Path) -> str:
    """'uas' when the scenario's first SIP command is a <recv>, 'uac' when it is a <send>."""
    root = ET.parse(path).getroot()
    for elem in root:
        if elem.tag == "recv":
            return "uas"
        if elem.tag == "send":
            return "uac"
    raise SippError(f"{path}: no <send> or <recv> in the scenario")


def _port_bound(port: int, tcp: bool) -> bool:
    """Whether something listens on 127.0.0.1/0.0.0.0:port (Linux /proc, no bind race)."""
    table = "/proc/net/tcp" if tcp else "/proc/net/udp"
    try:
        lines = Path(table).read_text().splitlines()[1:]
    except OSError:
        return True  # cannot tell: do not wait
    want = f":{port:04X}"
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[1].endswith(want) and (not tcp or fields[3] == "0A"):
            return True
    return False


def free_media_port() -> int:
    """An even UDP port P with P..P+3 free (sipp binds P for audio and P+2 for video)."""
    import socket

    for _ in range(200):
        base = free_port("udp")
        base -= base % 2
        socks = []
        try:
            for port in range(base, base + 4):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise SippError("no free media port range found")


class Sipp:
    """One sipp process running ``scenario`` (see the module docstring for the keys).

    ``kamailio``: the proxy/registrar. UAC scenarios send to it (unless ``remote`` "host:port"
    is given, e.g. the gateway itself); UAS scenarios get their contact registered there as
    ``user`` (when ``register``) so that calls to ``user`` reach them.
    ``variables`` override :data:`DEFAULT_VARIABLES`; ``codec`` ("PCMU", "PCMA", "G722", "opus")
    sets codec_pt/codec_name/codec_rate. ``calls`` is ``-m`` (calls to make / to take before
    exiting). ``timeout`` (s) bounds the whole run (``-timeout`` + ``-timeout_error``).
    ``auto_answer`` passes ``-aa``: unexpected INFO/NOTIFY/OPTIONS/UPDATE get a 200 instead of
    failing the call. ``transport`` is sipp's ``-t`` (``u1`` UDP, ``t1`` TCP). ``host`` is the
    loopback address sipp binds (another one than 127.0.0.1 plays a separate machine).
    """

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        scenario: str | os.PathLike[str],
        kamailio: Kamailio | None = None,
        user: str | None = None,
        password: str = "1234",
        register: bool = True,
        rtp_echo: bool = False,
        extra_args: Iterable[str] = (),
        variables: Mapping[str, str] | None = None,
        *,
        codec: str | None = None,
        calls: int = 1,
        timeout: float = 30.0,
        remote: str | None = None,
        transport: str = "u1",
        auto_answer: bool = True,
        expires: int = 300,
        name: str | None = None,
        host: str = HOST,
    ) -> None:
        self.tmpdir = Path(tmpdir)
        self.host = host  # the loopback address sipp binds (SIP and media), e.g. 127.0.0.2
        self.scenario = scenario_path(scenario)
        self.role = scenario_role(self.scenario)
        self.kamailio = kamailio
        self.user = None if user is None else str(user)
        self.password = password
        self.register_contact = register and kamailio is not None and self.user is not None
        if register and kamailio is not None and self.user is None and self.role == "uas":
            raise SippError("a UAS registered at Kamailio needs a user")
        self.rtp_echo = rtp_echo
        self.extra_args = list(extra_args)
        self.calls = calls
        self.timeout = timeout
        self.transport = transport
        self.auto_answer = auto_answer
        self.expires = expires
        self.name = name or self.scenario.stem
        self.domain = kamailio.domain if kamailio is not None else HOST
        self.variables: dict[str, str] = dict(DEFAULT_VARIABLES)
        self.variables["domain"] = self.domain
        self.variables["user"] = self.user or "sipp"
        if codec is not None:
            pt, rate = CODECS[codec]
            self.variables.update(codec_pt=pt, codec_name=codec, codec_rate=rate)
        for key, value in (variables or {}).items():
            self.variables[str(key)] = str(value)
        if remote is None and self.role == "uac":
            if kamailio is None:
                raise SippError("a UAC scenario needs kamailio or remote='host:port'")
            remote = f"{kamailio.host}:{kamailio.port}"
        self.remote = remote
        self._port: int | None = None
        self._media_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout = None
        self._registered = False
        self._reg_runs = 0
        self.workdir: Path | None = None
        self.cmd: list[str] = []

    # -- properties ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise SippError("sipp has not been started")
        return self._port

    @property
    def media_port(self) -> int:
        if self._media_port is None:
            raise SippError("sipp has not been started")
        return self._media_port

    @property
    def contact_uri(self) -> str:
        """Where this sipp listens, as registered: ``sip:USER@127.0.0.1:PORT``."""
        params = ";transport=tcp" if self.transport.startswith("t") else ""
        return f"sip:{self.variables['user']}@{HOST}:{self.port}{params}"

    @property
    def aor(self) -> str:
        """``sip:USER@DOMAIN``, what callers dial."""
        return f"sip:{self.variables['user']}@{self.domain}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def registered(self) -> bool:
        return self._registered

    # -- logs -----------------------------------------------------------------------------------

    def _read(self, fname: str) -> str:
        if self.workdir is None:
            return ""
        try:
            return (self.workdir / fname).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def messages_text(self) -> str:
        """The ``-trace_msg`` log: every SIP message sent and received, in order."""
        return self._read("messages.log")

    def errors_text(self) -> str:
        """The ``-trace_err`` log: unexpected messages, failed checks, aborted calls."""
        return self._read("errors.log")

    def logs_text(self) -> str:
        """The ``-trace_logs`` log: what the scenario's ``<log>`` actions wrote."""
        return self._read("logs.log")

    def stdout_text(self) -> str:
        """sipp's screen (statistics) and fatal error messages."""
        return self._read("stdout.log")

    def explain(self, limit: int = 6000) -> str:
        """A summary for assertion messages: command, exit code, errors, logs, messages."""
        parts = [
            f"sipp {self.name}: rc={self.returncode} port={self._port} media_port={self._media_port}",
            f"cmd: {' '.join(self.cmd)}",
            f"--- errors ---\n{self.errors_text()[-limit:]}",
            f"--- logs ---\n{self.logs_text()[-limit:]}",
            f"--- stdout ---\n{self.stdout_text()[-2000:]}",
            f"--- messages ---\n{self.messages_text()[-limit:]}",
        ]
        return "\n".join(parts)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> Sipp:
        """Start sipp; a UAS is listening (and registered, when asked) once this returns."""
        if self._proc is not None:
            raise SippError("sipp already started")
        sipp = find_binary("sipp")
        if sipp is None:
            raise SippError("sipp binary not found (apt-get install sip-tester)")
        tcp = self.transport.startswith("t")
        self._port = free_port("both")
        self._media_port = free_media_port()
        self.workdir = self.tmpdir / f"sipp-{self.name}-{self._port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cmd = self._command(sipp)
        if self.role == "uac" and self.register_contact:
            self.register()
        self._stdout = open(self.workdir / "stdout.log", "wb")  # closed in stop()
        self._proc = subprocess.Popen(
            self.cmd,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() never reaches the test runner
        )
        try:
            if self.role == "uas":
                self._wait_listening(tcp, timeout)
                if self.register_contact:
                    self.register()
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self, sipp: str) -> list[str]:
        cmd = [
            sipp, "-sf", str(self.scenario),
            "-i", self.host, "-p", str(self.port), "-mp", str(self.media_port),
            "-t", self.transport,
            "-m", str(self.calls),
            "-nostdin",
            "-timeout", f"{max(1, int(round(self.timeout)))}s", "-timeout_error",
            "-trace_err", "-error_file", "errors.log",
            "-trace_msg", "-message_file", "messages.log",
            "-trace_logs", "-log_file", "logs.log",
        ]
        if self.user is not None:
            cmd += ["-au", self.user, "-ap", self.password]
        if self.rtp_echo:
            cmd.append("-rtp_echo")
        if self.auto_answer:
            cmd.append("-aa")
        for key, value in self.variables.items():
            cmd += ["-key", key, value]
        cmd += self.extra_args
        if self.remote is not None:
            cmd.append(self.remote)
        return cmd

    def _wait_listening(self, tcp: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _port_bound(self.port, tcp):
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise SippError(f"sipp exited with {self._proc.returncode} at start\n{self.explain()}")
            if time.monotonic() > deadline:
                raise SippError(f"sipp not listening on {self.port} after {timeout} s\n{self.explain()}")
            time.sleep(0.01)

    def register(self, expires: int | None = None, timeout: float = 10.0) -> None:
        """REGISTER this sipp's contact as ``user`` at Kamailio (``expires`` 0 removes it)."""
        if self.kamailio is None or self.user is None:
            raise SippError("register() needs kamailio and user")
        sipp = find_binary("sipp")
        assert sipp is not None and self.workdir is not None
        expires = self.expires if expires is None else expires
        self._reg_runs += 1
        tag = f"register{self._reg_runs}"
        params = ";transport=tcp" if self.transport.startswith("t") else ""
        cmd = [
            sipp, "-sf", str(SCENARIO_DIR / "register.xml"),
            "-i", HOST, "-p", str(free_port("both")), "-mp", str(free_media_port()),
            "-t", "u1", "-m", "1", "-nostdin",
            "-timeout", f"{max(1, int(timeout) - 1)}s", "-timeout_error",
            "-trace_err", "-error_file", f"{tag}-errors.log",
            "-trace_msg", "-message_file", f"{tag}-messages.log",
            "-au", self.user, "-ap", self.password,
            "-key", "user", self.user, "-key", "domain", self.domain,
            "-key", "contact_host", HOST, "-key", "contact_port", str(self.port),
            "-key", "contact_params", params, "-key", "expires", str(int(expires)),
            f"{self.kamailio.host}:{self.kamailio.port}",
        ]
        try:
            res = subprocess.run(
                cmd, cwd=self.workdir, stdin=subprocess.DEVNULL, capture_output=True,
                timeout=timeout + 5, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SippError(f"{tag}: sipp REGISTER hung") from exc
        if res.returncode != 0:
            errors = self._read(f"{tag}-errors.log")
            raise SippError(
                f"{tag} of {self.user} (expires {expires}) failed: rc={res.returncode}\n"
                f"{errors[-3000:]}\n{res.stdout.decode(errors='replace')[-2000:]}"
            )
        self._registered = expires > 0

    def unregister(self) -> None:
        """Remove the registered contact (best effort: Kamailio may be gone already)."""
        if not self._registered:
            return
        self._registered = False
        if self.kamailio is None or not self.kamailio.running:
            return
        try:
            self.register(expires=0, timeout=5.0)
        except SippError:
            pass

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for sipp to exit and return its exit code (0: every call as scripted).

        Raises :class:`SippTimeout` (sipp left running; :meth:`stop` ends it) when it does not
        exit within ``timeout`` seconds (default: its own ``-timeout`` plus 5 s).
        """
        if self._proc is None:
            raise SippError("sipp has not been started")
        if timeout is None:
            timeout = self.timeout + 5
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise SippTimeout(f"sipp {self.name} still running after {timeout} s\n{self.explain()}") from None

    def wait_ok(self, timeout: float | None = None) -> None:
        """:meth:`wait`, and raise AssertionError with :meth:`explain` unless sipp exited with 0."""
        rc = self.wait(timeout)
        if rc != EXIT_OK:
            raise AssertionError(f"sipp {self.name} exited with {rc}\n{self.explain()}")

    def stop(self, timeout: float = 3.0) -> None:
        """End sipp (SIGTERM, then SIGKILL) if it still runs; un-register its contact."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait(timeout)
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None
        self.unregister()

    close = stop

    def kill(self) -> None:
        """SIGKILL, as a PBX killed with ``kill -9``: no BYE, no more RTP. The contact stays
        registered until :meth:`stop`."""
        if self._proc is not None and self._proc.poll() is None:
            self._signal(self._proc, signal.SIGKILL)
            self._proc.wait(3.0)

    def __enter__(self) -> Sipp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
