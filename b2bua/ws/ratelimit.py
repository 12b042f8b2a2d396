"""A per-key token bucket with bounded memory (pure: the clock is injected).

Each key (a client IP address for logins) has a bucket of ``burst`` tokens refilled at
``rate_per_minute``; an attempt takes one token. A key whose bucket has had time to refill
completely carries no information, so it is dropped: keys are kept in least-recently-used order
and pruned from the old end on every call, which is O(1) amortised. ``max_keys`` is a hard cap on
top of that; when a flood of distinct keys exceeds it, the least recently used keys are evicted
(they start again with a full bucket: the limiter fails open for them rather than growing).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = ["TokenBucketLimiter"]


class TokenBucketLimiter:
    """``allow(key)`` answers whether one more attempt fits in the key's budget."""

    def __init__(
        self,
        rate_per_minute: float,
        clock: Callable[[], float],
        *,
        burst: float | None = None,
        max_keys: int = 100_000,
    ) -> None:
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._rate = rate_per_minute / 60.0  # tokens per second
        self._burst = float(burst if burst is not None else rate_per_minute)
        if self._burst < 1:
            raise ValueError("burst must be at least 1")
        self._clock = clock
        self._max_keys = max_keys
        self._refill_time = self._burst / self._rate  # empty -> full
        # key -> (tokens, last_update); ordered by last_update (oldest first)
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: Hashable, now: float) -> float:
        entry = self._buckets.get(key)
        if entry is None:
            return self._burst
        tokens, last = entry
        return min(self._burst, tokens + max(0.0, now - last) * self._rate)

    def allow(self, key: Hashable, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket if it holds that many; False otherwise."""
        now = self._clock()
        self.prune(now)
        tokens = self._tokens(key, now)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, key: Hashable, cost: float = 1.0) -> float:
        """Seconds until ``allow(key, cost)`` would succeed (0 when it would now)."""
        missing = cost - self._tokens(key, self._clock())
        return max(0.0, missing / self._rate)

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s bucket (its owner is gone: a closed socket)."""
        self._buckets.pop(key, None)

    def prune(self, now: float | None = None) -> None:
        """Drop keys whose bucket is full again (they would behave exactly like unknown keys)."""
        if now is None:
            now = self._clock()
        buckets = self._buckets
        while buckets:
            key, (_tokens, last) = next(iter(buckets.items()))
            if now - last < self._refill_time:
                break
            del buckets[key]
