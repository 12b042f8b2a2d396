"""SDP parse/serialize and offer/answer, on SDPs as real peers write them."""

from __future__ import annotations

import pytest

from b2bua.wire.sdp import (
    AUDIO_CODECS,
    Connection,
    Crypto,
    NegotiationError,
    RtpMap,
    SdpError,
    SessionDescription,
    apply_answer,
    make_offer,
    negotiate_answer,
    parse_fmtp,
)


def crlf(text: str) -> str:
    return "".join(line + "\r\n" for line in text.strip().splitlines())


FREESWITCH_OFFER = crlf("""
v=0
o=FreeSWITCH 1712000000 1712000001 IN IP4 10.0.0.5
s=FreeSWITCH
c=IN IP4 10.0.0.5
t=0 0
m=audio 29428 RTP/AVP 0 8 9 102 101 100 13
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:9 G722/8000
a=rtpmap:102 opus/48000/2
a=fmtp:102 useinbandfec=1; maxaveragebitrate=30000; maxplaybackrate=48000; ptime=20; minptime=10; maxptime=40
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=rtpmap:100 telephone-event/48000
a=fmtp:100 0-16
a=rtpmap:13 CN/8000
a=ptime:20
a=sendrecv
a=rtcp:29429 IN IP4 10.0.0.5
""")

BARESIP_OFFER = crlf("""
v=0
o=- 1839293651 2712584218 IN IP4 192.168.1.20
s=-
c=IN IP4 192.168.1.20
t=0 0
m=audio 10612 RTP/AVP 96 9 0 8 101
b=AS:128
a=rtpmap:96 opus/48000/2
a=fmtp:96 stereo=1;sprop-stereo=1
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=rtcp-rsize
a=ssrc:1459712683 cname:8f3c1a2e-1f2b-4a6d-9c0e-2c6b1f0f9a11
a=rtcp-mux
a=ptime:20
a=sendrecv
m=video 10614 RTP/AVPF 100 101
b=AS:1000
a=rtpmap:100 H264/90000
a=fmtp:100 packetization-mode=0;profile-level-id=42e01f
a=rtpmap:101 H264/90000
a=fmtp:101 packetization-mode=1;profile-level-id=42e01f
a=rtcp-fb:* nack pli
a=rtcp-fb:101 ccm fir
a=rtcp-mux
a=sendrecv
""")

SIPP_UAS_ANSWER = crlf("""
v=0
o=user1 53655765 2353687637 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 6000 RTP/AVP 0
a=rtpmap:0 PCMU/8000
""")

KAMAILIO_OFFER = crlf("""
v=0
o=root 1821388917 1821388917 IN IP4 203.0.113.7
s=Asterisk PBX 18.10.0
c=IN IP4 203.0.113.7
b=CT:384
t=0 0
m=audio 17582 RTP/AVP 8 0 3 96
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:3 GSM/8000
a=rtpmap:96 telephone-event/8000
a=fmtp:96 0-16
a=ptime:20
a=maxptime:150
a=sendrecv
a=nortpproxy:yes
""")

ALL_FIXTURES = [FREESWITCH_OFFER, BARESIP_OFFER, SIPP_UAS_ANSWER, KAMAILIO_OFFER]


def offer_with_first(pt: int, text: str = FREESWITCH_OFFER) -> SessionDescription:
    sdp = SessionDescription.parse(text)
    formats = sdp.media[0].formats
    formats.remove(str(pt))
    formats.insert(0, str(pt))
    return sdp


# --- parse and serialize ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ALL_FIXTURES)
def test_round_trip(text: str) -> None:
    sdp = SessionDescription.parse(text)
    assert str(sdp) == text
    assert bytes(sdp) == text.encode()
    assert str(SessionDescription.parse(text.encode())) == text


