"""One media clock for the whole node: a single 20 ms LoopingCall drives every call's pacing.

A timer per call would cost a reactor wake-up per call per packet; one tick that walks the
live bridges is what lets a Python process carry hundreds of calls. When the reactor is late,
the missed ticks are replayed at once so every stream keeps its 20 ms grid on average.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet import task
from twisted.logger import Logger

log = Logger()

PTIME = 0.020
MAX_CATCH_UP = 5  # beyond 100 ms late, skip ahead instead of bursting


class Ticking(Protocol):
    def tick_up(self, now_ms: float) -> None: ...  # cheap and time-critical: send this tick's RTP

    def tick_down(self, now_ms: float) -> None: ...  # the heavy part: decode, AAC-encode, RTMP out


class MediaClock:
    def __init__(self, reactor, interval: float = PTIME) -> None:
        self.reactor = reactor
        self.interval = interval
        self.members: set[Ticking] = set()
        self.ticks = 0
        self.late_ticks = 0
        self.skipped_ticks = 0
        self._loop = task.LoopingCall.withCount(self._run)
        self._loop.clock = reactor

    def add(self, member: Ticking) -> None:
        self.members.add(member)
        if not self._loop.running:
            self._loop.start(self.interval, now=False)

    def discard(self, member: Ticking) -> None:
        self.members.discard(member)
        if not self.members and self._loop.running:
            self._loop.stop()

    def stop(self) -> None:
        self.members.clear()
        if self._loop.running:
            self._loop.stop()

    def _run(self, count: int) -> None:
        if count > 1:
            self.late_ticks += count - 1
        if count > MAX_CATCH_UP:
            self.skipped_ticks += count - MAX_CATCH_UP
            count = MAX_CATCH_UP
        now_ms = self.reactor.seconds() * 1000.0
        for i in range(count):
            self.ticks += 1
            at = now_ms - (count - 1 - i) * self.interval * 1000.0
            members = list(self.members)
            # every call's RTP leaves first, so no packet waits for other calls' AAC encoding
            for phase in ("tick_up", "tick_down"):
                for member in members:
                    try:
                        getattr(member, phase)(at)
                    except Exception:
                        log.failure("media {phase} failed for {member!r}", phase=phase, member=member)
                        self.members.discard(member)
