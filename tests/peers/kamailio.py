"""Kamailio as a FreeSWITCH stand-in: registrar + proxy with digest auth, on loopback.

Users come from a db_text ``subscriber`` table (plain passwords), registrations live in
memory (usrloc db_mode 0) and are read back with ``kamcmd ul.dump``. A wrong password or an
unknown user gets 403 after the challenge, like FreeSWITCH.

TLS mode (``tls_cert``/``tls_key`` given; Debian's ``kamailio-tls-modules``): a TLS listener on
``tls_port`` besides UDP+TCP, with the tls module; a REGISTER that came over TLS is bound to
its connection (nathelper ``fix_nated_register``), so requests for that user go back over the
connection the REGISTER came on, as FreeSWITCH does. ``tls_client_ca`` makes it require a
client certificate signed by that CA.
"""

from __future__ import annotations

import glob
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from tests.peers import find_binary
from tests.peers.ports import free_port

_MODULE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/kamailio/modules",
    "/usr/lib/*-linux-gnu*/kamailio/modules",
    "/usr/lib64/kamailio/modules",
    "/usr/lib/kamailio/modules",
    "/usr/local/lib64/kamailio/modules",
    "/usr/local/lib/kamailio/modules",
)

_CONFIG = r"""#!KAMAILIO
# FreeSWITCH stand-in written by tests/peers/kamailio.py:
# registrar + proxy on @HOST@:@PORT@ (UDP+TCP), digest auth from db_text
debug=2
log_stderror=yes
log_prefix="{$mt $hdr(CSeq) $ci} "
children=4
tcp_children=4
listen=udp:@HOST@:@PORT@
listen=tcp:@HOST@:@PORT@
auto_aliases=no
alias="@DOMAIN@:@PORT@"
@TLS_GLOBALS@
dns=no
rev_dns=no
use_dns_cache=no

mpath="@MPATH@/"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "db_text.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
loadmodule "ctl.so"
loadmodule "jsonrpcs.so"
@TLS_MODULES@

modparam("ctl", "binrpc", "unix:@RUNDIR@/ctl")
# ul.dump of 1000+ contacts is far above the 32 KB default reply size
modparam("ctl", "binrpc_max_body_size", 8192)
modparam("ctl", "binrpc_struct_max_body_size", 4096)
# kamcmd refuses replies above ~64 KB ("reply too big"): big dumps go over the JSON-RPC FIFO
modparam("jsonrpcs", "transport", 2)  # bit mask: 2 = FIFO only
modparam("jsonrpcs", "fifo_name", "@RUNDIR@/rpc.fifo")
modparam("jsonrpcs", "fifo_reply_dir", "@RUNDIR@/")
modparam("usrloc", "db_mode", 0)
modparam("registrar", "max_expires", @MAX_EXPIRES@)
@REGISTRAR_EXTRA@
modparam("auth_db", "db_url", "text://@DBDIR@")
modparam("auth_db", "calculate_ha1", 1)
modparam("auth_db", "password_column", "password")
modparam("auth_db", "load_credentials", "")
modparam("rr", "append_fromtag", 1)

request_route {
    xlog("L_INFO", "REQ $rm $ru from $si:$sp ($pr)\n");
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    if (!sanity_check("1511", "7")) { exit; }

    # in-dialog requests (ACK/BYE/re-INVITE) follow the Record-Route set
    if (has_totag()) {
        if (loose_route()) {
@TLS_INDIALOG@
            t_relay();
            exit;
        }
        if (is_method("ACK")) { if (t_check_trans()) { t_relay(); } exit; }
        sl_send_reply("404", "Not here");
        exit;
    }
    if (is_method("CANCEL")) { if (t_check_trans()) { t_relay(); } exit; }
    t_check_trans();

    if (is_method("OPTIONS") && $rU == $null) { sl_send_reply("200", "OK"); exit; }

    # digest auth: 401 for REGISTER, 407 for INVITE etc. (like FreeSWITCH); only the user
    # parts of From/To are compared with the auth user, never their domains.
    if (!auth_check("@REALM@", "subscriber", "1")) {
        $var(rc) = $rc;
        xlog("L_NOTICE", "AUTH failed/absent for $fu ($rm): code $var(rc)\n");
        # -2 wrong password, -3 unknown user -> 403 (as FreeSWITCH does)
        if ($var(rc) == -2 || $var(rc) == -3) { sl_send_reply("403", "Forbidden"); exit; }
        auth_challenge("@REALM@", "0");
        exit;
    }
    consume_credentials();

    if (is_method("REGISTER")) {
@TLS_REGISTER@
@REGISTER@
        exit;
    }

    remove_hf("Route");
    if (is_method("INVITE|SUBSCRIBE")) { record_route(); }
    if (uri == myself) {
        if (!lookup("location")) { sl_send_reply("404", "Not Found"); exit; }
    }
@TLS_INITIAL@
    if (!t_relay()) { sl_reply_error(); }
    exit;
}
@TLS_REPLY@
"""


