"""Two gateway nodes behind the shipped Kamailio configuration (etc/kamailio/mpb2bua.cfg, run as
is): Kamailio is the registrar of both nodes' users and spreads their calls over two PBX
stand-ins (sipp on 127.0.0.2 and 127.0.0.3, dispatcher set 1). Calls *from* a PBX (a sipp
on one of those addresses) are looked up and forked to every node holding the user. The tests
that carry media, or stop a node under calls, run with the media in the nodes and in two worker
processes per node."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer, threads

from tests.integration.gateway import both_media_modes
from tests.integration.helpers import exit_code, http_get, logged_in, no_leaks, sleep, wait_until
from tests.integration.test_media import decode_to_pcm, ffmpeg
from tests.media.audio import dominant_frequency, rms_windows
from tests.peers import require_binary
from tests.peers.kamailio_deploy import DeployedKamailio
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.integration
PBX_HOSTS = ("127.0.0.2", "127.0.0.3")


@dataclass
class Cluster:
    kamailio: DeployedKamailio
    nodes: dict  # "A"/"B" -> Gateway
    pbxs: list  # the two far-end sipps, in PBX_HOSTS order
    tmp_path: object
    started: list = field(default_factory=list)

    def caller(self, callee: str, hold_ms: int = 1000, scenario: str = "uac_call.xml", **kwargs) -> Sipp:
        """A PBX calling a user: a sipp UAC on the first PBX's address (trusted, no challenge)."""
        phone = Sipp(
            self.tmp_path / f"caller{len(self.started)}", scenario, None, user="pbx", register=False,
            remote=f"{self.kamailio.host}:{self.kamailio.port}", host=PBX_HOSTS[0],
            variables={
                "callee": callee, "hold_ms": str(hold_ms), "domain": f"127.0.0.1:{self.kamailio.port}"
            },
            **kwargs,
        )
        self.started.append(phone)
        return phone.start()

    def contacts(self, user: str) -> list[str]:
        return sorted(self.kamailio.registrations().get(user, []))


@pytest.fixture
def cluster_factory(tmp_path, gateway_factory):
    """``make(pbx_scenario, pbx_calls)``: two PBX stand-ins answering ``pbx_calls`` calls each,
    the shipped Kamailio in front of them, and gateway nodes A and B registering there."""
    require_binary("kamailio")
    require_binary("sipp")
    made = []

    def make(pbx_scenario="uas_answer.xml", pbx_calls=1, hold_ms=1000):
        pbxs = []
        for i, host in enumerate(PBX_HOSTS):
            pbx = Sipp(
                tmp_path / f"pbx{i}", pbx_scenario, None, user="pbx", register=False, host=host,
                rtp_echo=True, calls=pbx_calls, timeout=60, variables={"hold_ms": str(hold_ms)},
            )
            pbxs.append(pbx.start())
        kam = DeployedKamailio(tmp_path / "kamailio", [f"{p.host}:{p.port}" for p in pbxs]).start()
        nodes = {name: gateway_factory(kam.host, kam.port, calls__ring_timeout=10.0) for name in "AB"}
        cluster = Cluster(kam, nodes, pbxs, tmp_path)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        for gw in cluster.nodes.values():  # before Kamailio: their un-REGISTERs get answers
            gw.stop()
        for phone in [*cluster.started, *cluster.pbxs]:
            phone.stop()
            print(phone.explain(3000))
        cluster.kamailio.close()
        print(f"----- kamailio log -----\n{cluster.kamailio.log_text()[-8000:]}")


def node_of(cluster: Cluster, contact: str) -> str:
    """The node ("A"/"B") whose SIP port a registered Contact names."""
    (name,) = [n for n, gw in cluster.nodes.items() if re.search(rf":{gw.sip_port}(;|$)", contact)]
    return name


