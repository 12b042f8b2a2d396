"""Adaptive buffering target, shared by the uplink PCM FIFO and the downlink jitter buffer.

Both buffers are drained by the node's 20 ms media tick, one packet per tick. What matters for
latency is the *spare*: what the buffer still holds after the tick has taken its packet, at its
lowest point. A spare below zero is an underrun (a gap); every millisecond of spare at the lowest
point is delay that never served. The policy keeps that lowest spare near ``target_ms``:

* **Start low.** ``target_ms`` starts at ``floor_ms``.
* **Grow on trouble.** :meth:`AdaptiveTarget.underrun` (an underrun, or a packet that came
  after its turn) raises the target by ``step_up_ms``, up to ``ceiling_ms``; the buffer then
  rebuffers (holds playout) until its spare is back at the new target. Consecutive underrun
  ticks are one event: the first raises, the rebuffering that follows does not raise again.
* **Give back slowly.** The lowest spare is tracked over windows of ``window_ms``. At the end
  of a window without underrun, if that lowest spare reached at least ``target_ms +
  hysteresis_ms`` (by default a packet: the buffer never came within a packet of its target),
  :meth:`AdaptiveTarget.observe` asks the buffer to drop ``excess = lowest spare - target``
  (at most ``max_drop_ms``, in whole ``drop_unit_ms``) of audio.
  After ``calm_ms`` without underrun the target itself steps down by ``step_down_ms`` (not
  below ``floor_ms``), which the next windows then follow by dropping.
* **Back off probing.** If an underrun comes within ``2 × calm_ms`` of a step down, that step
  was too far: the calm period needed before the next step down doubles (up to
  ``calm_max_ms``). A stream whose need is steady thus settles without repeated underruns;
  a calm one keeps the quicker ``calm_ms``.

Time is passed in (ms), so tests drive it with a synthetic schedule.
"""

from __future__ import annotations

import math


class AdaptiveTarget:
    def __init__(
        self,
        floor_ms: float,
        ceiling_ms: float,
        *,
        packet_ms: float = 20,
        step_up_ms: float = 20,
        step_down_ms: float = 20,
        window_ms: float = 2000,
        calm_ms: float = 10000,
        calm_max_ms: float = 60000,
        max_drop_ms: float = 20,
        drop_unit_ms: float = 0,
        hysteresis_ms: float | None = None,
    ) -> None:
        if not 0 <= floor_ms <= ceiling_ms or packet_ms <= 0 or step_up_ms <= 0 or step_down_ms <= 0:
            raise ValueError(
                "need 0 <= floor_ms (%r) <= ceiling_ms (%r) and positive packet and steps"
                % (floor_ms, ceiling_ms)
            )
        self.floor_ms = floor_ms
        self.ceiling_ms = ceiling_ms
        self.packet_ms = packet_ms
        self.step_up_ms = step_up_ms
        self.step_down_ms = step_down_ms
        self.window_ms = window_ms
        self.calm_ms = calm_ms
        self.calm_max_ms = calm_max_ms
        self.max_drop_ms = max_drop_ms
        self.drop_unit_ms = drop_unit_ms  # drops are whole multiples of this (0: any amount)
        # a window's lowest spare must exceed the target by this much for a drop (default: a packet)
        self.hysteresis_ms = packet_ms if hysteresis_ms is None else hysteresis_ms
        self.target_ms = float(floor_ms)
        self.raises = 0
        self.lowers = 0
        self._spare_sum = 0.0
        self._spare_n = 0
        self._calm_needed = calm_ms
        self._window_start: float | None = None
        self._window_min = math.inf
        self._last_trouble: float | None = None  # last underrun (or start)
        self._last_lower: float | None = None
        self._in_underrun = False
        # time-weighted mean of the target, for the leg's statistics
        self._sum = 0.0
        self._span = 0.0
        self._last_t: float | None = None

    @property
    def mean_spare_ms(self) -> float:
        """Mean spare over every observed tick: the delay this buffer really added on average."""
        return self._spare_sum / self._spare_n if self._spare_n else 0.0

    @property
    def mean_target_ms(self) -> float:
        return self._sum / self._span if self._span else self.target_ms

    def _account(self, now_ms: float) -> None:
        if self._last_t is not None and now_ms > self._last_t:
            self._sum += self.target_ms * (now_ms - self._last_t)
            self._span += now_ms - self._last_t
        self._last_t = now_ms

    def _restart(self, now_ms: float) -> None:
        self._window_start = now_ms
        self._window_min = math.inf

    def underrun(self, now_ms: float) -> bool:
        """The buffer ran dry (or a packet came after its turn). True when the target was raised;
        False while the same event goes on (the buffer is rebuffering)."""
        self._account(now_ms)
        self._restart(now_ms)
        self._last_trouble = now_ms
        if self._in_underrun:
            return False
        self._in_underrun = True
        if self._last_lower is not None and now_ms - self._last_lower < 2 * self._calm_needed:
            self._calm_needed = min(self._calm_needed * 2, self.calm_max_ms)
        if self.target_ms >= self.ceiling_ms:
            return False
        self.target_ms = min(self.ceiling_ms, self.target_ms + self.step_up_ms)
        self.raises += 1
        return True

    def observe(self, now_ms: float, spare_ms: float) -> float:
        """One tick played from the buffer, leaving ``spare_ms`` in it. Returns how many ms of
        audio the buffer should drop now (0 almost always)."""
        self._account(now_ms)
        self._in_underrun = False
        if self._window_start is None:
            self._restart(now_ms)
            self._last_trouble = now_ms
        self._spare_sum += spare_ms
        self._spare_n += 1
        if spare_ms < self._window_min:
            self._window_min = spare_ms
        if now_ms - self._window_start < self.window_ms:
            return 0.0
        lowest = self._window_min
        self._restart(now_ms)
        if self.target_ms > self.floor_ms and now_ms - max(
            self._last_trouble, self._last_lower or -math.inf
        ) >= (self._calm_needed):
            self.target_ms = max(self.floor_ms, self.target_ms - self.step_down_ms)
            self._last_lower = now_ms
            self.lowers += 1
        excess = lowest - self.target_ms
        if excess < self.hysteresis_ms or excess <= 0:
            return 0.0
        drop = min(excess, self.max_drop_ms)
        if self.drop_unit_ms:
            drop = self.drop_unit_ms * (drop // self.drop_unit_ms)
        return drop

    def prime_level_ms(self, burst_ms: float) -> float:
        """The level to (re)start playing at, when the buffer is refilled ``burst_ms`` at a time
        and drained a packet per tick: the lowest point comes ceil(burst/packet) - 1 ticks after
        a refill, and must still leave the target after its own packet."""
        burst = max(burst_ms, self.packet_ms)
        return self.target_ms + self.packet_ms * math.ceil(burst / self.packet_ms - 1e-9)
