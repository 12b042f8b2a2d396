"""Rate-limited warnings, so that a flood of refused or broken SIP cannot flood the log.

Per kind of event (``refused``, ``bad``, ``stray``): the first ``burst`` lines of each
``interval`` seconds are logged as they come; the rest are only counted, by source address,
and one summary line per kind is logged when the interval ends ("... 19990 more refused
from 127.0.0.2 (19990) ..."). Memory is bounded: at most ``MAX_SOURCES`` addresses are
named per summary, the others are counted together.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

MAX_SOURCES = 16
_log = Logger(namespace="b2bua.sip")


class _Kind:
    __slots__ = ("window_end", "logged", "suppressed", "by_source", "other_sources", "timer")

    def __init__(self) -> None:
        self.window_end = float("-inf")
        self.logged = 0
        self.suppressed = 0
        self.by_source: dict[str, int] = {}
        self.other_sources = 0  # suppressed events from addresses beyond MAX_SOURCES
        self.timer: IDelayedCall | None = None


class RateLimitedLog:
    """``warn(kind, source, format, **fields)``: logs, or counts for the interval's summary."""

    def __init__(
        self, clock: IReactorTime, burst: int = 10, interval: float = 60.0, logger: Logger | None = None
    ) -> None:
        if burst < 0 or not interval > 0:
            raise ValueError("burst must be >= 0 and interval > 0")
        self.clock = clock
        self.burst = burst
        self.interval = interval
        self.log = logger or _log
        self._kinds: dict[str, _Kind] = {}

    def warn(self, kind: str, source: str, format: str, **fields: object) -> bool:
        """Log ``format`` now (True) or count it for the summary (False)."""
        state = self._kinds.get(kind)
        if state is None:
            state = self._kinds[kind] = _Kind()
        now = self.clock.seconds()
        if now >= state.window_end:
            self._flush(kind)
            state.window_end = now + self.interval
            state.logged = 0
        if state.logged < self.burst:
            state.logged += 1
            self.log.warn(format, **fields)
            return True
        state.suppressed += 1
        if source in state.by_source or len(state.by_source) < MAX_SOURCES:
            state.by_source[source] = state.by_source.get(source, 0) + 1
        else:
            state.other_sources += 1
        if state.timer is None:
            state.timer = self.clock.callLater(state.window_end - now, self._flush, kind)
        return False

    def suppressed(self, kind: str) -> int:
        """Events of ``kind`` counted but not yet summarized."""
        state = self._kinds.get(kind)
        return state.suppressed if state is not None else 0

    def _flush(self, kind: str) -> None:
        state = self._kinds[kind]
        if state.timer is not None:
            if state.timer.active():
                state.timer.cancel()
            state.timer = None
        if not state.suppressed:
            return
        top = sorted(state.by_source.items(), key=lambda kv: -kv[1])
        sources = ", ".join(f"{src} ({n})" for src, n in top)
        if state.other_sources:
            sources += f", other addresses ({state.other_sources})"
        self.log.warn(
            "... {n} more {kind} from {sources} in the last {interval:g} s (not logged one by one)",
            n=state.suppressed,
            kind=kind,
            sources=sources,
            interval=self.interval,
        )
        state.suppressed = 0
        state.by_source = {}
        state.other_sources = 0

    def stop(self) -> None:
        """Log what is pending and cancel the timers (at shutdown)."""
        for kind in list(self._kinds):
            self._flush(kind)
