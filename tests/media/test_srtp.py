"""SRTP in a leg's RTP session (SDES keys, libsrtp through pylibsrtp), the leg's offers and
answers with keys, and the config keys. The far end is pylibsrtp too: an independent context
with the keys swapped, as a phone would hold them."""

from __future__ import annotations

import base64
import secrets

import numpy as np
import pylibsrtp
import pytest

from b2bua.config import Config, ConfigError, MediaConfig, SipConfig, load_config, validate
from b2bua.media.bridge import AudioBridge
from b2bua.media.leg import MediaLeg, MediaNegotiationError
from b2bua.media.rtp_session import SRTP_PROFILES, SrtpStream
from b2bua.media.transcode import AacDecoder, RtpAudioEncoder
from b2bua.wire import flv
from b2bua.wire.rtcp import RtcpReceiverReport, parse_compound, serialize_compound
from b2bua.wire.rtp import RtpPacket, RtpSender
from b2bua.wire.sdp import SRTP_SUITES, NegotiatedMedia, SessionDescription, SrtpKeys
from tests.media.audio import dominant_frequency, sine_pcm
from tests.media.test_bridge import FAR, FakeLeg, Players, negotiated, with_

SUITE = "AES_CM_128_HMAC_SHA1_80"


def keys(suite=SUITE):
    n = SRTP_SUITES[suite]
    return SrtpKeys(suite, secrets.token_bytes(n), secrets.token_bytes(n))


class FarEnd:
    """The phone's side of the keys: it sends with ``remote_key`` and reads with ``local_key``."""

    def __init__(self, k: SrtpKeys) -> None:
        self.set_keys(k)

    def set_keys(self, k: SrtpKeys) -> None:
        profile = SRTP_PROFILES[k.suite]
        p = pylibsrtp.Policy
        self.tx = pylibsrtp.Session(p(key=k.remote_key, ssrc_type=p.SSRC_ANY_OUTBOUND, srtp_profile=profile))
        self.rx = pylibsrtp.Session(p(key=k.local_key, ssrc_type=p.SSRC_ANY_INBOUND, srtp_profile=profile))


def make_srtp(k: SrtpKeys):
    leg, players, digits = FakeLeg(), Players(), []
    now = [1000.0]
    neg = with_(negotiated(), srtp=k)
    bridge = AudioBridge(leg, neg, players, digits.append, aac_rate=16000, clock=lambda: now[0])
    return bridge, leg, players, now


def send_tone(bridge, leg, now, far, sender, packets, damage=()):
    """The far end sends ``packets`` SRTP PCMU packets of a 1 kHz tone, one per tick; the
    packets numbered in ``damage`` get their last byte (the auth tag) flipped."""
    encoder = RtpAudioEncoder("PCMU")
    pcm = sine_pcm(1000, packets * 0.02 + 0.1, 8000, amplitude=0.3)
    for i in range(packets):
        packet = sender.packet(encoder.encode(pcm[i * 320 : (i + 1) * 320]), 0, 160)
        data = far.tx.protect(packet.serialize())
        if i in damage:
            data = data[:-1] + bytes([data[-1] ^ 0x5A])
        leg.audio_rtp.datagramReceived(data, FAR)
        now[0] += 0.020
        bridge.tick_up(now[0] * 1000)
        bridge.tick_down(now[0] * 1000)


def players_pcm(players) -> np.ndarray:
    """What the players got, decoded (16 kHz)."""
    decoder = AacDecoder(flv.parse_audio(players.header).data)
    frames = [f for _, tag in players.audio for f in decoder.decode(flv.parse_audio(tag).data)]
    return np.concatenate([f.to_ndarray().reshape(-1).astype("float64") for f in frames])


# -- the RTP session ------------------------------------------------------------------------------------
@pytest.mark.parametrize("suite", list(SRTP_SUITES))
def test_protect_and_unprotect_each_suite_rtp_and_rtcp(suite):
    k = keys(suite)
    ours, far = SrtpStream(k), FarEnd(k)
    packet = RtpSender(ssrc=7).packet(b"\x55" * 160, 0, 160).serialize()
    sealed = ours.protect(packet)
    assert sealed != packet and sealed[:12] == packet[:12]  # header in clear, payload not
    assert far.rx.unprotect(sealed) == packet
    assert ours.unprotect(far.tx.protect(packet)) == packet
    rtcp = serialize_compound([RtcpReceiverReport(ssrc=7, reports=[])])
    assert far.rx.unprotect_rtcp(ours.protect_rtcp(rtcp)) == rtcp
    assert ours.unprotect_rtcp(far.tx.protect_rtcp(rtcp)) == rtcp


