"""One media clock for the whole node (or media worker): one 20 ms timer drives every call's pacing.

A timer per call would cost a reactor wake-up per call per packet; one tick that walks the
live bridges is what lets a Python process carry hundreds of calls. When the reactor is late,
the missed ticks are replayed at once so every stream keeps its 20 ms grid on average.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from twisted.logger import Logger

log = Logger()

PTIME = 0.020
MAX_CATCH_UP = 5  # beyond 100 ms late, skip ahead instead of bursting
# upper bounds (ms) of the tick-lag histogram: how long after its 20 ms grid point a tick began
LAG_BUCKETS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, float("inf"))
# upper bounds (ms) of the tick-duration histogram: the tick's own work, all calls, both phases
BUSY_BUCKETS_MS = (2.0, 5.0, 10.0, 15.0, 20.0, float("inf"))


# what every member does each tick, in this order, each phase for all members before the next
PHASES = ("tick_up", "tick_down", "tick_prepare")
# members that encode in frames longer than a tick (AAC: 1024 samples, 64 ms at 16 kHz) are
# spread over this many phases of their frame, so their encodings do not all fall in one tick
PHASE_SLOTS = 16


class Ticking(Protocol):
    def tick_up(self, now_ms: float) -> None: ...  # cheap and time-critical: send this tick's RTP

    def tick_down(self, now_ms: float) -> None: ...  # the heavy part: decode, AAC-encode, RTMP out

    def tick_prepare(self, now_ms: float) -> None: ...  # work for the next tick (publisher audio)


class MediaClock:
    def __init__(
        self, reactor, interval: float = PTIME, timer: Callable[[], float] = time.perf_counter
    ) -> None:
        self.reactor = reactor
        self.timer = timer
        self.interval = interval
        self.members: dict[Ticking, int | None] = {}  # member → its phase slot (insertion order)
        self.slot_counts = [0] * PHASE_SLOTS
        self.ticks = 0
        self.late_ticks = 0
        self.skipped_ticks = 0
        # how late each tick began against its grid point: what every call's RTP send inherits
        self.lag_counts = [0] * len(LAG_BUCKETS_MS)
        self.lag_max_ms = 0.0
        # how long the ticks themselves run: near 20 ms, the next tick cannot start on time
        self.busy_counts = [0] * len(BUSY_BUCKETS_MS)
        self.busy_max_ms = 0.0
        self._due: float | None = None  # the grid point of the next tick, reactor seconds
        self._call = None  # the reactor's delayed call of the next tick

    def add(self, member: Ticking) -> None:
        """Tick ``member`` from the next tick on. A member with ``place(phase, first_tick)`` is
        given the least-used phase slot (a fraction of its frame) and the index of its first
        tick: calls that start together (a campaign, a node's restart) would otherwise encode
        their AAC frames in the same ticks, one long tick in three and two short ones."""
        if member in self.members:
            return
        slot = None
        place = getattr(member, "place", None)
        if place is not None:
            counts = self.slot_counts
            slot = counts.index(min(counts))
            counts[slot] += 1
            place(slot / PHASE_SLOTS, self.ticks + 1)
        self.members[member] = slot
        if self._call is None:
            self._due = self.reactor.seconds() + self.interval
            self._schedule()

    def _schedule(self) -> None:
        """The next tick at its grid point, or on the reactor's next turn if that has passed
        (a tick ran long): never at the grid point after it, which would serve two ticks late
        at once, 40 ms apart, and could stay locked there (LoopingCall's way)."""
        delay = max(0.0, self._due - self.reactor.seconds())
        self._call = self.reactor.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        try:
            self._run()
        finally:
            if self.members and self._call is None:
                self._schedule()

    def _halt(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def discard(self, member: Ticking) -> None:
        self._forget(member)
        if not self.members:
            self._halt()

    def _forget(self, member: Ticking) -> None:
        if member in self.members:
            slot = self.members.pop(member)
            if slot is not None:
                self.slot_counts[slot] -= 1

    def stop(self) -> None:
        self.members.clear()
        self.slot_counts = [0] * PHASE_SLOTS
        self._halt()

    @staticmethod
    def _count(counts: list[int], buckets: tuple[float, ...], value: float) -> None:
        for i, bound in enumerate(buckets):
            if value <= bound:
                counts[i] += 1
                return

    def _record_lag(self, now: float, count: int) -> None:
        if self._due is None:
            return
        # the lag of the oldest grid point not yet served: a 30 ms stall replays two ticks, and
        # the first of them is 30 ms late, not 10
        lag_ms = max(0.0, (now - self._due) * 1000.0)
        self._due += count * self.interval
        self._count(self.lag_counts, LAG_BUCKETS_MS, lag_ms)
        if lag_ms > self.lag_max_ms:
            self.lag_max_ms = lag_ms

    def _ticks_due(self, now: float) -> int:
        """How many grid points are due by ``now``, from the clock's own grid (a count from a
        float division of the elapsed time now and then loses one: seen with task.Clock at 5 ms,
        it would cost every call 20 ms of RTP)."""
        if self._due is None:
            return 1
        return int((now - self._due) / self.interval + 1e-3) + 1

    def _run(self) -> None:
        started = self.timer()
        now = self.reactor.seconds()
        count = self._ticks_due(now)
        if count < 1:  # woken before the grid point (float rounding): rescheduled for it
            return
        self._record_lag(now, count)  # the grid moves by every due point, skipped ones included
        if count > 1:
            self.late_ticks += count - 1
        if count > MAX_CATCH_UP:
            self.skipped_ticks += count - MAX_CATCH_UP
            count = MAX_CATCH_UP
        now_ms = now * 1000.0
        for i in range(count):
            self.ticks += 1
            at = now_ms - (count - 1 - i) * self.interval * 1000.0
            members = list(self.members)
            # every call's RTP leaves first, so no packet waits for other calls' AAC encoding;
            # what can wait comes last, inside the tick, so the socket reads between two ticks
            # stay short and the next tick starts on time
            for phase in PHASES:
                for member in members:
                    try:
                        getattr(member, phase)(at)
                    except Exception:
                        log.failure("media {phase} failed for {member!r}", phase=phase, member=member)
                        self._forget(member)
        busy_ms = (self.timer() - started) * 1000.0
        self._count(self.busy_counts, BUSY_BUCKETS_MS, busy_ms)
        if busy_ms > self.busy_max_ms:
            self.busy_max_ms = busy_ms