def test_parse_freeswitch_offer() -> None:
    sdp = SessionDescription.parse(FREESWITCH_OFFER)
    assert sdp.origin.username == "FreeSWITCH"
    assert sdp.origin.session_version == "1712000001"
    assert sdp.connection == Connection("10.0.0.5")
    audio = sdp.media[0]
    assert (audio.kind, audio.port, audio.proto) == ("audio", 29428, "RTP/AVP")
    assert audio.payload_types == [0, 8, 9, 102, 101, 100, 13]
    assert audio.rtpmaps[102] == RtpMap(102, "opus", 48000, 2)
    assert audio.rtpmaps[100] == RtpMap(100, "telephone-event", 48000)
    assert parse_fmtp(audio.fmtp(102) or "")["maxplaybackrate"] == "48000"
    assert audio.fmtp(101) == "0-16"
    assert audio.ptime == 20 and audio.maxptime is None
    assert audio.direction == "sendrecv"
    port, conn = audio.rtcp or (0, None)
    assert port == 29429 and conn == Connection("10.0.0.5")
    assert not audio.rtcp_mux


def test_parse_baresip_offer() -> None:
    sdp = SessionDescription.parse(BARESIP_OFFER)
    audio, video = sdp.media
    assert audio.bandwidths == ["AS:128"]
    assert audio.rtcp_mux and audio.has("rtcp-rsize")
    assert audio.attribute("ssrc") == "1459712683 cname:8f3c1a2e-1f2b-4a6d-9c0e-2c6b1f0f9a11"
    assert video.proto == "RTP/AVPF"
    assert video.rtcp_fb(101) == ["nack pli", "ccm fir"]
    assert video.rtcp_fb(100) == ["nack pli"]


def test_parse_kamailio_offer_keeps_unknown_attributes_and_statics() -> None:
    sdp = SessionDescription.parse(KAMAILIO_OFFER)
    audio = sdp.media[0]
    assert sdp.bandwidths == ["CT:384"]
    assert audio.maxptime == 150
    assert audio.attribute("nortpproxy") == "yes"
    assert audio.rtpmaps[3] == RtpMap(3, "GSM", 8000)


def test_static_payload_types_without_rtpmap() -> None:
    sdp = SessionDescription.parse(crlf(SIPP_UAS_ANSWER.replace("a=rtpmap:0 PCMU/8000\r\n", "")))
    sdp2 = SessionDescription.parse(
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 9 18\r\n"
    )
    assert sdp.media[0].rtpmaps == {0: RtpMap(0, "PCMU", 8000)}
    assert [m.encoding for m in sdp2.media[0].rtpmaps.values()] == ["PCMA", "G722", "G729"]


def test_lf_only_and_missing_t_are_tolerated() -> None:
    text = "v=0\no=- 1 2 IN IP4 1.2.3.4\ns=-\nc=IN IP4 1.2.3.4\nm=audio 4000 RTP/AVP 0\na=sendonly\n"
    sdp = SessionDescription.parse(text)
    assert str(sdp).count("\r\n") == 7
    assert sdp.times == ["0 0"] and sdp.media[0].direction == "sendonly"


def test_media_level_connection_and_session_direction() -> None:
    text = crlf("""
v=0
o=- 1 2 IN IP4 1.2.3.4
s=-
t=0 0
a=recvonly
m=audio 4000 RTP/AVP 0
c=IN IP4 5.6.7.8
m=video 0 RTP/AVP 96
""")
    sdp = SessionDescription.parse(text)
    assert str(sdp) == text
    assert sdp.media_connection(sdp.media[0]) == Connection("5.6.7.8")
    assert sdp.media_direction(sdp.media[0]) == "recvonly"
    assert sdp.find("video") is None


def test_all_line_types_round_trip() -> None:
    text = crlf("""
v=0
o=jdoe 2890844526 2890842807 IN IP4 10.47.16.5
s=SDP Seminar
i=A Seminar on the session description protocol
u=http://www.example.com/seminars/sdp.pdf
e=j.doe@example.com (Jane Doe)
p=+1 617 555-6011
c=IN IP4 224.2.17.12/127
b=AS:256
t=2873397496 2873404696
r=7d 1h 0 25h
z=2882844526 -1h 2898848070 0
k=prompt
a=recvonly
m=audio 49170/2 RTP/AVP 0
i=voice
c=IN IP4 224.2.17.12/127
b=AS:64
k=prompt
a=x-custom
""")
    sdp = SessionDescription.parse(text)
    assert str(sdp) == text
    assert sdp.media[0].port_count == 2
    assert sdp.connection is not None and sdp.connection.host == "224.2.17.12"


