"""SDP (RFC 4566) and the offer/answer model (RFC 3264) for one audio and an optional video stream.

Sans-IO, standard library only. :meth:`SessionDescription.parse` validates what the gateway
relies on and raises :class:`SdpError` (a ``ValueError``) with a precise message; everything it
does not interpret (unknown attributes, ``b=``, ``i=``…) is kept, in order, and serialized back.
``str(SessionDescription.parse(text)) == text`` for any well-formed, CRLF-terminated SDP whose
lines follow RFC 4566's order.

Offer/answer:

* :func:`make_offer` — our offer: PCMU/0, PCMA/8, G722/9, opus/111, telephone-event/101,
  ptime 20, optionally H.264/96 video.
* :func:`negotiate_answer` — answer a remote offer: the offerer's first codec we support,
  telephone-event kept with its payload type, direction mirrored, rtcp-mux when offered.
* :func:`apply_answer` — read the remote answer to our offer.

Both return :class:`NegotiatedMedia`, what the media layer needs; directions in it are ours
(``sendonly`` = we send only). Rejected or unusable audio raises :class:`NegotiationError`
(answer it with 488).

SRTP keys (RFC 4568 SDES): :class:`Crypto` reads and writes ``a=crypto`` lines; an offer may
carry ours, and the negotiated stream then holds both keys (:class:`SrtpKeys`). The keys are
chosen by the caller (``b2bua.media.leg``); this module only places and matches them.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

MAX_SDP_SIZE = 65535
MAX_LINES = 1024
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_MIRROR = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
RTP_PROTOS = ("RTP/AVP", "RTP/AVPF")  # what we answer without SRTP keys
SRTP_PROTOS = ("RTP/SAVP", "RTP/SAVPF")  # answered only when the caller gives keys; DTLS never
# the SDES suites we speak (libsrtp profiles), in our order of preference, and the length of
# their inline key: master key + master salt (RFC 4568 §6.2, RFC 7714 §12)
SRTP_SUITES: dict[str, int] = {
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
    "AEAD_AES_128_GCM": 28,
    "AEAD_AES_256_GCM": 44,
}

# RFC 3551 static payload types we may meet without an rtpmap.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    13: ("CN", 8000, 1),
    18: ("G729", 8000, 1),
    34: ("H263", 90000, 1),
}

_LINE = re.compile(r"([a-z])=(.*)\Z")
# ASCII digits only (\d would take "٩٦"), and few enough for int() (which refuses > 4300 digits)
_RTPMAP = re.compile(r"(\d{1,3})\s+([^/\s]+)/(\d{1,10})(?:/(\d{1,3}))?\s*", re.ASCII)
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")


class SdpError(ValueError):
    """Malformed SDP."""


class NegotiationError(SdpError):
    """Well-formed SDP we cannot agree with: no common codec, audio rejected (SIP 488)."""


# --- the description --------------------------------------------------------------------------------


@dataclass
class Origin:
    username: str = "-"
    session_id: str = "0"
    session_version: str = "0"
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    @classmethod
    def parse(cls, value: str) -> Origin:
        parts = value.split()
        if len(parts) != 6:
            raise SdpError("o= needs 6 fields, got %d: %r" % (len(parts), value))
        if not (parts[1].isdigit() and parts[2].isdigit()):
            raise SdpError("o= session id and version must be numeric: %r" % value)
        return cls(*parts)

    def __str__(self) -> str:
        return " ".join(
            (self.username, self.session_id, self.session_version, self.nettype, self.addrtype, self.address)
        )


@dataclass
class Connection:
    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"

    @classmethod
    def parse(cls, value: str) -> Connection:
        parts = value.split()
        if len(parts) != 3:
            raise SdpError("c= needs 3 fields: %r" % value)
        nettype, addrtype, address = parts
        if addrtype not in ("IP4", "IP6"):
            raise SdpError("c= unknown address type %r" % addrtype)
        return cls(address, nettype, addrtype)

    @property
    def host(self) -> str:
        """The address without a multicast TTL / count suffix."""
        return self.address.split("/", 1)[0]

    @property
    def is_hold(self) -> bool:
        """RFC 2543 hold: c=0.0.0.0 (or the IPv6 unspecified address)."""
        return self.host in ("0.0.0.0", "::")

    def __str__(self) -> str:
        return "%s %s %s" % (self.nettype, self.addrtype, self.address)


@dataclass(frozen=True)
class RtpMap:
    payload_type: int
    encoding: str
    clock_rate: int
    channels: int = 1

    @classmethod
    def parse(cls, value: str) -> RtpMap:
        m = _RTPMAP.fullmatch(value)
        if not m:
            raise SdpError("bad rtpmap %r" % value)
        payload_type = _payload_type(m.group(1))
        channels = int(m.group(4)) if m.group(4) else 1
        if int(m.group(3)) == 0 or channels == 0:
            raise SdpError("bad rtpmap clock rate or channels %r" % value)
        return cls(payload_type, m.group(2), int(m.group(3)), channels)

    def __str__(self) -> str:
        text = "%d %s/%d" % (self.payload_type, self.encoding, self.clock_rate)
        return text + ("/%d" % self.channels if self.channels != 1 else "")


def _is_uint(text: str, max_digits: int) -> bool:
    """ASCII digits, at most ``max_digits``: ``str.isdigit`` also accepts "²", which int() refuses,
    and int() refuses more than 4300 digits; both raise a plain ValueError."""
    return text.isascii() and text.isdigit() and len(text) <= max_digits


def _payload_type(text: str) -> int:
    if not _is_uint(text, 3) or int(text) > 127:
        raise SdpError("bad RTP payload type %r" % text)
    return int(text)


def _port(text: str) -> int:
    if not _is_uint(text, 5) or int(text) > 65535:
        raise SdpError("bad port %r" % text)
    return int(text)


def parse_fmtp(params: str) -> dict[str, str]:
    """``a=fmtp`` parameters (``k=v;k2=v2`` or a bare value like ``0-16``) as a dict.

    A bare value is stored under the empty key.
    """
    out: dict[str, str] = {}
    for item in params.split(";"):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if sep:
            out[key.strip()] = value.strip()
        else:
            out[""] = item
    return out


_CRYPTO = re.compile(r"(\d{1,9}) +([A-Za-z0-9_]+) +(\S+)((?: +\S+)*) *", re.ASCII)
# key||salt in base64, then optional |lifetime (decimal or 2^n) and |MKI:length
_KEY_INFO = re.compile(
    r"([A-Za-z0-9+/]+={0,2})(?:\|(2\^\d{1,3}|\d{1,20}))?(?:\|(\d{1,20}):(\d{1,3}))?", re.ASCII
)


@dataclass(frozen=True)
class Crypto:
    """One ``a=crypto`` line (RFC 4568 §9.1): ``tag suite inline:KEY[|lifetime][|mki:len] [params]``.

    Lines with several keys are refused (nobody sends them to a phone; with one key there is no
    MKI to pick among them). A suite we do not know is kept as written (its key unchecked); a
    known one must carry a key of its length.
    """

    tag: int
    suite: str
    key: bytes  # master key || master salt
    lifetime: str | None = None
    mki: tuple[int, int] | None = None  # (value, length in bytes)
    session_params: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> Crypto:
        m = _CRYPTO.fullmatch(value)
        if not m:
            raise SdpError("bad a=crypto %r" % value[:80])
        tag, suite, key_params, params = m.groups()
        method, sep, info = key_params.partition(":")
        if method.lower() != "inline" or not sep:
            raise SdpError("a=crypto key method must be inline: %r" % key_params[:80])
        if ";" in info:
            raise SdpError("a=crypto with several keys is not supported")
        k = _KEY_INFO.fullmatch(info)
        if not k:
            raise SdpError("bad a=crypto key %r" % info[:80])
        try:
            key = base64.b64decode(k.group(1), validate=True)
        except (binascii.Error, ValueError):
            raise SdpError("a=crypto key is not base64") from None
        length = SRTP_SUITES.get(suite)
        if length is not None and len(key) != length:
            raise SdpError("a=crypto %s key of %d bytes, not %d" % (suite, len(key), length))
        mki = (int(k.group(3)), int(k.group(4))) if k.group(3) else None
        if mki is not None and not 1 <= mki[1] <= 128:
            raise SdpError("bad a=crypto MKI length %d" % mki[1])
        return cls(int(tag), suite, key, k.group(2), mki, tuple(params.split()))

    @property
    def usable(self) -> bool:
        """Whether we can run it: a suite of ours, no MKI, no session parameter (KDR, WSH,
        UNENCRYPTED_SRTP… change what libsrtp's profiles do)."""
        return self.suite in SRTP_SUITES and self.mki is None and not self.session_params

    def __str__(self) -> str:
        info = base64.b64encode(self.key).decode("ascii")
        if self.lifetime is not None:
            info += "|" + self.lifetime
        if self.mki is not None:
            info += "|%d:%d" % self.mki
        return " ".join(("%d %s inline:%s" % (self.tag, self.suite, info), *self.session_params))


@dataclass(frozen=True)
class SrtpKeys:
    """The SDES keys agreed for one stream: ours protects what we send, the far end's what it sends."""

    suite: str
    local_key: bytes
    remote_key: bytes

    def __repr__(self) -> str:  # never the keys themselves in a log
        return "SrtpKeys(%s)" % self.suite


Attribute = tuple[str, str | None]  # (name, value); value None for property attributes


@dataclass
class MediaDescription:
    """One ``m=`` section. The attribute list is the source of truth; properties read it."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    info: str | None = None
    connection: Connection | None = None
    bandwidths: list[str] = field(default_factory=list)
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)

    # -- attributes, generic
    def attribute(self, name: str) -> str | None:
        """The value of the first ``name`` attribute ('' for a property attribute), else None."""
        for key, value in self.attributes:
            if key == name:
                return "" if value is None else value
        return None

    def attribute_values(self, name: str) -> list[str]:
        return [value or "" for key, value in self.attributes if key == name]

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.attributes)

    def remove(self, name: str) -> None:
        self.attributes = [a for a in self.attributes if a[0] != name]

    # -- RTP
    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.proto

    @property
    def payload_types(self) -> list[int]:
        return [int(f) for f in self.formats] if self.is_rtp else []

    @property
    def rtpmaps(self) -> dict[int, RtpMap]:
        """rtpmap of each format, static payload types filled in from RFC 3551."""
        declared = {m.payload_type: m for m in (RtpMap.parse(v) for v in self.attribute_values("rtpmap"))}
        out = {}
        for pt in self.payload_types:
            if pt in declared:
                out[pt] = declared[pt]
            elif pt in STATIC_PAYLOAD_TYPES:
                out[pt] = RtpMap(pt, *STATIC_PAYLOAD_TYPES[pt])
        return out

    def fmtp(self, fmt: int | str) -> str | None:
        for value in self.attribute_values("fmtp"):
            name, _, params = value.partition(" ")
            if name == str(fmt):
                return params.strip()
        return None

    def rtcp_fb(self, fmt: int | str) -> list[str]:
        out = []
        for value in self.attribute_values("rtcp-fb"):
            name, _, feedback = value.partition(" ")
            if name in (str(fmt), "*"):
                out.append(feedback.strip())
        return out

    @property
    def direction(self) -> str | None:
        """The last direction attribute of this section, or None (then the session's applies)."""
        found = None
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                found = key
        return found

    def set_direction(self, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise ValueError("bad direction %r" % direction)
        self.attributes = [a for a in self.attributes if a[0] not in DIRECTIONS] + [(direction, None)]

    @property
    def ptime(self) -> int | None:
        value = self.attribute("ptime")
        return _int_attr("ptime", value) if value is not None else None

    @property
    def maxptime(self) -> int | None:
        value = self.attribute("maxptime")
        return _int_attr("maxptime", value) if value is not None else None

    @property
    def rtcp(self) -> tuple[int, Connection | None] | None:
        """``a=rtcp`` (RFC 3605): port and optional address."""
        value = self.attribute("rtcp")
        if value is None:
            return None
        parts = value.split()
        if len(parts) not in (1, 4):
            raise SdpError("bad a=rtcp %r" % value)
        conn = Connection.parse(" ".join(parts[1:])) if len(parts) == 4 else None
        return _port(parts[0]), conn

    @property
    def rtcp_mux(self) -> bool:
        return self.has("rtcp-mux")

    @property
    def cryptos(self) -> list[Crypto]:
        """The section's ``a=crypto`` lines, in the offerer's order of preference. Read only when
        SRTP is in use (so a peer's odd line does not fail a plain call): raises SdpError."""
        out = [Crypto.parse(v) for v in self.attribute_values("crypto")]
        if len({c.tag for c in out}) != len(out):
            raise SdpError("a=crypto tags repeated in m=%s" % self.kind)
        return out

    @property
    def is_srtp(self) -> bool:
        return self.proto in SRTP_PROTOS

    def validate(self) -> None:
        if self.is_rtp:
            for fmt in self.formats:
                _payload_type(fmt)
            self.rtpmaps  # noqa: B018  (parses every rtpmap)
        for value in self.attribute_values("fmtp"):
            if not value.partition(" ")[0]:
                raise SdpError("bad fmtp %r" % value)
        for name in ("ptime", "maxptime", "rtcp"):
            getattr(self, name)

    def lines(self) -> list[str]:
        port = "%d/%d" % (self.port, self.port_count) if self.port_count is not None else str(self.port)
        out = ["m=%s %s %s %s" % (self.kind, port, self.proto, " ".join(self.formats))]
        if self.info is not None:
            out.append("i=" + self.info)
        if self.connection is not None:
            out.append("c=%s" % self.connection)
        out += ["b=" + b for b in self.bandwidths]
        if self.key is not None:
            out.append("k=" + self.key)
        out += [_attr_line(a) for a in self.attributes]
        return out


def _int_attr(name: str, value: str) -> int:
    value = value.strip()
    if not _is_uint(value, 9):
        raise SdpError("bad a=%s %r" % (name, value[:40]))
    return int(value)


def _attr_line(attr: Attribute) -> str:
    return "a=%s" % attr[0] if attr[1] is None else "a=%s:%s" % attr


def _parse_attribute(value: str) -> Attribute:
    name, sep, rest = value.partition(":")
    if not _TOKEN.match(name):
        raise SdpError("bad attribute name %r" % name)
    return (name, rest if sep else None)


@dataclass
class SessionDescription:
    origin: Origin
    name: str = "-"
    version: int = 0
    info: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: Connection | None = None
    bandwidths: list[str] = field(default_factory=list)
    times: list[str] = field(default_factory=lambda: ["0 0"])
    repeats: list[str] = field(default_factory=list)
    timezone: str | None = None
    key: str | None = None
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | bytes) -> SessionDescription:
        if isinstance(text, bytes | bytearray):
            if len(text) > MAX_SDP_SIZE:
                raise SdpError("SDP larger than %d bytes" % MAX_SDP_SIZE)
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                raise SdpError("SDP is not UTF-8")
        if len(text) > MAX_SDP_SIZE:
            raise SdpError("SDP larger than %d bytes" % MAX_SDP_SIZE)
        lines = [line.rstrip("\r") for line in text.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        if len(lines) > MAX_LINES:
            raise SdpError("SDP has more than %d lines" % MAX_LINES)
        if not lines:
            raise SdpError("empty SDP")
        parsed = []
        for number, line in enumerate(lines, 1):
            m = _LINE.match(line)
            if not m:
                raise SdpError("line %d is not <type>=<value>: %r" % (number, line[:80]))
            parsed.append((m.group(1), m.group(2)))

        if parsed[0] != ("v", "0"):
            raise SdpError("SDP must start with v=0")
        origin: Origin | None = None
        name: str | None = None
        sdp = cls(origin=Origin(), times=[])
        current: MediaDescription | None = None
        for kind, value in parsed[1:]:
            if kind == "m":
                current = _parse_media_line(value)
                sdp.media.append(current)
            elif current is not None:
                if kind == "i":
                    current.info = value
                elif kind == "c":
                    current.connection = Connection.parse(value)
                elif kind == "b":
                    current.bandwidths.append(value)
                elif kind == "k":
                    current.key = value
                elif kind == "a":
                    current.attributes.append(_parse_attribute(value))
                else:
                    raise SdpError("%s= not allowed in a media section" % kind)
            elif kind == "v":
                raise SdpError("repeated v=")
            elif kind == "o":
                if origin is not None:
                    raise SdpError("repeated o=")
                origin = Origin.parse(value)
            elif kind == "s":
                if name is not None:
                    raise SdpError("repeated s=")
                name = value
            elif kind == "i":
                sdp.info = value
            elif kind == "u":
                sdp.uri = value
            elif kind == "e":
                sdp.emails.append(value)
            elif kind == "p":
                sdp.phones.append(value)
            elif kind == "c":
                sdp.connection = Connection.parse(value)
            elif kind == "b":
                sdp.bandwidths.append(value)
            elif kind == "t":
                fields = value.split()
                if len(fields) != 2 or not all(f.isdigit() for f in fields):
                    raise SdpError("bad t= %r" % value)
                sdp.times.append(value)
            elif kind == "r":
                sdp.repeats.append(value)
            elif kind == "z":
                sdp.timezone = value
            elif kind == "k":
                sdp.key = value
            elif kind == "a":
                sdp.attributes.append(_parse_attribute(value))
            else:
                raise SdpError("unknown line type %s=" % kind)
        if origin is None:
            raise SdpError("missing o=")
        if name is None:
            raise SdpError("missing s=")
        if not sdp.media:
            raise SdpError("no m= line")
        sdp.origin = origin
        sdp.name = name
        if not sdp.times:
            sdp.times = ["0 0"]  # RFC 4566 requires t=; some stacks omit it
        for media in sdp.media:
            media.validate()
            if media.port and media.connection is None and sdp.connection is None:
                raise SdpError("no c= for m=%s" % media.kind)
        return sdp

    def lines(self) -> list[str]:
        out = ["v=%d" % self.version, "o=%s" % self.origin, "s=" + self.name]
        if self.info is not None:
            out.append("i=" + self.info)
        if self.uri is not None:
            out.append("u=" + self.uri)
        out += ["e=" + e for e in self.emails] + ["p=" + p for p in self.phones]
        if self.connection is not None:
            out.append("c=%s" % self.connection)
        out += ["b=" + b for b in self.bandwidths]
        out += ["t=" + t for t in self.times] + ["r=" + r for r in self.repeats]
        if self.timezone is not None:
            out.append("z=" + self.timezone)
        if self.key is not None:
            out.append("k=" + self.key)
        out += [_attr_line(a) for a in self.attributes]
        for media in self.media:
            out += media.lines()
        return out

    def __str__(self) -> str:
        return "\r\n".join(self.lines()) + "\r\n"

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8")

    # -- helpers
    def media_connection(self, media: MediaDescription) -> Connection | None:
        return media.connection or self.connection

    def media_direction(self, media: MediaDescription) -> str:
        """The section's direction, else the session's, else sendrecv."""
        return media.direction or _session_direction(self) or "sendrecv"

    def find(self, kind: str) -> MediaDescription | None:
        """The first section of ``kind`` with a non-zero port."""
        return next((m for m in self.media if m.kind == kind and m.port), None)


def _session_direction(sdp: SessionDescription) -> str | None:
    found = None
    for key, _ in sdp.attributes:
        if key in DIRECTIONS:
            found = key
    return found


def _parse_media_line(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError("m= needs media, port, proto and at least one format: %r" % value)
    kind, port_text, proto, *formats = parts
    if not _TOKEN.match(kind):
        raise SdpError("bad media type %r" % kind)
    port_text, sep, count = port_text.partition("/")
    port_count = None
    if sep:
        if not _is_uint(count, 5):
            raise SdpError("bad port count %r" % count)
        port_count = int(count)
    return MediaDescription(kind, _port(port_text), proto, formats, port_count)


# --- codecs we speak --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """A codec as we offer it: name, RTP clock, channels, our payload type, fmtp."""

    name: str
    clock_rate: int
    payload_type: int
    channels: int = 1
    fmtp: str | None = None
    rtcp_fb: tuple[str, ...] = ()

    def matches(self, rtpmap: RtpMap) -> bool:
        return (
            rtpmap.encoding.lower() == self.name.lower()
            and rtpmap.clock_rate == self.clock_rate
            and (rtpmap.channels == self.channels or self.name.lower() != "opus")
        )

    def rtpmap(self, payload_type: int | None = None) -> RtpMap:
        pt = self.payload_type if payload_type is None else payload_type
        return RtpMap(pt, self.name, self.clock_rate, self.channels)


PCMU = Codec("PCMU", 8000, 0)
PCMA = Codec("PCMA", 8000, 8)
G722 = Codec("G722", 8000, 9)
OPUS = Codec("opus", 48000, 111, channels=2, fmtp="useinbandfec=1; minptime=10")
TELEPHONE_EVENT = Codec("telephone-event", 8000, 101, fmtp="0-16")
H264 = Codec(
    "H264",
    90000,
    96,
    fmtp="profile-level-id=42e01f;packetization-mode=1",
    rtcp_fb=("nack", "nack pli", "ccm fir"),
)
AUDIO_CODECS: tuple[Codec, ...] = (PCMU, PCMA, G722, OPUS, TELEPHONE_EVENT)
CODECS_BY_NAME: dict[str, Codec] = {c.name.lower(): c for c in (*AUDIO_CODECS, H264)}
DTMF_NAME = "telephone-event"


def _codecs(codecs: Iterable[str | Codec]) -> list[Codec]:
    out = []
    for codec in codecs:
        if isinstance(codec, str):
            try:
                codec = CODECS_BY_NAME[codec.lower()]
            except KeyError:
                raise ValueError("unknown codec %r" % codec)
        out.append(codec)
    return out


# --- negotiated result ------------------------------------------------------------------------------


@dataclass
class NegotiatedStream:
    """One agreed RTP stream, from our side."""

    kind: str  # "audio" | "video"
    codec: str  # encoding name, as in the SDP ("PCMU", "opus", "H264")
    payload_type: int
    clock_rate: int  # RTP clock
    channels: int  # channels to send: for opus 2 only when the remote asked stereo=1
    fmtp: dict[str, str]  # the remote's parameters for the codec (what it wants to receive)
    remote_addr: str
    remote_port: int
    remote_rtcp_port: int  # == remote_port with rtcp-mux
    rtcp_mux: bool
    direction: str  # ours: sendrecv, sendonly (we only send), recvonly, inactive
    on_hold: bool  # the remote holds us (sendonly/inactive toward us, or c=0.0.0.0)
    ptime: int = 20  # the remote's packetization time
    dtmf_payload_type: int | None = None  # telephone-event, audio only
    dtmf_clock_rate: int | None = None
    rtcp_fb: list[str] = field(default_factory=list)  # video
    srtp: SrtpKeys | None = None  # SDES keys when the stream is SRTP

    @property
    def sends(self) -> bool:
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")

    @property
    def sample_rate(self) -> int:
        """The PCM rate of the codec (G.722: 16000 although its RTP clock is 8000)."""
        return 16000 if self.codec.upper() == "G722" else self.clock_rate


@dataclass
class NegotiatedMedia:
    audio: NegotiatedStream
    video: NegotiatedStream | None = None

    @property
    def on_hold(self) -> bool:
        return self.audio.on_hold


def _intersect(a: str, b: str) -> str:
    send = a in ("sendrecv", "sendonly") and b in ("sendrecv", "sendonly")
    recv = a in ("sendrecv", "recvonly") and b in ("sendrecv", "recvonly")
    return {(True, True): "sendrecv", (True, False): "sendonly", (False, True): "recvonly"}.get(
        (send, recv), "inactive"
    )


def _remote_stream(
    sdp: SessionDescription,
    media: MediaDescription,
    *,
    codec: RtpMap,
    fmtp: str | None,
    local_direction: str,
    rtcp_mux: bool,
) -> NegotiatedStream:
    """Build the stream seen from us, ``sdp``/``media`` being the remote's description."""
    conn = sdp.media_connection(media)
    if conn is None:  # parse() refuses this; a description built in code might not
        raise SdpError("no c= for m=%s" % media.kind)
    remote_direction = sdp.media_direction(media)
    hold = conn.is_hold or remote_direction in ("sendonly", "inactive")
    direction = _intersect(local_direction, _MIRROR[remote_direction])
    if conn.is_hold:
        direction = _intersect(direction, "recvonly")  # nowhere to send to
    rtcp_port = media.port if rtcp_mux else media.port + 1
    rtcp = media.rtcp
    if not rtcp_mux and rtcp is not None:
        rtcp_port = rtcp[0]
    params = parse_fmtp(fmtp or "")
    channels = codec.channels
    if codec.encoding.lower() == "opus":
        channels = 2 if params.get("stereo") == "1" else 1
    return NegotiatedStream(
        kind=media.kind,
        codec=codec.encoding,
        payload_type=codec.payload_type,
        clock_rate=codec.clock_rate,
        channels=channels,
        fmtp=params,
        remote_addr=conn.host,
        remote_port=media.port,
        remote_rtcp_port=rtcp_port,
        rtcp_mux=rtcp_mux,
        direction=direction,
        on_hold=hold,
        ptime=media.ptime or 20,
        rtcp_fb=media.rtcp_fb(codec.payload_type) if media.kind == "video" else [],
    )


def _pick_dtmf(media: MediaDescription, clock_rate: int) -> RtpMap | None:
    events = [m for m in media.rtpmaps.values() if m.encoding.lower() == DTMF_NAME]
    same_clock = [m for m in events if m.clock_rate == clock_rate]
    return (same_clock or events or [None])[0]


def _video_acceptable(media: MediaDescription, pt: int, rtpmap: RtpMap) -> bool:
    if rtpmap.encoding.upper() != "H264" or rtpmap.clock_rate != 90000:
        return False
    # We pass H.264 through as FU-A, which needs packetization-mode=1.
    return parse_fmtp(media.fmtp(pt) or "").get("packetization-mode") == "1"


# --- offer --------------------------------------------------------------------------------------------


def _new_session(
    addr: str, session_id: int | None, session_version: int, username: str
) -> SessionDescription:
    addrtype = "IP6" if ":" in addr else "IP4"
    sid = session_id if session_id is not None else random.randrange(1, 2**62)
    return SessionDescription(
        origin=Origin(username, str(sid), str(session_version), "IN", addrtype, addr),
        name=username,
        connection=Connection(addr, "IN", addrtype),
    )


def _audio_section(
    port: int,
    codecs: Sequence[tuple[Codec, int, str | None]],
    *,
    proto: str = "RTP/AVP",
    ptime: int | None,
    direction: str,
    rtcp_mux: bool,
    crypto: Sequence[Crypto] = (),
) -> MediaDescription:
    media = MediaDescription("audio", port, proto, [str(pt) for _, pt, _ in codecs])
    for codec, pt, fmtp in codecs:
        media.attributes.append(("rtpmap", str(codec.rtpmap(pt))))
        if fmtp:
            media.attributes.append(("fmtp", "%d %s" % (pt, fmtp)))
    if ptime:
        media.attributes.append(("ptime", str(ptime)))
    media.attributes += [("crypto", str(c)) for c in crypto]
    if rtcp_mux:
        media.attributes.append(("rtcp-mux", None))
    media.attributes.append((direction, None))
    return media


def _video_section(
    port: int, pt: int, *, proto: str, direction: str, rtcp_mux: bool, crypto: Sequence[Crypto] = ()
) -> MediaDescription:
    media = MediaDescription("video", port, proto, [str(pt)])
    media.attributes.append(("rtpmap", str(H264.rtpmap(pt))))
    media.attributes.append(("fmtp", "%d %s" % (pt, H264.fmtp)))
    media.attributes += [("rtcp-fb", "%d %s" % (pt, fb)) for fb in H264.rtcp_fb]
    media.attributes += [("crypto", str(c)) for c in crypto]
    if rtcp_mux:
        media.attributes.append(("rtcp-mux", None))
    media.attributes.append((direction, None))
    return media


def make_offer(
    addr: str,
    audio_port: int,
    codecs: Iterable[str | Codec] = AUDIO_CODECS,
    video_port: int | None = None,
    *,
    direction: str = "sendrecv",
    ptime: int = 20,
    rtcp_mux: bool = False,
    session_id: int | None = None,
    session_version: int = 1,
    username: str = "mpb2bua",
    proto: str = "RTP/AVP",
    crypto: Sequence[Crypto] = (),
    video_crypto: Sequence[Crypto] = (),
) -> SessionDescription:
    """Our offer. For a re-offer (hold, unhold) pass the same ``session_id`` and a higher version.

    ``codecs`` are names or :class:`Codec` in preference order; include ``telephone-event`` to
    offer RFC 4733 DTMF (the default list does). ``crypto`` / ``video_crypto``: our SDES keys,
    one line per suite offered; ``proto`` ``RTP/SAVP`` makes SRTP mandatory, ``RTP/AVP`` with
    keys offers it best-effort (a far end without SRTP ignores the lines and answers plain RTP).
    """
    if direction not in DIRECTIONS:
        raise ValueError("bad direction %r" % direction)
    chosen = _codecs(codecs)
    if not any(c.name != DTMF_NAME for c in chosen):
        raise ValueError("no audio codec to offer")
    sdp = _new_session(addr, session_id, session_version, username)
    sdp.media.append(
        _audio_section(
            audio_port,
            [(c, c.payload_type, c.fmtp) for c in chosen],
            proto=proto,
            ptime=ptime,
            direction=direction,
            rtcp_mux=rtcp_mux,
            crypto=crypto,
        )
    )
    if video_port is not None:
        sdp.media.append(
            _video_section(
                video_port,
                H264.payload_type,
                proto=proto,
                direction=direction,
                rtcp_mux=rtcp_mux,
                crypto=video_crypto,
            )
        )
    return sdp


# --- answer ------------------------------------------------------------------------------------------


def negotiate_answer(
    offer: SessionDescription,
    our_codecs: Iterable[str | Codec],
    local_addr: str,
    local_ports: int | Mapping[str, int],
    *,
    direction: str = "sendrecv",
    rtcp_mux: bool = True,
    ptime: int = 20,
    session_id: int | None = None,
    session_version: int = 1,
    username: str = "mpb2bua",
    local_key: Callable[[str, str], bytes] | None = None,
    srtp_only: bool = False,
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer a remote offer (RFC 3264 §6).

    The audio codec is the first of the offer's formats that ``our_codecs`` supports (the
    offerer's preference). Telephone-event is kept with the offer's payload type if offered and
    ``telephone-event`` is among ``our_codecs``. ``local_ports`` is the audio port, or
    ``{"audio": port, "video": port}``; video is accepted only with a video port and an H.264
    (packetization-mode=1) format. Every other section is rejected with port 0, keeping the
    number and order of m= lines. ``direction`` is what we want (e.g. ``sendonly`` while we hold).

    SRTP: without ``local_key`` the offer's keys are ignored and ``RTP/SAVP`` sections refused.
    With it (``local_key(kind, suite)`` returns our key), a section with a usable ``a=crypto``
    (the offerer's first) is answered with that tag and suite and our key, in the offer's
    profile (``RTP/AVP`` with keys: best-effort SRTP, as FreeSWITCH and others offer it); an
    ``RTP/SAVP`` section without one is refused, and so is every section without one when
    ``srtp_only``.
    """
    ports = {"audio": local_ports} if isinstance(local_ports, int) else dict(local_ports)
    ours = _codecs(our_codecs)
    dtmf_ok = any(c.name == DTMF_NAME for c in ours)
    ours = [c for c in ours if c.name != DTMF_NAME]
    answer = _new_session(local_addr, session_id, session_version, username)
    audio: NegotiatedStream | None = None
    video: NegotiatedStream | None = None
    for media in offer.media:
        section = None
        crypto = _offered_crypto(media) if local_key is not None else None
        plain_ok = media.proto in RTP_PROTOS and not srtp_only
        if media.port and (plain_ok or (crypto is not None and media.proto in (*RTP_PROTOS, *SRTP_PROTOS))):
            mux = rtcp_mux and media.rtcp_mux
            wanted = _intersect(direction, _MIRROR[offer.media_direction(media)])
            if media.kind == "audio" and audio is None and "audio" in ports:
                section, audio = _answer_audio(
                    offer, media, ours, dtmf_ok, ports["audio"], wanted, mux, ptime
                )
            elif media.kind == "video" and video is None and ports.get("video"):
                section, video = _answer_video(offer, media, ports["video"], wanted, mux)
            if section is not None and crypto is not None and local_key is not None:
                stream = audio if media.kind == "audio" else video
                assert stream is not None
                mine = Crypto(crypto.tag, crypto.suite, local_key(media.kind, crypto.suite))
                section.attributes.insert(-1 - mux, ("crypto", str(mine)))
                stream.srtp = SrtpKeys(crypto.suite, mine.key, crypto.key)
        if section is None:  # rejected (RFC 3264 §6: port 0, same formats)
            section = MediaDescription(media.kind, 0, media.proto, list(media.formats))
        answer.media.append(section)
    if audio is None:
        raise NegotiationError("no acceptable audio stream in the offer")
    return answer, NegotiatedMedia(audio, video)


def _offered_crypto(media: MediaDescription) -> Crypto | None:
    """The offerer's preferred ``a=crypto`` line that we can run (RFC 4568 §7.1.2), if any."""
    return next((c for c in media.cryptos if c.usable), None)


def _answer_audio(
    offer: SessionDescription,
    media: MediaDescription,
    ours: list[Codec],
    dtmf_ok: bool,
    port: int,
    wanted: str,
    mux: bool,
    ptime: int,
) -> tuple[MediaDescription | None, NegotiatedStream | None]:
    rtpmaps = media.rtpmaps
    for pt in media.payload_types:
        rtpmap = rtpmaps.get(pt)
        codec = next((c for c in ours if rtpmap and c.matches(rtpmap)), None)
        if codec is None:
            continue
        answered = [(codec, pt, codec.fmtp)]
        dtmf = _pick_dtmf(media, rtpmap.clock_rate) if dtmf_ok else None
        if dtmf is not None:
            answered.append((TELEPHONE_EVENT, dtmf.payload_type, media.fmtp(dtmf.payload_type) or "0-16"))
        section = _audio_section(
            port, answered, proto=media.proto, ptime=ptime, direction=wanted, rtcp_mux=mux
        )
        stream = _remote_stream(
            offer, media, codec=rtpmap, fmtp=media.fmtp(pt), local_direction=wanted, rtcp_mux=mux
        )
        if dtmf is not None:
            stream.dtmf_payload_type, stream.dtmf_clock_rate = dtmf.payload_type, dtmf.clock_rate
        return section, stream
    return None, None


def _answer_video(
    offer: SessionDescription, media: MediaDescription, port: int, wanted: str, mux: bool
) -> tuple[MediaDescription | None, NegotiatedStream | None]:
    rtpmaps = media.rtpmaps
    for pt in media.payload_types:
        rtpmap = rtpmaps.get(pt)
        if rtpmap is None or not _video_acceptable(media, pt, rtpmap):
            continue
        section = _video_section(port, pt, proto=media.proto, direction=wanted, rtcp_mux=mux)
        stream = _remote_stream(
            offer, media, codec=rtpmap, fmtp=media.fmtp(pt), local_direction=wanted, rtcp_mux=mux
        )
        return section, stream
    return None, None


def apply_answer(offer: SessionDescription, answer: SessionDescription) -> NegotiatedMedia:
    """Read the remote answer to our ``offer`` (RFC 3264 §7).

    The codec is the answer's first format that we offered (not telephone-event); directions
    are intersected with what we offered. Raises :class:`SdpError` if the answer does not match
    the offer's m= lines, :class:`NegotiationError` if audio was rejected or has no common codec.
    """
    if len(answer.media) != len(offer.media):
        raise SdpError("answer has %d m= lines, offer had %d" % (len(answer.media), len(offer.media)))
    audio: NegotiatedStream | None = None
    video: NegotiatedStream | None = None
    for ours, theirs in zip(offer.media, answer.media, strict=True):
        if ours.kind != theirs.kind:
            raise SdpError("answer m=%s where the offer had m=%s" % (theirs.kind, ours.kind))
        if ours.port == 0 or theirs.port == 0 or not theirs.is_rtp:
            continue
        if ours.kind == "audio" and audio is None:
            audio = _accepted(offer, ours, answer, theirs, video=False)
        elif ours.kind == "video" and video is None:
            video = _accepted(offer, ours, answer, theirs, video=True)
    if audio is None:
        raise NegotiationError("audio rejected by the answer")
    return NegotiatedMedia(audio, video)


def _accepted(
    offer: SessionDescription,
    ours: MediaDescription,
    answer: SessionDescription,
    theirs: MediaDescription,
    *,
    video: bool,
) -> NegotiatedStream:
    offered = ours.rtpmaps
    answered = theirs.rtpmaps
    for pt in theirs.payload_types:
        rtpmap = answered.get(pt) or offered.get(pt)
        if rtpmap is None or rtpmap.encoding.lower() == DTMF_NAME:
            continue
        if not any(rtpmap.encoding.lower() == o.encoding.lower() for o in offered.values()):
            continue
        local_direction = offer.media_direction(ours)
        mux = ours.rtcp_mux and theirs.rtcp_mux
        stream = _remote_stream(
            answer, theirs, codec=rtpmap, fmtp=theirs.fmtp(pt), local_direction=local_direction, rtcp_mux=mux
        )
        stream.srtp = _answered_keys(ours, theirs)
        if not video:
            dtmf = _pick_dtmf(theirs, rtpmap.clock_rate)
            if dtmf is None:  # an rtpmap-less echo of our dynamic PT
                dtmf = next(
                    (
                        offered[p]
                        for p in theirs.payload_types
                        if p in offered and offered[p].encoding == DTMF_NAME
                    ),
                    None,
                )
            if dtmf is not None:
                stream.dtmf_payload_type, stream.dtmf_clock_rate = dtmf.payload_type, dtmf.clock_rate
        return stream
    raise NegotiationError("no codec of ours in the answer's m=%s" % theirs.kind)


def _answered_keys(ours: MediaDescription, theirs: MediaDescription) -> SrtpKeys | None:
    """The keys of an answer to our offer: its ``a=crypto`` names one of our lines by tag."""
    if not ours.has("crypto"):
        return None  # we offered no SRTP: whatever the answer says about it is not read
    answered = theirs.cryptos
    if not answered:
        if theirs.is_srtp:
            raise NegotiationError("m=%s %s answer without a=crypto" % (theirs.kind, theirs.proto))
        return None
    if len(answered) > 1:
        raise SdpError("answer has %d a=crypto lines in m=%s, not one" % (len(answered), theirs.kind))
    crypto = answered[0]
    offered = next((c for c in ours.cryptos if c.tag == crypto.tag), None)
    if offered is None or offered.suite != crypto.suite:
        raise SdpError("answer a=crypto:%d %s is not one we offered" % (crypto.tag, crypto.suite))
    if not crypto.usable:
        raise NegotiationError("answer a=crypto with parameters we do not support (MKI, session parameters)")
    return SrtpKeys(crypto.suite, offered.key, crypto.key)
