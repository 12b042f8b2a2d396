"""The node's one media clock, driven by task.Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from b2bua.media.tick import MAX_CATCH_UP, MediaClock


class Member:
    def __init__(self, name, log, fail=False):
        self.name, self.log, self.fail = name, log, fail

    def tick_up(self, now_ms):
        if self.fail:
            raise RuntimeError("boom")
        self.log.append(("up", self.name, now_ms))

    def tick_down(self, now_ms):
        self.log.append(("down", self.name, now_ms))

    def tick_prepare(self, now_ms):
        self.log.append(("prepare", self.name, now_ms))


def test_every_uplink_goes_before_any_downlink_and_preparing_comes_last():
    clock, log = Clock(), []
    media = MediaClock(clock)
    a, b = Member("a", log), Member("b", log)
    media.add(a)
    media.add(b)
    clock.advance(0.020)
    assert [entry[0] for entry in log] == ["up", "up", "down", "down", "prepare", "prepare"]
    assert {entry[1] for entry in log[:2]} == {"a", "b"}


def test_a_late_reactor_replays_the_missed_ticks_on_the_grid():
    clock, log = Clock(), []
    media = MediaClock(clock)
    media.add(Member("a", log))
    clock.advance(0.060)  # one wake-up, three ticks due
    ups = [t for kind, _, t in log if kind == "up"]
    assert len(ups) == 3 and media.late_ticks == 2
    assert [round(b - a) for a, b in zip(ups, ups[1:], strict=False)] == [20, 20]


def test_far_behind_it_skips_instead_of_bursting():
    clock, log = Clock(), []
    media = MediaClock(clock)
    media.add(Member("a", log))
    clock.advance(0.020 * (MAX_CATCH_UP + 5))
    assert len([e for e in log if e[0] == "up"]) == MAX_CATCH_UP
    assert media.skipped_ticks == 5


def test_a_failing_member_is_dropped_and_the_others_go_on():
    clock, log = Clock(), []
    media = MediaClock(clock)
    bad, good = Member("bad", log, fail=True), Member("good", log)
    media.add(bad)
    media.add(good)
    clock.advance(0.020)
    clock.advance(0.020)
    assert bad not in media.members
    assert [e[1] for e in log if e[0] == "up"] == ["good", "good"]


def test_the_clock_stops_with_its_last_member():
    clock, log = Clock(), []
    media = MediaClock(clock)
    member = Member("a", log)
    media.add(member)
    media.discard(member)
    assert clock.getDelayedCalls() == []


def test_tick_lag_is_measured_against_the_grid():
    from b2bua.media.tick import LAG_BUCKETS_MS

    clock, log = Clock(), []
    media = MediaClock(clock)
    media.add(Member("a", log))
    clock.advance(0.020)  # on time
    clock.advance(0.0231)  # 3.1 ms late
    clock.advance(0.0169)  # back on the grid (the next point is 60 ms)
    clock.advance(0.0287)  # 88.7: tick 80 ran 8.7 ms late
    counts = dict(zip(LAG_BUCKETS_MS, media.lag_counts, strict=True))
    assert counts[1.0] == 2 and counts[5.0] == 1 and counts[10.0] == 1
    assert 8.6 < media.lag_max_ms < 8.8
    clock.advance(0.0513)  # 140: ticks 100, 120, 140 run at once; the first is 40 ms late
    assert media.late_ticks == 2 and sum(media.lag_counts) == 5
    assert media.lag_counts[-1] == 1 and 39.9 < media.lag_max_ms < 40.1


def test_tick_duration_is_measured():
    from b2bua.media.tick import BUSY_BUCKETS_MS

    clock, log, fake = Clock(), [], [0.0]

    class Slow(Member):
        def tick_down(self, now_ms):
            fake[0] += 0.012  # this tick's work: 12 ms on the timer

    media = MediaClock(clock, timer=lambda: fake[0])
    media.add(Slow("a", log))
    clock.advance(0.020)
    clock.advance(0.020)
    counts = dict(zip(BUSY_BUCKETS_MS, media.busy_counts, strict=True))
    assert counts[15.0] == 2 and sum(media.busy_counts) == 2
    assert 11.9 < media.busy_max_ms < 12.1


def test_after_a_skip_the_lag_is_measured_against_the_true_grid():
    clock, log = Clock(), []
    media = MediaClock(clock)
    media.add(Member("a", log))
    clock.advance(0.020 * (MAX_CATCH_UP + 5))  # far behind: some ticks skipped
    before = list(media.lag_counts)
    clock.advance(0.020)  # then on time again
    added = [b - a for a, b in zip(before, media.lag_counts, strict=True)]
    assert added[0] == 1  # ≤ 1 ms late, not 100 ms behind a grid that forgot the skipped ticks


def test_every_tick_is_served_although_the_loop_count_rounds_down():
    # 5 ms steps of task.Clock accumulate float error: LoopingCall's own count lost one there
    clock, log = Clock(), []
    media = MediaClock(clock, interval=0.005)
    media.add(Member("a", log))
    for _ in range(40):
        clock.advance(0.005)
    ups = [t for kind, _, t in log if kind == "up"]
    assert len(ups) == 40
    assert {round(b - a, 6) for a, b in zip(ups, ups[1:], strict=False)} == {5.0}


class Placed(Member):
    def __init__(self, name, log):
        super().__init__(name, log)
        self.placed = None

    def place(self, phase, first_tick):
        self.placed = (phase, first_tick)


def test_members_that_can_be_placed_get_the_least_used_phase_slots():
    from b2bua.media.tick import PHASE_SLOTS

    clock, log = Clock(), []
    media = MediaClock(clock)
    plain = Member("plain", log)  # a member without place() is ticked as before
    media.add(plain)
    clock.advance(0.020 * 3)
    members = [Placed(str(i), log) for i in range(PHASE_SLOTS + 2)]
    for m in members:
        media.add(m)
    phases = [m.placed[0] for m in members]
    assert sorted(phases[:PHASE_SLOTS]) == [i / PHASE_SLOTS for i in range(PHASE_SLOTS)]
    assert phases[PHASE_SLOTS:] == [0.0, 1 / PHASE_SLOTS]  # then the slots fill a second time
    assert {m.placed[1] for m in members} == {media.ticks + 1}  # their first tick is the next one
    media.discard(members[5])  # its slot is the least used again
    newcomer = Placed("new", log)
    media.add(newcomer)
    assert newcomer.placed[0] == phases[5]
    clock.advance(0.020)
    assert ("up", "new", 4 * 20.0) in log and ("prepare", "plain", 4 * 20.0) in log


def test_a_tick_that_overruns_once_is_followed_at_once_not_at_the_next_grid_point():
    """A tick that runs past the next grid point (a burst of work: 23 ms of a 20 ms period) must be
    followed as soon as it ends. Waiting for the grid point after that (as LoopingCall does) sends
    two ticks' RTP together 40 ms later, and when two ticks' work exceeds 20 ms the clock stays
    locked at one doubled tick every 40 ms although the core is idle between them."""
    clock, log = Clock(), []

    class Slow(Member):
        overruns = 1

        def tick_down(self, now_ms):
            super().tick_down(now_ms)
            if self.overruns:
                self.overruns -= 1
                clock.advance(0.023)  # this tick's work takes 23 ms of reactor time

    media = MediaClock(clock)
    media.add(Slow("a", log))
    clock.advance(0.020)  # the first tick (grid 20 ms) runs until 43 ms; the reactor's next turn
    ups = [t for kind, _, t in log if kind == "up"]
    assert ups == [20.0, 43.0], ups  # 40 ms served at once, 3 ms late, not at 60 ms with a catch-up
    clock.advance(0.017)  # 60 ms: back on the grid
    assert [t for kind, _, t in log if kind == "up"][-1] == 60.0
    assert media.late_ticks == 0