_REGISTER_MULTI = """        if (!save("location")) { sl_reply_error(); }"""

# FreeSWITCH's default: the new Contact replaces the user's binding (0x04), and an un-REGISTER
# deletes the user's binding whichever Contact it names. A REGISTER without Contact is a query.
_REGISTER_SINGLE = """        if (is_present_hf("Contact")
            && ($hdr(Expires) == "0" || $ct =~ ";expires=0([^0-9]|$)")) {
            unregister("location", "$tu");
            sl_send_reply("200", "OK");
            exit;
        }
        if (!save("location", "0x04")) { sl_reply_error(); }"""


# TLS mode: the listener, the module and its own config file, and REGISTERs over TLS bound to
# their connection (the received AVP: lookup() then sends over that connection)
_TLS_GLOBALS = """enable_tls=yes
listen=tls:@HOST@:@TLS_PORT@
alias="@DOMAIN@:@TLS_PORT@"
"""
_TLS_MODULES = """loadmodule "tls.so"
loadmodule "nathelper.so"
modparam("tls", "config", "@TLS_CFG@")
modparam("nathelper", "received_avp", "$avp(RECEIVED)")
modparam("registrar", "received_avp", "$avp(RECEIVED)")
"""
_TLS_REGISTER = """        if (proto == TLS) { fix_nated_register(); }"""
# a Contact that came over TLS gets an alias naming the connection (nathelper), which in-dialog
# requests toward it (ACK, BYE, re-INVITE) follow: the party behind it has no TLS listener
_TLS_INDIALOG = """            handle_ruri_alias();"""
_TLS_INITIAL = """    if (proto == TLS) { add_contact_alias(); }"""
_TLS_REPLY = """onreply_route {
    if (proto == TLS) { add_contact_alias(); }
}"""
_TLS_CFG = """[server:default]
method = TLSv1.2+
verify_certificate = @VERIFY@
require_certificate = @VERIFY@
private_key = @KEY@
certificate = @CERT@
@CA_LIST@

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
"""


def module_dir() -> str:
    """The directory holding Kamailio's modules (``tm.so`` …) on this machine."""
    for pattern in _MODULE_DIRS:
        for candidate in sorted(glob.glob(pattern)):
            if os.path.isfile(os.path.join(candidate, "tm.so")):
                return candidate
    raise RuntimeError("Kamailio modules not found (is the kamailio package installed?)")


class KamailioError(RuntimeError):
    pass


