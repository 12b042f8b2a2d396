"""b2bua.media.adaptive and the adaptive jitter buffer, on synthetic schedules (time passed in)."""

from __future__ import annotations

import random

import pytest

from b2bua.media.adaptive import AdaptiveTarget
from b2bua.media.jitterbuffer import Frame, Gap, JitterBuffer
from tests.media.test_jitterbuffer import pk

# --- the policy alone ------------------------------------------------------------------------------


def feed(policy: AdaptiveTarget, start_ms: float, seconds: float, spare_ms: float) -> float:
    """One observation per 20 ms tick; returns the total asked to drop."""
    dropped = 0.0
    for k in range(int(seconds * 50)):
        dropped += policy.observe(start_ms + 20 * k, spare_ms)
    return dropped


def test_underruns_raise_in_steps_once_per_event_up_to_the_ceiling() -> None:
    p = AdaptiveTarget(20, 60, step_up_ms=20)
    assert p.target_ms == 20
    assert p.underrun(0) and p.target_ms == 40
    assert not p.underrun(20) and p.target_ms == 40  # the same event: still rebuffering
    p.observe(40, 40)
    assert p.underrun(60) and p.target_ms == 60
    p.observe(80, 60)
    assert not p.underrun(100) and p.target_ms == 60  # the cap holds
    assert p.raises == 2


def test_calm_lowers_the_target_and_asks_for_drops() -> None:
    p = AdaptiveTarget(20, 160)
    for t in (0, 40, 80):
        p.underrun(t)
        p.observe(t + 20, 0)
    assert p.target_ms == 80
    # the buffer now keeps 80 ms spare at its lowest: right on target, nothing to drop
    assert feed(p, 100, 9.5, 80) == 0 and p.target_ms == 80
    # after 10 s without trouble the target steps down, then the buffer is asked to follow
    dropped = feed(p, 10_000, 1.0, 80)
    assert p.target_ms == 60 and dropped == 20 and p.lowers == 1


def test_excess_alone_is_dropped_at_window_ends_at_most_max_drop() -> None:
    p = AdaptiveTarget(20, 160, window_ms=2000, max_drop_ms=20)
    assert feed(p, 0, 1.9, 100) == 0  # the first window is not over
    assert feed(p, 1900, 0.2, 100) == 20  # lowest spare 100 > target 20 + a packet: drop 20
    assert feed(p, 2100, 2.0, 30) == 0  # 30 < 20 + 20: within the hysteresis
    fine = AdaptiveTarget(10, 100, hysteresis_ms=5)
    assert feed(fine, 0, 2.1, 17) == 7  # PCM: the exact excess beyond 5 ms of hysteresis


def test_failed_probe_doubles_the_calm_needed() -> None:
    p = AdaptiveTarget(20, 160, calm_ms=10_000, calm_max_ms=40_000)
    p.underrun(0)
    p.observe(20, 40)
    feed(p, 40, 10.5, 40)
    assert p.target_ms == 20 and p.lowers == 1
    lowered_at = p._last_lower
    p.underrun(lowered_at + 1000)  # the step down was too far
    p.observe(lowered_at + 1020, 40)
    assert p._calm_needed == 20_000
    feed(p, lowered_at + 1040, 15, 40)
    assert p.target_ms == 40  # 15 s calm is not enough any more
    feed(p, lowered_at + 16_040, 6, 40)
    assert p.target_ms == 20


def test_mean_target_is_time_weighted() -> None:
    p = AdaptiveTarget(20, 100)
    p.observe(0, 20)
    p.observe(1000, 20)
    p.underrun(1000)
    p.observe(2000, 40)
    assert p.mean_target_ms == pytest.approx(30)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        AdaptiveTarget(50, 40)
    with pytest.raises(ValueError):
        JitterBuffer(8000, adaptive=AdaptiveTarget(20, 200), max_ms=200)


# --- the adaptive jitter buffer ----------------------------------------------------------------------