BASE = "v=0\r\no=- 1 2 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\r\n",
        "garbage",
        "hello world\r\nthis is not sdp\r\n",
        "v=1\r\no=- 1 2 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n",  # bad version
        "o=- 1 2 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n",  # no v=
        "v=0\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n",  # no o=
        "v=0\r\no=- 1 2 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n",  # no s=
        BASE,  # no m=
        BASE.replace("o=- 1 2 IN IP4 1.2.3.4", "o=- 1 2 IN IP4"),  # short o=
        BASE.replace("o=- 1 2", "o=- x 2") + "m=audio 1 RTP/AVP 0\r\n",  # non-numeric session id
        BASE + "m=audio 70000 RTP/AVP 0\r\n",  # port out of range
        BASE + "m=audio -1 RTP/AVP 0\r\n",
        BASE + "m=audio abc RTP/AVP 0\r\n",
        BASE + "m=audio 4000/x RTP/AVP 0\r\n",
        BASE + "m=audio 4000 RTP/AVP\r\n",  # no formats
        BASE + "m=audio 4000 RTP/AVP 128\r\n",  # payload type out of range
        BASE + "m=audio 4000 RTP/AVP PCMU\r\n",
        BASE + "m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 opus\r\n",  # no clock rate
        BASE + "m=audio 4000 RTP/AVP 96\r\na=rtpmap:x opus/48000\r\n",
        BASE + "m=audio 4000 RTP/AVP 96\r\na=rtpmap:200 opus/48000\r\n",
        BASE + "m=audio 4000 RTP/AVP 0\r\na=ptime:twenty\r\n",
        BASE + "m=audio 4000 RTP/AVP 0\r\na=rtcp:99999\r\n",
        BASE + "m=audio 4000 RTP/AVP 0\r\na=rtcp:4001 IN IP4\r\n",
        BASE + "m=audio 4000 RTP/AVP 0\r\na=fmtp:\r\n",
        BASE + "m=audio 4000 RTP/AVP 0\r\na=bad name\r\n",
        BASE + "m=audio 4000 RTP/AVP 0\r\ns=again\r\n",  # s= in a media section
        BASE + "x=unknown\r\nm=audio 4000 RTP/AVP 0\r\n",
        BASE + "M=audio 4000 RTP/AVP 0\r\n",
        BASE + "m=audio 4000 RTP/AVP 0\r\nthis line is garbage\r\n",
        BASE.replace("c=IN IP4 1.2.3.4\r\n", "") + "m=audio 4000 RTP/AVP 0\r\n",  # no c=
        BASE.replace("c=IN IP4 1.2.3.4", "c=IN IPX 1.2.3.4") + "m=audio 4000 RTP/AVP 0\r\n",
        BASE.replace("t=0 0", "t=now") + "m=audio 4000 RTP/AVP 0\r\n",
        BASE + "v=0\r\nm=audio 4000 RTP/AVP 0\r\n",
        BASE + "m=audio 4000 RTP/AVP 0\r\n" + "a=x\r\n" * 2000,  # too many lines
    ],
)
def test_malformed_raises_sdp_error(text: str) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(text)


# Found by fuzzing: str.isdigit() accepts "²" (which int() refuses) and int() refuses more than
# 4300 digits, both with a plain ValueError instead of SdpError.
@pytest.mark.parametrize(
    "text",
    [
        BASE + "m=audio \u00b2 RTP/AVP 0\r\n",
        BASE + "m=audio " + "9" * 5000 + " RTP/AVP 0\r\n",
        BASE + "m=audio 4000/\u00b2 RTP/AVP 0\r\n",
        BASE + "m=audio 4000/" + "9" * 5000 + " RTP/AVP 0\r\n",
        BASE + "m=audio 4000 RTP/AVP \u00b2\r\n",
        BASE + "m=audio 4000 RTP/AVP 0\r\na=ptime:\u00b2\r\n",
        BASE + "m=audio 4000 RTP/AVP 0\r\na=maxptime:" + "9" * 5000 + "\r\n",
        BASE + "m=audio 4000 RTP/AVP 0\r\na=rtcp:\u00b2\r\n",
        BASE + "m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 opus/" + "9" * 5000 + "\r\n",
        BASE + "m=audio 4000 RTP/AVP 96\r\na=rtpmap:\u0669\u0666 opus/48000\r\n",  # ARABIC-INDIC 96
    ],
)
def test_non_ascii_and_huge_numbers_raise_sdp_error(text: str) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(text)