class Kamailio:
    """A Kamailio registrar/proxy started in ``tmpdir`` on a free UDP+TCP port of 127.0.0.1.

    ``users`` are the subscriber user names (ints or strings), all with ``password``.
    ``min_expires``/``default_expires``/``max_expires`` go to the registrar module
    (None keeps Kamailio's default: min 60, default 3600). ``realm`` is the digest realm it
    challenges with (the domain when None, as FreeSWITCH does).

    ``single_binding`` behaves like FreeSWITCH's vanilla ``internal`` profile
    (``multiple-registrations`` off): one contact per user, a new REGISTER replaces the old
    one, and an ``Expires: 0`` for any Contact removes the user's binding. Otherwise every
    Contact is kept (``multiple-registrations=contact``).
    """

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        users: Iterable[int | str] = range(1000, 2000),
        password: str = "1234",
        domain: str = "127.0.0.1",
        min_expires: int | None = None,
        default_expires: int | None = None,
        max_expires: int = 3600,
        single_binding: bool = False,
        realm: str | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_client_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        self.tmpdir = Path(tmpdir)
        self.users = [str(u) for u in users]
        self.password = password
        self.domain = domain
        self.realm = realm or domain
        self.min_expires = min_expires
        self.default_expires = default_expires
        self.max_expires = max_expires
        self.single_binding = single_binding
        self.tls_cert, self.tls_key, self.tls_client_ca = tls_cert, tls_key, tls_client_ca
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._tls_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = None
        self._short_rundir: str | None = None
        self.dbdir = self.tmpdir / "kamailio-db"
        self.cfg_path = self.tmpdir / "kamailio.cfg"
        self.log_path = self.tmpdir / "kamailio.log"
        rundir = self.tmpdir / "kamailio-run"
        if len(str(rundir / "ctl")) > 100:  # AF_UNIX paths are limited to 108 bytes
            self._short_rundir = tempfile.mkdtemp(prefix="kam-")
            rundir = Path(self._short_rundir)
        self.rundir = rundir

    # -- properties ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        if self._port is None:
            raise KamailioError("Kamailio has not been started")
        return self._port

    @property
    def tls_port(self) -> int:
        """The TLS listener's port (TLS mode only)."""
        if self._tls_port is None:
            raise KamailioError("Kamailio has not been started in TLS mode")
        return self._tls_port

    @property
    def uri(self) -> str:
        """The registrar's URI, e.g. ``sip:127.0.0.1:40123`` (the REGISTER Request-URI)."""
        return f"sip:{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Kamailio:
        if self.running:
            raise KamailioError("Kamailio already running")
        kamailio = find_binary("kamailio")
        if kamailio is None:
            raise KamailioError("kamailio binary not found")
        if self._port is None:
            self._port = free_port("both")
        if self.tls_cert is not None and self._tls_port is None:
            self._tls_port = free_port("tcp")
        self._write_files()
        self._log_file = open(self.log_path, "ab")  # closed in stop()
        cmd = [
            kamailio, "-f", str(self.cfg_path), "-DD", "-E", "-Y", str(self.rundir),
            "-m", "128", "-M", "16", *self._extra_args(),
        ]
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            start_new_session=True,  # its own process group, so stop() reaches its children
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait(timeout)
        if proc is not None:
            # children that outlived the main process (they share its process group)
            self._signal_group(proc, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, timeout: float = 10.0) -> Kamailio:
        """Stop and start again on the same port; registrations are lost (usrloc is in memory)."""
        self.stop()
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    probe.bind((self.host, self.port))
                finally:
                    probe.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise KamailioError(f"port {self.port} still busy after stop") from None
                time.sleep(0.05)
        return self.start(timeout=max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        self.stop()
        if self._short_rundir is not None:
            shutil.rmtree(self._short_rundir, ignore_errors=True)
            self._short_rundir = None

    def __enter__(self) -> Kamailio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inspection ---------------------------------------------------------------------------

    def kamcmd(self, *args: str, timeout: float = 10.0) -> str:
        """Run ``kamcmd -s unix:RUNDIR/ctl ARGS`` and return its stdout."""
        kamcmd = find_binary("kamcmd")
        if kamcmd is None:
            raise KamailioError("kamcmd binary not found")
        res = subprocess.run(
            [kamcmd, "-s", f"unix:{self.rundir}/ctl", *args],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if res.returncode != 0:
            raise KamailioError(
                f"kamcmd {' '.join(args)} failed ({res.returncode}): "
                f"{res.stderr.decode(errors='replace')}{res.stdout.decode(errors='replace')}"
            )
        return res.stdout.decode(errors="replace")

    def rpc(self, method: str, *params: object, timeout: float = 10.0) -> object:
        """Call a Kamailio RPC over the jsonrpcs FIFO and return its ``result`` (no size limit).

        Raises KamailioError on an RPC error or when no reply arrives within ``timeout``.
        """
        if not self.running:
            raise KamailioError("Kamailio is not running")
        name = f"reply-{uuid.uuid4().hex[:12]}"
        reply = self.rundir / name
        os.mkfifo(reply, 0o600)
        # Our own writer end keeps reads from seeing EOF before Kamailio opens the FIFO;
        # the reply is complete once it parses as one JSON document.
        rfd = os.open(reply, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(reply, os.O_WRONLY)
        try:
            request = {"jsonrpc": "2.0", "method": method, "id": 1, "reply_name": name}
            if params:
                request["params"] = list(params)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fifo = os.open(self.rundir / "rpc.fifo", os.O_WRONLY | os.O_NONBLOCK)
                    break
                except (FileNotFoundError, OSError) as exc:
                    # ENXIO: the RPC process has not opened its FIFO yet (just after start)
                    if time.monotonic() > deadline:
                        raise KamailioError(f"cannot open the RPC FIFO: {exc}") from exc
                    time.sleep(0.05)
            try:
                os.write(fifo, json.dumps(request).encode() + b"\n")
            finally:
                os.close(fifo)
            buf = b""
            decoder = json.JSONDecoder()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise KamailioError(f"no reply to RPC {method} within {timeout} s")
                poller = select.poll()  # not select(): fds above 1024 are common under load tests
                poller.register(rfd, select.POLLIN)
                if not poller.poll(min(left, 0.5) * 1000):
                    continue
                buf += os.read(rfd, 1 << 20)
                try:
                    doc, _ = decoder.raw_decode(buf.decode(errors="replace").lstrip())
                except ValueError:
                    continue
                break
        finally:
            os.close(rfd)
            os.close(wfd)
            reply.unlink(missing_ok=True)
        if "error" in doc:
            raise KamailioError(f"RPC {method} failed: {doc['error']}")
        return doc.get("result")

    def contacts(self) -> dict[str, list[dict[str, object]]]:
        """AOR user -> the live contacts' ``ul.dump`` records (Address, Expires in seconds
        left, Call-ID, CSeq, User-Agent, Received, Socket …)."""
        return parse_ul_dump(self.rpc("ul.dump"))

    def registrations(self) -> dict[str, list[str]]:
        """AOR user -> contact URIs currently registered (expired contacts excluded)."""
        return {aor: [str(c["Address"]) for c in cs] for aor, cs in self.contacts().items()}

    # -- internals ----------------------------------------------------------------------------

    def _extra_args(self) -> list[str]:
        """More command-line arguments (subclasses: ``-A NAME=VALUE`` defines)."""
        return []

    def _write_db(self) -> None:
        """The db_text tables (``subscriber``, ``version``) and the run directory."""
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.dbdir.mkdir(parents=True, exist_ok=True)
        self.rundir.mkdir(parents=True, exist_ok=True)
        rows = [
            "id(int,auto) username(string) domain(string) password(string) ha1(string,null) "
            "ha1b(string,null)"
        ]
        rows += [f"{i}:{user}:{self.domain}:{self.password}::" for i, user in enumerate(self.users, 1)]
        (self.dbdir / "subscriber").write_text("\n".join(rows) + "\n")
        (self.dbdir / "version").write_text(
            "table_name(string) table_version(int)\nsubscriber:7\nlocation:9\n"
        )

    def _write_files(self) -> None:
        self._write_db()
        extra = []
        if self.min_expires is not None:
            extra.append(f'modparam("registrar", "min_expires", {int(self.min_expires)})')
        if self.default_expires is not None:
            extra.append(f'modparam("registrar", "default_expires", {int(self.default_expires)})')
        tls = self.tls_cert is not None
        if tls:
            tls_cfg = self.tmpdir / "tls.cfg"
            verify = "yes" if self.tls_client_ca else "no"
            ca_list = f"ca_list = {self.tls_client_ca}" if self.tls_client_ca else ""
            text = _TLS_CFG.replace("@VERIFY@", verify).replace("@CA_LIST@", ca_list)
            text = text.replace("@KEY@", str(self.tls_key)).replace("@CERT@", str(self.tls_cert))
            tls_cfg.write_text(text)
        cfg = _CONFIG
        for key, value in {
            "@TLS_GLOBALS@": _TLS_GLOBALS if tls else "",
            "@TLS_MODULES@": _TLS_MODULES if tls else "",
            "@TLS_REGISTER@": _TLS_REGISTER if tls else "",
            "@TLS_INDIALOG@": _TLS_INDIALOG if tls else "",
            "@TLS_INITIAL@": _TLS_INITIAL if tls else "",
            "@TLS_REPLY@": _TLS_REPLY if tls else "",
            "@TLS_CFG@": str(self.tmpdir / "tls.cfg"),
            "@TLS_PORT@": str(self._tls_port),
            "@HOST@": self.host,
            "@PORT@": str(self.port),
            "@DOMAIN@": self.domain,
            "@REALM@": self.realm,
            "@MPATH@": module_dir(),
            "@RUNDIR@": str(self.rundir),
            "@DBDIR@": str(self.dbdir),
            "@MAX_EXPIRES@": str(int(self.max_expires)),
            "@REGISTRAR_EXTRA@": "\n".join(extra),
            "@REGISTER@": _REGISTER_SINGLE if self.single_binding else _REGISTER_MULTI,
        }.items():
            cfg = cfg.replace(key, value)
        self.cfg_path.write_text(cfg)

    def _wait_ready(self, timeout: float) -> None:
        """Until Kamailio answers an OPTIONS over UDP and its ctl socket exists."""
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, 0))
            sock.settimeout(0.2)
            local_port = sock.getsockname()[1]
            while True:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise KamailioError(
                        f"kamailio exited with {self._proc.returncode}:\n{self.log_text()[-4000:]}"
                    )
                if time.monotonic() > deadline:
                    raise KamailioError(f"kamailio not ready after {timeout} s:\n{self.log_text()[-4000:]}")
                sock.sendto(self._options(local_port), (self.host, self.port))
                try:
                    data = sock.recv(65535)
                except (TimeoutError, ConnectionRefusedError):
                    time.sleep(0.05)
                    continue
                if data.startswith(b"SIP/2.0 200") and (self.rundir / "ctl").exists() and (
                    self.rundir / "rpc.fifo"
                ).exists():
                    return
                time.sleep(0.05)
        finally:
            sock.close()

    def _options(self, local_port: int) -> bytes:
        branch = "z9hG4bK" + uuid.uuid4().hex
        return (
            f"OPTIONS sip:{self.host}:{self.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.host}:{local_port};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{self.host}:{local_port}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{self.host}:{self.port}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@{self.host}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def parse_ul_dump(result: object) -> dict[str, list[dict[str, object]]]:
    """The ``result`` of the ``ul.dump`` RPC (JSON) -> AOR user -> live contact records.

    Contacts whose Expires is "expired" or "deleted" are left out; "permanent" ones stay.
    """
    out: dict[str, list[dict[str, object]]] = {}
    if not isinstance(result, dict):
        raise KamailioError(f"unexpected ul.dump result: {result!r}")
    for domain in result.get("Domains", []):
        for aor_entry in domain.get("Domain", {}).get("AoRs", []):
            info = aor_entry.get("Info", {})
            live = []
            for contact_entry in info.get("Contacts", []):
                contact = contact_entry.get("Contact", {})
                expires = contact.get("Expires")
                if expires in ("expired", "deleted") or (isinstance(expires, int) and expires <= 0):
                    continue
                live.append(contact)
            if live:
                out.setdefault(str(info.get("AoR")), []).extend(live)
    return out
