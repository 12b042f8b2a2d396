"""b2bua.wire.sip: parsing, serialising, framing, RFC 4475 torture messages."""

from __future__ import annotations

import pathlib
import random

import pytest

from b2bua.wire.sip import (
    MAX_HEADER_COUNT,
    MAX_LINE_LENGTH,
    MAX_MESSAGE_SIZE,
    Headers,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    Via,
    make_response,
    parse_cseq,
    parse_message,
    split_commas,
)
from b2bua.wire.sipuri import NameAddr, SipUri

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "sip"

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n"
)


def crlf(text: str, body: bytes = b"") -> bytes:
    return text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n\r\n" + body


INVITE = crlf(
    f"""
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds
Via: SIP/2.0/TCP proxy.example.com:5070;branch=z9hG4bK1;received=192.0.2.9
Max-Forwards: 70
To: Bob <sip:bob@biloxi.example.com>
From: "Alice, A." <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.atlanta.example.com>
Content-Type: application/sdp
Content-Length: {len(SDP)}
""",
    SDP,
)

REGISTER = crlf("""
REGISTER sip:registrar.biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7
Max-Forwards: 70
To: Bob <sip:bob@biloxi.example.com>
From: Bob <sip:bob@biloxi.example.com>;tag=456248
Call-ID: 843817637684230@998sdasdh09
CSeq: 1826 REGISTER
Contact: <sip:bob@192.0.2.4>
Expires: 7200
Content-Length: 0
""")

UNAUTHORIZED = crlf(
    """
SIP/2.0 401 Unauthorized
Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7;received=192.0.2.4
To: Bob <sip:bob@biloxi.example.com>;tag=2493k59kd
From: Bob <sip:bob@biloxi.example.com>;tag=456248
Call-ID: 843817637684230@998sdasdh09
CSeq: 1826 REGISTER
WWW-Authenticate: {CHALLENGE}
Content-Length: 0
""".replace(
        "{CHALLENGE}",
        'Digest realm="atlanta.example.com", qop="auth,auth-int", '
        'nonce="ea9c8e88df84f1cec4341ae6cbe5a359", opaque="", stale=FALSE, algorithm=MD5',
    )
)

OK_CONTACTS = crlf("""
SIP/2.0 200 OK
Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7
To: <sip:bob@biloxi.example.com>;tag=2493k59kd
From: <sip:bob@biloxi.example.com>;tag=456248
Call-ID: 843817637684230@998sdasdh09
CSeq: 1827 REGISTER
Contact: <sip:bob@192.0.2.4>;expires=3600, "Bob, at home" <sip:bob@192.0.2.5>;expires=60
Contact: <sip:bob@[2001:db8::5]:5070;transport=tcp>;q=0.5
m: sip:bob@host.example.com;expires=10
Content-Length: 0
""")


def fixture(name: str) -> bytes:
    return (DATA / f"{name}.sip").read_bytes()


def roundtrip(msg: Request | Response) -> Request | Response:
    return parse_message(bytes(msg))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "raw", [INVITE, REGISTER, UNAUTHORIZED, OK_CONTACTS], ids=["invite", "register", "401", "200"]
)
def test_round_trip(raw: bytes) -> None:
    msg = parse_message(raw)
    again = roundtrip(msg)
    assert type(again) is type(msg)
    assert list(again.headers) == list(msg.headers)
    assert again.body == msg.body
    assert bytes(again) == bytes(msg)
    assert bytes(msg) == raw.replace(b"\r\nm: ", b"\r\nContact: ")  # already in normal form but for `m:`


def test_invite_fields() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:bob@biloxi.example.com"
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.cseq == (314159, "INVITE")
    assert msg.body == SDP
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    assert msg.top_via.transport == "UDP"
    assert msg.headers.get("content-type") == "application/sdp"
    assert NameAddr.parse(msg.headers.get("From")).display == "Alice, A."


def test_401_www_authenticate_kept_whole() -> None:
    msg = parse_message(UNAUTHORIZED)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (401, "Unauthorized")
    challenge = msg.headers.get("www-authenticate")
    assert challenge.startswith('Digest realm="atlanta.example.com", qop="auth,auth-int"')
    assert msg.headers.get_all("WWW-Authenticate") == [challenge]  # not a comma list
    assert [n for n, _ in msg.headers][5] == "WWW-Authenticate"


def test_200_several_contacts() -> None:
    msg = parse_message(OK_CONTACTS)
    contacts = [NameAddr.parse(c) for c in msg.headers.get_all("Contact")]
    assert [str(c.uri) for c in contacts] == [
        "sip:bob@192.0.2.4",
        "sip:bob@192.0.2.5",
        "sip:bob@[2001:db8::5]:5070;transport=tcp",
        "sip:bob@host.example.com",
    ]
    assert contacts[1].display == "Bob, at home"
    assert [c.params for c in contacts] == [
        {"expires": "3600"},
        {"expires": "60"},
        {"q": "0.5"},
        {"expires": "10"},
    ]


def test_normalisation_is_stable() -> None:
    raw = (
        b"\r\n\r\ninvite sip:x@y.example SIP/2.0\nv: SIP/2.0/UDP h.example;branch=z9hG4bKa, SIP/2.0/TCP g\n"
        b"f: <sip:a@b.example>;tag=1\nt: <sip:x@y.example>\ni: abc\nCSEQ: 1 invite\n"
        b"subject: folded\n  over\tlines\nl: 3\nc: text/plain\n\nabcdef"
    )
    first = bytes(parse_message(raw))
    assert first.startswith(b"invite sip:x@y.example SIP/2.0\r\nVia: SIP/2.0/UDP h.example;branch=z9hG4bKa,")
    assert b"\r\nSubject: folded over\tlines\r\n" in first
    assert first.endswith(b"\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc")
    assert bytes(parse_message(first)) == first
    assert bytes(parse_message(bytes(parse_message(first)))) == first


