"""The mini-program SDK (sdk/miniprogram/mpb2bua.js) against a real gateway, Kamailio and sipp.

Each case starts Kamailio, a gateway in this process's reactor and the sipp far end it needs,
then runs one test of ``sdk/miniprogram/test/gateway.test.js`` with ``node --test`` as a child
process (spawned through the reactor, so the gateway keeps serving while node runs). The node
side gets the gateway's URL and the far end's user from the environment (``MPB2BUA_WS_URL``,
``MPB2BUA_SIPP_USER``...); for the inbound case it writes ``inbound.ready`` into
``MPB2BUA_SIGNAL_DIR`` once logged in, and this side then starts the sipp caller.

``npm ci`` installs the SDK's dev dependencies (``ws``, ``typescript``, ``miniprogram-api-typings``,
``miniprogram-simulate``, ``jsdom``) when ``node_modules`` does not match ``package-lock.json``. Without
node/npm the tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from b2bua.config import Config
from tests.integration.gateway import start_gateway
from tests.integration.helpers import exit_code, no_leaks, wait_until
from tests.peers import require_binary

pytestmark = pytest.mark.integration

SDK_DIR = Path(__file__).resolve().parents[2] / "sdk" / "miniprogram"
NODE_TEST_FILE = "test/gateway.test.js"
NODE_TIMEOUT = 120.0
USER, PASSWORD, FAR_USER = "1000", "1234", "1500"


def _lock_digest() -> str:
    return hashlib.sha256((SDK_DIR / "package-lock.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def node_sdk():
    """The node binary, with the SDK's dev dependencies installed (again when the lock changed)."""
    node = require_binary("node")
    stamp = SDK_DIR / "node_modules" / ".mpb2bua-lock"
    if not stamp.is_file() or stamp.read_text() != _lock_digest():
        npm = require_binary("npm")
        command = "ci" if (SDK_DIR / "package-lock.json").is_file() else "install"
        done = subprocess.run(
            [npm, command, "--no-audit", "--no-fund"],
            cwd=SDK_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"npm {command} failed:\n{done.stdout}\n{done.stderr}"
        stamp.write_text(_lock_digest())
    return node


def test_sdk_unit_tests_pass(node_sdk):
    """The SDK's own unit tests (fake socket: JSON-RPC plumbing, emitter, backoff, resume, lifecycle,
    storage, call objects, media handles) and those of the <mpb2bua-call> component
    (miniprogram-simulate on jsdom)."""
    done = subprocess.run(
        [node_sdk, "--test", "test/client.test.js", "test/lifecycle.test.js", "test/component.test.js",
         "test/package.test.js"],
        cwd=SDK_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout and "# pass 0" not in done.stdout


def test_sdk_typings_check_against_miniprogram_api_typings(node_sdk):
    """mpb2bua.d.ts and a usage sample compile with tsc --noEmit against miniprogram-api-typings."""
    tsc = SDK_DIR / "node_modules" / "typescript" / "bin" / "tsc"
    done = subprocess.run(
        [node_sdk, str(tsc), "-p", "."], cwd=SDK_DIR, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


@pytest.fixture
def gateway(kamailio):
    require_binary("sipp")
    overrides = {"websocket__login_attempts_per_minute": 100_000, "calls__ring_timeout": 10.0}
    if hasattr(Config().media, "dtmf"):  # uas_expect_info_dtmf.xml wants SIP INFO, not RFC 4733
        overrides["media__dtmf"] = "info"
    gw = start_gateway(kamailio.host, kamailio.port, **overrides)
    yield gw
    gw.stop()


class _NodeProcess(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output: list[bytes] = []
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.exit_code: int | None = None
        self.finished = False

    def outReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.output.append(data)

    def errReceived(self, data: bytes) -> None:  # noqa: N802
        self.output.append(data)

    def processEnded(self, reason) -> None:  # noqa: N802
        self.finished = True
        self.exit_code = getattr(reason.value, "exitCode", None)
        self.ended.callback(self.exit_code)

    @property
    def text(self) -> str:
        return b"".join(self.output).decode("utf-8", "replace")


def run_node_case(
    node: str,
    name: str,
    gw,
    signal_dir: Path,
    timeout: float = NODE_TIMEOUT,
    test_file: str = NODE_TEST_FILE,
    extra_env: dict[str, str] | None = None,
) -> _NodeProcess:
    """Start ``node --test`` for the one test called ``name``, without blocking the reactor."""
    env = dict(os.environ)
    env.update(
        MPB2BUA_WS_URL=gw.ws_url,
        MPB2BUA_USER=USER,
        MPB2BUA_PASSWORD=PASSWORD,
        MPB2BUA_SIPP_USER=FAR_USER,
        MPB2BUA_SIPP_DTMF="5",
        MPB2BUA_SIGNAL_DIR=str(signal_dir),
        MPB2BUA_GRACE_MS=str(int(gw.config.websocket.grace_period * 1000)),
    )
    env.update(extra_env or {})
    args = [
        node,
        "--test",
        "--test-force-exit",
        "--test-reporter=tap",
        f"--test-name-pattern=^{re.escape(name)}$",
        test_file,
    ]
    proc = _NodeProcess()
    transport = reactor.spawnProcess(proc, node, args, env=env, path=str(SDK_DIR))

    def kill() -> None:
        if not proc.finished:
            proc.output.append(f"\n[killed after {timeout} s]\n".encode())
            transport.signalProcess("KILL")

    timer = reactor.callLater(timeout, kill)
    proc.ended.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
    return proc


def check_passed(proc: _NodeProcess, name: str) -> None:
    text = proc.text
    assert proc.exit_code == 0, f"node --test exited with {proc.exit_code}:\n{text}"
    assert re.search(rf"^ok \d+ - {re.escape(name)}$", text, re.M), f"{name!r} did not pass:\n{text}"
    assert re.search(r"^# pass 1$", text, re.M) and re.search(r"^# fail 0$", text, re.M), text


@defer.inlineCallbacks
def node_case(node, name, gw, tmp_path):
    proc = run_node_case(node, name, gw, tmp_path)
    yield proc.ended
    check_passed(proc, name)
    return proc


@pytest_twisted.inlineCallbacks
def test_sdk_login_ping_logout(node_sdk, gateway, tmp_path):
    yield node_case(node_sdk, "login, ping and logout", gateway, tmp_path)
    yield wait_until(lambda: gateway.controller.sessions.count == 0, timeout=10, what="session ended")


@pytest_twisted.inlineCallbacks
def test_sdk_wrong_password_is_auth_failed(node_sdk, gateway, tmp_path):
    yield node_case(node_sdk, "wrong password is an Mpb2buaError with reason auth_failed", gateway, tmp_path)
    assert gateway.controller.sessions.count == 0


@pytest_twisted.inlineCallbacks
def test_sdk_outbound_call_answered(node_sdk, gateway, far, tmp_path):
    phone = far("uas_answer.xml")
    name = "outbound call answered by the far end, then hung up locally"
    yield node_case(node_sdk, name, gateway, tmp_path)
    assert (yield exit_code(phone)) == 0, phone.explain()
    yield wait_until(lambda: no_leaks(gateway), timeout=5, what="call freed")


@pytest_twisted.inlineCallbacks
def test_sdk_dtmf(node_sdk, gateway, far, tmp_path):
    phone = far("uas_expect_info_dtmf.xml", variables={"dtmf_digit": "5"})
    yield node_case(node_sdk, "dtmf during a call goes out and is accepted", gateway, tmp_path)
    assert (yield exit_code(phone)) == 0, phone.explain()
    assert "Signal=5" in phone.messages_text()
    yield wait_until(lambda: no_leaks(gateway), timeout=5, what="call freed")


@pytest_twisted.inlineCallbacks
def test_sdk_remote_hangup(node_sdk, gateway, far, tmp_path):
    phone = far("uas_answer_then_bye.xml", variables={"hold_ms": "500"})
    yield node_case(node_sdk, "remote hangup ends the call with a hangup event", gateway, tmp_path)
    assert (yield exit_code(phone)) == 0, phone.explain()
    yield wait_until(lambda: no_leaks(gateway), timeout=5, what="call freed")


@pytest_twisted.inlineCallbacks
def inbound_case(node_sdk, name, gateway, far, tmp_path, scenario: str, hold_ms: int):
    """Run the SDK case ``name``; once it is logged in, a far phone calls it with ``scenario``.
    Both must pass, and the call must be freed."""
    proc = run_node_case(node_sdk, name, gateway, tmp_path)
    ready = tmp_path / "inbound.ready"
    yield wait_until(lambda: ready.exists() or proc.finished, timeout=60, what="the SDK to log in")
    assert ready.exists(), f"node ended before logging in:\n{proc.text}"
    caller = far(scenario, register=False, variables={"callee": USER, "hold_ms": str(hold_ms)})
    yield proc.ended
    check_passed(proc, name)
    assert (yield exit_code(caller)) == 0, caller.explain()
    yield wait_until(lambda: no_leaks(gateway), timeout=5, what="call freed")


@pytest_twisted.inlineCallbacks
def test_sdk_inbound_call_answered(node_sdk, gateway, far, tmp_path):
    yield inbound_case(node_sdk, "inbound call is announced and answered", gateway, far, tmp_path,
                       "uac_call.xml", 800)


@pytest_twisted.inlineCallbacks
def test_sdk_dropped_socket_resumed_call_survives(node_sdk, gateway, far, tmp_path):
    phone = far("uas_answer.xml")
    yield node_case(node_sdk, "a dropped socket is resumed and the call survives", gateway, tmp_path)
    # the far end saw one call, answered, then our BYE after the resume: a clean end
    assert (yield exit_code(phone)) == 0, phone.explain()
    assert phone.messages_text().count("BYE sip:") >= 1
    yield wait_until(lambda: no_leaks(gateway), timeout=5, what="call freed")
    yield wait_until(lambda: gateway.controller.sessions.count == 0, timeout=10, what="logged out")


@pytest_twisted.inlineCallbacks
def test_sdk_incoming_cancelled_while_socket_dead_ends_on_resume(node_sdk, gateway, far, tmp_path):
    """The caller gives up while the SDK's socket is silently dead: the `hangup` event is lost
    with the socket, and the `resume` result (which no longer lists the call) ends it."""
    name = "an incoming call cancelled while the socket is silently dead ends on resume"
    yield inbound_case(node_sdk, name, gateway, far, tmp_path, "uac_cancel.xml", 2000)
    yield wait_until(lambda: gateway.controller.sessions.count == 0, timeout=10, what="logged out")
