"""Downlink audio jitter buffer: RTP packets in, frames (or gaps) out at the media tick's pace.

Time is passed in (``arrival_ms`` to :meth:`JitterBuffer.put`, ``now_ms`` to
:meth:`JitterBuffer.get`), so tests drive it with a synthetic schedule and the node's single
media clock drives all calls in one loop.

Policy, and why
---------------
* **Initial delay.** The first packet (of a stream, or after a resync) opens an *epoch*;
  :meth:`~JitterBuffer.get` returns None until ``target_ms`` after its arrival, then one item
  per call. Without an ``adaptive`` policy the target is fixed (40 ms by default): a telephony
  stream from a PBX on a LAN or a decent WAN has a few tens of ms of jitter.
* **Adaptive target** (``adaptive=``, a :class:`b2bua.media.adaptive.AdaptiveTarget`; the
  bridge always passes one, starting at 20 ms, steps of one packet, at most 160 ms). The
  target is the *spare* wanted at the lowest point: packets still buffered after the one
  played, in ms. It rises on trouble: an underrun (the buffer empty at a tick) or a packet
  of the stream arriving after its turn (``late``). The buffer then rebuffers: it holds the
  playout point (Gaps, ``stretched`` when packets were there) until its spare is back at the
  new target (at most ``target/ptime + 2`` ticks). When the lowest spare over a 2 s window stayed at
  least one packet above the target, the packet at the playout point is dropped, never
  decoded (``shrunk``): delay given back 20 ms at a time. After 10 s without trouble the
  target steps down by a packet, and the next windows follow it by dropping; a step down
  followed by trouble doubles the calm needed next time (up to 60 s). The learned target
  survives resyncs: a new epoch opens at the current target.
* **Playout by sequence number.** Packets are kept by extended sequence number, which
  reorders them; the playout point is the next sequence number to play. Each tick plays
  the packet at the playout point as a :class:`Frame`. If it is missing while a later packet
  is already here, it is declared lost and a :class:`Gap` is returned (the decoder conceals
  that many samples). A duplicate, or a packet older than the playout point, is dropped and
  counted (``duplicate``, ``late``); nothing already played or concealed is revisited.
* **Hold on underrun.** When the buffer is empty at a tick, a Gap is returned but the
  playout point does not move (``underruns``): we cannot know yet whether the packet is
  lost or delayed. This (and, with an adaptive target, the rebuffering after it) is how
  delay grows: it absorbs a sender clock slower than ours, network stalls and silence
  suppression without marker bits, and lets a talkspurt continue seamlessly after a pause.
  Only an adaptive target's drops (``shrunk``), the cap and resyncs give delay back.
* **Cap at** ``max_ms``. When the span from the playout point to the newest packet exceeds
  ``max_ms`` (a burst after a stall, a sender clock faster than ours), the oldest packets
  are dropped (``overflow``) so latency stays bounded.
* **Resync on discontinuity.** A new SSRC (FreeSWITCH changes it when it re-bridges or
  plays a file), a timestamp jump (against what the sequence number implies) or a
  forward sequence jump larger than ``max_ms``, or a marker bit
  whose timestamp does not follow the stream (a new talkspurt after silence) flushes the
  buffer (``flushed``) and opens a new epoch, which re-establishes ``target_ms`` of delay:
  delay accumulated by underruns beyond the target is given back at each talkspurt.
* **SSRCs come back.** The buffer remembers where each SSRC it switched away from had got to
  (up to :data:`MAX_SOURCES`). A packet of such a source that does not continue it (at or
  before its newest packet), or that comes within ``max_ms`` of the switch (a reordered tail),
  is a stray: dropped as ``late``. A later one is the source back (A→B→A: the far end played a
  prompt, then re-bridged the first party): a resync to it.
* **Any packetization.** The packet duration starts at ``ptime_ms`` (the SDP's) and follows
  the stream: two consecutive packets whose timestamps step by the same other duration
  (5–120 ms) set it (``ptime_changes``). :meth:`JitterBuffer.pull` serves a tick of any length
  with as many packets as its duration needs (10 ms packets: two per 20 ms tick; 30 ms packets:
  two ticks out of three), so the audio out follows the tick clock.

Only the stream's audio payload type should be put here: telephone events go to
:class:`b2bua.wire.dtmf.DtmfReceiver`. Their sequence numbers then play as Gaps (the sender
sent no audio for them), and count in ``lost``.
"""