def test_serialise_sets_content_length() -> None:
    msg = parse_message(REGISTER)
    msg.body = b"hello"
    msg.headers.add("Content-Length", 999)
    out = bytes(msg)
    assert out.count(b"Content-Length") == 1
    assert out.endswith(b"Content-Length: 5\r\n\r\nhello")
    assert parse_message(out).body == b"hello"


def test_built_messages_parse() -> None:
    req = Request(method="OPTIONS", uri="sip:a@b.example")
    for name, value in [
        ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx"),
        ("From", "<sip:me@b.example>;tag=1"),
        ("To", "<sip:a@b.example>"),
        ("Call-ID", "cid"),
        ("CSeq", "1 OPTIONS"),
    ]:
        req.headers.add(name, value)
    assert bytes(roundtrip(req)) == bytes(req)
    resp = make_response(req, 200, to_tag="t1")
    assert bytes(roundtrip(resp)) == bytes(resp)
    assert parse_message(bytes(resp)).headers.get("To") == "<sip:a@b.example>;tag=t1"


# --------------------------------------------------------------------------- header syntax


@pytest.mark.parametrize(
    "compact,full",
    [
        ("v", "Via"),
        ("f", "From"),
        ("t", "To"),
        ("i", "Call-ID"),
        ("m", "Contact"),
        ("l", "Content-Length"),
        ("c", "Content-Type"),
        ("k", "Supported"),
        ("s", "Subject"),
        ("o", "Event"),
        ("u", "Allow-Events"),
        ("r", "Refer-To"),
        ("b", "Referred-By"),
        ("x", "Session-Expires"),
        ("e", "Content-Encoding"),
    ],
)
def test_compact_forms(compact: str, full: str) -> None:
    h = Headers([(compact, "a"), (compact.upper(), "b")])
    assert list(h) == [(full, "a"), (full, "b")]
    assert h.get(full.lower()) == "a"
    assert h.get(compact) == "a"


def test_compact_message() -> None:
    raw = crlf(
        """
OPTIONS sip:a@b.example SIP/2.0
v: SIP/2.0/UDP h.example;branch=z9hG4bK1
f: <sip:c@d.example>;tag=9
t: sip:a@b.example
i: 77@h
CSeq: 2 OPTIONS
m: <sip:c@h.example>
k: 100rel, timer
s: hi
c: text/plain
l: 2
""",
        b"hi",
    )
    msg = parse_message(raw)
    assert msg.call_id == "77@h"
    assert msg.headers.get_all("Supported") == ["100rel", "timer"]
    assert msg.headers.get("Subject") == "hi"
    assert msg.body == b"hi"
    assert b"\r\nCall-ID: 77@h\r\n" in bytes(msg)


def test_names_case_insensitive_and_canonical() -> None:
    h = Headers(
        [
            ("call-id", "1"),
            ("CSEQ", "2 X"),
            ("www-authenticate", "w"),
            ("x-custom-thing", "c"),
            ("MAX-FORWARDS", "70"),
            ("record-route", "<sip:r>"),
        ]
    )
    assert [n for n, _ in h] == [
        "Call-ID",
        "CSeq",
        "WWW-Authenticate",
        "X-Custom-Thing",
        "Max-Forwards",
        "Record-Route",
    ]
    for name in ("CALL-ID", "Call-Id", "i"):
        assert h.get(name) == "1"
    assert "cseq" in h and "Route" not in h
    assert h.get("Missing", "d") == "d"


def test_headers_set_remove_copy() -> None:
    h = Headers([("Via", "1"), ("To", "t"), ("v", "2"), ("Via", "3")])
    c = h.copy()
    h.set("via", "x")
    assert list(h) == [("Via", "x"), ("To", "t")]
    h.add("Route", "<sip:r1>", first=True)
    assert list(h)[0] == ("Route", "<sip:r1>")
    h.remove("ROUTE")
    assert "Route" not in h and len(h) == 2
    h.set("New", 5)
    assert h.get("new") == "5"
    assert len(c) == 4  # copy unaffected


@pytest.mark.parametrize("name", ["Via", "Contact", "Route", "Record-Route"])
def test_multi_value_split(name: str) -> None:
    values = {
        "Via": ['SIP/2.0/UDP a.example;branch=z9hG4bK1;x="q,uo"', "SIP/2.0/TCP b.example:5061"],
        "Contact": ['"Last, First" <sip:a@b.example>;q=0.1', "<sip:c@d.example;x=a,b>", "sip:e@f.example"],
        "Route": ["<sip:p1.example;lr>", '"P,2" <sip:p2.example;lr>'],
        "Record-Route": ["<sip:p1.example;lr;ftag=a,b>", "<sip:p2.example;lr>"],
    }[name]
    h = Headers([(name, " , ".join(values)), (name.lower(), values[0])])
    assert h.get_all(name) == values + [values[0]]


def test_not_split_single_value_headers() -> None:
    h = Headers([("Subject", "a, b"), ("From", '"x, y" <sip:a@b>'), ("Authorization", 'Digest a="1", b="2"')])
    assert h.get_all("subject") == ["a, b"]
    assert h.get_all("Authorization") == ['Digest a="1", b="2"']


