"""SIP messages (RFC 3261 §7, §20, §25): parse, build, serialize.

Sans-IO. Bounds on every size; bad input raises :class:`SipParseError` carrying
what was readable, so a transport can still answer a broken request with 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from b2bua.wire.sipuri import UriError, format_params, split_hostport

MAX_MESSAGE_SIZE = 65535  # the largest UDP datagram; TCP messages get the same bound
MAX_HEADER_COUNT = 256
MAX_LINE_LENGTH = 8192
MAX_FORWARDS = 70

COMPACT_FORMS = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        "Call-ID",
        "CSeq",
        "WWW-Authenticate",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Authorization",
        "Max-Forwards",
        "Min-Expires",
        "Record-Route",
        "Content-Length",
        "Content-Type",
        "User-Agent",
        "Retry-After",
        "Allow-Events",
        "Session-Expires",
        "Min-SE",
        "Refer-To",
        "Referred-By",
        "RSeq",
        "RAck",
        "MIME-Version",
        "P-Asserted-Identity",
        "X-FS-Support",  # FreeSWITCH's spelling (it compares without case; sipp and people do not)
        "Content-Disposition",
        "Content-Encoding",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Call-Info",
        "Error-Info",
        "Reply-To",
        "In-Reply-To",
        "Subscription-State",
        "Replaces",
    )
}
# Headers whose comma-separated values are separate entries (RFC 3261 §7.3.1).
MULTI_VALUE = frozenset(
    h.lower()
    for h in (
        "Via",
        "Contact",
        "Route",
        "Record-Route",
        "Allow",
        "Supported",
        "Require",
        "Proxy-Require",
        "Unsupported",
        "Accept",
        "Allow-Events",
        "Accept-Encoding",
        "Accept-Language",
    )
)
_TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+\Z")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+\-.]*:")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_EOL = re.compile(r"\r?\n")
_VIA_PROTO = re.compile(r"^\s*([^\s/]+)\s*/\s*([^\s/]+)\s*/\s*([^\s/;]+)\s*(.*)$", re.S)
# Headers that may appear only once (RFC 4475 §3.2.8 "multi01" / §3.1.2.2 "mcl01").
SINGLE_VALUE = ("From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length")
# Headers whose values are name-addr / addr-spec (RFC 3261 §20.10, §20.20, §20.39).
NAME_ADDR = ("From", "To", "Contact")
_DISPLAY_SPECIALS = frozenset('"(),;:<>@[]\\?={}/')


def _is_digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts e.g. superscripts that int() refuses)."""
    return text.isascii() and text.isdigit()


REASONS = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


class SipParseError(ValueError):
    """A message that cannot be parsed; ``status`` is what a UAS should answer a request with."""

    def __init__(self, message: str, status: int = 400, partial: Request | None = None):
        super().__init__(message)
        self.status = status
        self.partial = partial  # the request as far as it was readable, to build a 400 from


def canonical_name(name: str) -> str:
    low = name.lower()
    if len(low) == 1 and low in COMPACT_FORMS:
        return COMPACT_FORMS[low]
    if low in _CANONICAL:
        return _CANONICAL[low]
    return "-".join(part.capitalize() for part in low.split("-"))


