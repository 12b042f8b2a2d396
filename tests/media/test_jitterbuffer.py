"""b2bua.media.jitterbuffer: reordering, duplicates, late packets, loss gaps, underruns, resync."""

from __future__ import annotations

import random

import pytest

from b2bua.media.jitterbuffer import Frame, Gap, JitterBuffer
from b2bua.wire.rtp import RtpPacket

SPP = 160  # samples per 20 ms packet at 8000 Hz


def pk(seq: int, ts: int | None = None, ssrc: int = 1, marker: bool = False) -> RtpPacket:
    ts = seq * SPP if ts is None else ts
    return RtpPacket(0, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc, b"%d" % seq, marker)


def run(
    jb: JitterBuffer, arrivals: list[tuple[float, RtpPacket]], ticks: int, start_ms: float = 0
) -> list[Frame | Gap | None]:
    """Drive the buffer like the media clock: every 20 ms, put what has arrived, then get."""
    pending = sorted(arrivals, key=lambda a: a[0])
    out = []
    for k in range(ticks):
        now = start_ms + 20 * k
        while pending and pending[0][0] <= now:
            t, p = pending.pop(0)
            jb.put(p, t)
        out.append(jb.get(now))
    return out


def played(results: list[Frame | Gap | None]) -> list[int | str]:
    """Sequence numbers of frames, 'G' for gaps; leading Nones dropped, others kept as 'N'."""
    out: list[int | str] = []
    for r in results:
        if r is None:
            if out:
                out.append("N")
        elif isinstance(r, Gap):
            out.append("G")
        else:
            out.append(r.packet.sequence)
    return out


def test_nothing_before_first_packet() -> None:
    jb = JitterBuffer(8000)
    assert jb.get(0) is None and jb.depth_ms == 0


def test_initial_buffering_then_in_order() -> None:
    jb = JitterBuffer(8000)
    res = run(jb, [(i * 20 + 2, pk(i)) for i in range(50)], 60)
    # First arrival at 2 ms: nothing until 42 ms, so the first frame plays at the 60 ms tick.
    assert res[:3] == [None, None, None]
    assert isinstance(res[3], Frame) and res[3].payload == b"0" and res[3].timestamp == 0
    assert played(res) == list(range(50)) + ["G"] * 7
    assert (jb.stats.received, jb.stats.lost, jb.stats.late, jb.stats.duplicate) == (50, 0, 0, 0)
    assert jb.stats.underruns == 7  # the stream ended


def test_depth_ms() -> None:
    jb = JitterBuffer(8000)
    for i in range(3):
        jb.put(pk(i), i * 20)
    assert jb.depth_ms == 60
    assert isinstance(jb.get(40), Frame)
    assert jb.depth_ms == 40


def test_random_jitter_is_absorbed() -> None:
    rng = random.Random(5)
    jb = JitterBuffer(8000, target_ms=60)
    arrivals = [(i * 20 + rng.uniform(0, 55), pk(i)) for i in range(200)]
    res = run(jb, arrivals, 215)
    assert played(res)[:200] == list(range(200))
    assert jb.stats.lost == 0 and jb.stats.late == 0 and jb.stats.reordered > 0


def test_reordering() -> None:
    jb = JitterBuffer(8000)
    arrivals = []
    for i in range(0, 40, 2):
        arrivals.append((i * 20 + 1, pk(i + 1)))  # odd packet first
        arrivals.append((i * 20 + 2, pk(i)))
    res = run(jb, arrivals, 45)
    assert played(res)[:40] == list(range(40))
    assert jb.stats.reordered == 20
    assert jb.stats.lost == 0


def test_first_packets_reordered_during_buffering() -> None:
    jb = JitterBuffer(8000)
    jb.put(pk(11), 0)
    jb.put(pk(10), 5)
    assert jb.get(40) is not None
    assert played(run(jb, [], 2, start_ms=60)) == [11, "G"]


def test_duplicates() -> None:
    jb = JitterBuffer(8000)
    arrivals = [(i * 20, pk(i)) for i in range(10)]
    arrivals.append((61, pk(4)))  # duplicate of a packet still in the buffer
    arrivals.append((150, pk(2)))  # duplicate of a packet already played
    res = run(jb, arrivals, 14)
    assert played(res)[:10] == list(range(10))
    assert jb.stats.duplicate == 2 and jb.stats.late == 0