@pytest.mark.parametrize(
    "value,parts",
    [
        ("a, b,c", ["a", "b", "c"]),
        ('"x,y", z', ['"x,y"', "z"]),
        ('"esc \\" , still" <sip:a,b>, c', ['"esc \\" , still" <sip:a,b>', "c"]),
        ("<a,b>,<c,d>", ["<a,b>", "<c,d>"]),
        (",,a,,", ["a"]),
        ("", []),
        ("  ", []),
        ('"unterminated, quote', ['"unterminated, quote']),
    ],
)
def test_split_commas(value: str, parts: list[str]) -> None:
    assert split_commas(value) == parts


def test_multiple_header_lines_same_name_keep_order() -> None:
    msg = parse_message(OK_CONTACTS)
    assert len([n for n, _ in msg.headers if n == "Contact"]) == 3
    longreq = parse_message(fixture("longreq"))
    vias = [Via.parse(v) for v in longreq.headers.get_all("Via")]
    assert [v.host for v in vias[:3]] == ["sip33.example.com", "sip32.example.com", "sip31.example.com"]
    assert len(vias) == 34


def test_folded_lines() -> None:
    raw = crlf("""
OPTIONS sip:a@b.example SIP/2.0
Via: SIP/2.0/UDP h.example
 ;branch=z9hG4bK1
From: <sip:c@d.example>
\t;tag=9
To: <sip:a@b.example>
Call-ID: x
CSeq:
    3
    OPTIONS
Subject: one
   two
Content-Length: 0
""")
    msg = parse_message(raw)
    assert msg.top_via.branch == "z9hG4bK1"
    assert msg.headers.get("From") == "<sip:c@d.example> ;tag=9"
    assert msg.cseq == (3, "OPTIONS")
    assert msg.headers.get("Subject") == "one two"


def test_leading_crlfs_and_lf_only() -> None:
    lf = REGISTER.replace(b"\r\n", b"\n")
    for raw in (b"\r\n" + REGISTER, b"\r\n\r\n\r\n" + REGISTER, b"\n\n" + lf, lf, b"\r\n" + lf):
        msg = parse_message(raw)
        assert msg.method == "REGISTER"
        assert bytes(msg) == REGISTER
    lf_invite = INVITE.replace(b"\r\n", b"\n")
    head, _, _ = lf_invite.partition(b"\n\n")
    msg = parse_message(head + b"\n\n" + SDP)  # LF head, CRLF body (contains no blank line)
    assert msg.body == SDP


def test_lf_head_with_crlf_blank_line_in_body() -> None:
    body = b"a\r\n\r\nb"
    raw = REGISTER.replace(b"Content-Length: 0", b"Content-Length: 6").replace(b"\r\n", b"\n") + body
    assert parse_message(raw).body == body


def test_bare_lf_inside_crlf_message_is_a_line_break() -> None:
    raw = REGISTER.replace(b"Expires: 7200\r\n", b"Expires: 7200\nSubject: x\r\n")
    msg = parse_message(raw)
    assert msg.headers.get("Expires") == "7200"
    assert msg.headers.get("Subject") == "x"
    assert b"\n" not in b"".join(v.encode() for _, v in msg.headers)


def test_body_beyond_content_length_is_dropped() -> None:
    msg = parse_message(REGISTER + b"garbage")
    assert msg.body == b""


def test_missing_content_length_datagram_takes_rest() -> None:
    raw = INVITE.replace(f"Content-Length: {len(SDP)}\r\n".encode(), b"")
    assert parse_message(raw).body == SDP
    with pytest.raises(SipParseError):
        parse_message(raw, datagram=False)


def test_status_line_variants() -> None:
    base = UNAUTHORIZED.split(b"\r\n", 1)[1]
    for line, status, reason in [
        (b"SIP/2.0 401 Unauthorized", 401, "Unauthorized"),
        (b"SIP/2.0 180 Ringing now, really", 180, "Ringing now, really"),
        (b"SIP/2.0 100", 100, ""),
        (b"SIP/2.0 100 ", 100, ""),
        (b"sip/2.0 699 x", 699, "x"),
    ]:
        msg = parse_message(line + b"\r\n" + base)
        assert (msg.status, msg.reason) == (status, reason)
        assert roundtrip(msg).reason == reason
    for bad in (
        b"SIP/2.0 99 Low",
        b"SIP/2.0 700 High",
        b"SIP/2.0 20x OK",
        b"SIP/2.0 2000 OK",
        b"SIP/2.0  200 OK",
        b"SIP/2.0 \xc2\xb2\xc2\xb2\xc2\xb2 OK",
        b"SIP/2.0",
    ):
        with pytest.raises(SipParseError) as e:
            parse_message(bad + b"\r\n" + base)
        assert e.value.status == 400 and e.value.partial is None
    with pytest.raises(SipParseError) as e:
        parse_message(b"SIP/3.0 200 OK\r\n" + base)
    assert e.value.status == 505


def test_version_case_insensitive_request() -> None:
    msg = parse_message(REGISTER.replace(b"SIP/2.0\r\n", b"sip/2.0\r\n", 1))
    assert bytes(msg).startswith(b"REGISTER sip:registrar.biloxi.example.com SIP/2.0\r\n")