def test_malformed_bytes() -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(b"v=0\r\n\xff\xfe\r\n")
    with pytest.raises(SdpError):
        SessionDescription.parse(b"v=0\r\n" + b"a=" + b"x" * 70000 + b"\r\n")
    assert issubclass(SdpError, ValueError) and issubclass(NegotiationError, SdpError)


# --- our offer -------------------------------------------------------------------------------------------


def test_make_offer_default() -> None:
    offer = make_offer("192.0.2.10", 40000, session_id=42)
    assert str(offer) == crlf("""
v=0
o=mpb2bua 42 1 IN IP4 192.0.2.10
s=mpb2bua
c=IN IP4 192.0.2.10
t=0 0
m=audio 40000 RTP/AVP 0 8 9 111 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:9 G722/8000
a=rtpmap:111 opus/48000/2
a=fmtp:111 useinbandfec=1; minptime=10
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
""")
    assert str(SessionDescription.parse(str(offer))) == str(offer)


def test_make_offer_with_video_hold_and_mux() -> None:
    offer = make_offer(
        "2001:db8::1",
        40000,
        ["opus", "PCMA"],
        video_port=40002,
        direction="sendonly",
        rtcp_mux=True,
        session_id=7,
        session_version=3,
    )
    text = str(offer)
    assert "o=mpb2bua 7 3 IN IP6 2001:db8::1\r\n" in text and "c=IN IP6 2001:db8::1\r\n" in text
    assert "m=audio 40000 RTP/AVP 111 8\r\n" in text and "telephone-event" not in text
    assert text.endswith(
        crlf("""
m=video 40002 RTP/AVP 96
a=rtpmap:96 H264/90000
a=fmtp:96 profile-level-id=42e01f;packetization-mode=1
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtcp-fb:96 ccm fir
a=rtcp-mux
a=sendonly
""")
    )
    assert offer.media[0].rtcp_mux and offer.media[0].direction == "sendonly"
    with pytest.raises(ValueError):
        make_offer("1.2.3.4", 4000, ["telephone-event"])
    with pytest.raises(ValueError):
        make_offer("1.2.3.4", 4000, ["GSM"])


# --- answering a remote offer -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "pt, codec, clock, channels",
    [(0, "PCMU", 8000, 1), (8, "PCMA", 8000, 1), (9, "G722", 8000, 1), (102, "opus", 48000, 1)],
)
def test_negotiate_each_codec_in_the_offerers_order(pt: int, codec: str, clock: int, channels: int) -> None:
    offer = offer_with_first(pt)
    answer, media = negotiate_answer(offer, AUDIO_CODECS, "192.0.2.10", 40000, session_id=9)
    audio = media.audio
    assert (audio.codec, audio.payload_type, audio.clock_rate, audio.channels) == (codec, pt, clock, channels)
    assert (audio.remote_addr, audio.remote_port, audio.remote_rtcp_port) == ("10.0.0.5", 29428, 29429)
    assert audio.direction == "sendrecv" and not audio.on_hold and audio.ptime == 20
    assert audio.sample_rate == (16000 if codec == "G722" else clock)
    # telephone-event at the codec's clock: 100 (48000) with opus, 101 (8000) otherwise
    dtmf = 100 if codec == "opus" else 101
    assert (audio.dtmf_payload_type, audio.dtmf_clock_rate) == (dtmf, clock)
    section = answer.media[0]
    assert section.port == 40000 and section.payload_types == [pt, dtmf]
    assert section.rtpmaps[pt].encoding == codec and section.direction == "sendrecv"
    assert not section.rtcp_mux and media.video is None
    assert str(SessionDescription.parse(str(answer))) == str(answer)


def test_negotiate_respects_our_codecs() -> None:
    offer = offer_with_first(102)
    _, media = negotiate_answer(offer, ["PCMA", "telephone-event"], "192.0.2.10", 40000)
    assert (media.audio.codec, media.audio.payload_type) == ("PCMA", 8)
    answer, media = negotiate_answer(offer, ["G722"], "192.0.2.10", 40000)
    assert media.audio.codec == "G722" and media.audio.dtmf_payload_type is None
    assert answer.media[0].payload_types == [9]
    with pytest.raises(NegotiationError):
        negotiate_answer(SessionDescription.parse(KAMAILIO_OFFER), ["opus", "G722"], "192.0.2.10", 40000)