def test_srtp_tone_is_heard_and_our_rtp_and_rtcp_are_protected():
    k = keys()
    bridge, leg, players, now = make_srtp(k)
    far = FarEnd(k)
    send_tone(bridge, leg, now, far, RtpSender(ssrc=1234), 100)
    assert bridge.stats.rtp_received == 100 and bridge.stats.srtp_auth_failed == 0
    pcm = players_pcm(players)
    assert abs(dominant_frequency(pcm[-16000:], 16000) - 1000) < 20
    # what we sent: every RTP packet opens with the far end's key, and so does our RTCP
    sent = [d for d, _ in leg.audio_rtp.sent]
    assert len(sent) >= 90
    for data in sent:
        RtpPacket.parse(far.rx.unprotect(data))
    bridge.session.send_rtcp(now[0] * 1000)
    (rtcp, _), *_ = leg.audio_rtcp.sent[-1:]
    assert parse_compound(far.rx.unprotect_rtcp(rtcp))
    with pytest.raises(ValueError):
        parse_compound(rtcp[:-14])  # not plain RTCP on the wire (trailer cut: still encrypted)
    stats = bridge.close().as_event()
    assert stats["srtp"] == SUITE and "srtp_auth_failed" not in stats


def test_a_bad_auth_tag_is_dropped_and_counted_and_the_call_goes_on():
    k = keys()
    bridge, leg, players, now = make_srtp(k)
    far = FarEnd(k)
    damaged = set(range(20, 30))
    send_tone(bridge, leg, now, far, RtpSender(ssrc=99), 120, damage=damaged)
    st = bridge.stats
    assert st.srtp_auth_failed == 10
    assert st.rtp_received == 110  # the rest was taken
    assert bridge.packets_in == 120  # the watchdog still sees the far end alive
    assert abs(dominant_frequency(players_pcm(players)[-16000:], 16000) - 1000) < 20
    # forged SRTCP (a made-up trailer), and SRTCP posing as unencrypted: counted too, not parsed
    rr = serialize_compound([RtcpReceiverReport(ssrc=1, reports=[])])
    leg.audio_rtcp.datagramReceived(rr + b"\x80\0\0\x05" + bytes(10), FAR)
    leg.audio_rtcp.datagramReceived(rr + bytes(14), FAR)
    assert st.srtp_auth_failed == 12 and "rtcp_bad" not in st.extra and st.rtp_bad == 0
    assert bridge.close().as_event()["srtp_auth_failed"] == 12


def test_plain_rtp_from_the_far_end_is_refused_and_does_not_latch():
    bridge, leg, _, now = make_srtp(keys())
    packet = RtpSender(ssrc=5).packet(b"\xff" * 160, 0, 160).serialize()
    leg.audio_rtp.datagramReceived(packet, ("127.0.0.9", 41000))
    assert bridge.stats.srtp_auth_failed == 1 and bridge.stats.rtp_received == 0
    assert leg.audio_rtp.remote is None  # an unauthenticated packet never moves our RTP


def test_the_rollover_counter_follows_the_sequence_across_65535_both_ways():
    """libsrtp counts the wraps in its context (the ROC is in the keystream's index, not in
    the packet): one context for the stream's life keeps both sides in step."""
    k = keys()
    bridge, leg, _, now = make_srtp(k)
    far = FarEnd(k)
    bridge.session.sender.sequence = 65500  # our stream wraps too
    send_tone(bridge, leg, now, far, RtpSender(ssrc=42, sequence=65500), 150)
    assert bridge.stats.srtp_auth_failed == 0 and bridge.stats.rtp_received == 150
    seqs = []
    for data, _ in leg.audio_rtp.sent:
        seqs.append(RtpPacket.parse(far.rx.unprotect(data)).sequence)  # raises if the ROC slipped
    assert 65535 in seqs and 0 in seqs and len(seqs) >= 140


def test_a_context_per_packet_would_lose_the_wrap():
    """The reason for the long-lived context: a fresh one guesses ROC 0 and fails after a wrap."""
    k = keys()
    ours, far = SrtpStream(k), FarEnd(k)
    sender = RtpSender(ssrc=3, sequence=65534)
    for _ in range(4):
        far.rx.unprotect(ours.protect(sender.packet(b"x" * 20, 0, 160).serialize()))
    late = ours.protect(sender.packet(b"x" * 20, 0, 160).serialize())  # seq 2, ROC 1
    with pytest.raises(pylibsrtp.Error):
        FarEnd(k).rx.unprotect(late)
    assert far.rx.unprotect(late)


