"""Property-based fuzzing of b2bua.wire.sdp: parsing, and offer/answer on whatever parses.

Only :class:`SdpError` (``NegotiationError`` is one) may come out of parsing and negotiating a
remote description; our own descriptions round-trip exactly; memory stays proportional to the input.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from b2bua.wire.sdp import (
    AUDIO_CODECS,
    DIRECTIONS,
    H264,
    MAX_SDP_SIZE,
    SdpError,
    SessionDescription,
    apply_answer,
    make_offer,
    negotiate_answer,
)
from tests.wire.fuzz_support import assert_bounded, fuzz, mutated

_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._"
addresses = st.sampled_from(["192.0.2.1", "10.0.0.5", "0.0.0.0", "2001:db8::1", "::"])
ports = st.integers(0, 65535)
line_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)


@st.composite
def offers(draw: st.DrawFn) -> SessionDescription:
    codecs = draw(st.lists(st.sampled_from(AUDIO_CODECS[:4]), min_size=1, max_size=4, unique=True))
    if draw(st.booleans()):
        codecs.append(AUDIO_CODECS[4])  # telephone-event
    sdp = make_offer(
        draw(addresses),
        draw(st.integers(1, 65535)),
        codecs,
        draw(st.none() | st.integers(1, 65535)),
        direction=draw(st.sampled_from(DIRECTIONS)),
        ptime=draw(st.sampled_from([0, 10, 20, 30, 60])),
        rtcp_mux=draw(st.booleans()),
        session_id=draw(st.integers(1, 2**62)),
        session_version=draw(st.integers(0, 2**32)),
        username=draw(st.text(_TOKEN_CHARS, min_size=1, max_size=10)),
    )
    # lines we keep without interpreting them, in RFC 4566 order
    if draw(st.booleans()):
        sdp.info = draw(line_text)
    sdp.bandwidths += draw(st.lists(st.sampled_from(["AS:64", "TIAS:64000", "CT:1000"]), max_size=2))
    sdp.attributes += draw(st.lists(st.tuples(st.text(_TOKEN_CHARS, min_size=1, max_size=8),
                                              st.none() | line_text), max_size=3))
    for media in sdp.media:
        media.attributes += draw(st.lists(st.tuples(st.sampled_from(["x-foo", "label", "mid", "ssrc"]),
                                                    st.none() | line_text), max_size=3))
    return sdp


def _use(data: bytes | str) -> None:
    """Parse, then do with it what the gateway does with a remote description."""
    try:
        remote = SessionDescription.parse(data)
    except SdpError:
        return
    assert SessionDescription.parse(str(remote)).lines() == remote.lines()
    ours = make_offer("192.0.2.9", 4000, video_port=4002)
    for attempt in (
        lambda: negotiate_answer(remote, AUDIO_CODECS, "192.0.2.9", {"audio": 4000, "video": 4002}),
        lambda: apply_answer(ours, remote),
    ):
        try:
            attempt()
        except SdpError:
            pass


# --- (a) arbitrary input ---------------------------------------------------------------------------


@fuzz(180)
@given(st.binary(max_size=1000))
def test_arbitrary_bytes(data: bytes) -> None:
    _use(data)


@fuzz(180)
@given(st.lists(st.tuples(st.sampled_from("vosicmtabkezpru"), st.text(max_size=40)), max_size=20))
def test_arbitrary_lines(lines: list[tuple[str, str]]) -> None:
    head = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n"
    head += "m=audio 4000 RTP/AVP 0 96\r\n"
    _use(head + "".join("%s=%s\r\n" % line for line in lines))


# --- (b) valid descriptions, mutated ---------------------------------------------------------------


@fuzz(90)
@given(st.data())
def test_mutated_offer(data: st.DataObject) -> None:
    _use(data.draw(mutated(bytes(data.draw(offers())))))


HOSTILE_LINES = [
    "m=audio 99999999999999999999 RTP/AVP 0",
    "m=audio 4000/" + "9" * 5000 + " RTP/AVP 0",
    "m=audio \u00b2 RTP/AVP 0",
    "m=audio 4000 RTP/AVP " + " ".join(["0"] * 2000),
    "a=rtpmap:96 opus/" + "9" * 5000,
    "a=rtpmap:96 opus/48000/" + "9" * 50,
    "a=rtpmap:96 opus/0",
    "a=ptime:" + "9" * 5000,
    "a=maxptime:\u00b2",
    "a=rtcp:4001 IN IP4",
    "a=rtcp:" + "9" * 5000,
    "a=fmtp:96 " + ";" * 5000,
    "c=IN IP9 1.2.3.4",
    "c=IN IP4 " + "1" * 10000,
    "a=sendonly",
    "a=" + "x" * 60000,
]


@fuzz(40)
@given(offers(), st.lists(st.sampled_from(HOSTILE_LINES), min_size=1, max_size=3), st.data())
def test_hostile_lines(offer: SessionDescription, extra: list[str], data: st.DataObject) -> None:
    lines = offer.lines()
    for line in extra:
        lines.insert(data.draw(st.integers(1, len(lines))), line)
    _use("\r\n".join(lines) + "\r\n")


# --- (c) round trips ---------------------------------------------------------------------------------


@fuzz(40)
@given(offers())
def test_round_trip(offer: SessionDescription) -> None:
    text = str(offer)
    parsed = SessionDescription.parse(text)
    assert str(parsed) == text
    assert parsed == offer
    assert SessionDescription.parse(bytes(offer)) == offer


@fuzz(40)
@given(offers())
def test_offer_answer_between_two_of_us(offer: SessionDescription) -> None:
    """Our offer answered by our own negotiator and the answer read back: always agrees on audio."""
    remote = SessionDescription.parse(str(offer))
    if not remote.media[0].port:
        return
    answer, theirs = negotiate_answer(remote, AUDIO_CODECS, "192.0.2.7", {"audio": 5000, "video": 5002})
    ours = apply_answer(offer, SessionDescription.parse(str(answer)))
    assert ours.audio.codec == theirs.audio.codec
    if offer.find("video") is not None:
        assert theirs.video is not None and theirs.video.codec == H264.name


# --- (d) memory bounded by the input ---------------------------------------------------------------


def test_memory_hostile_sdp() -> None:
    base = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    for text in (
        base + "a=x\r\n" * 1000,  # as many lines as allowed, each a tiny attribute
        base.replace(" 0\r\n", " 0" * 30000 + "\r\n"),  # 30,000 formats
        base + "a=rtpmap:0 PCMU/" + "9" * 60000 + "\r\n",
        base + "a=fmtp:0 " + "a=b;" * 15000 + "\r\n",
    ):
        text = text[:MAX_SDP_SIZE]
        # a list entry and a small str per short field: up to ~40 bytes per 2 input bytes
        assert_bounded(SessionDescription.parse, text.encode(), factor=32)
    assert_bounded(SessionDescription.parse, b"a" * (MAX_SDP_SIZE + 1), factor=0)
