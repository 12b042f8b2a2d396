"""The media side of one call leg: its RTP/RTCP sockets, its SDP offers/answers, its RTMP stream keys.

The RTMP bridge (uplink AAC → RTP, downlink RTP → AAC) attaches here; this module owns what
exists for the whole life of the leg and is freed with it, SRTP keys included.

SRTP (``media.srtp``, SDES keys of RFC 4568):

* ``off``: no key offered; an offer's keys are ignored and ``RTP/SAVP`` refused (488).
* ``offer``: our offers are ``RTP/AVP`` with ``a=crypto`` lines (best-effort SRTP: a far end
  without SRTP ignores them and answers plain RTP, which we then use); an offer with keys is
  answered with ours (``RTP/SAVP`` or ``RTP/AVP``), a plain one in plain RTP.
* ``require``: our offers are ``RTP/SAVP``; an answer without a key, or an offer without one,
  fails negotiation with "SRTP required" (the call ends INCOMPATIBLE_DESTINATION, or 488).

Our key for a stream and suite is drawn once and kept for the leg: re-offers and answers repeat
it, so a re-INVITE that does not change the far end's key changes nothing.
"""

from __future__ import annotations

import random
import secrets

from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from b2bua.media.pipeline import PTIMES_MS, send_ptime
from b2bua.media.ports import PortPool
from b2bua.wire.sdp import (
    SRTP_SUITES,
    TELEPHONE_EVENT,
    Crypto,
    NegotiatedMedia,
    SdpError,
    SessionDescription,
    apply_answer,
    make_offer,
    negotiate_answer,
)

log = Logger()
STREAM_KEY_BYTES = 24  # 192 random bits per stream key


SRTP_MODES = ("off", "offer", "require")


class MediaNegotiationError(Exception):
    """An SDP that cannot be used: malformed, or nothing in common."""