def test_a_reinvite_with_the_same_keys_keeps_the_contexts_and_a_new_key_replaces_one():
    k = keys()
    bridge, leg, players, now = make_srtp(k)
    far = FarEnd(k)
    sender = RtpSender(ssrc=77)
    send_tone(bridge, leg, now, far, sender, 30)
    srtp = bridge.session.srtp
    tx, rx = srtp._tx, srtp._rx
    bridge.renegotiated(with_(negotiated(), srtp=SrtpKeys(k.suite, k.local_key, k.remote_key)))
    assert bridge.session.srtp is srtp and (srtp._tx, srtp._rx) == (tx, rx)  # nothing changed
    # the far end re-keys (a new a=crypto in its re-INVITE); ours stays
    k2 = SrtpKeys(k.suite, k.local_key, secrets.token_bytes(30))
    in_flight = far.tx.protect(sender.packet(b"\xff" * 160, 0, 160).serialize())  # old key
    bridge.renegotiated(with_(negotiated(), srtp=k2))
    assert srtp._tx is tx and srtp._rx is not rx
    leg.audio_rtp.datagramReceived(in_flight, FAR)
    assert bridge.stats.srtp_auth_failed == 0  # a packet of the old key still in flight: taken
    far.set_keys(k2)
    send_tone(bridge, leg, now, far, RtpSender(ssrc=78), 50)
    assert bridge.stats.srtp_auth_failed == 0
    old = FarEnd(k)
    old.tx = pylibsrtp.Session(
        pylibsrtp.Policy(key=k.remote_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    )
    stale = old.tx.protect(RtpSender(ssrc=79).packet(b"1" * 160, 0, 160).serialize())
    leg.audio_rtp.datagramReceived(stale, FAR)
    assert bridge.stats.srtp_auth_failed == 1  # once the new key is in use, the old one is refused
    # our key changes (e.g. another suite): the far end reads us with the new one
    k3 = keys("AES_CM_128_HMAC_SHA1_32")
    bridge.renegotiated(with_(negotiated(), srtp=k3))
    assert srtp._tx is not tx and bridge.stats.srtp == "AES_CM_128_HMAC_SHA1_32"
    leg.audio_rtp.sent.clear()
    far.set_keys(k3)
    send_tone(bridge, leg, now, far, RtpSender(ssrc=80), 20)
    assert bridge.stats.srtp_auth_failed == 1
    assert all(RtpPacket.parse(far.rx.unprotect(d)) for d, _ in leg.audio_rtp.sent)
    # keys dropped by a renegotiation (offer mode, the PBX re-answers plain): plain RTP again
    bridge.renegotiated(with_(negotiated(), srtp=None))
    assert bridge.session.srtp is None and bridge.stats.srtp is None


# -- the leg's offers and answers ---------------------------------------------------------------------
def leg(srtp: str, video: bool = False) -> MediaLeg:
    m = MediaLeg(None, None, "127.0.0.1", ["PCMU"], video, "rtmp://x/live", srtp=srtp)
    m._pairs = [30000, 30002] if video else [30000]
    return m


OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.9\r\ns=-\r\nc=IN IP4 127.0.0.9\r\nt=0 0\r\n"
    "m=audio 40000 {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n{crypto}"
)
KEY30 = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"


def offer(proto="RTP/SAVP", crypto=f"a=crypto:3 {SUITE} inline:{KEY30}\r\n") -> bytes:
    return OFFER.format(proto=proto, crypto=crypto).encode()


def answer_to(our_offer: bytes, crypto: str | None) -> bytes:
    """The far end's answer: the first of our lines' tag and suite with its own key, or none."""
    media = SessionDescription.parse(our_offer).media[0]
    lines = ""
    if crypto is not None:
        first = media.cryptos[0]
        lines = f"a=crypto:{first.tag} {first.suite} inline:{crypto}\r\n"
    return OFFER.format(proto=media.proto if crypto else "RTP/AVP", crypto=lines).encode()


