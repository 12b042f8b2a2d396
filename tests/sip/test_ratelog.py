"""RateLimitedLog: the first N lines per interval, then one summary line, on a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from b2bua.sip.ratelog import MAX_SOURCES, RateLimitedLog


def make(burst: int = 3, interval: float = 10.0) -> tuple[Clock, RateLimitedLog, list[str]]:
    clock = Clock()
    lines: list[str] = []
    log = RateLimitedLog(clock, burst, interval, Logger(observer=lambda e: lines.append(formatEvent(e))))
    return clock, log, lines


def test_first_lines_then_one_summary_per_interval() -> None:
    clock, log, lines = make(burst=3, interval=10.0)
    results = [log.warn("refused", "10.0.0.9", "refused {n}", n=i) for i in range(1000)]
    assert results == [True] * 3 + [False] * 997
    assert lines == ["refused 0", "refused 1", "refused 2"]
    assert log.suppressed("refused") == 997
    clock.advance(9.9)
    assert len(lines) == 3  # the summary waits for the interval's end
    clock.advance(0.1)
    assert len(lines) == 4
    assert lines[3].startswith("... 997 more refused from 10.0.0.9 (997) in the last 10 s")
    assert log.suppressed("refused") == 0 and clock.getDelayedCalls() == []
    # a new interval: lines again
    assert log.warn("refused", "10.0.0.9", "refused again")
    assert lines[-1] == "refused again"


def test_kinds_are_limited_apart() -> None:
    clock, log, lines = make(burst=1)
    assert log.warn("refused", "a", "r1")
    assert not log.warn("refused", "a", "r2")
    assert log.warn("stray responses", "a", "s1")
    assert not log.warn("stray responses", "b", "s2")
    clock.advance(10)
    summaries = sorted(line for line in lines if line.startswith("..."))
    assert summaries == [
        "... 1 more refused from a (1) in the last 10 s (not logged one by one)",
        "... 1 more stray responses from b (1) in the last 10 s (not logged one by one)",
    ]


def test_summary_names_a_bounded_number_of_sources() -> None:
    clock, log, lines = make(burst=0)
    for i in range(10_000):
        log.warn("refused", f"10.0.{i // 256}.{i % 256}", "x")
    clock.advance(10)
    (summary,) = lines
    assert summary.count("(1)") == MAX_SOURCES
    assert f"other addresses ({10_000 - MAX_SOURCES})" in summary
    assert len(summary) < 1000


def test_quiet_interval_logs_nothing_and_stop_flushes() -> None:
    clock, log, lines = make(burst=1)
    log.warn("bad messages", "a", "one")
    clock.advance(100)
    assert lines == ["one"] and clock.getDelayedCalls() == []
    log.warn("bad messages", "a", "two")
    log.warn("bad messages", "a", "three")
    log.stop()
    assert lines[-1].startswith("... 1 more bad messages from a (1)")
    assert clock.getDelayedCalls() == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RateLimitedLog(Clock(), burst=-1)
    with pytest.raises(ValueError):
        RateLimitedLog(Clock(), interval=0)
