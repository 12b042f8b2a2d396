"""The test peers work on this machine: Kamailio registers sipp with digest auth, refuses bad
credentials with 403 (as FreeSWITCH does), and shows registrations back to the tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.peers import require_binary
from tests.peers.kamailio import Kamailio
from tests.peers.ports import free_port

pytestmark = pytest.mark.integration

# The gateway's shape of REGISTER: Request-URI sip:HOST:PORT, From/To sip:USER@HOST (no port).
_REGISTER = """REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
Max-Forwards: 70
From: <sip:[service]@[remote_ip]>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@[remote_ip]>
Call-ID: [call_id]
CSeq: {cseq} REGISTER
Contact: <sip:mp-smoke@[local_ip]:[local_port];transport=[transport]>
{auth}Expires: 300
User-Agent: sipp-smoke
Content-Length: 0

"""


def _scenario(final: int) -> str:
    first = _REGISTER.format(cseq=1, auth="")
    second = _REGISTER.format(cseq=2, auth="[authentication]\n")
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="register, digest, expect {final}">
  <send retrans="500"><![CDATA[
{first}  ]]></send>
  <recv response="401" auth="true"/>
  <send retrans="500"><![CDATA[
{second}  ]]></send>
  <recv response="{final}"/>
</scenario>
"""


def run_sipp_register(
    kam: Kamailio, tmp_path: Path, user: str, password: str, final: int, transport: str = "u1"
) -> subprocess.CompletedProcess[str]:
    sipp = require_binary("sipp")
    scenario = tmp_path / f"register-{final}.xml"
    scenario.write_text(_scenario(final))
    cmd = [
        sipp,
        "-sf",
        str(scenario),
        "-s",
        user,
        "-au",
        user,
        "-ap",
        password,
        "-m",
        "1",
        "-nostdin",
        "-trace_err",
        "-t",
        transport,
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port("both")),
        "-timeout",
        "10s",
        "-timeout_error",
        f"{kam.host}:{kam.port}",
    ]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False)


def _explain(res: subprocess.CompletedProcess[str], tmp_path: Path) -> str:
    errors = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*_errors.log"))
    return (
        f"sipp rc={res.returncode}\nstdout:{res.stdout[-2000:]}\n"
        f"stderr:{res.stderr[-2000:]}\n{errors[-3000:]}"
    )


def test_kamailio_starts_and_answers_options(kamailio: Kamailio) -> None:
    assert kamailio.running
    assert kamailio.port > 0
    assert kamailio.registrations() == {}
    assert "REQ OPTIONS" in kamailio.log_text()


@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
def test_register_with_digest(kamailio: Kamailio, tmp_path: Path, transport: str) -> None:
    res = run_sipp_register(kamailio, tmp_path, "1000", "1234", 200, transport)
    assert res.returncode == 0, _explain(res, tmp_path)
    regs = kamailio.registrations()
    assert list(regs) == ["1000"]
    [contact] = regs["1000"]
    assert contact.startswith("sip:mp-smoke@127.0.0.1:")
    assert contact.lower().endswith(f"transport={'udp' if transport == 'u1' else 'tcp'}")
    [record] = kamailio.contacts()["1000"]
    assert 0 < int(record["Expires"]) <= 300
    assert record["User-Agent"] == "sipp-smoke"


def test_wrong_password_gets_403(kamailio: Kamailio, tmp_path: Path) -> None:
    res = run_sipp_register(kamailio, tmp_path, "1000", "wrong", 403)
    assert res.returncode == 0, _explain(res, tmp_path)
    assert kamailio.registrations() == {}


def test_unknown_user_gets_403(kamailio: Kamailio, tmp_path: Path) -> None:
    res = run_sipp_register(kamailio, tmp_path, "3000", "1234", 403)
    assert res.returncode == 0, _explain(res, tmp_path)
    assert kamailio.registrations() == {}


def test_restart_forgets_registrations(kamailio: Kamailio, tmp_path: Path) -> None:
    res = run_sipp_register(kamailio, tmp_path, "1001", "1234", 200)
    assert res.returncode == 0, _explain(res, tmp_path)
    assert "1001" in kamailio.registrations()
    port = kamailio.port
    kamailio.restart()
    assert kamailio.port == port
    assert kamailio.registrations() == {}


def test_expires_limits(kamailio_factory, tmp_path: Path) -> None:
    kam = kamailio_factory(users=["1000"], min_expires=10, max_expires=120)
    res = run_sipp_register(kam, tmp_path, "1000", "1234", 200)
    assert res.returncode == 0, _explain(res, tmp_path)
    [record] = kam.contacts()["1000"]
    assert 0 < int(record["Expires"]) <= 120  # asked 300, clamped to max_expires