@pytest.mark.parametrize(
    "value,expected",
    [
        ("1 INVITE", (1, "INVITE")),
        ("  0009   ACK ", (9, "ACK")),
        ("2147483647 BYE", (2**31 - 1, "BYE")),
        ("1 RE%47IST%45R", (1, "RE%47IST%45R")),
    ],
)
def test_parse_cseq_ok(value: str, expected: tuple[int, str]) -> None:
    assert parse_cseq(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "INVITE",
        "1",
        "-1 INVITE",
        "2147483648 INVITE",
        "99999999999 INVITE",
        "1 IN VITE",
        "1 IN/VITE",
        "x INVITE",
        "\u00b2 INVITE",
        "\u0661 INVITE",
    ],
)
def test_parse_cseq_bad(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_cseq(value)


def test_via_parse_and_str() -> None:
    v = Via.parse("SIP/2.0/udp [2001:DB8::1]:5070;branch=z9hG4bKx;rport;received=192.0.2.1")
    assert (v.transport, v.host, v.port) == ("UDP", "[2001:db8::1]", 5070)
    assert v.params == {"branch": "z9hG4bKx", "rport": None, "received": "192.0.2.1"}
    assert str(v) == "SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bKx;rport;received=192.0.2.1"
    assert Via.parse(str(v)) == v
    w = Via.parse("SIP / 2.0 / TCP  host.example ; Branch = z9hG4bK2")
    assert (w.transport, w.host, w.port, w.branch) == ("TCP", "host.example", None, "z9hG4bK2")
    assert Via.parse("SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bK3").transport == "WSS"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "SIP/2.0",
        "SIP/2.0/UDP",
        "SIP/3.0/UDP h",
        "HTTP/2.0/UDP h",
        "SIP/2.0/UDP h;;branch=1",
        "SIP/2.0/UDP h;",
        "SIP/2.0/UDP h;branch=",
        "SIP/2.0/UDP h:0",
        "SIP/2.0/UDP h:99999",
        "SIP/2.0/UDP h:\u00b2",
        "SIP/2.0/UDP [::1",
        "SIP/2.0/UDP h<x>",
        "SIP/2.0 /UDP/x h",
    ],
)
def test_via_bad(value: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(value)


def test_top_via_missing() -> None:
    with pytest.raises(SipParseError):
        Request().top_via  # noqa: B018


# --------------------------------------------------------------------------- RFC 4475 valid messages


def test_wsinv() -> None:
    msg = parse_message(fixture("wsinv"))
    assert isinstance(msg, Request)
    assert msg.uri == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert msg.cseq == (9, "INVITE")
    assert msg.headers.get("Max-Forwards") == "0068"
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    vias = [Via.parse(v) for v in msg.headers.get_all("Via")]
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    to = NameAddr.parse(msg.headers.get("To"))
    assert str(to.uri) == "sip:vivekg@chair-dnrc.example.com" and to.tag == "1918181833n"
    frm = NameAddr.parse(msg.headers.get("From"))
    assert frm.display == 'J Rosenberg \\"' and frm.tag == "98asjd8"
    (contact,) = [NameAddr.parse(c) for c in msg.headers.get_all("Contact")]
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    (route,) = msg.headers.get_all("Route")
    assert SipUri.parse(route.strip("<>")).params == {
        "lr": None,
        "unknownwith": "value",
        "unknown-no-value": None,
    }
    assert msg.body.startswith(b"v=0\r\n") and len(msg.body) == int(msg.headers.get("Content-Length"))
    again = roundtrip(msg)
    assert bytes(again) == bytes(msg)
    resp = make_response(msg, 200, to_tag="x")
    assert [str(Via.parse(v)) for v in resp.headers.get_all("Via")] == [str(v) for v in vias]
    assert resp.headers.get("To").endswith("1918181833n")  # had a tag already: unchanged


def test_intmeth() -> None:
    msg = parse_message(fixture("intmeth"))
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = SipUri.parse(msg.uri)
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.host == "example.com" and uri.headers is None
    assert msg.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    to = NameAddr.parse(msg.headers.get("To"))
    assert to.display == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert to.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    frm = NameAddr.parse(msg.headers.get("From"))
    assert frm.display == "token1~` token2'+_ token3*%!.-"
    assert frm.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"
    assert bytes(roundtrip(msg)) == bytes(msg)


def test_escaped_uris() -> None:
    esc01 = parse_message(fixture("esc01"))
    assert SipUri.parse(esc01.uri).user == "sips%3Auser%40example.com"
    assert SipUri.parse(esc01.uri).host == "example.net"
    assert esc01.headers.get("Content-Type") == "application/sdp"
    contact = NameAddr.parse(esc01.headers.get("Contact"))
    assert contact.uri.user == "cal%6Cer"
    assert contact.uri.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    escnull = parse_message(fixture("escnull"))
    assert [NameAddr.parse(c).uri.user for c in escnull.headers.get_all("Contact")] == ["%00", "%00%00"]
    esc02 = parse_message(fixture("esc02"))
    assert esc02.method == "RE%47IST%45R"
    assert esc02.cseq == (29344, "RE%47IST%45R")
    assert NameAddr.parse(esc02.headers.get("To")).display == "%Z%45"
    assert esc02.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert len(esc02.headers.get_all("Contact")) == 2


def test_lwsdisp() -> None:
    frm = NameAddr.parse(parse_message(fixture("lwsdisp")).headers.get("From"))
    assert (frm.display, str(frm.uri), frm.tag) == ("caller", "sip:caller@example.com", "323")


def test_longreq() -> None:
    raw = fixture("longreq")
    msg = parse_message(raw)
    assert len(raw) > 3000
    assert msg.call_id == "longreq.one" + "really" * 20 + "longcallid"
    assert msg.top_via.host == "sip33.example.com"
    to = NameAddr.parse(msg.headers.get("To"))
    assert to.display == "I have a user name of " + "extreme" * 10 + " proportion"
    assert to.uri.port == 6000 and to.uri.params["very" + "long" * 25 + "parameternamewithnovalue"] is None
    frm = NameAddr.parse(msg.headers.get("From"))
    assert frm.tag == "12" + "982" * 50 + "424"
    assert len(msg.body) == 150
    assert bytes(roundtrip(msg)) == bytes(msg)


def test_dblreq_only_first_message() -> None:
    msg = parse_message(fixture("dblreq"))
    assert msg.method == "REGISTER" and msg.body == b""


def test_semiuri() -> None:
    msg = parse_message(fixture("semiuri"))
    uri = SipUri.parse(msg.uri)
    assert (uri.user, uri.host, uri.params) == ("user;par=u%40example.net", "example.com", {})
    assert msg.headers.get_all("Accept") == [
        "application/sdp",
        "application/pkcs7-mime",
        "multipart/mixed",
        "multipart/signed",
        "message/sip",
        "message/sipfrag",
    ]


def test_transports() -> None:
    msg = parse_message(fixture("transports"))
    assert [Via.parse(v).transport for v in msg.headers.get_all("Via")] == [
        "UDP",
        "SCTP",
        "TLS",
        "UNKNOWN",
        "TCP",
    ]


def test_mpart01_binary_body() -> None:
    raw = fixture("mpart01")
    msg = parse_message(raw)
    assert msg.method == "MESSAGE"
    assert msg.headers.get("Content-Type") == "multipart/mixed;boundary=7a9cbec02ceef655"
    assert msg.body.startswith(b"--7a9cbec02ceef655\r\n") and msg.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert b"\xff\xfe" in msg.body and b"\r\n\r\n\xff" in msg.body
    assert bytes(msg) == raw


def test_unreason_noreason() -> None:
    msg = parse_message(fixture("unreason"))
    assert msg.status == 200
    assert msg.reason.startswith("= 2**3 * 5**2 \u043d\u043e")
    assert bytes(roundtrip(msg)) == bytes(msg)
    msg = parse_message(fixture("noreason"))
    assert (msg.status, msg.reason) == (100, "")
    assert bytes(msg).startswith(b"SIP/2.0 100 \r\n")


def test_other_valid_fixtures() -> None:
    inv = parse_message(fixture("inv2543"))
    assert inv.top_via.branch is None and inv.body.startswith(b"v=0") and "Max-Forwards" not in inv.headers
    assert parse_message(fixture("zeromf")).headers.get("Max-Forwards") == "0"
    unkscm = parse_message(fixture("unkscm"))  # a UA answers 416: the wire layer accepts it
    assert unkscm.uri == "nobodyknows:this-is-here-to-test-unknown-schemes"
    reg = parse_message(fixture("regescrt"))
    assert NameAddr.parse(reg.headers.get("Contact")).uri.headers == "Route=%3Csip:sip.example.com%3E"


VALID = [
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
    "inv2543",
    "zeromf",
    "unkscm",
    "regescrt",
]
INVALID = {
    "badinv01": 400,
    "clerr": 400,
    "ncl": 400,
    "scalar02": 400,
    "quotbal": 400,
    "ltgtruri": 400,
    "lwsruri": 400,
    "lwsstart": 400,
    "trws": 400,
    "escruri": 400,
    "regbadct": 400,
    "badaspec": 400,
    "baddn": 400,
    "badvers": 505,
    "mismatch01": 400,
    "mismatch02": 400,
    "bigcode": 400,
    "insuf": 400,
    "multi01": 400,
    "mcl01": 400,
}


def test_all_fixtures_listed() -> None:
    assert {p.stem for p in DATA.glob("*.sip")} == set(VALID) | set(INVALID)


@pytest.mark.parametrize("name", VALID)
def test_valid_fixture_round_trips(name: str) -> None:
    msg = parse_message(fixture(name))
    once = bytes(msg)
    assert bytes(parse_message(once)) == once
    if isinstance(msg, Request):
        assert isinstance(make_response(msg, 200, to_tag="tt"), Response)


@pytest.mark.parametrize("name,status", sorted(INVALID.items()))
def test_invalid_fixture(name: str, status: int) -> None:
    with pytest.raises(SipParseError) as e:
        parse_message(fixture(name))
    assert e.value.status == status


def test_invalid_fixtures_partial_gives_400() -> None:
    for name in (
        "badinv01",
        "clerr",
        "ncl",
        "quotbal",
        "regbadct",
        "badaspec",
        "baddn",
        "mismatch01",
        "mcl01",
    ):
        with pytest.raises(SipParseError) as e:
            parse_message(fixture(name))
        assert isinstance(e.value.partial, Request), name
        resp = make_response(e.value.partial, e.value.status)
        assert resp.status == 400 and resp.call_id and resp.headers.get("CSeq"), name
    for name in ("ltgtruri", "lwsruri", "lwsstart", "trws"):
        with pytest.raises(SipParseError) as e:
            parse_message(fixture(name))
        assert e.value.partial is None  # no readable request line


def test_other_sip_version_gives_a_505_to_answer() -> None:
    """RFC 4475 §3.3.15: SIP/7.0 is answered 505, so the request's headers are read."""
    with pytest.raises(SipParseError) as e:
        parse_message(fixture("badvers"))
    assert e.value.status == 505 and isinstance(e.value.partial, Request)
    resp = make_response(e.value.partial, 505)
    assert resp.headers.get("Via") == "SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw"
    assert resp.call_id == "badvers.31417@c.example.com" and resp.headers.get("CSeq") == "1 OPTIONS"


# --------------------------------------------------------------------------- other invalid input


def test_truncated_at_every_position() -> None:
    outcomes = {"ok": 0, "err": 0}
    for raw in (INVITE, UNAUTHORIZED, fixture("wsinv"), fixture("intmeth")):
        for cut in range(len(raw) + 1):
            try:
                parse_message(raw[:cut])
                outcomes["ok"] += 1
            except SipParseError as e:
                assert e.status in (400, 505, 416)
                outcomes["err"] += 1
            try:
                parse_message(raw[:cut], datagram=False)
            except SipParseError:
                pass
    assert outcomes["ok"] > 4 and outcomes["err"] > 1000


def test_invite_cut_inside_body_is_an_error() -> None:
    for cut in range(len(INVITE) - len(SDP), len(INVITE)):
        with pytest.raises(SipParseError) as e:
            parse_message(INVITE[:cut])
        assert isinstance(e.value.partial, Request)


def _mutations(rng: random.Random, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        op = rng.randrange(3)
        if op == 0:
            data[i] = rng.randrange(256)
        elif op == 1:
            del data[i]
        else:
            data[i:i] = rng.choice(
                [b":", b";", b",", b"<", b">", b'"', b"\\", b" ", b"\r\n", b"\r\n ", b"\xff"]
            )
    return bytes(data)


def test_random_garbage_only_parse_errors() -> None:
    rng = random.Random(4475)
    alphabet = b'SIP/2.0 INVITE sip:@;,<>"\\:=\r\n\t 0123456789abcxyz\xc3\xa9\xff\x00'
    for n in range(2000):
        if n % 2:
            size = rng.randrange(0, 400)
            data = bytes(rng.choice(alphabet) for _ in range(size)) if n % 4 == 1 else rng.randbytes(size)
        else:
            data = _mutations(rng, rng.choice([INVITE, REGISTER, UNAUTHORIZED, OK_CONTACTS]))
        try:
            msg = parse_message(data)
        except SipParseError:
            continue
        # whatever parsed must serialise and re-parse to the same thing
        again = parse_message(bytes(msg))
        assert bytes(again) == bytes(msg)


def test_unicode_digits_never_leak_value_error() -> None:
    for old, new in [
        (b"CSeq: 1826", "CSeq: \u00b2".encode()),
        (b"Content-Length: 0", "Content-Length: \u0661".encode()),
        (b"Max-Forwards: 70", "Max-Forwards: \u00b9".encode()),
        (b"5060;branch", ":\u00b2;branch".encode().lstrip(b":")),
    ]:
        raw = REGISTER.replace(old, new, 1)
        assert raw != REGISTER
        with pytest.raises(SipParseError):
            parse_message(raw)


def test_huge_max_forwards_is_a_parse_error() -> None:
    # found by fuzzing: 5000 digits passed the digit check and int() raised ValueError (its
    # 4300-digit limit) instead of SipParseError
    raw = REGISTER.replace(b"Max-Forwards: 70", b"Max-Forwards: " + b"9" * 5000)
    with pytest.raises(SipParseError) as e:
        parse_message(raw)
    assert e.value.status == 400 and e.value.partial is not None


def test_oversized() -> None:
    raw = INVITE.replace(b"Max-Forwards: 70\r\n", b"X-Pad: " + b"a" * 7000 + b"\r\n" * 0 + b"\r\n")
    raw = raw.replace(b"X-Pad:", b"X-Pad:", 1)
    big = raw.replace(b"\r\nContact:", (b"\r\nX-Pad: " + b"p" * 7000) * 10 + b"\r\nContact:", 1)
    assert len(big) > MAX_MESSAGE_SIZE
    with pytest.raises(SipParseError) as e:
        parse_message(big)
    assert e.value.status == 513
    with pytest.raises(SipParseError) as e:
        parse_message(b"x" * (MAX_MESSAGE_SIZE + 1))
    assert e.value.status == 513
    assert parse_message(raw).headers.get("X-Pad") == "a" * 7000


def test_too_many_headers() -> None:
    extra = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADER_COUNT))
    with pytest.raises(SipParseError) as e:
        parse_message(REGISTER.replace(b"Expires:", extra + b"Expires:", 1))
    assert e.value.status == 400
    fine = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADER_COUNT - 20))
    assert len(parse_message(REGISTER.replace(b"Expires:", fine + b"Expires:", 1)).headers) > 200