@defer.inlineCallbacks
def invites_received(gw):
    """INVITEs the node's SIP stack received, from its /metrics."""
    code, body = yield threads.deferToThread(http_get, f"http://127.0.0.1:{gw.http_port}/metrics")
    assert code == 200
    for line in body.decode().splitlines():
        if line.startswith('mpb2bua_sip_requests_total{direction="in",method="INVITE"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@defer.inlineCallbacks
def tone_round_trip(tmp_path, push_url: str, play_url: str, seconds: float = 3.0):
    """Push a 1 kHz tone (ffmpeg as live-pusher) and record what live-player gets; the far end
    echoes RTP, so the tone must come back. Returns (dominant frequency, RMS of the tone)."""
    require_binary("ffmpeg")
    log = open(tmp_path / "ffmpeg.log", "ab")
    heard = tmp_path / "heard.flv"
    procs = [
        ffmpeg(["-i", play_url, "-t", str(seconds + 0.5), "-c", "copy", "-y", str(heard)], log),
        ffmpeg(
            ["-re", "-f", "lavfi", "-i", f"sine=f=1000:sample_rate=44100:duration={seconds}", "-c:a", "aac",
             "-ar", "44100", "-ac", "1", "-f", "flv", push_url],
            log,
        ),
    ]
    try:
        yield wait_until(lambda: all(p.poll() is not None for p in procs), timeout=30, what="ffmpeg")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        log.close()
    assert [p.returncode for p in procs] == [0, 0], (tmp_path / "ffmpeg.log").read_text()
    pcm = decode_to_pcm(heard)
    rms = rms_windows(pcm, 16000, 20)
    loud = pcm[rms.repeat(320)[: len(pcm)] > 0.05] if len(rms) else pcm
    assert len(loud) > 16000, f"less than 1 s of tone came back (RMS max {rms.max() if len(rms) else 0:.3f})"
    return dominant_frequency(loud, 16000), float(np.sqrt(np.mean(loud**2)))


@both_media_modes
@pytest_twisted.inlineCallbacks
def test_each_node_registers_its_users_and_an_inbound_call_reaches_only_its_node(cluster_factory, tmp_path):
    cluster = cluster_factory()
    a = yield logged_in(cluster.nodes["A"], "1000")
    b = yield logged_in(cluster.nodes["B"], "1001")
    (contact_a,) = cluster.contacts("1000")
    (contact_b,) = cluster.contacts("1001")
    assert node_of(cluster, contact_a) == "A" and node_of(cluster, contact_b) == "B"

    caller = cluster.caller("1001", scenario="uac_call_wait_bye.xml", rtp_echo=True)
    ring = yield b.wait_event("incoming")
    assert ring["to"] == "1001" and ring["from"] == "pbx"
    yield b.request("answer", {"call": ring["call"]})
    answered = yield b.wait_event("answered")
    freq, level = yield tone_round_trip(tmp_path, ring["push_url"], ring["play_url"])
    print(f"\ninbound call on node B: heard {freq:.1f} Hz (RMS {level:.3f}), codec {answered['codec']}")
    assert abs(freq - 1000) <= 20, freq
    yield b.request("hangup", {"call": ring["call"]})
    yield b.wait_event("hangup")
    assert (yield exit_code(caller)) == 0, caller.explain()
    assert "incoming" not in [name for name, _ in a.events]
    assert cluster.nodes["A"].node.calls.counts()["calls"] == 0
    assert (yield invites_received(cluster.nodes["A"])) == 0
    assert (yield invites_received(cluster.nodes["B"])) == 1
    yield a.close()
    yield b.close()


@pytest_twisted.inlineCallbacks
def test_outbound_calls_of_both_nodes_are_spread_over_the_pbxs(cluster_factory):
    cluster = cluster_factory(pbx_calls=2)
    a = yield logged_in(cluster.nodes["A"], "1000")
    b = yield logged_in(cluster.nodes["B"], "1001")
    for client in (a, a, b, b):  # round-robin: each node's two calls go to both PBXs
        result = yield client.request("call", {"to": "9196"})
        yield client.wait_event("answered")
        yield client.request("hangup", {"call": result["call"]})
        yield client.wait_event("hangup")
    for pbx in cluster.pbxs:
        assert (yield exit_code(pbx)) == 0, pbx.explain()  # exactly two calls each
        froms = pbx.logs_text()
        assert "from=<sip:1000@" in froms and "from=<sip:1001@" in froms, froms
    assert all(no_leaks(gw) for gw in cluster.nodes.values())
    yield a.close()
    yield b.close()


@pytest_twisted.inlineCallbacks
def test_a_user_on_both_nodes_rings_on_both_and_the_first_answer_wins(cluster_factory):
    cluster = cluster_factory()
    a = yield logged_in(cluster.nodes["A"], "1002")
    b = yield logged_in(cluster.nodes["B"], "1002")
    contacts = cluster.contacts("1002")
    assert sorted(node_of(cluster, c) for c in contacts) == ["A", "B"]  # multi-contact registrar

    caller = cluster.caller("1002", hold_ms=1000)
    ring_a = yield a.wait_event("incoming")
    ring_b = yield b.wait_event("incoming")
    yield a.request("answer", {"call": ring_a["call"]})
    # Kamailio CANCELs B's branch once A answered, saying why (RFC 3326)
    lost = yield b.wait_event("hangup")
    print(f"\nB's branch ended: {lost}")
    assert lost["call"] == ring_b["call"] and lost["by"] == "remote"
    assert lost["cause"] == "ORIGINATOR_CANCEL" and lost.get("reason") == "Call completed elsewhere"
    yield a.wait_event("answered")
    ended = yield a.wait_event("hangup")
    assert ended["cause"] == "NORMAL_CLEARING" and ended["by"] == "remote"
    assert (yield exit_code(caller)) == 0, caller.explain()
    assert "answered" not in [name for name, _ in b.events]
    assert all(no_leaks(gw) for gw in cluster.nodes.values())
    yield a.close()
    yield b.close()


@both_media_modes
@pytest_twisted.inlineCallbacks
def test_a_stopped_node_unregisters_its_users_and_the_other_nodes_calls_go_on(cluster_factory):
    cluster = cluster_factory()
    a = yield logged_in(cluster.nodes["A"], "1000")
    b = yield logged_in(cluster.nodes["B"], "1001")
    call_a = yield a.request("call", {"to": "9196"})
    yield a.wait_event("answered")
    call_b = yield b.request("call", {"to": "9196"})
    yield b.wait_event("answered")
    assert cluster.contacts("1000") and cluster.contacts("1001")

    yield cluster.nodes["A"].node.stopService()  # what twistd does on SIGTERM
    assert cluster.contacts("1000") == []
    assert len(cluster.contacts("1001")) == 1
    # A's call was ended with a BYE its PBX answered; B's PBX saw nothing
    ended = [pbx for pbx in cluster.pbxs if pbx.poll() is not None]
    assert len(ended) == 1 and ended[0].poll() == 0, [p.explain() for p in cluster.pbxs]
    yield sleep(1.0)
    assert "hangup" not in [name for name, _ in b.events]
    assert cluster.nodes["B"].node.calls.calls[call_b["call"]].state == "active"
    yield b.request("hangup", {"call": call_b["call"]})
    hangup = yield b.wait_event("hangup")
    assert hangup["by"] == "local"
    (other,) = [pbx for pbx in cluster.pbxs if pbx is not ended[0]]
    assert (yield exit_code(other)) == 0, other.explain()
    assert call_a["call"] not in cluster.nodes["A"].node.calls.calls
    yield b.close()
