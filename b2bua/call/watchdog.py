"""Dead calls: an answered call whose far end sends nothing for too long is ended (MEDIA_TIMEOUT).

A PBX that was killed (or lost its network) sends no BYE: without this the call would stay up
and silent until the user hangs up. Like FreeSWITCH's ``rtp-timeout-sec`` and
``rtp-hold-timeout-sec``, two limits: one while we should receive RTP, one while the call is on
hold either way or the SDP says the far end sends nothing (FreeSWITCH sends no RTP to a party
that holds). The limit that applies, and the silence counted, restart at every change of that
state or of the far end's media address, so a call taken off hold gets the full time.

One LoopingCall per node, once a second, looks at a packet counter per call: no timer per
call and nothing per packet beyond an integer increment in the bridge.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet import task
from twisted.logger import Logger

log = Logger()

CHECK_INTERVAL = 1.0  # seconds between looks: the timeouts are honoured to within this


class Watched(Protocol):
    def media_packets(self) -> int:
        """Packets (RTP or RTCP, audio or video) received from the far end so far; any change
        counts as activity (a new bridge that restarts at 0 too)."""
        ...

    def media_state(self) -> tuple[bool, Hashable]:
        """(whether RTP should come now, anything whose change restarts the count)."""
        ...


@dataclass
class _Watch:
    packets: int
    state: tuple[bool, Hashable]
    since: float  # the last packet, answer or media change


class RtpWatchdog:
    def __init__(
        self,
        clock,
        rtp_timeout: float,
        hold_timeout: float,
        on_timeout: Callable[[Watched, str], None],
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self.clock = clock
        self.rtp_timeout = rtp_timeout
        self.hold_timeout = hold_timeout
        self.on_timeout = on_timeout
        self.interval = interval
        self._watched: dict[Watched, _Watch] = {}
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = clock

    @property
    def enabled(self) -> bool:
        return self.rtp_timeout > 0 or self.hold_timeout > 0

    def __len__(self) -> int:
        return len(self._watched)

    def watch(self, call: Watched) -> None:
        """From now (the answer) the call must show media activity."""
        if not self.enabled:
            return
        self._watched[call] = _Watch(call.media_packets(), call.media_state(), self.clock.seconds())
        if not self._loop.running:
            self._loop.start(self.interval, now=False)

    def unwatch(self, call: Watched) -> None:
        self._watched.pop(call, None)
        if not self._watched and self._loop.running:
            self._loop.stop()

    def stop(self) -> None:
        self._watched.clear()
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        now = self.clock.seconds()
        for call, w in list(self._watched.items()):
            try:
                packets, state = call.media_packets(), call.media_state()
            except Exception:
                log.failure("media watch of {call!r} failed", call=call)
                self.unwatch(call)
                continue
            if packets != w.packets or state != w.state:
                w.packets, w.state, w.since = packets, state, now
                continue
            expects = state[0]
            limit = self.rtp_timeout if expects else self.hold_timeout
            if limit > 0 and now - w.since >= limit:
                self.unwatch(call)
                reason = f"no RTP for {limit:g} s" + ("" if expects else " on hold")
                try:
                    self.on_timeout(call, reason)
                except Exception:
                    log.failure("ending {call!r} on media timeout failed", call=call)
