import pytest

from b2bua.ws.ratelimit import TokenBucketLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refused_then_refilled():
    clock = FakeClock()
    limiter = TokenBucketLimiter(6, clock)  # 6 per minute: one token every 10 s
    assert all(limiter.allow("a") for _ in range(6))
    assert not limiter.allow("a")
    assert limiter.retry_after("a") == pytest.approx(10.0)
    clock.now += 9.9
    assert not limiter.allow("a")
    clock.now += 0.2
    assert limiter.allow("a")
    assert not limiter.allow("a")


def test_keys_are_independent():
    clock = FakeClock()
    limiter = TokenBucketLimiter(1, clock)
    assert limiter.allow("a")
    assert not limiter.allow("a")
    assert limiter.allow("b")


def test_refused_attempts_do_not_extend_the_wait():
    clock = FakeClock()
    limiter = TokenBucketLimiter(60, clock, burst=1)
    assert limiter.allow("a")
    for _ in range(10):
        assert not limiter.allow("a")
    clock.now += 1.0
    assert limiter.allow("a")


def test_idle_keys_are_pruned():
    clock = FakeClock()
    limiter = TokenBucketLimiter(60, clock, burst=10)  # full again after 10 s
    for i in range(1000):
        limiter.allow(f"k{i}")
    assert len(limiter) == 1000
    clock.now += 10.0
    limiter.allow("fresh")
    assert len(limiter) == 1


def test_recently_used_keys_are_kept():
    clock = FakeClock()
    limiter = TokenBucketLimiter(60, clock, burst=10)
    limiter.allow("old")
    clock.now += 5
    limiter.allow("new")
    clock.now += 6
    limiter.prune()
    assert len(limiter) == 1
    for _ in range(9):
        assert limiter.allow("new")


def test_hard_cap_on_keys():
    clock = FakeClock()
    limiter = TokenBucketLimiter(1, clock, max_keys=100)
    for i in range(1000):
        limiter.allow(i)
    assert len(limiter) == 100


def test_invalid_arguments():
    with pytest.raises(ValueError):
        TokenBucketLimiter(0, FakeClock())
    with pytest.raises(ValueError):
        TokenBucketLimiter(10, FakeClock(), max_keys=0)
    with pytest.raises(ValueError):
        TokenBucketLimiter(10, FakeClock(), burst=0.5)