def jb_run(jb: JitterBuffer, arrivals, ticks: int, start_ms: float = 0, phase: float = 0):
    pending = sorted(arrivals, key=lambda a: a[0])
    out = []
    for k in range(ticks):
        now = start_ms + phase + 20 * k
        while pending and pending[0][0] <= now:
            t, p = pending.pop(0)
            jb.put(p, t)
        out.append(jb.get(now))
    return out


def adaptive_jb() -> JitterBuffer:
    return JitterBuffer(8000, 20, 20, max_ms=200, adaptive=AdaptiveTarget(20, 160))


def frames(results) -> list[int]:
    return [r.packet.sequence for r in results if isinstance(r, Frame)]


def test_steady_stream_settles_low() -> None:
    jb = adaptive_jb()
    n = 1000  # 20 s
    res = jb_run(jb, [(i * 20 + 3, pk(i)) for i in range(n)], n)
    assert jb.stats.underruns == 0 and jb.stats.lost == 0 and jb.stats.stretched == 0
    assert frames(res) == list(range(len(frames(res))))
    assert jb.target_ms == 20 and jb.adaptive.raises == 0
    assert jb.adaptive.mean_spare_ms <= 20


def test_jitter_spikes_grow_the_target_and_nothing_is_lost() -> None:
    rng = random.Random(7)
    jb = adaptive_jb()
    arrivals = [(i * 20 + rng.uniform(0, 55), pk(i)) for i in range(2000)]  # 40 s, up to 55 ms late
    res = jb_run(jb, arrivals, 1995, phase=10)
    assert jb.adaptive.raises >= 1 and jb.stats.lost == jb.stats.late  # only late packets are missed
    # the grown delay is kept while the jitter needs it: no gap at all in the last 30 s
    assert not any(isinstance(r, Gap) for r in res[500:])
    assert frames(res) == sorted(set(frames(res)))  # in order, no repeat
    assert jb.stats.shrunk == 0


def test_calm_after_a_stall_gives_the_delay_back_packet_by_packet() -> None:
    jb = adaptive_jb()
    arrivals = [(i * 20 + 3, pk(i)) for i in range(50)]
    arrivals += [(50 * 20 + 160, pk(i)) for i in range(50, 58)]  # a 160 ms stall, then all at once
    arrivals += [(i * 20 + 3, pk(i)) for i in range(58, 2000)]  # then 40 s steady
    res = jb_run(jb, arrivals, 2000)
    assert jb.adaptive.raises == 1 and jb.stats.lost == 0
    grown = 2000 - 1 - frames(res)[-1]  # packets behind when the run stops
    assert jb.stats.shrunk >= 6  # given back, one packet per window
    assert jb.target_ms == 20 and jb.depth_ms <= 40
    assert grown <= 2


def test_target_capped_by_the_ceiling() -> None:
    jb = JitterBuffer(8000, 20, 20, max_ms=120, adaptive=AdaptiveTarget(20, 60))
    arrivals = []
    for i in range(1000):  # every 25th packet 400 ms late: worse than the ceiling can absorb
        arrivals.append((i * 20 + (400 if i % 25 == 0 else 3), pk(i)))
    jb_run(jb, arrivals, 1000)
    assert jb.target_ms == 60 and jb.adaptive.raises == 2
    assert jb.depth_ms <= 120


def test_underrun_holds_then_rebuffers_to_the_raised_target() -> None:
    jb = adaptive_jb()
    arrivals = [(i * 20 + 3, pk(i)) for i in range(20)]
    arrivals += [(i * 20 + 3 + 50, pk(i)) for i in range(20, 80)]  # from here 50 ms later
    res = jb_run(jb, arrivals, 68)
    assert jb.adaptive.raises == 1 and jb.target_ms == 40
    seq = [r.packet.sequence if isinstance(r, Frame) else "G" if isinstance(r, Gap) else None for r in res]
    assert [s for s in seq if isinstance(s, int)][:60] == list(range(60))  # nothing lost or skipped
    # one underrun, then Gaps until 40 ms are spare: then every packet plays
    first_gap = seq.index("G")
    resumed = seq.index(20)
    assert 2 <= resumed - first_gap <= 4 and "G" not in seq[resumed : resumed + 40]