def test_modes_shape_our_offer():
    assert b"crypto" not in leg("off").make_offer()
    best_effort = SessionDescription.parse(leg("offer").make_offer()).media[0]
    assert best_effort.proto == "RTP/AVP"
    assert [c.suite for c in best_effort.cryptos] == list(SRTP_SUITES)
    required = SessionDescription.parse(leg("require", video=True).make_offer())
    assert [m.proto for m in required.media] == ["RTP/SAVP", "RTP/SAVP"]
    audio_keys = {c.key for c in required.media[0].cryptos}
    assert audio_keys.isdisjoint(c.key for c in required.media[1].cryptos)  # a key per stream


def test_offer_mode_takes_srtp_when_answered_with_a_key_and_plain_rtp_otherwise():
    m = leg("offer")
    ours = m.make_offer()
    neg = m.accept_answer(answer_to(ours, KEY30))
    sent_key = SessionDescription.parse(ours).media[0].cryptos[0].key
    assert neg.audio.srtp == SrtpKeys(SUITE, sent_key, base64.b64decode(KEY30))
    m2 = leg("offer")
    assert m2.accept_answer(answer_to(m2.make_offer(), None)).audio.srtp is None


def test_require_mode_ends_a_call_answered_without_a_key():
    m = leg("require")
    with pytest.raises(MediaNegotiationError, match="SRTP required"):
        m.accept_answer(answer_to(m.make_offer(), None))


def test_our_key_is_kept_across_reoffers():
    m = leg("offer")
    first = SessionDescription.parse(m.make_offer()).media[0].cryptos
    again = SessionDescription.parse(m.make_offer(hold=True)).media[0].cryptos
    assert first == again


@pytest.mark.parametrize("proto", ["RTP/SAVP", "RTP/AVP"])
def test_an_offer_with_a_key_is_answered_with_ours(proto):
    m = leg("offer")
    answer, _ = m.answer_offer(offer(proto))
    media = SessionDescription.parse(answer).media[0]
    (crypto,) = media.cryptos
    assert media.port == 30000 and media.proto == proto and (crypto.tag, crypto.suite) == (3, SUITE)
    assert crypto.key == m.local_key("audio", SUITE) and m.negotiated.audio.srtp.local_key == crypto.key
    # a re-offer with the same key: the same answer key, the same negotiated keys
    again, _ = m.answer_offer(offer(proto))
    assert SessionDescription.parse(again).media[0].cryptos == [crypto]


def test_srtp_off_refuses_a_savp_offer_and_require_refuses_a_plain_one():
    with pytest.raises(MediaNegotiationError):
        leg("off").answer_offer(offer())
    answer, _ = leg("off").answer_offer(offer("RTP/AVP"))  # keys in an AVP offer: ignored
    assert b"crypto" not in answer
    with pytest.raises(MediaNegotiationError, match="SRTP required"):
        leg("require").answer_offer(offer("RTP/AVP", crypto=""))
    answer, _ = leg("require").answer_offer(offer())
    assert b"RTP/SAVP" in answer and b"a=crypto:3" in answer


def test_a_malformed_key_line_refuses_the_offer_when_srtp_is_on():
    bad = offer(crypto=f"a=crypto:1 {SUITE} inline:c2hvcnQ=\r\n")
    with pytest.raises(MediaNegotiationError, match="key of 5 bytes"):
        leg("offer").answer_offer(bad)


# -- config ---------------------------------------------------------------------------------------------
def test_require_without_tls_is_a_config_error_naming_the_key():
    config = Config(media=MediaConfig(srtp="require"))
    with pytest.raises(ConfigError, match=r"media\.srtp: require needs sip\.pbx_transport: tls"):
        validate(config)
    validate(Config(media=MediaConfig(srtp="require", srtp_allow_insecure_signalling=True)))
    validate(Config(media=MediaConfig(srtp="offer")))  # a warning, not an error
    tls = Config(media=MediaConfig(srtp="require"), sip=SipConfig())
    object.__setattr__(tls.sip, "pbx_transport", "tls")  # the TLS transport (issue 14, SIP half)
    validate(tls)


def test_yaml_off_and_bad_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("media:\n  srtp: off\n")  # YAML reads a bare off as false
    assert load_config(path).media.srtp == "off"
    path.write_text("media:\n  srtp: always\n")
    with pytest.raises(ConfigError, match="media.srtp"):
        load_config(path)


def test_negotiated_media_keys_never_print():
    k = keys()
    assert k.local_key.hex() not in repr(k) and repr(NegotiatedMedia(with_(negotiated(), srtp=k).audio))