def test_negotiate_kamailio_offer_keeps_telephone_event_96() -> None:
    answer, media = negotiate_answer(
        SessionDescription.parse(KAMAILIO_OFFER), AUDIO_CODECS, "192.0.2.10", 40000
    )
    assert (media.audio.codec, media.audio.payload_type, media.audio.dtmf_payload_type) == ("PCMA", 8, 96)
    assert answer.media[0].payload_types == [8, 96]
    assert answer.media[0].rtpmaps[96] == RtpMap(96, "telephone-event", 8000)
    assert answer.media[0].fmtp(96) == "0-16"
    assert media.audio.remote_rtcp_port == 17583


def test_negotiate_baresip_offer_opus_stereo_mux_and_video() -> None:
    offer = SessionDescription.parse(BARESIP_OFFER)
    answer, media = negotiate_answer(offer, AUDIO_CODECS, "192.0.2.10", {"audio": 40000, "video": 40002})
    audio, video = media.audio, media.video
    assert (audio.codec, audio.payload_type, audio.channels) == ("opus", 96, 2)
    assert audio.fmtp == {"stereo": "1", "sprop-stereo": "1"}
    assert audio.rtcp_mux and audio.remote_rtcp_port == 10612
    assert audio.dtmf_payload_type == 101 and answer.media[0].fmtp(101) == "0-15"
    assert answer.media[0].rtcp_mux and answer.media[0].fmtp(96) == "useinbandfec=1; minptime=10"
    assert video is not None
    assert (video.codec, video.payload_type, video.remote_port) == ("H264", 101, 10614)
    assert video.rtcp_fb == ["nack pli", "ccm fir"]
    section = answer.media[1]
    assert (section.kind, section.port, section.proto, section.payload_types) == (
        "video",
        40002,
        "RTP/AVPF",
        [101],
    )
    assert parse_fmtp(section.fmtp(101) or "")["packetization-mode"] == "1"
    # No video port: video rejected, m= lines kept in number and order.
    answer, media = negotiate_answer(offer, AUDIO_CODECS, "192.0.2.10", 40000, rtcp_mux=False)
    assert media.video is None and [m.port for m in answer.media] == [40000, 0]
    assert answer.media[1].formats == ["100", "101"]
    assert not media.audio.rtcp_mux and media.audio.remote_rtcp_port == 10613


def test_negotiate_rejects_unusable_sections() -> None:
    text = crlf("""
v=0
o=- 1 1 IN IP4 10.0.0.9
s=-
c=IN IP4 10.0.0.9
t=0 0
m=audio 5000 RTP/SAVP 0
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVzcyAoc2VuZGluZyk=
m=image 5002 udptl t38
m=audio 5004 RTP/AVP 18 8
m=audio 5006 RTP/AVP 0
m=video 5008 RTP/AVP 31
""")
    answer, media = negotiate_answer(
        SessionDescription.parse(text), AUDIO_CODECS, "192.0.2.10", {"audio": 40000, "video": 40002}
    )
    assert [m.port for m in answer.media] == [0, 0, 40000, 0, 0]
    assert [m.kind for m in answer.media] == ["audio", "image", "audio", "audio", "video"]
    assert (media.audio.codec, media.audio.remote_port, media.video) == ("PCMA", 5004, None)
    assert str(SessionDescription.parse(str(answer))) == str(answer)


@pytest.mark.parametrize(
    "offered, answered, ours, hold",
    [
        ("sendrecv", "sendrecv", "sendrecv", False),
        ("sendonly", "recvonly", "recvonly", True),
        ("recvonly", "sendonly", "sendonly", False),
        ("inactive", "inactive", "inactive", True),
    ],
)
def test_hold_and_resume_mirror_direction(offered: str, answered: str, ours: str, hold: bool) -> None:
    offer = SessionDescription.parse(FREESWITCH_OFFER.replace("a=sendrecv", "a=" + offered))
    answer, media = negotiate_answer(offer, AUDIO_CODECS, "192.0.2.10", 40000)
    assert answer.media[0].direction == answered
    assert media.audio.direction == ours and media.on_hold is hold
    assert media.audio.sends is (ours in ("sendrecv", "sendonly"))


