"""Downlink audio jitter buffer: RTP packets in, one frame (or a gap) per 20 ms media tick out.

Time is passed in (``arrival_ms`` to :meth:`JitterBuffer.put`, ``now_ms`` to
:meth:`JitterBuffer.get`), so tests drive it with a synthetic schedule and the node's single
media clock drives all calls in one loop.

Policy, and why
---------------
* **Fixed initial delay.** The first packet (of a stream, or after a resync) opens an
  *epoch*; :meth:`~JitterBuffer.get` returns None until ``target_ms`` after its arrival,
  then one item per call. A telephony stream from a PBX on a LAN or a decent WAN has a few
  tens of ms of jitter; 40 ms absorbs that at a latency cost well inside the downlink budget
  (one AAC frame + 20 ms, DESIGN.md §10), and a fixed target keeps the behaviour predictable.
* **Playout by sequence number.** Packets are kept by extended sequence number, which
  reorders them; the playout point is the next sequence number to play. Each tick plays
  the packet at the playout point as a :class:`Frame`. If it is missing while a later packet
  is already here, it is declared lost and a :class:`Gap` is returned (the decoder conceals
  that many samples). A duplicate, or a packet older than the playout point, is dropped and
  counted (``duplicate``, ``late``); nothing already played or concealed is revisited.
* **Hold on underrun.** When the buffer is empty at a tick, a Gap is returned but the
  playout point does not move (``underruns``): we cannot know yet whether the packet is
  lost or delayed. This is the only way delay grows: it absorbs a sender clock slower than
  ours, network stalls and silence suppression without marker bits, and lets a talkspurt
  continue seamlessly after a pause.
* **Cap at** ``max_ms``. When the span from the playout point to the newest packet exceeds
  ``max_ms`` (a burst after a stall, a sender clock faster than ours), the oldest packets
  are dropped (``overflow``) so latency stays bounded.
* **Resync on discontinuity.** A new SSRC (FreeSWITCH changes it when it re-bridges or
  plays a file), a timestamp jump (against what the sequence number implies) or a
  forward sequence jump larger than ``max_ms``, or a marker bit
  whose timestamp does not follow the stream (a new talkspurt after silence) flushes the
  buffer (``flushed``) and opens a new epoch, which re-establishes ``target_ms`` of delay:
  delay accumulated by underruns is given back at each talkspurt. Stray packets of the
  previous SSRC are then dropped as late rather than flipping back.

Only the stream's audio payload type should be put here: telephone events go to
:class:`b2bua.wire.dtmf.DtmfReceiver`. Their sequence numbers then play as Gaps (the sender
sent no audio for them), and count in ``lost``.
"""

from __future__ import annotations

from dataclasses import dataclass

from b2bua.wire.rtp import RtpPacket, seq_diff, ts_diff

_HISTORY_BITS = 64
_HISTORY_MASK = (1 << _HISTORY_BITS) - 1


@dataclass(frozen=True, slots=True)
class Frame:
    """A packet due for decoding now."""

    packet: RtpPacket

    @property
    def payload(self) -> bytes:
        return self.packet.payload

    @property
    def timestamp(self) -> int:
        return self.packet.timestamp


@dataclass(frozen=True, slots=True)
class Gap:
    """Nothing to decode this tick: conceal ``samples`` samples (at the RTP clock rate)."""

    samples: int


@dataclass(slots=True)
class JitterStats:
    received: int = 0
    lost: int = 0
    late: int = 0
    duplicate: int = 0
    reordered: int = 0
    overflow: int = 0
    flushed: int = 0
    resyncs: int = 0
    underruns: int = 0