def split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quotes and <>."""
    parts: list[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            parts.append(value[start:i].strip())
            start = i + 1
        i += 1
    last = value[start:].strip()
    if last or parts:
        parts.append(last)
    return [p for p in parts if p]


class Headers:
    """Ordered, case-insensitive multi-map of header fields, names in canonical form."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]] | None = None):
        self._items: list[tuple[str, str]] = []
        for name, value in items or ():
            self.add(name, value)

    def add(self, name: str, value: str | int, first: bool = False) -> None:
        item = (canonical_name(name), str(value))
        if first:
            self._items.insert(0, item)
        else:
            self._items.append(item)

    def set(self, name: str, value: str | int) -> None:
        """Replace every field of that name with one (kept at the first one's position)."""
        name = canonical_name(name)
        for i, (n, _) in enumerate(self._items):
            if n == name:
                self._items[i] = (name, str(value))
                self._items[i + 1 :] = [it for it in self._items[i + 1 :] if it[0] != name]
                return
        self._items.append((name, str(value)))

    def remove(self, name: str) -> None:
        name = canonical_name(name)
        self._items = [it for it in self._items if it[0] != name]

    def get(self, name: str, default: str | None = None) -> str | None:
        name = canonical_name(name)
        for n, v in self._items:
            if n == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of a header; comma lists of multi-value headers are split."""
        name = canonical_name(name)
        values = [v for n, v in self._items if n == name]
        if name.lower() in MULTI_VALUE:
            return [part for v in values for part in split_commas(v)]
        return values

    def __contains__(self, name: str) -> bool:
        return self.get(name) is not None

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def copy(self) -> Headers:
        h = Headers()
        h._items = list(self._items)
        return h


@dataclass
class Message:
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def _start_line(self) -> str:
        raise NotImplementedError

    def __bytes__(self) -> bytes:
        lines = [self._start_line()]
        lines.extend(f"{n}: {v}" for n, v in self.headers if n != "Content-Length")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + self.body

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        return parse_cseq(self.headers.get("CSeq") or "")

    @property
    def top_via(self) -> Via:
        values = self.headers.get_all("Via")
        if not values:
            raise SipParseError("no Via")
        return Via.parse(values[0])


@dataclass
class Request(Message):
    method: str = "OPTIONS"
    uri: str = ""

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.call_id!r}>"


@dataclass
class Response(Message):
    status: int = 200
    reason: str = "OK"
    local: bool = False  # made up by this UA (timeout, transport error), never on the wire

    def _start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} call-id={self.call_id!r}>"


@dataclass
class Via:
    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: str) -> Via:
        # SLASH = SWS "/" SWS: "SIP / 2.0 / UDP" is valid (RFC 4475 §3.1.1.1)
        m = _VIA_PROTO.match(value)
        if not m or m.group(1).upper() != "SIP" or m.group(2) != "2.0":
            raise SipParseError(f"bad Via protocol {value[:40]!r}")
        parts = [m.group(1), m.group(2), m.group(3)]
        sentBy, semi, paramText = m.group(4).strip().partition(";")
        try:
            host, port = split_hostport(sentBy)
        except UriError as e:
            raise SipParseError(f"bad Via sent-by: {e}") from None
        params: dict[str, str | None] = {}
        for item in paramText.split(";") if semi else ():
            name, eq, v = item.strip().partition("=")
            name = name.strip()
            if not _TOKEN.match(name) or (eq and not v.strip()):
                raise SipParseError(f"bad Via parameter {item[:40]!r}")  # e.g. ";;" (RFC 4475 badinv01)
            params[name.lower()] = v.strip() if eq else None
        return cls(transport=parts[2].upper(), host=host, port=port, params=params)

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    def __str__(self) -> str:
        hostport = self.host if self.port is None else f"{self.host}:{self.port}"
        return f"SIP/2.0/{self.transport} {hostport}{format_params(self.params)}"


def parse_cseq(value: str) -> tuple[int, str]:
    number, _, method = value.strip().partition(" ")
    method = method.strip()
    if not _is_digits(number) or len(number) > 10 or not method or not _TOKEN.match(method):
        raise SipParseError(f"bad CSeq {value[:40]!r}")
    seq = int(number)
    if seq >= 2**31:
        raise SipParseError("CSeq number out of range")
    return seq, method


def _unfold(text: str) -> list[str]:
    """Header lines with continuation lines (leading SP/HT) joined (RFC 3261 §7.3.1)."""
    lines: list[str] = []
    for line in _EOL.split(text):
        if line[:1] in (" ", "\t") and lines:
            lines[-1] = lines[-1] + " " + line.strip()
        else:
            lines.append(line)
    return lines


def parse_message(data: bytes, datagram: bool = True) -> Request | Response:
    """Parse one whole SIP message.

    ``datagram``: on UDP a missing Content-Length means "the rest of the packet"
    and a shorter body than announced is an error; on a stream the caller framed it.
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError("message too large", status=513)
    data = data.lstrip(b"\r\n")  # RFC 3261 §7.5: ignore CRLFs before the start line
    blank = _BLANK_LINE.search(data)  # the first empty line, CRLF or bare LF
    if blank:
        head, body = data[: blank.start()], data[blank.end() :]
    else:
        head, body = data.rstrip(b"\r\n"), b""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("header section is not UTF-8") from None
    lines = _unfold(text)
    if not lines or not lines[0]:
        raise SipParseError("empty message")
    start = lines[0]
    if len(lines) > MAX_HEADER_COUNT:
        raise SipParseError("too many header fields")
    msg: Request | Response
    if start[:4].upper() == "SIP/":
        parts = start.split(" ", 2)
        if parts[0].upper() != "SIP/2.0":
            raise SipParseError(f"unsupported version {parts[0][:20]!r}", status=505)
        if len(parts) < 2 or len(parts[1]) != 3 or not _is_digits(parts[1]) or not 100 <= int(parts[1]) < 700:
            raise SipParseError(f"bad status line {start[:80]!r}")
        msg = Response(status=int(parts[1]), reason=parts[2].strip() if len(parts) > 2 else "")
    else:
        parts = start.split(" ")
        if len(parts) != 3:
            raise SipParseError(f"bad request line {start[:80]!r}")
        method, uri, version = parts
        if not _TOKEN.match(method):
            raise SipParseError(f"bad method {method[:40]!r}")
        if not uri or ":" not in uri:
            raise SipParseError(f"bad Request-URI {uri[:80]!r}", status=416 if uri else 400)
        # "<sip:...>" (RFC 4475 ltgtruri), control characters, quotes: not a URI at all
        if not _SCHEME.match(uri) or any(c in '<>"' or ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
            raise SipParseError(f"bad Request-URI {uri[:80]!r}")
        if uri[:4].lower() in ("sip:", "sips") and "?" in uri.rpartition("@")[2]:
            # headers are not allowed in a Request-URI (RFC 3261 §19.1.1; RFC 4475 escruri)
            raise SipParseError(f"headers in Request-URI {uri[:80]!r}")
        msg = Request(method=method, uri=uri)
        if version.upper() != "SIP/2.0":
            # answered 505 (RFC 3261 §21.5.7, RFC 4475 §3.3.15): the response needs its headers
            _read_headers(msg, lines, None)
            raise SipParseError(f"unsupported version {version[:20]!r}", status=505, partial=msg)
    _read_headers(msg, lines, msg if isinstance(msg, Request) else None)
    _check(msg, body, datagram, msg if isinstance(msg, Request) else None)
    return msg


def _read_headers(msg: Request | Response, lines: list[str], partial: Request | None) -> None:
    for line in lines[1:]:
        if len(line) > MAX_LINE_LENGTH:
            raise SipParseError("header line too long", partial=partial)
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name or not _TOKEN.match(name):
            raise SipParseError(f"malformed header line {line[:60]!r}", partial=partial)
        msg.headers.add(name, value.strip())


def _check(msg: Request | Response, body: bytes, datagram: bool, partial: Request | None) -> None:
    try:
        _check_headers(msg, body, datagram, partial)
    except SipParseError as e:
        if e.partial is None:
            e.partial = partial
        raise


def _check_name_addr(name: str, value: str) -> None:
    """Syntax of a name-addr / addr-spec value, scheme-agnostic (RFC 3261 §20.10; RFC 4475 §3.1.2)."""
    value = value.strip()
    if name == "Contact" and value == "*":
        return
    quoted = False
    lt = -1
    i = 0
    while i < len(value):  # balanced quotes; find the first "<" outside quotes
        c = value[i]
        if quoted and c == "\\":
            i += 1
        elif c == '"':
            quoted = not quoted
        elif c == "<" and not quoted and lt < 0:
            lt = i
        i += 1
    if quoted:
        raise SipParseError(f"unterminated quoted string in {name}")
    if lt >= 0:
        gt = value.find(">", lt)
        display, uri = value[:lt].strip(), value[lt + 1 : gt] if gt > 0 else ""
        if gt < 0 or not uri or any(c.isspace() for c in uri):  # badaspec: "< sip:x@y >"
            raise SipParseError(f"bad <URI> in {name}")
        if display and not display.startswith('"') and any(c in _DISPLAY_SPECIALS for c in display):
            raise SipParseError(f"bad display name in {name}")  # baddn: Bell, Alexander <sip:...>
    else:
        uri = value.partition(";")[0].strip()
        if any(c in uri for c in '?,"') or any(c.isspace() for c in uri):  # regbadct
            raise SipParseError(f"URI with ';', ',' or '?' not in <> in {name}")
    if not _SCHEME.match(uri):
        raise SipParseError(f"bad URI in {name}")


def _check_headers(msg: Request | Response, body: bytes, datagram: bool, partial: Request | None) -> None:
    h = msg.headers
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if not h.get(name):
            raise SipParseError(f"missing {name}", partial=partial)
    for name in SINGLE_VALUE:
        if len(h.get_all(name)) > 1:
            raise SipParseError(f"several {name} fields", partial=partial)
    seq, method = parse_cseq(h.get("CSeq") or "")
    if isinstance(msg, Request) and method != msg.method:
        raise SipParseError("CSeq method does not match the request method", partial=partial)
    for via in h.get_all("Via"):
        Via.parse(via)
    for name in NAME_ADDR:
        for value in h.get_all(name):
            _check_name_addr(name, value)
    lengths = h.get_all("Content-Length")
    if lengths:
        text = lengths[0].strip()
        if not _is_digits(text) or len(text) > 6:
            raise SipParseError(f"bad Content-Length {text[:20]!r}", partial=partial)
        length = int(text)
        if length > len(body):
            raise SipParseError("body shorter than Content-Length", partial=partial)
        body = body[:length]
    elif not datagram:
        raise SipParseError("Content-Length required on a stream", partial=partial)
    if isinstance(msg, Request):
        mf = h.get("Max-Forwards")
        mf = None if mf is None else mf.strip()
        # the length check first: int() refuses more than 4300 digits with a plain ValueError
        if mf is not None and (not _is_digits(mf) or len(mf) > 10 or int(mf) > 255):
            raise SipParseError(f"bad Max-Forwards {mf[:20]!r}", partial=partial)
    msg.body = body


class StreamFramer:
    """Cut a TCP byte stream into whole SIP messages by Content-Length (RFC 3261 §18.3)."""

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE):
        self._buf = bytearray()
        self._max = max_size

    def feed(self, data: bytes) -> list[bytes]:
        """Returns the complete messages; raises SipParseError on an unrecoverable stream."""
        self._buf += data
        out: list[bytes] = []
        while True:
            # keep-alive CRLFs (RFC 5626 §4.4.1) between messages
            while self._buf[:2] == b"\r\n":
                del self._buf[:2]
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self._max:
                    raise SipParseError("header section too large", status=513)
                return out
            head = bytes(self._buf[:end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() in (b"content-length", b"l"):
                    value = value.strip()
                    if not value.isdigit() or len(value) > 6:
                        raise SipParseError("bad Content-Length on stream")
                    length = int(value)
                    break
            else:
                raise SipParseError("Content-Length required on a stream")
            total = end + 4 + length
            if total > self._max:
                raise SipParseError("message too large", status=513)
            if len(self._buf) < total:
                return out
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Response:
    """A response to ``request`` with Via/From/To/Call-ID/CSeq copied (RFC 3261 §8.2.6.2)."""
    resp = Response(status=status, reason=reason or REASONS.get(status, "Unknown"))
    h = request.headers
    for via in h.get_all("Via"):
        resp.headers.add("Via", via)
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = h.get(name)
        if value is not None:
            if name == "To" and to_tag and ";tag=" not in value.replace(" ", "").lower():
                value = f"{value};tag={to_tag}"
            resp.headers.add(name, value)
    for name, value in headers or ():
        resp.headers.add(name, value)
    resp.body = body
    return resp