def test_hold_by_zero_connection_address() -> None:
    offer = SessionDescription.parse(FREESWITCH_OFFER.replace("c=IN IP4 10.0.0.5", "c=IN IP4 0.0.0.0"))
    answer, media = negotiate_answer(offer, AUDIO_CODECS, "192.0.2.10", 40000)
    assert media.on_hold and media.audio.remote_addr == "0.0.0.0"
    assert media.audio.direction == "recvonly" and not media.audio.sends


def test_we_hold_in_our_answer() -> None:
    offer = SessionDescription.parse(FREESWITCH_OFFER)
    answer, media = negotiate_answer(offer, AUDIO_CODECS, "192.0.2.10", 40000, direction="sendonly")
    assert answer.media[0].direction == "sendonly" and media.audio.direction == "sendonly"
    assert not media.on_hold


def test_negotiate_without_audio() -> None:
    text = BASE + "m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    with pytest.raises(NegotiationError):
        negotiate_answer(SessionDescription.parse(text), AUDIO_CODECS, "192.0.2.10", 40000)
    rejected = SIPP_UAS_ANSWER.replace("m=audio 6000", "m=audio 0")
    with pytest.raises(NegotiationError):
        negotiate_answer(SessionDescription.parse(rejected), AUDIO_CODECS, "192.0.2.10", 40000)


# --- the answer to our offer ----------------------------------------------------------------------------


def test_apply_sipp_answer() -> None:
    offer = make_offer("192.0.2.10", 40000)
    media = apply_answer(offer, SessionDescription.parse(SIPP_UAS_ANSWER))
    audio = media.audio
    assert (audio.codec, audio.payload_type, audio.clock_rate) == ("PCMU", 0, 8000)
    assert (audio.remote_addr, audio.remote_port, audio.remote_rtcp_port) == ("127.0.0.1", 6000, 6001)
    assert audio.dtmf_payload_type is None and audio.direction == "sendrecv" and not audio.on_hold
    assert media.video is None


def test_apply_freeswitch_style_answer() -> None:
    offer = make_offer("192.0.2.10", 40000, video_port=40002, rtcp_mux=True)
    answer = SessionDescription.parse(
        crlf("""
v=0
o=FreeSWITCH 1712000000 1712000001 IN IP4 10.0.0.5
s=FreeSWITCH
c=IN IP4 10.0.0.5
t=0 0
m=audio 29428 RTP/AVP 111 101
a=rtpmap:111 opus/48000/2
a=fmtp:111 useinbandfec=1; minptime=10; stereo=0
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:40
a=rtcp-mux
a=recvonly
m=video 29430 RTP/AVP 96
a=rtpmap:96 H264/90000
a=fmtp:96 profile-level-id=42e01f;packetization-mode=1
a=rtcp-fb:96 nack pli
a=rtcp:29431
a=sendrecv
""")
    )
    media = apply_answer(offer, answer)
    audio = media.audio
    assert (audio.codec, audio.payload_type, audio.channels, audio.ptime) == ("opus", 111, 1, 40)
    assert audio.dtmf_payload_type == 101 and audio.rtcp_mux and audio.remote_rtcp_port == 29428
    assert audio.direction == "sendonly" and not audio.on_hold
    assert media.video is not None
    assert (media.video.codec, media.video.remote_rtcp_port, media.video.rtcp_fb) == (
        "H264",
        29431,
        ["nack pli"],
    )
    assert not media.video.rtcp_mux and media.video.direction == "sendrecv"


def test_apply_answer_without_rtpmap_for_dynamic_pt_and_hold() -> None:
    offer = make_offer("192.0.2.10", 40000, direction="sendonly")
    answer = SessionDescription.parse(BASE + "m=audio 5000 RTP/AVP 111 101\r\na=inactive\r\n")
    audio = apply_answer(offer, answer).audio
    assert (audio.codec, audio.clock_rate, audio.dtmf_payload_type) == ("opus", 48000, 101)
    assert audio.direction == "inactive" and audio.on_hold