class RtpSocket(DatagramProtocol):
    """One UDP socket of a leg. ``remote`` is set by the bridge once it accepted a packet from the
    negotiated far end (symmetric RTP: we answer to the port its packets come from)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.packets = 0
        self.bytes = 0
        self.remote: tuple[str, int] | None = None
        self.dropped = 0
        self.errors = 0
        self.handler = None  # set by the media bridge: handler(data, addr)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        self.packets += 1
        self.bytes += len(data)
        if self.handler is not None:
            try:
                self.handler(data, addr)
            except Exception:
                log.failure("RTP handler failed")

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        # straight to the socket: Twisted's write() re-validates the address on every packet
        if self.transport is None:
            return
        try:
            self.transport.socket.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.dropped += 1  # a full socket buffer: RTP is late anyway, never queue it
        except OSError as e:  # e.g. ICMP unreachable reported on a later send
            self.errors += 1
            if self.errors <= 3:
                log.info("RTP send to {addr} failed: {e}", addr=addr, e=e)


class MediaLeg:
    def __init__(
        self,
        reactor,
        pool: PortPool,
        sdp_host: str,
        codecs: list[str],
        video: bool,
        rtmp_base: str,
        srtp: str = "off",
    ) -> None:
        if srtp not in SRTP_MODES:
            raise ValueError(f"srtp: one of {', '.join(SRTP_MODES)}, got {srtp!r}")
        self.reactor = reactor
        self.srtp = srtp
        self._keys: dict[tuple[str, str], bytes] = {}  # (kind, suite) → our master key||salt
        self.pool = pool
        self.sdp_host = sdp_host
        self.codecs = [*codecs, TELEPHONE_EVENT.name]
        self.video = video
        self.push_key = secrets.token_urlsafe(STREAM_KEY_BYTES)
        self.play_key = secrets.token_urlsafe(STREAM_KEY_BYTES)
        self.push_url = f"{rtmp_base}/{self.push_key}"
        self.play_url = f"{rtmp_base}/{self.play_key}"
        self.negotiated: NegotiatedMedia | None = None
        self.audio_rtp = RtpSocket("audio-rtp")
        self.audio_rtcp = RtpSocket("audio-rtcp")
        self.video_rtp = RtpSocket("video-rtp")
        self.video_rtcp = RtpSocket("video-rtcp")
        self._ports: list[IListeningPort] = []
        self._pairs: list[int] = []
        self._offer: SessionDescription | None = None
        self._session_id = random.randint(1, 2**31)
        self._version = 0
        self.closed = False

    # -- sockets ----------------------------------------------------------------------------------------
    def open(self) -> None:
        """Bind the RTP/RTCP pairs (audio, and video when asked); raises NoPortsAvailable."""
        pairs = [(self.audio_rtp, self.audio_rtcp)]
        if self.video:
            pairs.append((self.video_rtp, self.video_rtcp))
        try:
            for rtp, rtcp in pairs:
                rtp_port, rtcp_port = self.pool.bind_pair(rtp, rtcp)
                self._ports += [rtp_port, rtcp_port]
                self._pairs.append(rtp_port.getHost().port)
        except Exception:
            self.close()
            raise

    @property
    def audio_port(self) -> int:
        return self._pairs[0]

    @property
    def video_port(self) -> int | None:
        return self._pairs[1] if len(self._pairs) > 1 else None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for port in self._ports:
            port.stopListening()
        for pair in self._pairs:
            self.pool.release(pair)
        self._ports = []

    # -- SDP --------------------------------------------------------------------------------------------
    @property
    def codec_name(self) -> str | None:
        return self.negotiated.audio.codec if self.negotiated is not None else None

    @property
    def has_video(self) -> bool:
        """Whether the last offer/answer accepted a video stream (not whether one was offered)."""
        return self.negotiated is not None and self.negotiated.video is not None

    @property
    def ptime(self) -> int:
        """The packetization we ask for: the far end's, once negotiated (20 ms before)."""
        if self.negotiated is None:
            return 20
        return send_ptime(self.negotiated.audio)

    def local_key(self, kind: str, suite: str) -> bytes:
        """Our SRTP master key and salt for a stream and suite: drawn once, kept for the leg."""
        key = self._keys.get((kind, suite))
        if key is None:
            key = self._keys[(kind, suite)] = secrets.token_bytes(SRTP_SUITES[suite])
        return key

    def _crypto_lines(self, kind: str) -> list[Crypto]:
        if self.srtp == "off":
            return []
        return [Crypto(tag, suite, self.local_key(kind, suite)) for tag, suite in enumerate(SRTP_SUITES, 1)]

    def make_offer(self, hold: bool = False) -> bytes:
        self._version += 1
        offer = make_offer(
            self.sdp_host,
            self.audio_port,
            self.codecs,
            video_port=self.video_port,
            direction="sendonly" if hold else "sendrecv",
            ptime=self.ptime,
            session_id=self._session_id,
            session_version=self._version,
            proto="RTP/SAVP" if self.srtp == "require" else "RTP/AVP",
            crypto=self._crypto_lines("audio"),
            video_crypto=self._crypto_lines("video"),
        )
        self._offer = offer
        return bytes(offer)

    def accept_answer(self, sdp: bytes) -> NegotiatedMedia:
        if self._offer is None:
            raise MediaNegotiationError("an answer without our offer")
        try:
            negotiated = apply_answer(self._offer, SessionDescription.parse(sdp))
        except SdpError as e:
            raise MediaNegotiationError(str(e)) from None
        if self.srtp == "require":
            plain = [s.kind for s in (negotiated.audio, negotiated.video) if s is not None and s.srtp is None]
            if plain:
                raise MediaNegotiationError(f"SRTP required: the answer has no key for {' and '.join(plain)}")
        self.negotiated = negotiated
        return negotiated

    def answer_offer(self, sdp: bytes, hold: bool = False) -> tuple[bytes, bool]:
        """Our answer to a remote offer, and whether that offer puts us on hold."""
        try:
            offer = SessionDescription.parse(sdp)
            if self.srtp == "require":
                audio = offer.find("audio")
                if audio is None or not any(c.usable for c in audio.cryptos):
                    raise MediaNegotiationError("SRTP required: the offer has no usable key for audio")
            ports = {"audio": self.audio_port}
            if self.video_port is not None:
                ports["video"] = self.video_port
            self._version += 1
            offered = offer.find("audio")
            ptime = offered.ptime if offered is not None and offered.ptime in PTIMES_MS else 20
            answer, negotiated = negotiate_answer(
                offer,
                self.codecs,
                self.sdp_host,
                ports,
                direction="sendonly" if hold else "sendrecv",
                ptime=ptime,  # the offerer's: one packetization both ways
                rtcp_mux=False,
                session_id=self._session_id,
                session_version=self._version,
                local_key=None if self.srtp == "off" else self.local_key,
                srtp_only=self.srtp == "require",
            )
        except SdpError as e:
            raise MediaNegotiationError(str(e)) from None
        self.negotiated = negotiated
        return bytes(answer), negotiated.on_hold
