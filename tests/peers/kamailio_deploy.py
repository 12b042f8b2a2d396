"""The shipped ``etc/kamailio/mpb2bua.cfg`` run as is: registrar for several gateway nodes and
dispatcher over several PBXs, its settings given as ``-A NAME=VALUE`` defines (the file's
``#!trydef`` lines) for free loopback ports and temporary paths.

Differences from the stand-in of :mod:`tests.peers.kamailio`: the configuration is the
operator's example, not a test string; requests from a dispatcher address (any port) are
trusted PBX requests, looked up and forked without a challenge; everything a user sends
other than REGISTER goes to a PBX of set 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tests.peers.kamailio import Kamailio

ETC_CONFIG = Path(__file__).resolve().parents[2] / "etc" / "kamailio" / "mpb2bua.cfg"


class DeployedKamailio(Kamailio):
    """``pbxs``: the dispatcher set 1 destinations as ``host:port`` (the PBXs' addresses; a
    request from any port of their hosts is a PBX's). OPTIONS pings to them are off: the sipp
    stand-ins would take an OPTIONS outside a call for an unexpected message."""

    def __init__(
        self,
        tmpdir: str | os.PathLike[str],
        pbxs: Iterable[str],
        users: Iterable[int | str] = range(1000, 1020),
    ) -> None:
        super().__init__(tmpdir, users=users)
        self.pbxs = list(pbxs)
        self.cfg_path = ETC_CONFIG
        self.dispatcher_list = self.tmpdir / "dispatcher.list"

    def _write_files(self) -> None:
        self._write_db()
        lines = [f"1 sip:{pbx}" for pbx in self.pbxs]
        self.dispatcher_list.write_text("# set destination\n" + "\n".join(lines) + "\n")

    def _extra_args(self) -> list[str]:
        defines = {
            "LISTEN_IP": self.host,
            "LISTEN_PORT": str(self.port),
            "SIP_DOMAIN": f'"{self.domain}:{self.port}"',
            "AUTH_REALM": f'"{self.realm}"',
            "DBURL": f'"text://{self.dbdir}"',
            "DISPATCHER_LIST": f'"{self.dispatcher_list}"',
            "DS_PING_INTERVAL": "0",
            "CTL_SOCKET": f'"unix:{self.rundir}/ctl"',
            "RPC_FIFO": f'"{self.rundir}/rpc.fifo"',
            "RPC_REPLY_DIR": f'"{self.rundir}/"',
        }
        args = []
        for name, value in defines.items():
            args += ["-A", f"{name}={value}"]
        return args
