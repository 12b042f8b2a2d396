"""Property-based fuzzing of b2bua.wire.sip and b2bua.wire.sipuri (SIP messages, stream framing, URIs).

Only :class:`SipParseError` / :class:`UriError` may come out of the parsers, whatever the input;
built messages survive a parse/serialize round trip; memory stays proportional to the input.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from b2bua.wire.sip import (
    MAX_MESSAGE_SIZE,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    Via,
    parse_cseq,
    parse_message,
)
from b2bua.wire.sipuri import NameAddr, SipUri, UriError, split_hostport
from tests.wire.fuzz_support import assert_bounded, fuzz, mutated

# --- strategies ----------------------------------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
token = st.text(_ALNUM + "-.!%*_+`'~", min_size=1, max_size=12)
label = st.text(_ALNUM, min_size=1, max_size=10)
hostname = st.lists(label, min_size=1, max_size=3).map(".".join)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "%d.%d.%d.%d" % t)
ipv6 = st.sampled_from(["[::1]", "[2001:db8::1]", "[fe80::1:2:3]"])
host = st.one_of(hostname, ipv4, ipv6)
port = st.none() | st.integers(1, 65535)
param_value = st.none() | st.text(_ALNUM + "-._~", min_size=1, max_size=10)
params = st.dictionaries(label.map(str.lower), param_value, max_size=3)
method = st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "MESSAGE", "INFO"]) | token
# header values: printable text without CR/LF, no surrounding blanks (the parser strips them)
header_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\t"), max_size=40
).map(str.strip)


@st.composite
def sip_uris(draw: st.DrawFn) -> SipUri:
    return SipUri(
        host=draw(host).lower(),
        user=draw(st.none() | token),
        port=draw(port),
        scheme=draw(st.sampled_from(["sip", "sips"])),
        params=draw(params),
        headers=draw(st.none() | st.sampled_from(["subject=x", "a=b&c=d"])),
    )


@st.composite
def name_addrs(draw: st.DrawFn) -> NameAddr:
    printable = st.characters(blacklist_categories=("Cs", "Cc"))
    display = draw(st.none() | st.text(printable, min_size=1, max_size=12))
    return NameAddr(uri=draw(sip_uris()), display=display, params=draw(params))


@st.composite
def requests(draw: st.DrawFn) -> Request:
    m = draw(method)
    uri = draw(sip_uris())
    uri.headers = None  # not allowed in a Request-URI
    req = Request(method=m, uri=str(uri))
    h = req.headers
    for _ in range(draw(st.integers(1, 3))):
        h.add("Via", "SIP/2.0/%s %s;branch=z9hG4bK%s" % (
            draw(st.sampled_from(["UDP", "TCP", "TLS"])), draw(host), draw(token)))
    h.add("From", "<%s>;tag=%s" % (draw(sip_uris()).__str__().partition("?")[0], draw(token)))
    h.add("To", "<sip:%s@%s>" % (draw(token), draw(hostname)))
    h.add("Call-ID", "%s@%s" % (draw(token), draw(hostname)))
    h.add("CSeq", "%d %s" % (draw(st.integers(0, 2**31 - 1)), m))
    h.add("Max-Forwards", str(draw(st.integers(0, 255))))
    for _ in range(draw(st.integers(0, 5))):
        h.add("X-" + draw(token), draw(header_text))
    req.body = draw(st.binary(max_size=200))
    return req


@st.composite
def responses(draw: st.DrawFn) -> Response:
    req = draw(requests())
    resp = Response(status=draw(st.integers(100, 699)), reason=draw(header_text))
    for name, value in req.headers:
        if name != "Max-Forwards":
            resp.headers.add(name, value)
    resp.body = req.body
    return resp


messages = requests() | responses()


def _parse_or_sip_error(data: bytes, datagram: bool = True) -> Request | Response | None:
    try:
        msg = parse_message(data, datagram=datagram)
    except SipParseError as e:
        assert 400 <= e.status < 600
        return None
    # what the transaction layer reads right after a successful parse must not raise
    msg.cseq  # noqa: B018
    msg.top_via  # noqa: B018
    assert bytes(msg)
    return msg


# --- (a) arbitrary input ---------------------------------------------------------------------------


@fuzz(300)
@given(st.binary(max_size=2000), st.booleans())
def test_parse_message_arbitrary_bytes(data: bytes, datagram: bool) -> None:
    _parse_or_sip_error(data, datagram)


@fuzz(180)
@given(st.text(max_size=400))
def test_parse_message_arbitrary_text(text: str) -> None:
    _parse_or_sip_error(("OPTIONS sip:a@b SIP/2.0\r\n" + text).encode("utf-8", "surrogatepass"))


@fuzz(180)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_stream_framer_arbitrary_bytes(pieces: list[bytes]) -> None:
    framer = StreamFramer()
    try:
        for piece in pieces:
            for message in framer.feed(piece):
                _parse_or_sip_error(message, datagram=False)
    except SipParseError:
        pass


@fuzz(180)
@given(st.text(max_size=200))
def test_header_parsers_arbitrary_text(text: str) -> None:
    for parse in (Via.parse, parse_cseq):
        try:
            parse(text)
        except SipParseError:
            pass
    for parse in (SipUri.parse, NameAddr.parse, split_hostport):
        try:
            parse(text)
        except UriError:
            pass


# --- (b) valid messages, mutated -------------------------------------------------------------------


@fuzz(90)
@given(st.data())
def test_parse_message_mutated(data: st.DataObject) -> None:
    base = bytes(data.draw(messages))
    _parse_or_sip_error(data.draw(mutated(base)), data.draw(st.booleans()))


HOSTILE_HEADERS = [
    b"Content-Length: 999999999",
    b"Content-Length: 999999",
    b"Content-Length: -1",
    b"l: 4294967296",
    b"Content-Length: \xd9\xa3",  # ARABIC-INDIC DIGIT THREE
    b"Max-Forwards: " + b"9" * 5000,
    b"Max-Forwards: \xc2\xb2",  # SUPERSCRIPT TWO: isdigit() but not int()
    b"CSeq: " + b"1" * 5000 + b" OPTIONS",
    b"Via: SIP/2.0/UDP h:" + b"9" * 5000,
    b"Via: SIP/2.0/UDP [::1",
    b"X-Long: " + b"a" * 9000,
    b"X-Many: 1\r\n" * 300,
    b"X-Fold: a\r\n" + b" b\r\n" * 3000,
    b"From: \"unterminated <sip:a@b>",
    b"Contact: <sip:a@b" + b">" * 100,
]


@fuzz(40)
@given(messages, st.sampled_from(HOSTILE_HEADERS), st.booleans())
def test_parse_message_hostile_headers(msg: Request | Response, extra: bytes, first: bool) -> None:
    """The hostile field replaces the message's own fields of that name (so it is the one checked)."""
    name = extra.partition(b":")[0].decode()
    msg.headers.remove(name)
    lines = [f"{n}: {v}".encode() for n, v in msg.headers]
    lines.insert(0 if first else len(lines), extra.rstrip(b"\r\n"))
    data = msg._start_line().encode() + b"\r\n" + b"\r\n".join(lines) + b"\r\n\r\n" + msg.body
    _parse_or_sip_error(data)
    _parse_or_sip_error(data, datagram=False)