def test_apply_answer_errors() -> None:
    offer = make_offer("192.0.2.10", 40000, video_port=40002)
    sipp = SessionDescription.parse(SIPP_UAS_ANSWER)
    with pytest.raises(SdpError):
        apply_answer(offer, sipp)  # one m= line for two
    with pytest.raises(NegotiationError):
        apply_answer(
            make_offer("192.0.2.10", 40000), SessionDescription.parse(SIPP_UAS_ANSWER.replace("6000", "0"))
        )
    with pytest.raises(NegotiationError):
        apply_answer(
            make_offer("192.0.2.10", 40000, ["PCMA"]), SessionDescription.parse(SIPP_UAS_ANSWER)
        )  # PCMU was never offered
    swapped = SessionDescription.parse(BASE + "m=video 5000 RTP/AVP 96\r\n")
    with pytest.raises(SdpError):
        apply_answer(make_offer("192.0.2.10", 40000), swapped)
    video_rejected = SessionDescription.parse(SIPP_UAS_ANSWER + "m=video 0 RTP/AVP 96\r\n")
    assert apply_answer(offer, video_rejected).video is None


def test_offer_answer_between_two_gateways() -> None:
    offer = make_offer(
        "192.0.2.10", 40000, ["G722", "PCMU", "telephone-event"], video_port=40002, rtcp_mux=True
    )
    answer, theirs = negotiate_answer(offer, AUDIO_CODECS, "192.0.2.20", {"audio": 50000, "video": 50002})
    ours = apply_answer(offer, answer)
    assert theirs.audio.codec == ours.audio.codec == "G722"
    assert theirs.audio.dtmf_payload_type == ours.audio.dtmf_payload_type == 101
    assert (ours.audio.remote_addr, ours.audio.remote_port, ours.audio.rtcp_mux) == (
        "192.0.2.20",
        50000,
        True,
    )
    assert (theirs.audio.remote_addr, theirs.audio.remote_port) == ("192.0.2.10", 40000)
    assert ours.video is not None and theirs.video is not None
    assert ours.video.payload_type == theirs.video.payload_type == 96


# -- SRTP keys (RFC 4568 a=crypto) ------------------------------------------------------------------------
KEY30 = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"  # 30 bytes: AES-CM key + salt


@pytest.mark.parametrize(
    "line",
    [
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}",
        f"2 AES_CM_128_HMAC_SHA1_32 inline:{KEY30}|2^31",
        f"3 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^20|1:4",
        f"4 AES_CM_128_HMAC_SHA1_80 inline:{KEY30} UNENCRYPTED_SRTCP KDR=1",
        "5 AEAD_AES_128_GCM inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVoxMg==",
        "6 F8_128_HMAC_SHA1_80 inline:c2hvcnQ=",  # a suite we do not know: kept, not checked
    ],
)
def test_crypto_round_trip(line: str) -> None:
    crypto = Crypto.parse(line)
    assert str(crypto) == line and Crypto.parse(str(crypto)) == crypto
    assert crypto.usable == (crypto.tag in (1, 2, 5))