from __future__ import annotations

from dataclasses import dataclass

from b2bua.media.adaptive import AdaptiveTarget
from b2bua.wire.rtp import RtpPacket, seq_diff, ts_diff

_HISTORY_BITS = 64
MAX_SOURCES = 8  # SSRCs remembered after the buffer switched away from them
MIN_PTIME_MS, MAX_PTIME_MS = 5, 120  # packet durations learnt from the stream's timestamps
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
    stretched: int = 0  # Gaps played to rebuffer up to a raised target while packets were there
    shrunk: int = 0  # packets dropped unplayed because the buffer held more than its target
    ptime_changes: int = 0  # packet durations learnt from the timestamps


class JitterBuffer:
    """One call's downlink audio buffer; see the module docstring for the policy."""

    def __init__(
        self,
        clock_rate: int,
        ptime_ms: int = 20,
        target_ms: int = 40,
        max_ms: int = 200,
        adaptive: AdaptiveTarget | None = None,
    ):
        if clock_rate <= 0 or ptime_ms <= 0:
            raise ValueError("clock rate and ptime must be positive (got %r, %r)" % (clock_rate, ptime_ms))
        if target_ms < 0 or max_ms < target_ms + ptime_ms:
            raise ValueError(
                "need 0 <= target_ms (%r) and max_ms (%r) >= target_ms + ptime_ms (%r)"
                % (target_ms, max_ms, ptime_ms)
            )
        if adaptive is not None and max_ms < adaptive.ceiling_ms + ptime_ms:
            raise ValueError("max_ms (%r) must leave a packet above the adaptive ceiling" % max_ms)
        self._fixed_target = target_ms
        self.adaptive = adaptive
        self.max_ms = max_ms
        self.stats = JitterStats()
        self._set_timing(clock_rate, clock_rate * ptime_ms // 1000)
        self._ssrc: int | None = None
        self._left: dict[int, tuple[int, float]] = {}  # SSRC switched away from: (newest seq, when)
        self._candidate = 0  # a packet duration (samples) seen once, to be confirmed
        self._credit = 0.0  # ms of audio owed to the ticks (pull)
        self._packets: dict[int, RtpPacket] = {}
        self._next = 0  # extended sequence number at the playout point
        self._highest = 0  # newest extended sequence number of the epoch
        self._highest_ts = 0
        self._start_ms = 0.0
        self._playing = False
        self._history = 0  # bit i: extended sequence _next - 1 - i was played
        self._rebuffering = False
        self._held = 0

    def _set_timing(self, clock_rate: int, samples_per_packet: int) -> None:
        self.clock_rate = clock_rate
        self.samples_per_packet = samples_per_packet
        self.ptime_ms = samples_per_packet * 1000 / clock_rate
        self._max_packets = max(2, int(self.max_ms // self.ptime_ms))
        self._jump_samples = clock_rate * self.max_ms // 1000

    def expect_ptime(self, ptime_ms: int) -> None:
        """The SDP announces another packet duration: take it now rather than learn it."""
        self._candidate = 0
        self._set_timing(self.clock_rate, self.clock_rate * ptime_ms // 1000)

    def reconfigure(self, clock_rate: int, ptime_ms: int) -> None:
        """A new codec: what is buffered belongs to the old one. Flush it; the next packet opens
        a new epoch at the current (adaptive) target. Statistics go on."""
        if self._ssrc is not None:
            self.stats.flushed += len(self._packets)
        self._packets = {}
        self._ssrc = None
        self._left.clear()
        self._playing = False
        self._set_timing(clock_rate, clock_rate * ptime_ms // 1000)

    @property
    def ssrc(self) -> int | None:
        """The source playing now."""
        return self._ssrc

    @property
    def target_ms(self) -> float:
        """The initial delay of an epoch (with an adaptive policy: its current target)."""
        return self.adaptive.target_ms if self.adaptive is not None else self._fixed_target

    @property
    def depth_ms(self) -> float:
        """Span from the playout point to the newest packet, in ms (0 when empty)."""
        if self._ssrc is None or not self._packets:
            return 0
        return max(0, self._highest - self._next + 1) * self.ptime_ms

    def _resync(self, packet: RtpPacket, arrival_ms: float) -> None:
        if self._ssrc is not None:
            self.stats.resyncs += 1
            self.stats.flushed += len(self._packets)
            if packet.ssrc != self._ssrc:  # remember where the source we leave had got to
                self._left.pop(self._ssrc, None)
                self._left[self._ssrc] = (self._highest & 0xFFFF, arrival_ms)
                while len(self._left) > MAX_SOURCES:
                    self._left.pop(next(iter(self._left)))
        self._left.pop(packet.ssrc, None)
        self._candidate = 0
        self._ssrc = packet.ssrc
        self._packets = {packet.sequence: packet}
        self._next = self._highest = packet.sequence
        self._highest_ts = packet.timestamp
        self._start_ms = arrival_ms
        self._playing = False
        self._history = 0
        self._rebuffering = False
        self._held = 0

    def put(self, packet: RtpPacket, arrival_ms: float) -> bool:
        """Accept one received packet; False when it was dropped (duplicate, late)."""
        st = self.stats
        st.received += 1
        if packet.ssrc != self._ssrc:
            left = self._left.get(packet.ssrc)
            if left is not None and (
                seq_diff(packet.sequence, left[0]) <= 0 or arrival_ms - left[1] < self.max_ms
            ):
                st.late += 1  # a stray of a source we left, not its return
                return False
            self._resync(packet, arrival_ms)
            return True
        highest = self._highest
        ext = highest + seq_diff(packet.sequence, highest & 0xFFFF)
        if ext == highest + 1:
            self._learn_ptime(ts_diff(packet.timestamp, self._highest_ts))
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
                    if self.adaptive is not None:  # its turn came before it: not enough spare
                        self.adaptive.underrun(arrival_ms)
                        self._rebuffering = True
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

    def _learn_ptime(self, step: int) -> None:
        """The far end packetizes as its timestamps say, whatever the SDP asked: a step seen
        twice in a row between consecutive packets becomes the packet duration."""
        if step == self.samples_per_packet:
            self._candidate = 0
            return
        if not MIN_PTIME_MS * self.clock_rate <= step * 1000 <= MAX_PTIME_MS * self.clock_rate:
            return  # a talkspurt's jump, not a packet
        if step != self._candidate:
            self._candidate = step
            return
        self._candidate = 0
        self.stats.ptime_changes += 1
        self._set_timing(self.clock_rate, step)

    def pull(self, now_ms: float, tick_ms: float = 20) -> list[Frame | Gap] | None:
        """What to decode for a tick of ``tick_ms`` at ``now_ms``: None while (re)buffering
        (nothing is due: the caller plays silence), else the items whose turn came, each
        ``ptime_ms`` long (none when the previous tick's packet still covers this one)."""
        if self._ssrc is None or (not self._playing and now_ms < self._start_ms + self.target_ms):
            self._credit = 0.0
            return None
        self._credit += tick_ms
        out: list[Frame | Gap] = []
        while self._credit > 0 and len(out) < 16:
            item = self.get(now_ms)
            if item is None:  # cannot happen once playing; bounded anyway
                break
            out.append(item)
            self._credit -= self.ptime_ms
        return out

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
        if self.adaptive is not None:
            return self._get_adaptive(now_ms)
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

    def _get_adaptive(self, now_ms: float) -> Frame | Gap:
        policy = self.adaptive
        st = self.stats
        if not self._packets:
            st.underruns += 1
            policy.underrun(now_ms)
            self._rebuffering = True
            self._held += 1
            return Gap(self.samples_per_packet)
        spare = self.depth_ms - self.ptime_ms
        if self._rebuffering:
            if spare < policy.target_ms and self._held < policy.target_ms // self.ptime_ms + 2:
                self._held += 1
                st.stretched += 1
                return Gap(self.samples_per_packet)
            self._rebuffering = False
            self._held = 0
        if self._next not in self._packets:
            st.lost += 1
            self._advance(False)
            return Gap(self.samples_per_packet)
        drop = policy.observe(now_ms, spare)
        for _ in range(int(drop // self.ptime_ms)):
            if self._next + 1 not in self._packets:
                break  # keep a packet to play at this tick
            del self._packets[self._next]
            self._advance(True)  # gone for good: a copy arriving later is a duplicate
            st.shrunk += 1
        packet = self._packets.pop(self._next)
        self._advance(True)
        return Frame(packet)
