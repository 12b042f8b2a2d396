"""Latency instrumentation of the media bridge, by monkeypatching (no change to b2bua/).

Loaded by ``bench/gwrunner.py --hooks``. It follows samples through the two buffers of
``b2bua.media.bridge.AudioBridge`` and records, with ``time.perf_counter``:

- uplink, per RTMP audio message: from the call of ``AudioBridge.publisher_audio`` (made from
  the RTMP protocol's ``dataReceived``, i.e. at the socket read, after the chunk parser) until
  the RTP packet carrying the message's *last* PCM sample has been written
  (``AudioBridge.tick_up`` returned; the send is a synchronous ``sendto``). The bridge queues
  the raw AAC frames and decodes them when due (``AudioBridge._decode_until``): each frame
  keeps its arrival time until it is decoded, then its samples are counted through
  ``PcmFifo`` by its level before/after each call, FIFO trims included.
- uplink_first, per RTMP audio message: the same, until the RTP packet carrying the message's
  *first* sample has been written. The difference to ``uplink`` is the message's own duration
  (23 ms for 1024 samples at 44.1 kHz), which is not latency the gateway adds. A message
  whose first sample was dropped (trim, or the adaptive FIFO giving delay back) is not counted.
  Drops from the middle of the FIFO (at its quietest point) are counted as if from its head:
  the error is at most the drop (≤ 20 ms, at most once per 2 s per call).
- downlink, per RTP packet: from ``RtpSession._rtp_in`` (the UDP socket's
  ``datagramReceived``) until the FLV tag of the AAC frame holding the packet's last sample has
  been written to the player (``PlayerGroup.send_audio`` returned). The AAC encoder holds one
  frame of look-ahead (``AacEncoder.delay`` = 1024): output frame k covers input samples
  [(k-1)·1024, k·1024), counted from the silence the bridge leads in with (``_aac_lead_in``,
  the phase the media clock gave its frames).
- downlink_first: per AAC frame, from the arrival of the RTP packet holding the frame's *first*
  sample to the frame's write: the worst sample of each frame (framing wait included).

Hook points used: publisher_audio, _decode_until, _drop_quietest, tick_up, pcm_to_players
(AudioBridge), _rtp_in and pull (RtpSession), PlayerGroup.send_audio. All exist as methods,
so no gateway change is needed.
With media workers the same hooks run inside each worker (bench/workerenv/sitecustomize.py).
"""

from __future__ import annotations

import json
import os
import struct
from collections import deque
from time import perf_counter

from b2bua.media import bridge as bridge_mod
from b2bua.media.jitterbuffer import Frame
from b2bua.media.rtp_session import RtpSession
from b2bua.rtmp.streams import PlayerGroup

AAC = 1024
_U32 = struct.Struct(">I")

uplink_ms: list[float] = []
uplink_first_ms: list[float] = []
downlink_ms: list[float] = []
downlink_first_ms: list[float] = []
_current = {"item": None, "bridge": None}


def take() -> dict:
    global uplink_ms, uplink_first_ms, downlink_ms, downlink_first_ms
    out = {
        "uplink_ms": uplink_ms,
        "uplink_first_ms": uplink_first_ms,
        "downlink_ms": downlink_ms,
        "downlink_first_ms": downlink_first_ms,
    }
    uplink_ms, uplink_first_ms, downlink_ms, downlink_first_ms = [], [], [], []
    path = os.environ.get("MPB2BUA_HOOKS_OUT")
    if path:  # loadgen summarises only some keys: every snapshot's summary, one JSON line each
        with open(path, "a") as f:
            f.write(json.dumps({k: _summary(v) for k, v in out.items()}) + "\n")
    return out


def _summary(xs: list[float]) -> dict:
    xs = sorted(xs)
    if not xs:
        return {"n": 0}

    def pct(p: float) -> float:
        return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 2)

    return {"n": len(xs), "p50": pct(50), "p99": pct(99), "max": round(xs[-1], 2)}


def _state(b) -> dict:
    st = b.__dict__.get("_bench")
    if st is None:
        st = b._bench = {
            "up_q": deque(),
            "up_first_q": deque(),
            "up_put": 0,
            "up_arrivals": deque(),  # arrival time of each AAC frame still queued undecoded
            "up_put_now": 0,  # samples decoded into the FIFO during the current tick_up
            "up_removed": 0,
            "arr": {},
            "arr_q": deque(),
            "dl_q": deque(),
            "dl_in": 0,
        }
    return st


