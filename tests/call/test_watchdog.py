"""The dead-call watchdog (media.rtp_timeout / media.rtp_hold_timeout), driven with task.Clock."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet.task import Clock

from b2bua.call.calls import Call
from b2bua.call.watchdog import RtpWatchdog
from b2bua.config import ConfigError, MediaConfig, load_config

PBX = ("10.0.0.9", 5000)


class FakeCall:
    """What the watchdog reads of a Call: a packet counter and the media state."""

    def __init__(self) -> None:
        self.packets = 0
        self.expects = True  # sendrecv, nobody holds
        self.remote = PBX

    def media_packets(self) -> int:
        return self.packets

    def media_state(self):
        return self.expects, self.remote


class Harness:
    def __init__(self, rtp_timeout: float = 60.0, hold_timeout: float = 0.0) -> None:
        self.clock = Clock()
        self.ended: list[tuple[FakeCall, str, float]] = []
        self.watchdog = RtpWatchdog(self.clock, rtp_timeout, hold_timeout, self.on_timeout)

    def on_timeout(self, call, reason) -> None:
        self.ended.append((call, reason, self.clock.seconds()))

    def run(self, seconds: float, call: FakeCall | None = None, rtp: bool = False) -> None:
        """Let ``seconds`` pass, one second at a time; with ``rtp`` the call gets 50 packets a second."""
        for _ in range(int(seconds)):
            if rtp and call is not None:
                call.packets += 50
            self.clock.advance(1)


def test_answered_call_without_any_rtp_ends_after_the_timeout():
    h = Harness(rtp_timeout=60)
    call = FakeCall()
    h.run(5)  # ringing/early media: not watched
    h.watchdog.watch(call)  # the answer: the clock starts here
    h.run(59)
    assert h.ended == []
    h.run(1)
    assert h.ended == [(call, "no RTP for 60 s", 65)]
    assert len(h.watchdog) == 0 and h.clock.getDelayedCalls() == []  # the loop stops with no call


def test_rtp_flowing_keeps_the_call_and_its_end_starts_the_count():
    h = Harness(rtp_timeout=10)
    call = FakeCall()
    h.watchdog.watch(call)
    h.run(100, call, rtp=True)
    assert h.ended == []
    h.run(9)  # the PBX died: nothing more comes
    assert h.ended == []
    h.run(2)
    assert [(c, r) for c, r, _ in h.ended] == [(call, "no RTP for 10 s")]
    assert 109 <= h.ended[0][2] <= 111


def test_rtp_resuming_resets_the_count():
    h = Harness(rtp_timeout=10)
    call = FakeCall()
    h.watchdog.watch(call)
    h.run(8)
    call.packets += 1  # one RTCP report
    h.run(8)
    call.packets += 1
    h.run(9)
    assert h.ended == []
    h.run(2)
    assert len(h.ended) == 1


def test_call_held_by_us_is_not_ended_without_a_hold_timeout():
    """We hold (a=sendonly): FreeSWITCH sends no RTP to a held party."""
    h = Harness(rtp_timeout=10, hold_timeout=0)
    call = FakeCall()
    h.watchdog.watch(call)
    h.run(5, call, rtp=True)
    call.expects = False
    h.run(3600)
    assert h.ended == []


def test_call_held_by_the_far_end_uses_the_hold_timeout():
    """The PBX holds us (a=sendonly/inactive toward us, no music on hold): the hold limit applies."""
    h = Harness(rtp_timeout=10, hold_timeout=300)
    call = FakeCall()
    h.watchdog.watch(call)
    h.run(5, call, rtp=True)
    call.expects = False
    h.run(299)
    assert h.ended == []
    h.run(2)
    assert [(c, r) for c, r, _ in h.ended] == [(call, "no RTP for 300 s on hold")]


def test_unhold_restarts_the_count():
    """A call off hold after a long silent hold gets the full rtp_timeout, not an instant end."""
    h = Harness(rtp_timeout=10, hold_timeout=0)
    call = FakeCall()
    h.watchdog.watch(call)
    call.expects = False
    h.run(1000)
    call.expects = True
    h.run(9)
    assert h.ended == []
    h.run(2)
    assert len(h.ended) == 1


def test_media_moved_by_a_reinvite_restarts_the_count():
    h = Harness(rtp_timeout=10)
    call = FakeCall()
    h.watchdog.watch(call)
    h.run(8)
    call.remote = ("10.0.0.10", 6000)
    h.run(9)
    assert h.ended == []
    h.run(2)
    assert len(h.ended) == 1


def test_inactive_session_without_hold_timeout_stays():
    """a=inactive both ways (e.g. a PBX parking the media): nothing is due, nothing ends it."""
    h = Harness(rtp_timeout=10, hold_timeout=0)
    call = FakeCall()
    call.expects = False
    h.watchdog.watch(call)
    h.run(500)
    assert h.ended == []


def test_both_timeouts_off_watch_nothing():
    h = Harness(rtp_timeout=0, hold_timeout=0)
    h.watchdog.watch(FakeCall())
    assert len(h.watchdog) == 0 and h.clock.getDelayedCalls() == []


def test_ended_calls_are_unwatched_and_one_loop_serves_all():
    h = Harness(rtp_timeout=10)
    calls = [FakeCall() for _ in range(3)]
    for call in calls:
        h.watchdog.watch(call)
    assert len(h.clock.getDelayedCalls()) == 1  # one LoopingCall for the node, not one per call
    h.watchdog.unwatch(calls[0])  # hung up normally
    h.run(5, calls[1], rtp=True)
    h.run(11)
    assert sorted(id(c) for c, _, _ in h.ended) == sorted(id(c) for c in calls[1:])
    assert h.clock.getDelayedCalls() == []


def test_a_failing_call_does_not_stop_the_others():
    h = Harness(rtp_timeout=5)
    broken, good = FakeCall(), FakeCall()
    h.watchdog.watch(broken)
    h.watchdog.watch(good)
    broken.media_packets = lambda: 1 / 0
    h.run(6)
    assert [c for c, _, _ in h.ended] == [good]
    assert len(h.watchdog) == 0


def test_config_keys_and_the_shipped_file():
    assert (MediaConfig().rtp_timeout, MediaConfig().rtp_hold_timeout) == (60.0, 0.0)
    with pytest.raises(ConfigError, match="media.rtp_timeout"):
        MediaConfig(rtp_timeout=-1)
    with pytest.raises(ConfigError, match="media.rtp_hold_timeout"):
        MediaConfig(rtp_hold_timeout=-5)
    shipped = load_config(Path(__file__).resolve().parents[2] / "etc" / "mpb2bua.yaml")
    assert (shipped.media.rtp_timeout, shipped.media.rtp_hold_timeout) == (60.0, 0.0)
    assert shipped.sip.session_expires == 1800


def call_with(direction="sendrecv", on_hold=False, held=False, remote_held=False, bridge=None):
    """A Call as the watchdog sees it, with only what media_state/media_packets read."""
    call = Call.__new__(Call)
    audio = SimpleNamespace(
        direction=direction, on_hold=on_hold, remote_addr=PBX[0], remote_port=PBX[1],
        receives=direction in ("sendrecv", "recvonly"),
    )
    call.media = SimpleNamespace(negotiated=SimpleNamespace(audio=audio))
    call.held, call.remote_held = held, remote_held
    call.engine = bridge if bridge is not None else SimpleNamespace(packets_in=0)
    return call


def test_call_media_state_follows_hold_and_sdp_direction():
    assert call_with().media_state() == (True, PBX)
    assert call_with(direction="sendonly", held=True).media_state()[0] is False  # we hold
    assert call_with(direction="recvonly", on_hold=True, remote_held=True).media_state()[0] is False
    assert call_with(direction="inactive").media_state()[0] is False
    assert call_with(remote_held=True).media_state()[0] is False  # their a=sendonly: hold limit
    no_sdp = call_with()
    no_sdp.media.negotiated = None
    assert no_sdp.media_state() == (False, ())


def test_call_media_packets_reads_the_bridge_counter():
    assert call_with().media_packets() == 0
    assert call_with(bridge=SimpleNamespace(packets_in=42)).media_packets() == 42
