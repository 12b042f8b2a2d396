"""DTMF as RTP telephone events (RFC 4733 §2.3, events 0-15 of §3.2).

Sans-IO, standard library only.

* :class:`TelephoneEvent` is the 4-byte payload: event, end bit, volume, duration.
* :class:`DtmfSender` turns digits into one packet per media tick. For each digit it sends
  the first packet with the marker bit, then one packet per tick with the same RTP
  timestamp (the event's start) and a duration growing by one packetization interval;
  the packet that reaches the tone length has the end bit and is sent three times in
  all (RFC 4733 §2.5.1.4), on consecutive ticks. The two retransmissions count towards
  the inter-digit gap; the rest of the gap is ticks without a DTMF packet (the caller
  sends audio). Every packet takes a new sequence number.
* :class:`DtmfReceiver` reports each digit once, keyed by the event's RTP timestamp: the
  first packet of a new event reports it, so a lost start packet (or lost marker) costs
  nothing, and retransmitted end packets and late duplicates are ignored.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from dataclasses import dataclass

DIGITS = "0123456789*#ABCD"
_EVENT_OF = {d: i for i, d in enumerate(DIGITS)} | {d.lower(): i + 12 for i, d in enumerate("ABCD")}
_PAYLOAD = struct.Struct("!BBH")


class DtmfError(ValueError):
    """A telephone-event payload or digit string that cannot be used."""


def digit_event(digit: str) -> int:
    """Event code of a DTMF digit (``0``-``9``, ``*`` = 10, ``#`` = 11, ``A``-``D`` = 12-15)."""
    try:
        return _EVENT_OF[digit]
    except KeyError:
        raise DtmfError("not a DTMF digit: %r (allowed: 0-9 * # A-D)" % (digit,))


def event_digit(event: int) -> str | None:
    """The DTMF digit of an event code, or None for other telephone events (flash, tones…)."""
    return DIGITS[event] if 0 <= event < 16 else None


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """The RFC 4733 payload. ``volume`` is the power in -dBm0 (0..63); ``duration`` in
    timestamp units since the event's start."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    @classmethod
    def parse(cls, data: bytes) -> TelephoneEvent:
        """Parse the first event of a payload (later ones, RFC 4733 §2.5.1.5 redundancy, are ignored)."""
        if len(data) < 4:
            raise DtmfError("telephone-event payload of %d bytes, need 4" % len(data))
        event, flags, duration = _PAYLOAD.unpack_from(data)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def serialize(self) -> bytes:
        if not 0 <= self.event <= 255:
            raise DtmfError("event %d out of range 0..255" % self.event)
        if not 0 <= self.volume <= 63:
            raise DtmfError("volume %d out of range 0..63" % self.volume)
        if not 0 <= self.duration <= 0xFFFF:
            raise DtmfError("duration %d out of range 0..65535" % self.duration)
        return _PAYLOAD.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)

    __bytes__ = serialize


@dataclass(frozen=True, slots=True)
class DtmfPacket:
    """What to send on one tick: the payload, the marker bit and the RTP timestamp
    (the event's start, the same for all its packets)."""

    event: TelephoneEvent
    marker: bool
    timestamp: int

    @property
    def payload(self) -> bytes:
        return self.event.serialize()


END_PACKETS = 3


class DtmfSender:
    """Digits to telephone-event packets, one call of :meth:`tick` per packetization interval.

    ``tick(timestamp)`` takes the RTP timestamp the audio packet of this tick would carry
    and returns the packet to send instead, or None (send audio as usual).
    """

    def __init__(
        self,
        clock_rate: int = 8000,
        ptime_ms: int = 20,
        tone_ms: int = 100,
        gap_ms: int = 50,
        volume: int = 10,
    ):
        if clock_rate <= 0 or ptime_ms <= 0:
            raise DtmfError("clock rate and packetization interval must be positive")
        if tone_ms < ptime_ms:
            raise DtmfError("tone of %d ms is shorter than one %d ms packet" % (tone_ms, ptime_ms))
        if gap_ms < 0:
            raise DtmfError("negative inter-digit gap %d ms" % gap_ms)
        if not 0 <= volume <= 63:
            raise DtmfError("volume %d out of range 0..63" % volume)
        self.step = clock_rate * ptime_ms // 1000
        self.tone_ticks = math.ceil(tone_ms / ptime_ms)
        if self.tone_ticks * self.step > 0xFFFF:
            raise DtmfError("tone of %d ms overflows the 16-bit duration at %d Hz" % (tone_ms, clock_rate))
        # Ticks after the end packet before the next digit may start: at least the two
        # end retransmissions.
        self.gap_ticks = max(END_PACKETS - 1, math.ceil(gap_ms / ptime_ms))
        self.volume = volume
        self._queue: deque[int] = deque()
        self._event: int | None = None
        self._start_ts = 0
        self._tick = 0  # ticks since the current event started
        self._idle = 0  # gap ticks still to wait before the next digit

    def send(self, digits: str) -> None:
        """Queue digits; raises :class:`DtmfError` (queuing nothing) on an invalid one."""
        events = [digit_event(d) for d in digits]
        self._queue.extend(events)

    @property
    def busy(self) -> bool:
        """True while a digit, its end retransmissions or queued digits remain."""
        return self._event is not None or bool(self._queue)

    def tick(self, timestamp: int) -> DtmfPacket | None:
        if self._event is None:
            if self._idle:
                self._idle -= 1
                return None
            if not self._queue:
                return None
            self._event = self._queue.popleft()
            self._start_ts = timestamp & 0xFFFFFFFF
            self._tick = 0
        self._tick += 1
        n = self._tick
        end = n >= self.tone_ticks
        duration = min(n, self.tone_ticks) * self.step
        packet = DtmfPacket(TelephoneEvent(self._event, end, self.volume, duration), n == 1, self._start_ts)
        if n >= self.tone_ticks + END_PACKETS - 1:
            self._event = None
            self._idle = self.gap_ticks - (END_PACKETS - 1)
        return packet

    def packets(self, digits: str, timestamp: int = 0) -> list[DtmfPacket | None]:
        """Everything :meth:`tick` returns for ``digits`` from ``timestamp`` on, one item per
        tick, until the last end packet (the trailing gap is not included)."""
        self.send(digits)
        out: list[DtmfPacket | None] = []
        while self.busy:
            out.append(self.tick(timestamp))
            timestamp = (timestamp + self.step) & 0xFFFFFFFF
        return out


class DtmfReceiver:
    """Telephone-event packets to digits, each digit once.

    Events are keyed by RTP timestamp: every packet of one event carries its start
    timestamp (RFC 4733 §2.5.1.2). ``receive`` returns the digit for the first packet seen of
    a new event and None for all others (continuations, end retransmissions, duplicates,
    packets of events already reported, non-DTMF events).
    """

    def __init__(self, history: int = 16):
        self._seen: deque[int] = deque(maxlen=history)
        self._latest: int | None = None
        self.digits_received = 0

    def reset(self) -> None:
        """Forget history (a new SSRC: its timestamps are unrelated)."""
        self._seen.clear()
        self._latest = None

    def receive(self, payload: bytes, timestamp: int) -> str | None:
        event = TelephoneEvent.parse(payload)
        timestamp &= 0xFFFFFFFF
        if timestamp in self._seen:
            return None
        if self._latest is not None:
            behind = (self._latest - timestamp) & 0xFFFFFFFF
            if 0 < behind < 0x80000000:
                return None  # older than the newest event: a late straggler
        self._seen.append(timestamp)
        self._latest = timestamp
        digit = event_digit(event.event)
        if digit is not None:
            self.digits_received += 1
        return digit