def test_loss_gives_gap() -> None:
    jb = JitterBuffer(8000)
    res = run(jb, [(i * 20, pk(i)) for i in range(12) if i != 5], 14)
    assert played(res)[:12] == [0, 1, 2, 3, 4, "G", 6, 7, 8, 9, 10, 11]
    gap = res[2 + 5]
    assert gap == Gap(SPP)
    assert jb.stats.lost == 1


def test_late_packet_dropped() -> None:
    jb = JitterBuffer(8000)
    arrivals = [(i * 20, pk(i)) for i in range(12) if i != 5]
    arrivals.append((5 * 20 + 150, pk(5)))  # 150 ms late: its turn (at 140 ms) has passed
    res = run(jb, arrivals, 14)
    assert played(res)[:12] == [0, 1, 2, 3, 4, "G", 6, 7, 8, 9, 10, 11]
    assert (jb.stats.lost, jb.stats.late) == (1, 1)


def test_burst_loss() -> None:
    jb = JitterBuffer(8000)
    res = run(jb, [(i * 20, pk(i)) for i in range(20) if not 5 <= i <= 8], 24)
    seq = played(res)
    assert seq[:5] == [0, 1, 2, 3, 4]
    assert seq[5:].count("G") >= 4 and [s for s in seq if s != "G"] == [0, 1, 2, 3, 4] + list(range(9, 20))
    assert jb.stats.lost == 4


def test_underrun_holds_playout() -> None:
    """A 100 ms network stall then a burst: nothing is lost, the delay grows instead."""
    jb = JitterBuffer(8000)
    arrivals = [(i * 20, pk(i)) for i in range(10)]
    arrivals += [(10 * 20 + 100, pk(i)) for i in range(10, 16)]  # held up, then all at once
    arrivals += [(i * 20, pk(i)) for i in range(16, 30)]
    res = run(jb, arrivals, 40)
    seq = played(res)
    assert [s for s in seq if s != "G"] == list(range(30))
    assert jb.stats.lost == 0 and jb.stats.late == 0
    assert jb.stats.underruns >= 3


def test_ssrc_change_resyncs() -> None:
    jb = JitterBuffer(8000)
    old = [(i * 20, pk(i, ssrc=1)) for i in range(10)]
    new = [(200 + i * 20, pk(5000 + i, ts=777777 + i * SPP, ssrc=2)) for i in range(10)]
    res = run(jb, old + new + [(230, pk(10, ssrc=1))], 25)
    seq = played(res)
    assert seq[:8] == list(range(8))
    # Packets 8 and 9 were still buffered when SSRC 2 started: flushed; then 40 ms of rebuffering.
    assert seq[8:10] == ["N", "N"]
    assert seq[10:20] == list(range(5000, 5010))
    assert (jb.stats.resyncs, jb.stats.flushed) == (1, 2)
    assert jb.stats.late == 1  # a stray of the old SSRC, right after the switch, is not its return


def test_a_returning_ssrc_plays_again() -> None:
    """A→B→A: a prompt from the PBX (B), then the first party again (A), which continues its
    own sequence and timestamps."""
    jb = JitterBuffer(8000)
    a1 = [(i * 20, pk(i, ssrc=1)) for i in range(10)]
    b = [(200 + i * 20, pk(5000 + i, ts=777777 + i * SPP, ssrc=2)) for i in range(10)]
    a2 = [(400 + (i - 20) * 20, pk(i, ssrc=1)) for i in range(20, 30)]
    res = run(jb, a1 + b + a2, 35)
    seq = [s for s in played(res) if isinstance(s, int)]
    assert seq[-10:] == list(range(20, 30))  # A is heard again, all of it
    assert jb.stats.late == 0 and jb.stats.resyncs == 2 and jb.ssrc == 1
    # and a stray of B after that (its old sequence) is not a return
    assert not jb.put(pk(5005, ts=777777 + 5 * SPP, ssrc=2), 700)