def install() -> None:
    AB = bridge_mod.AudioBridge
    # since the RTP session and codec pipeline were split out of the bridge (issue 11 items 1-2):
    # RTP arrives in RtpSession._rtp_in, the downlink pulls a list of items per tick
    orig_pub, orig_up, orig_rtp_in = AB.publisher_audio, AB.tick_up, RtpSession._rtp_in
    orig_decode, orig_drop = AB._decode_until, AB._drop_quietest
    orig_pcm, orig_pull, orig_send = AB.pcm_to_players, RtpSession.pull, PlayerGroup.send_audio

    def publisher_audio(self, timestamp_ms, payload):
        t = perf_counter()
        st = _state(self)
        dropped0 = self.stats.uplink_dropped_ms
        arrivals = st["up_arrivals"]
        arrivals.append(t)  # a raw frame queued (if not, popped again below)
        orig_pub(self, timestamp_ms, payload)
        # _decode_until took the arrival times of what it decoded; one left over means the tag
        # was not queued (a header, or before the decoder)
        while len(arrivals) > len(self._aac_pending):
            arrivals.pop()
        dropped = round((self.stats.uplink_dropped_ms - dropped0) * self.pipeline.sample_rate / 1000)
        if dropped:
            _consume_up(st, dropped, None)

    def _decode_until(self, need):
        st = _state(self)
        arrivals = st["up_arrivals"]
        queued0, level0 = len(self._aac_pending), self.fifo.level()
        orig_decode(self, need)
        frames = queued0 - len(self._aac_pending)
        put = self.fifo.level() - level0
        st["up_put_now"] += put
        times = [arrivals.popleft() for _ in range(min(frames, len(arrivals)))]
        for i, t in enumerate(times):  # the samples shared among the frames decoded, in order
            n = put * (i + 1) // len(times) - put * i // len(times)
            if n > 0:
                st["up_first_q"].append((st["up_put"] + 1, t))  # its first sample's position
                st["up_put"] += n
                st["up_q"].append((st["up_put"], t))

    def _drop_quietest(self, n):  # in tick_prepare: the samples given back are not sent
        dropped0 = self.stats.uplink_dropped_ms
        orig_drop(self, n)
        dropped = round((self.stats.uplink_dropped_ms - dropped0) * self.pipeline.sample_rate / 1000)
        if dropped:
            _consume_up(_state(self), dropped, None)

    def _consume_up(st, n, now):
        st["up_removed"] += n
        q, removed = st["up_q"], st["up_removed"]
        while q and q[0][0] <= removed:
            _, t_arr = q.popleft()
            if now is not None:
                uplink_ms.append((now - t_arr) * 1000)
        q = st["up_first_q"]
        while q and q[0][0] <= removed:
            _, t_arr = q.popleft()
            if now is not None:
                uplink_first_ms.append((now - t_arr) * 1000)

    def tick_up(self, now_ms):
        st = _state(self)
        fifo = self.fifo
        level0 = fifo.level()
        st["up_put_now"] = 0
        orig_up(self, now_ms)
        taken = level0 + st["up_put_now"] - fifo.level()
        if taken > 0:
            _consume_up(st, taken, perf_counter())

    def _rtp_in(self, data, addr):  # RtpSession's: its arrivals kept on the session
        t = perf_counter()
        if len(data) >= 12:
            st = _state(self)
            ts = _U32.unpack_from(data, 4)[0]
            st["arr"][ts] = t
            st["arr_q"].append(ts)
            if len(st["arr_q"]) > 500:
                st["arr"].pop(st["arr_q"].popleft(), None)
        orig_rtp_in(self, data, addr)

    def pull(self, now_ms, tick_ms):
        items = orig_pull(self, now_ms, tick_ms)
        _current["item"] = next((i for i in items or () if isinstance(i, Frame)), None)
        return items

    def pcm_to_players(self, pcm):
        st = _state(self)
        item, _current["item"] = _current["item"], None
        arr = _state(self.session)["arr"]
        t_arr = arr.get(item.timestamp) if isinstance(item, Frame) else None
        if self._audio_base_ms is None and self._aac_lead_in:  # the silence the bridge leads in with
            in_rate = self.aac_encoder.in_rate
            st["dl_in"] += self._aac_lead_in * in_rate // self.aac_rate * self.aac_rate // in_rate
        n = len(pcm) // 2 * self.aac_rate // self.pipeline.sample_rate
        st["dl_in"] += n
        st["dl_q"].append((st["dl_in"] - n, st["dl_in"], t_arr))
        _current["bridge"] = self
        try:
            orig_pcm(self, pcm)
        finally:
            _current["bridge"] = None

    def send_audio(self, timestamp_ms, payload):
        orig_send(self, timestamp_ms, payload)
        b = _current["bridge"]
        if b is None or len(payload) < 2 or payload[1] == 0:
            return
        now = perf_counter()
        st = _state(b)
        # the tag's timestamp counts from the bridge's first audio out (_audio_base_ms), the
        # encoder's samples from 0: without the base, frames map to earlier samples than theirs
        k = round((timestamp_ms - (b._audio_base_ms or 0)) * b.aac_rate / 1000 / AAC)
        start, end = (k - 1) * AAC, k * AAC
        q = st["dl_q"]
        for s0, s1, t_arr in q:  # first sample of the frame
            if s0 <= start < s1:
                if t_arr is not None:
                    downlink_first_ms.append((now - t_arr) * 1000)
                break
        while q and q[0][1] <= end:
            _, _, t_arr = q.popleft()
            if t_arr is not None:
                downlink_ms.append((now - t_arr) * 1000)

    AB.publisher_audio = publisher_audio
    AB._decode_until = _decode_until
    AB._drop_quietest = _drop_quietest
    AB.tick_up = tick_up
    RtpSession._rtp_in = _rtp_in
    AB.pcm_to_players = pcm_to_players
    RtpSession.pull = pull
    PlayerGroup.send_audio = send_audio
