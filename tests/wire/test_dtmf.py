"""b2bua.wire.dtmf: RFC 4733 telephone-event payloads, the digit sender and receiver."""

from __future__ import annotations

import random

import pytest

from b2bua.wire.dtmf import (
    DtmfError,
    DtmfPacket,
    DtmfReceiver,
    DtmfSender,
    TelephoneEvent,
    digit_event,
    event_digit,
)
from b2bua.wire.rtp import RtpPacket, RtpSender


def test_payload_layout() -> None:
    # RFC 4733 §2.3: event 1, E=1, R=0, volume 10, duration 800.
    data = bytes.fromhex("018a0320")
    ev = TelephoneEvent.parse(data)
    assert ev == TelephoneEvent(event=1, end=True, volume=10, duration=800)
    assert ev.serialize() == data
    assert bytes(TelephoneEvent(11, False, 63, 160)) == bytes.fromhex("0b3f00a0")
    # The reserved bit is ignored on receipt; extra (redundant) events are ignored.
    assert TelephoneEvent.parse(bytes.fromhex("05ca00a0 05ca0140")) == TelephoneEvent(5, True, 10, 160)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_payload_truncated(n: int) -> None:
    with pytest.raises(DtmfError, match="need 4"):
        TelephoneEvent.parse(bytes.fromhex("018a0320")[:n])


def test_payload_serialize_limits() -> None:
    for bad, msg in (
        (TelephoneEvent(256), "event 256"),
        (TelephoneEvent(1, volume=64), "volume 64"),
        (TelephoneEvent(1, duration=0x10000), "duration 65536"),
    ):
        with pytest.raises(DtmfError, match=msg):
            bad.serialize()


def test_random_payloads() -> None:
    rng = random.Random(4733)
    for _ in range(2000):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 8)))
        try:
            ev = TelephoneEvent.parse(data)
        except DtmfError:
            assert len(data) < 4
            continue
        assert ev.serialize() == bytes((data[0], data[1] & 0xBF)) + data[2:4]