class JitterBuffer:
    """One call's downlink audio buffer; see the module docstring for the policy."""

    def __init__(self, clock_rate: int, ptime_ms: int = 20, target_ms: int = 40, max_ms: int = 200):
        if clock_rate <= 0 or ptime_ms <= 0:
            raise ValueError("clock rate and ptime must be positive (got %r, %r)" % (clock_rate, ptime_ms))
        if target_ms < 0 or max_ms < target_ms + ptime_ms:
            raise ValueError(
                "need 0 <= target_ms (%r) and max_ms (%r) >= target_ms + ptime_ms (%r)"
                % (target_ms, max_ms, ptime_ms)
            )
        self.clock_rate = clock_rate
        self.ptime_ms = ptime_ms
        self.target_ms = target_ms
        self.max_ms = max_ms
        self.samples_per_packet = clock_rate * ptime_ms // 1000
        self._max_packets = max_ms // ptime_ms
        self._jump_samples = clock_rate * max_ms // 1000
        self.stats = JitterStats()
        self._ssrc: int | None = None
        self._old_ssrc: int | None = None
        self._packets: dict[int, RtpPacket] = {}
        self._next = 0  # extended sequence number at the playout point
        self._highest = 0  # newest extended sequence number of the epoch
        self._highest_ts = 0
        self._start_ms = 0.0
        self._playing = False
        self._history = 0  # bit i: extended sequence _next - 1 - i was played

    @property
    def depth_ms(self) -> int:
        """Span from the playout point to the newest packet, in ms (0 when empty)."""
        if self._ssrc is None or not self._packets:
            return 0
        return max(0, self._highest - self._next + 1) * self.ptime_ms

    def _resync(self, packet: RtpPacket, arrival_ms: float) -> None:
        if self._ssrc is not None:
            self.stats.resyncs += 1
            self.stats.flushed += len(self._packets)
        self._ssrc = packet.ssrc
        self._packets = {packet.sequence: packet}
        self._next = self._highest = packet.sequence
        self._highest_ts = packet.timestamp
        self._start_ms = arrival_ms
        self._playing = False
        self._history = 0

    def put(self, packet: RtpPacket, arrival_ms: float) -> bool:
        """Accept one received packet; False when it was dropped (duplicate, late)."""
        st = self.stats
        st.received += 1
        if packet.ssrc != self._ssrc:
            if self._ssrc is not None and packet.ssrc == self._old_ssrc:
                st.late += 1
                return False
            if self._ssrc is not None:
                self._old_ssrc = self._ssrc
            self._resync(packet, arrival_ms)
            return True
        highest = self._highest
        ext = highest + seq_diff(packet.sequence, highest & 0xFFFF)
        jump = ts_diff(packet.timestamp, self._highest_ts + (ext - highest) * self.samples_per_packet)
        if (
            abs(jump) > self._jump_samples
            or ext - highest > self._max_packets
            or (packet.marker and jump > 0 and ext > highest)
        ):
            self._resync(packet, arrival_ms)
            return True
        if ext < self._next:
            if not self._playing:
                self._next = ext  # still buffering: nothing played yet, just an earlier packet
            else:
                back = self._next - 1 - ext
                if back < _HISTORY_BITS and self._history >> back & 1:
                    st.duplicate += 1
                else:
                    st.late += 1
                return False
        if ext in self._packets:
            st.duplicate += 1
            return False
        self._packets[ext] = packet
        if ext > highest:
            self._highest = ext
            self._highest_ts = packet.timestamp
        else:
            st.reordered += 1
        while self._highest - self._next + 1 > self._max_packets:
            if self._packets.pop(self._next, None) is not None:
                st.overflow += 1
            else:
                st.lost += 1
            self._advance(False)
        return True

    def _advance(self, played: bool) -> None:
        self._history = ((self._history << 1) | played) & _HISTORY_MASK
        self._next += 1

    def get(self, now_ms: float) -> Frame | Gap | None:
        """What to decode for the tick at ``now_ms``: None while (re)buffering, else one item."""
        if self._ssrc is None:
            return None
        if not self._playing:
            if now_ms < self._start_ms + self.target_ms:
                return None
            self._playing = True
        packet = self._packets.pop(self._next, None)
        if packet is not None:
            self._advance(True)
            return Frame(packet)
        if self._packets:
            self.stats.lost += 1
            self._advance(False)
        else:
            self.stats.underruns += 1
        return Gap(self.samples_per_packet)