@pytest.mark.parametrize(
    "line, why",
    [
        (f"x AES_CM_128_HMAC_SHA1_80 inline:{KEY30}", "bad a=crypto"),
        ("1 AES_CM_128_HMAC_SHA1_80", "bad a=crypto"),
        (f"1 AES_CM_128_HMAC_SHA1_80 uri:{KEY30}", "inline"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30};inline:{KEY30}", "several keys"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=", "key of 5 bytes, not 30"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwg*CkgewkyMjA7fQp9CnVubGVz", "bad a=crypto key"),
        ("1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGV", "base64"),
        (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^20|1:200", "MKI length"),
    ],
)
def test_bad_crypto_lines_are_refused(line: str, why: str) -> None:
    with pytest.raises(SdpError, match=why):
        Crypto.parse(line)


def _srtp_offer(proto: str, crypto: str) -> SessionDescription:
    return SessionDescription.parse(
        crlf(f"""
v=0
o=- 1 1 IN IP4 10.0.0.9
s=-
c=IN IP4 10.0.0.9
t=0 0
m=audio 5000 {proto} 0
{crypto}a=sendrecv
""")
    )


def test_crypto_lines_are_read_only_when_srtp_is_in_use() -> None:
    """A plain call does not fail on a peer's odd a=crypto line; the keys are read on demand."""
    offer = _srtp_offer("RTP/AVP", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=\n")
    answer, media = negotiate_answer(offer, AUDIO_CODECS, "192.0.2.10", 40000)
    assert media.audio.srtp is None and "crypto" not in str(answer)
    with pytest.raises(SdpError):
        negotiate_answer(offer, AUDIO_CODECS, "192.0.2.10", 40000, local_key=lambda kind, suite: bytes(30))
    twice = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\n" * 2
    with pytest.raises(SdpError, match="repeated"):
        _srtp_offer("RTP/SAVP", twice).media[0].cryptos  # noqa: B018


def test_answer_takes_the_first_usable_line_with_our_key() -> None:
    mine = bytes(range(30))
    lines = (
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^20|1:4\n"  # MKI: not ours
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY30}\n"
        f"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\n"
    )
    asked = []

    def key(kind: str, suite: str) -> bytes:
        asked.append((kind, suite))
        return mine

    answer, media = negotiate_answer(
        _srtp_offer("RTP/SAVP", lines), AUDIO_CODECS, "192.0.2.10", 40000, local_key=key
    )
    section = answer.media[0]
    assert section.proto == "RTP/SAVP" and section.port == 40000
    assert section.cryptos == [Crypto(2, "AES_CM_128_HMAC_SHA1_32", mine)]
    assert asked == [("audio", "AES_CM_128_HMAC_SHA1_32")]
    srtp = media.audio.srtp
    assert srtp is not None and (srtp.suite, srtp.local_key) == ("AES_CM_128_HMAC_SHA1_32", mine)
    assert srtp.remote_key == Crypto.parse(f"1 X inline:{KEY30}").key
    assert str(SessionDescription.parse(str(answer))) == str(answer)


def test_savp_without_keys_is_refused() -> None:
    offer = _srtp_offer("RTP/SAVP", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\n")
    with pytest.raises(NegotiationError):  # no keys of ours: SAVP refused, as before SRTP
        negotiate_answer(offer, AUDIO_CODECS, "192.0.2.10", 40000)
    no_key = _srtp_offer("RTP/SAVP", "")
    with pytest.raises(NegotiationError):
        negotiate_answer(no_key, AUDIO_CODECS, "192.0.2.10", 40000, local_key=lambda k, s: bytes(30))
    plain = _srtp_offer("RTP/AVP", "")
    with pytest.raises(NegotiationError):  # srtp_only: a plain offer is not answered
        negotiate_answer(
            plain, AUDIO_CODECS, "192.0.2.10", 40000, local_key=lambda k, s: bytes(30), srtp_only=True
        )


def test_offer_with_keys_and_the_answer_that_picks_one() -> None:
    ours = [Crypto(1, "AES_CM_128_HMAC_SHA1_80", bytes(30)), Crypto(2, "AEAD_AES_128_GCM", bytes(28))]
    offer = make_offer("192.0.2.10", 40000, ["PCMU"], proto="RTP/SAVP", crypto=ours)
    text = str(offer)
    assert "m=audio 40000 RTP/SAVP 0" in text and text.index("a=crypto:1") < text.index("a=sendrecv")
    assert SessionDescription.parse(text).media[0].cryptos == ours

    def answer(proto: str, crypto: str) -> SessionDescription:
        return _srtp_offer(proto, crypto)

    media = apply_answer(offer, answer("RTP/SAVP", f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\n"))
    assert media.audio.srtp is not None and media.audio.srtp.local_key == bytes(30)
    assert apply_answer(offer, answer("RTP/AVP", "")).audio.srtp is None  # the caller decides (require)
    with pytest.raises(NegotiationError, match="without a=crypto"):
        apply_answer(offer, answer("RTP/SAVP", ""))
    with pytest.raises(SdpError, match="not one we offered"):
        apply_answer(offer, answer("RTP/SAVP", f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\n"))
    with pytest.raises(SdpError, match="not one we offered"):
        apply_answer(offer, answer("RTP/SAVP", f"a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\n"))
    plain = make_offer("192.0.2.10", 40000, ["PCMU"])
    # we offered no keys: an answer's key line (even a broken one) is not read
    assert apply_answer(plain, answer("RTP/AVP", "a=crypto:9 junk\n")).audio.srtp is None