def test_digit_mapping() -> None:
    assert [digit_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert digit_event("a") == 12 and digit_event("d") == 15
    assert event_digit(11) == "#" and event_digit(16) is None
    for bad in ("E", "x", " ", "", "12"):
        with pytest.raises(DtmfError, match="not a DTMF digit"):
            digit_event(bad)


def _ev(event: int, end: bool, duration: int, marker: bool, ts: int) -> DtmfPacket:
    return DtmfPacket(TelephoneEvent(event, end, 10, duration), marker, ts)


def test_sender_exact_packets_for_1_hash() -> None:
    packets = DtmfSender().packets("1#", timestamp=1000)
    t2 = 1000 + 8 * 160  # '#' starts after 5 tone ticks + 2 end retransmissions + 1 gap tick
    assert packets == [
        _ev(1, False, 160, True, 1000),
        _ev(1, False, 320, False, 1000),
        _ev(1, False, 480, False, 1000),
        _ev(1, False, 640, False, 1000),
        _ev(1, True, 800, False, 1000),
        _ev(1, True, 800, False, 1000),
        _ev(1, True, 800, False, 1000),
        None,
        _ev(11, False, 160, True, t2),
        _ev(11, False, 320, False, t2),
        _ev(11, False, 480, False, t2),
        _ev(11, False, 640, False, t2),
        _ev(11, True, 800, False, t2),
        _ev(11, True, 800, False, t2),
        _ev(11, True, 800, False, t2),
    ]
    assert packets[0].payload == bytes.fromhex("010a00a0")
    assert packets[4].payload == bytes.fromhex("018a0320")


def test_sender_on_rtp_stream() -> None:
    """Driven by the media tick: each DTMF packet takes a new sequence number, the RTP
    timestamp stays at the event start while the stream's clock keeps running."""
    rtp = RtpSender(ssrc=1, sequence=65534, timestamp=0xFFFFFFC0)
    dtmf = DtmfSender()
    dtmf.send("5")
    sent: list[RtpPacket] = []
    while dtmf.busy:
        d = dtmf.tick(rtp.timestamp)
        assert d is not None
        sent.append(rtp.packet(d.payload, 101, 160, d.marker, timestamp=d.timestamp))
    assert [p.sequence for p in sent] == [65534, 65535, 0, 1, 2, 3, 4]
    assert {p.timestamp for p in sent} == {0xFFFFFFC0}
    assert [p.marker for p in sent] == [True] + [False] * 6
    assert rtp.timestamp == (0xFFFFFFC0 + 7 * 160) & 0xFFFFFFFF
    assert dtmf.tick(rtp.timestamp) is None  # idle: audio again


def test_sender_gap_applies_to_digits_queued_later() -> None:
    s = DtmfSender()
    s.send("1")
    items = [s.tick(i * 160) for i in range(7)]
    assert all(items) and not s.busy
    s.send("2")
    assert s.tick(7 * 160) is None  # the rest of the inter-digit gap
    nxt = s.tick(8 * 160)
    assert nxt is not None and nxt.marker and nxt.event.event == 2


def test_sender_options_and_validation() -> None:
    s = DtmfSender(clock_rate=16000, tone_ms=60, gap_ms=100, volume=5)
    packets = s.packets("*")
    assert [p.event.duration for p in packets if p] == [320, 640, 960, 960, 960]
    assert all(p.event.volume == 5 and p.event.event == 10 for p in packets if p)
    two = DtmfSender(gap_ms=100).packets("00")
    assert two.count(None) == 3  # 5 gap ticks, two of them end retransmissions
    with pytest.raises(DtmfError):
        DtmfSender().send("12x")
    s2 = DtmfSender()
    with pytest.raises(DtmfError):
        s2.send("9E")
    assert not s2.busy  # nothing queued from a rejected string
    for kwargs in ({"tone_ms": 10}, {"gap_ms": -1}, {"volume": 64}, {"tone_ms": 9000}, {"clock_rate": 0}):
        with pytest.raises(DtmfError):
            DtmfSender(**kwargs)


def test_receiver_reports_each_digit_once() -> None:
    rx = DtmfReceiver()
    packets = [p for p in DtmfSender().packets("1#", timestamp=1000) if p]
    digits = [rx.receive(p.payload, p.timestamp) for p in packets]
    assert [d for d in digits if d] == ["1", "#"]
    assert digits[0] == "1" and digits[7] == "#"
    # Everything again (network duplication): nothing new.
    assert all(rx.receive(p.payload, p.timestamp) is None for p in packets)
    assert rx.digits_received == 2


def test_receiver_lost_start_packets() -> None:
    rx = DtmfReceiver()
    packets = [p for p in DtmfSender().packets("123", timestamp=0xFFFFFE00) if p]
    # Lose the first three packets of every digit, marker bits included.
    survivors = [p for i, p in enumerate(packets) if i % 7 >= 3]
    got = [rx.receive(p.payload, p.timestamp) for p in survivors]
    assert [d for d in got if d] == ["1", "2", "3"]
    # Only the end packets survive: still one digit.
    rx2 = DtmfReceiver()
    ends = [p for p in packets if p.event.end]
    assert "".join(d for p in ends if (d := rx2.receive(p.payload, p.timestamp))) == "123"


def test_receiver_ignores_stragglers_and_other_events() -> None:
    rx = DtmfReceiver()
    assert rx.receive(bytes.fromhex("0500 00a0"), 1000) == "5"
    assert rx.receive(bytes.fromhex("0700 00a0"), 2000) == "7"
    assert rx.receive(bytes.fromhex("0980 0320"), 1500) is None  # older than the newest event
    assert rx.receive(bytes.fromhex("1000 00a0"), 3000) is None  # event 16: flash, not a digit
    assert rx.receive(bytes.fromhex("0100 00a0"), 4000) == "1"
    rx.reset()
    assert rx.receive(bytes.fromhex("0100 00a0"), 1000) == "1"  # new SSRC, unrelated timestamps
    with pytest.raises(DtmfError):
        rx.receive(b"\x01", 5000)