# --- (c) round trips ---------------------------------------------------------------------------------


@fuzz(60)
@given(messages)
def test_message_round_trip(msg: Request | Response) -> None:
    raw = bytes(msg)
    for datagram in (True, False):
        parsed = parse_message(raw, datagram=datagram)
        assert type(parsed) is type(msg)
        length = ("Content-Length", str(len(msg.body)))
        assert list(parsed.headers) == [*msg.headers, length]
        assert parsed.body == msg.body
        assert bytes(parsed) == raw


@fuzz(40)
@given(st.lists(messages, min_size=1, max_size=4), st.lists(st.integers(1, 400), min_size=1, max_size=5))
def test_stream_framer_round_trip(msgs: list[Request | Response], sizes: list[int]) -> None:
    stream = b"\r\n\r\n".join(bytes(m) for m in msgs)  # keep-alive CRLFs between messages
    framer = StreamFramer()
    out: list[bytes] = []
    pos = i = 0
    while pos < len(stream):
        n = sizes[i % len(sizes)]
        out += framer.feed(stream[pos : pos + n])
        pos += n
        i += 1
    assert out == [bytes(m) for m in msgs]


@fuzz(90)
@given(sip_uris())
def test_sip_uri_round_trip(uri: SipUri) -> None:
    assert SipUri.parse(str(uri)) == uri


@fuzz(90)
@given(name_addrs())
def test_name_addr_round_trip(value: NameAddr) -> None:
    parsed = NameAddr.parse(str(value))
    assert parsed == value
    assert str(parsed) == str(value)


# --- (d) memory bounded by the input ---------------------------------------------------------------


def test_memory_hostile_sip() -> None:
    base = (
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\n"
        b"To: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n"
    )
    for data in (
        base + b"Content-Length: 999999999\r\n\r\n",
        base + b"Content-Length: 999999\r\n\r\nx",
        base + b"X-Fold: a" + b"\r\n b" * 20000 + b"\r\n\r\n",
        base + b"X: 1\r\n" * 300 + b"\r\n",
        base + b"Via: SIP/2.0/UDP h;branch=z9hG4bKx\r\n" * 200 + b"\r\n",
        base + b"Contact: <sip:a@b>" + b",<sip:a@b>" * 6000 + b"\r\n\r\n",
    ):
        data = data[:MAX_MESSAGE_SIZE]
        # many tiny lines cost a str object each (~50 bytes for 3 input bytes): a factor of 32
        assert_bounded(parse_message, data, factor=32)
    assert_bounded(parse_message, b"x" * (MAX_MESSAGE_SIZE + 1), factor=0)  # refused before any copy


def test_memory_stream_framer_never_completing() -> None:
    """A header section that never ends is cut at the bound, not buffered forever."""
    framer = StreamFramer()
    fed = 0
    try:
        for _ in range(1000):
            framer.feed(b"X-Pad: " + b"a" * 1000 + b"\r\n")
            fed += 1
    except SipParseError as e:
        assert e.status == 513
    assert fed * 1009 <= MAX_MESSAGE_SIZE + 1009

    def claim(data: bytes) -> None:
        StreamFramer().feed(data)

    assert_bounded(claim, b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 999999\r\n\r\n", factor=4)