@pytest.mark.parametrize("ptime", [10, 30, 40, 60])
def test_the_packet_duration_follows_the_stream(ptime: int) -> None:
    """The SDP said 20 ms (or nothing); the far end packetizes otherwise: after two packets the
    buffer plays at their pace, one per ``ptime`` of ticks, without gaps."""
    jb = JitterBuffer(8000, ptime_ms=20)
    step = 8 * ptime
    out: list = []
    arrivals = [(i * ptime, RtpPacket(0, i, i * step, 1, b"%d" % i)) for i in range(3000 // ptime)]
    for k in range(3000 // 20):
        now = 20 * k
        while arrivals and arrivals[0][0] <= now:
            jb.put(arrivals[0][1], now)
            arrivals.pop(0)
        items = jb.pull(now, 20)
        out += items or []
    frames = [i.packet.sequence for i in out if isinstance(i, Frame)]
    assert jb.ptime_ms == ptime and jb.stats.ptime_changes == 1
    assert jb.stats.lost == 0 and jb.stats.late == 0
    assert frames == sorted(frames) and len(frames) >= 3000 // ptime - 200 // ptime
    assert sum(isinstance(i, Gap) for i in out[len(out) // 4 :]) == 0  # steady: no gaps


def test_timestamp_jump_resyncs() -> None:
    jb = JitterBuffer(8000)
    arrivals = [(i * 20, pk(i)) for i in range(10)]
    arrivals += [(i * 20, pk(i, ts=i * SPP + 8000 * 5)) for i in range(10, 20)]  # 5 s jump, no marker
    res = run(jb, arrivals, 25)
    assert jb.stats.resyncs == 1
    assert [s for s in played(res) if isinstance(s, int)] == list(range(8)) + list(range(10, 20))


def test_new_talkspurt_with_marker_resyncs() -> None:
    """Silence suppression: 100 ms without packets, then a marked packet whose timestamp skipped
    the silence. The buffer re-establishes its target delay rather than keep the grown one."""
    jb = JitterBuffer(8000)
    arrivals = [(i * 20, pk(i)) for i in range(10)]
    arrivals += [(100 + i * 20, pk(i, ts=i * SPP + 800, marker=(i == 10))) for i in range(10, 20)]
    res = run(jb, arrivals, 30)
    assert jb.stats.resyncs == 1 and jb.stats.lost == 0
    assert [s for s in played(res) if isinstance(s, int)] == list(range(20))


def test_small_timestamp_jump_without_marker_plays_on() -> None:
    jb = JitterBuffer(8000)
    arrivals = [(i * 20, pk(i)) for i in range(10)]
    arrivals += [(100 + i * 20, pk(i, ts=i * SPP + 800)) for i in range(10, 20)]
    res = run(jb, arrivals, 30)
    assert jb.stats.resyncs == 0 and jb.stats.lost == 0
    assert [s for s in played(res) if isinstance(s, int)] == list(range(20))


def test_marker_with_continuous_timestamp_is_not_a_resync() -> None:
    jb = JitterBuffer(8000)
    run(jb, [(i * 20, pk(i, marker=(i == 5))) for i in range(10)], 12)
    assert jb.stats.resyncs == 0


def test_depth_capped_at_max() -> None:
    jb = JitterBuffer(8000, max_ms=200)
    for i in range(3):
        jb.put(pk(i), i * 20)
    assert isinstance(jb.get(40), Frame)
    for i in range(3, 30):  # a burst of 540 ms of audio at once
        jb.put(pk(i), 50)
        assert jb.depth_ms <= 200
    assert jb.stats.overflow == 30 - 1 - 10
    assert played(run(jb, [], 10, start_ms=60)) == list(range(20, 30))


def test_sequence_wrap() -> None:
    jb = JitterBuffer(8000)
    res = run(jb, [(i * 20, pk(65530 + i, ts=i * SPP)) for i in range(20)], 22)
    assert played(res)[:20] == [(65530 + i) & 0xFFFF for i in range(20)]
    assert jb.stats.lost == 0


def test_wideband_gap_samples() -> None:
    jb = JitterBuffer(16000, ptime_ms=20)
    jb.put(pk(0, ts=0), 0)
    jb.put(pk(2, ts=640), 40)
    assert isinstance(jb.get(40), Frame)
    assert jb.get(60) == Gap(320)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clock_rate": 0},
        {"clock_rate": 8000, "ptime_ms": 0},
        {"clock_rate": 8000, "target_ms": -1},
        {"clock_rate": 8000, "target_ms": 200, "max_ms": 200},
    ],
)
def test_bad_parameters(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        JitterBuffer(**kwargs)