def test_overlong_header_line() -> None:
    raw = REGISTER.replace(b"Expires: 7200", b"Subject: " + b"s" * MAX_LINE_LENGTH, 1)
    with pytest.raises(SipParseError) as e:
        parse_message(raw)
    assert e.value.status == 400 and isinstance(e.value.partial, Request)
    folded = REGISTER.replace(b"Expires: 7200", b"Subject: " + b"s\r\n s" * (MAX_LINE_LENGTH // 3), 1)
    with pytest.raises(SipParseError):
        parse_message(folded)  # the limit applies after unfolding


def test_non_utf8_header() -> None:
    with pytest.raises(SipParseError) as e:
        parse_message(REGISTER.replace(b"Expires: 7200", b"Subject: caf\xe9", 1))
    assert e.value.status == 400
    body = b"\xff\xfe\x00binary"
    ok = REGISTER.replace(b"Content-Length: 0", b"Content-Length: %d" % len(body)) + body
    assert parse_message(ok).body == body


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_mandatory_header(name: str) -> None:
    lines = [ln for ln in INVITE.split(b"\r\n") if not ln.lower().startswith(name.lower().encode() + b":")]
    raw = b"\r\n".join(lines)
    assert raw != INVITE
    with pytest.raises(SipParseError) as e:
        parse_message(raw)
    assert e.value.status == 400


def test_empty_mandatory_value() -> None:
    with pytest.raises(SipParseError):
        parse_message(INVITE.replace(b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com", b"Call-ID:   "))


def test_several_content_length() -> None:
    raw = REGISTER.replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 0")
    with pytest.raises(SipParseError) as e:
        parse_message(raw)
    assert e.value.status == 400
    with pytest.raises(SipParseError):
        parse_message(REGISTER.replace(b"Content-Length: 0", b"Content-Length: 0, 0"))


@pytest.mark.parametrize(
    "old,new",
    [
        (b"Content-Length: 0", b"Content-Length: 1234567"),
        (b"Content-Length: 0", b"Content-Length: +0"),
        (b"Content-Length: 0", b"Content-Length: 0x0"),
        (b"Max-Forwards: 70", b"Max-Forwards: 256"),
        (b"Max-Forwards: 70", b"Max-Forwards: -1"),
        (b"Max-Forwards: 70", b"Max-Forwards: seventy"),
        (b"Max-Forwards: 70", b"Max-Forwards: 70\r\nMax-Forwards: 69"),
        (b"Call-ID: 843817637684230@998sdasdh09", b"Call-ID: a\r\ni: b"),
        (b"REGISTER sip:registrar.biloxi.example.com SIP/2.0", b"REGISTER sip:registrar.biloxi.example.com"),
        (
            b"REGISTER sip:registrar.biloxi.example.com SIP/2.0",
            b"REGISTER\tsip:registrar.biloxi.example.com SIP/2.0",
        ),
        (
            b"REGISTER sip:registrar.biloxi.example.com SIP/2.0",
            b"REG(ISTER sip:registrar.biloxi.example.com SIP/2.0",
        ),
        (b"REGISTER sip:registrar.biloxi.example.com SIP/2.0", b'REGISTER sip:a"b@c SIP/2.0'),
        (b"REGISTER sip:registrar.biloxi.example.com SIP/2.0", b"REGISTER 1sip:x SIP/2.0"),
        (b"REGISTER sip:registrar.biloxi.example.com SIP/2.0", b"REGISTER  SIP/2.0"),
        (b"Expires: 7200", b"Expires 7200"),
        (b"Expires: 7200", b": 7200"),
        (b"Expires: 7200", b"Exp ires: 7200"),
        (b"Expires: 7200", b"Exp\x00ires: 7200"),
        (b"To: Bob <sip:bob@biloxi.example.com>", b"To: Bob <sip:bob@biloxi.example.com"),
        (b"To: Bob <sip:bob@biloxi.example.com>", b"To: Bob <>"),
        (b"To: Bob <sip:bob@biloxi.example.com>", b"To: bob@biloxi.example.com"),
        (b"To: Bob <sip:bob@biloxi.example.com>", b'To: "Bob <sip:bob@biloxi.example.com>'),
        (b"Contact: <sip:bob@192.0.2.4>", b"Contact: <sip:bob@192.0.2.4>, Bob, Jr <sip:x@y>"),
    ],
)
def test_bad_requests(old: bytes, new: bytes) -> None:
    raw = REGISTER.replace(old, new, 1)
    assert raw != REGISTER
    with pytest.raises(SipParseError) as e:
        parse_message(raw)
    assert e.value.status == 400


def test_request_uri_without_scheme_is_416() -> None:
    with pytest.raises(SipParseError) as e:
        parse_message(
            REGISTER.replace(b"REGISTER sip:registrar.biloxi.example.com", b"REGISTER registrar", 1)
        )
    assert e.value.status == 416


def test_valid_name_addr_variants_accepted() -> None:
    for to in (
        b"To: <tel:+15551234>",
        b'To: "" <sip:a@b>',
        b"To: Bob Smith<sip:a@b>;tag=1",
        b'To: "a \\" <b>" <sip:a@b>',
        b"To: sip:a@b;tag=1",
        b"To:   sip:a@b  ;  tag = 1",
    ):
        msg = parse_message(REGISTER.replace(b"To: Bob <sip:bob@biloxi.example.com>", to, 1))
        assert msg.headers.get("To") == to.partition(b":")[2].strip().decode()
    star = REGISTER.replace(b"Contact: <sip:bob@192.0.2.4>", b"Contact: *").replace(
        b"Expires: 7200", b"Expires: 0"
    )
    assert NameAddr.parse(parse_message(star).headers.get("Contact")).wildcard


# --------------------------------------------------------------------------- partial


def test_partial_request_after_broken_header() -> None:
    raw = INVITE.replace(b"Contact:", b"Broken Header Line\r\nContact:", 1)
    with pytest.raises(SipParseError) as e:
        parse_message(raw)
    err = e.value
    assert err.status == 400
    partial = err.partial
    assert isinstance(partial, Request)
    assert (partial.method, partial.uri) == ("INVITE", "sip:bob@biloxi.example.com")
    resp = make_response(partial, err.status, to_tag="abc")
    assert (resp.status, resp.reason) == (400, "Bad Request")
    assert resp.headers.get_all("Via") == [
        "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
        "SIP/2.0/TCP proxy.example.com:5070;branch=z9hG4bK1;received=192.0.2.9",
    ]
    assert resp.headers.get("From") == '"Alice, A." <sip:alice@atlanta.example.com>;tag=1928301774'
    assert resp.headers.get("To") == "Bob <sip:bob@biloxi.example.com>;tag=abc"
    assert resp.headers.get("CSeq") == "314159 INVITE"
    wire = parse_message(bytes(resp))
    assert isinstance(wire, Response) and wire.status == 400 and wire.call_id == partial.call_id


def test_no_partial_for_responses() -> None:
    with pytest.raises(SipParseError) as e:
        parse_message(UNAUTHORIZED.replace(b"CSeq:", b"Bad Line\r\nCSeq:"))
    assert e.value.partial is None


# --------------------------------------------------------------------------- make_response


def test_make_response_copies_and_tags_once() -> None:
    req = parse_message(INVITE)
    resp = make_response(req, 180, to_tag="t1", headers=[("Contact", "<sip:bob@192.0.2.7>")])
    assert resp.reason == "Ringing"
    assert [n for n, _ in resp.headers] == ["Via", "Via", "From", "To", "Call-ID", "CSeq", "Contact"]
    assert resp.headers.get("To") == "Bob <sip:bob@biloxi.example.com>;tag=t1"
    assert resp.body == b""
    again = make_response(resp_as_request(resp), 200, to_tag="t2")
    assert again.headers.get("To").count("tag=") == 1 and again.headers.get("To").endswith("tag=t1")
    assert make_response(req, 100).headers.get("To") == "Bob <sip:bob@biloxi.example.com>"
    assert make_response(req, 299).reason == "Unknown"
    assert make_response(req, 486, "Busy Now").reason == "Busy Now"
    tagged = parse_message(
        INVITE.replace(b"To: Bob <sip:bob@biloxi.example.com>", b"To: <sip:b@c> ; TAG = 9")
    )
    assert make_response(tagged, 200, to_tag="new").headers.get("To") == "<sip:b@c> ; TAG = 9"
    withbody = make_response(req, 200, to_tag="t", headers=[("Content-Type", "application/sdp")], body=SDP)
    assert parse_message(bytes(withbody)).body == SDP


def resp_as_request(resp: Response) -> Request:
    req = Request(method="INVITE", uri="sip:x@y")
    req.headers = resp.headers.copy()
    return req


def test_make_response_vias_in_order_from_one_line() -> None:
    req = parse_message(
        REGISTER.replace(
            b"Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7",
            b"Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\n"
            b"v: SIP/2.0/TCP c;branch=z9hG4bK3",
        )
    )
    resp = make_response(req, 200)
    assert [Via.parse(v).host for v in resp.headers.get_all("Via")] == ["a", "b", "c"]
    assert [n for n, _ in resp.headers].count("Via") == 3


# --------------------------------------------------------------------------- StreamFramer


def test_framer_every_split_point() -> None:
    stream = INVITE + REGISTER + UNAUTHORIZED
    for cut in range(len(stream) + 1):
        f = StreamFramer()
        out = f.feed(stream[:cut]) + f.feed(stream[cut:])
        assert out == [INVITE, REGISTER, UNAUTHORIZED], cut


def test_framer_byte_by_byte_with_keepalives() -> None:
    stream = b"\r\n\r\n" + INVITE + b"\r\n\r\n\r\n\r\n" + REGISTER + b"\r\n" + UNAUTHORIZED + b"\r\n\r\n"
    f = StreamFramer()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += f.feed(stream[i : i + 1])
    assert out == [INVITE, REGISTER, UNAUTHORIZED]
    assert [type(parse_message(m, datagram=False)) for m in out] == [Request, Request, Response]
    assert f.feed(b"") == []


def test_framer_several_in_one_chunk_and_compact_length() -> None:
    compact = REGISTER.replace(b"Content-Length: 0", b"l: 4") + b"abcd"
    f = StreamFramer()
    assert f.feed(INVITE + compact + INVITE[:10]) == [INVITE, compact]
    assert f.feed(INVITE[10:]) == [INVITE]
    assert parse_message(compact, datagram=False).body == b"abcd"


def test_framer_missing_content_length() -> None:
    f = StreamFramer()
    with pytest.raises(SipParseError):
        f.feed(REGISTER.replace(b"Content-Length: 0\r\n", b""))
    with pytest.raises(SipParseError):
        StreamFramer().feed(REGISTER.replace(b"Content-Length: 0", b"Content-Length: -1"))
    with pytest.raises(SipParseError):
        StreamFramer().feed(REGISTER.replace(b"Content-Length: 0", b"Content-Length: 1234567"))


def test_framer_oversized() -> None:
    with pytest.raises(SipParseError) as e:
        StreamFramer().feed(REGISTER.replace(b"Content-Length: 0", b"Content-Length: 70000"))
    assert e.value.status == 513
    f = StreamFramer()
    with pytest.raises(SipParseError) as e:
        for _ in range(100):
            f.feed(b"X-Endless: " + b"a" * 1000 + b"\r\n")
    assert e.value.status == 513
    small = StreamFramer(max_size=100)
    with pytest.raises(SipParseError) as e:
        small.feed(REGISTER)
    assert e.value.status == 513


def test_framer_waits_for_body() -> None:
    f = StreamFramer()
    assert f.feed(INVITE[:-1]) == []
    assert f.feed(INVITE[-1:]) == [INVITE]
