"""SIP URIs (RFC 3261 §19.1) and name-addr / addr-spec header values (§20.10, §25.1).

Sans-IO: parse text into small objects and render them back. Bad input raises
:class:`UriError` with a precise message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_URI_LENGTH = 2048
_REG_NAME = re.compile(r"^[A-Za-z0-9._\-]+\Z")  # hostname / IPv4 (RFC 3261 §25.1), plus "_"
_IPV6 = re.compile(r"^\[[0-9A-Fa-f:.]+\]\Z")
_ESCAPE = re.compile(r"\\(.)", re.S)


class UriError(ValueError):
    """A SIP URI or name-addr that cannot be parsed."""


def _split_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        name = name.strip().lower()
        if not name:
            raise UriError(f"empty parameter name in {text!r}")
        params[name] = value.strip() if eq else None
    return params


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@dataclass
class SipUri:
    """``sip:user@host:port;params?headers`` (also ``sips:``)."""

    host: str
    user: str | None = None
    port: int | None = None
    scheme: str = "sip"
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipUri:
        text = text.strip()
        if len(text) > MAX_URI_LENGTH:
            raise UriError("URI too long")
        scheme, colon, rest = text.partition(":")
        scheme = scheme.lower()
        if not colon or scheme not in ("sip", "sips"):
            raise UriError(f"not a SIP URI: {text[:80]!r}")
        if any(c.isspace() for c in text):
            raise UriError(f"whitespace in URI {text[:80]!r}")
        # "?" may appear in the user part (RFC 3261 user-unreserved, RFC 4475 intmeth) and "@"
        # (unescaped, sloppy) in the headers: take the last "@" before the first "?" if any.
        before = rest.partition("?")[0]
        if "@" in before or "@" not in rest:
            userinfo, at, _ = before.rpartition("@")
            hostpart = rest[len(userinfo) + len(at) :]
        else:
            userinfo, at, hostpart = rest.rpartition("@")
        hostpart, qmark, headers = hostpart.partition("?")
        user = userinfo.partition(":")[0] if at else None  # a password in a URI is dropped
        if at and not user:
            raise UriError("empty user part")
        hostport, _, paramtext = hostpart.partition(";")
        host, port = split_hostport(hostport)
        return cls(
            host=host,
            user=user,
            port=port,
            scheme=scheme,
            params=_split_params(paramtext),
            headers=headers if qmark and headers else None,
        )

    @property
    def hostport(self) -> str:
        return join_hostport(self.host, self.port)

    @property
    def transport(self) -> str:
        value = self.params.get("transport")
        return (value or ("tls" if self.scheme == "sips" else "udp")).lower()

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{user}{self.hostport}{format_params(self.params)}{headers}"


def split_hostport(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` → (host, port); IPv6 stays bracketed."""
    text = text.strip()
    if not text:
        raise UriError("empty host")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UriError(f"unterminated IPv6 reference {text!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UriError(f"garbage after IPv6 reference {text!r}")
        portText = rest[1:] if rest else ""
        colon = rest[:1]
        valid = _IPV6.match(host) is not None
    else:
        host, colon, portText = text.partition(":")
        if not host:
            raise UriError("empty host")
        valid = _REG_NAME.match(host) is not None
    if not valid:
        raise UriError(f"invalid host {host!r}")
    if not colon:
        return host.lower(), None
    if not (portText.isascii() and portText.isdigit()) or len(portText) > 5 or not 0 < int(portText) < 65536:
        raise UriError(f"invalid port {portText!r}")
    return host.lower(), int(portText)


def join_hostport(host: str, port: int | None) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


@dataclass
class NameAddr:
    """A From/To/Contact/Route value: ``"Display" <uri>;params`` or ``uri;params``."""

    uri: SipUri
    display: str | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    wildcard: bool = False  # ``Contact: *``

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        text = text.strip()
        if text == "*":
            return cls(uri=SipUri(host="*"), wildcard=True)
        display = None
        lt = _find_unquoted(text, "<")
        if lt >= 0:
            gt = text.find(">", lt)
            if gt < 0:
                raise UriError(f"unterminated <uri> in {text[:80]!r}")
            display = text[:lt].strip()
            if display.startswith('"'):
                if _quote_end(display) != len(display) - 1:
                    raise UriError("unterminated display name")
                display = _ESCAPE.sub(r"\1", display[1:-1])
            uri = SipUri.parse(text[lt + 1 : gt])
            params = _split_params(text[gt + 1 :])
        else:
            # addr-spec form: header parameters follow the URI and are not URI parameters
            uriText, _, paramText = text.partition(";")
            uri = SipUri.parse(uriText)
            params = _split_params(paramText)
        return cls(uri=uri, display=display or None, params=params)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        display = ""
        if self.display:
            escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
            display = f'"{escaped}" '
        return f"{display}<{self.uri}>{format_params(self.params)}"


def _quote_end(text: str) -> int:
    """Index of the quote closing the quoted-string that ``text`` starts with, or -1."""
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return -1


def _find_unquoted(text: str, char: str) -> int:
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == char and not quoted:
            return i
        i += 1
    return -1
