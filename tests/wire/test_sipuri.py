"""b2bua.wire.sipuri: SIP URIs and name-addr values."""

from __future__ import annotations

import random

import pytest

from b2bua.wire.sipuri import NameAddr, SipUri, UriError, join_hostport, split_hostport


def test_basic_sip_uri() -> None:
    u = SipUri.parse("sip:alice@atlanta.example.com")
    assert (u.scheme, u.user, u.host, u.port, u.params, u.headers) == (
        "sip",
        "alice",
        "atlanta.example.com",
        None,
        {},
        None,
    )
    assert u.transport == "udp"
    assert str(u) == "sip:alice@atlanta.example.com"


def test_sips_and_case() -> None:
    u = SipUri.parse("SIPS:Bob@Biloxi.Example.COM:5061")
    assert (u.scheme, u.user, u.host, u.port) == ("sips", "Bob", "biloxi.example.com", 5061)
    assert u.transport == "tls"
    assert str(u) == "sips:Bob@biloxi.example.com:5061"


def test_no_user_and_password_dropped() -> None:
    u = SipUri.parse("sip:example.com")
    assert u.user is None and str(u) == "sip:example.com"
    p = SipUri.parse("sip:alice:secretword@atlanta.example.com;transport=tcp")
    assert p.user == "alice" and "secret" not in str(p)
    assert str(p) == "sip:alice@atlanta.example.com;transport=tcp"


@pytest.mark.parametrize(
    "text,host,port",
    [
        ("sip:[2001:db8::10]", "[2001:db8::10]", None),
        ("sip:user@[2001:DB8::10]:5070", "[2001:db8::10]", 5070),
        ("sip:[::ffff:192.0.2.1]:1", "[::ffff:192.0.2.1]", 1),
        ("sip:192.0.2.1:65535", "192.0.2.1", 65535),
        ("sip:host_name-1.example:05060", "host_name-1.example", 5060),
    ],
)
def test_hosts_and_ports(text: str, host: str, port: int | None) -> None:
    u = SipUri.parse(text)
    assert (u.host, u.port) == (host, port)
    assert SipUri.parse(str(u)) == u


def test_params_with_and_without_value() -> None:
    u = SipUri.parse("sip:alice@a.example;transport=TCP;lr;maddr=239.255.255.1;ttl=15;Method=INVITE")
    assert u.params == {
        "transport": "TCP",
        "lr": None,
        "maddr": "239.255.255.1",
        "ttl": "15",
        "method": "INVITE",
    }
    assert u.transport == "tcp"
    assert str(u) == "sip:alice@a.example;transport=TCP;lr;maddr=239.255.255.1;ttl=15;method=INVITE"
    assert SipUri.parse("sips:a.example;transport=ws").transport == "ws"


def test_headers_part() -> None:
    u = SipUri.parse("sip:alice@a.example;lr?subject=project%20x&priority=urgent")
    assert u.params == {"lr": None}
    assert u.headers == "subject=project%20x&priority=urgent"
    assert str(u) == "sip:alice@a.example;lr?subject=project%20x&priority=urgent"
    r = SipUri.parse("sip:bob@b.example?Replaces=abc@host%3Bto-tag%3D1")  # sloppy unescaped "@" in headers
    assert (r.user, r.host, r.headers) == ("bob", "b.example", "Replaces=abc@host%3Bto-tag%3D1")


def test_question_mark_in_user_part() -> None:
    u = SipUri.parse("sip:we?ird@example.com?h=v")
    assert (u.user, u.host, u.headers) == ("we?ird", "example.com", "h=v")
    s = SipUri.parse("sip:user;par=u%40example.net@example.com;lr")
    assert (s.user, s.host, s.params) == ("user;par=u%40example.net", "example.com", {"lr": None})


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sip:",
        "sip",
        "tel:+123",
        "http://example.com",
        "sip:@example.com",
        "sip:user@",
        "sip:user@:5060",
        "sip:host:",
        "sip:host:0",
        "sip:host:65536",
        "sip:host:123456",
        "sip:host:-1",
        "sip:host:50x",
        "sip:host:\u00b2",
        "sip:[::1",
        "sip:[::1]x",
        "sip:[::1]:",
        "sip:[zz::1]",
        "sip:2001:db8::1",
        "sip:ho st",
        "sip:host;  lr x",
        "sip:a b@host",
        "sip:<host>",
        'sip:"host"',
        "sip:host/x",
        "sip:ho\x00st",
        "sip:user@host;=x",
        "sip:" + "a" * 3000,
    ],
)
def test_invalid_uris(text: str) -> None:
    with pytest.raises(UriError):
        SipUri.parse(text)


def test_split_and_join_hostport() -> None:
    assert split_hostport(" Example.COM ") == ("example.com", None)
    assert split_hostport("[::1]:5060") == ("[::1]", 5060)
    assert join_hostport("::1", 5060) == "[::1]:5060"
    assert join_hostport("[::1]", None) == "[::1]"
    assert join_hostport("h", 1) == "h:1"
    for bad in ("", ":5060", "h:", "[::1]:0", "h:1:2"):
        with pytest.raises(UriError):
            split_hostport(bad)


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.example.com",
        "sips:[2001:db8::1]:5061;transport=tls;lr",
        "sip:+15551234;phone-context=example.com@gw.example.com;user=phone",
        "sip:a@b.example;x?h=1&j=2",
    ],
)
def test_uri_str_round_trip(text: str) -> None:
    u = SipUri.parse(text)
    assert str(u) == text
    assert SipUri.parse(str(u)) == u


# --------------------------------------------------------------------------- NameAddr


def test_name_addr_forms() -> None:
    a = NameAddr.parse('"Alice" <sip:alice@atlanta.example.com>;tag=1928301774')
    assert (a.display, str(a.uri), a.tag) == ("Alice", "sip:alice@atlanta.example.com", "1928301774")
    assert str(a) == '"Alice" <sip:alice@atlanta.example.com>;tag=1928301774'
    b = NameAddr.parse('Bob Smith <sip:bob@b.example;transport=tcp>;expires=60;+sip.instance="<urn:x>"')
    assert b.display == "Bob Smith" and b.uri.params == {"transport": "tcp"}
    assert b.params == {"expires": "60", "+sip.instance": '"<urn:x>"'}
    c = NameAddr.parse("<sip:c@c.example>")
    assert c.display is None and str(c) == "<sip:c@c.example>"
    d = NameAddr.parse('"" <sip:d@d.example>')
    assert d.display is None


def test_addr_spec_params_are_header_params() -> None:
    a = NameAddr.parse("sip:alice@a.example;tag=88;expires=5")
    assert a.uri.params == {} and a.params == {"tag": "88", "expires": "5"}
    assert a.tag == "88"
    assert str(a) == "<sip:alice@a.example>;tag=88;expires=5"
    ws = NameAddr.parse("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n")
    assert (str(ws.uri), ws.tag) == ("sip:vivekg@chair-dnrc.example.com", "1918181833n")


def test_display_with_specials() -> None:
    a = NameAddr.parse('"Bob <the builder>, \\"jr\\" \\\\ x" <sip:bob@b.example>;tag=x')
    assert a.display == 'Bob <the builder>, "jr" \\ x'
    assert str(a.uri) == "sip:bob@b.example" and a.tag == "x"
    again = NameAddr.parse(str(a))
    assert again == a
    assert NameAddr.parse('"\\a\\b" <sip:x@y>').display == "ab"
    assert NameAddr.parse('"J Rosenberg \\\\\\"" <sip:jdrosen@example.com>').display == 'J Rosenberg \\"'


def test_spaces_inside_angle_brackets_tolerated() -> None:
    # parse_message rejects this (RFC 4475 badaspec); NameAddr itself is lenient
    assert str(NameAddr.parse("< sip:alice@a.example >").uri) == "sip:alice@a.example"


def test_wildcard_contact() -> None:
    w = NameAddr.parse("  *  ")
    assert w.wildcard and str(w) == "*"


@pytest.mark.parametrize(
    "text",
    [
        '"Alice <sip:alice@a.example>',
        '"Alice\\" <sip:alice@a.example>',
        '"Alice" junk <sip:alice@a.example>',
        "<sip:alice@a.example",
        "Alice <tel:+1234>",
        "<>",
        "",
        "alice@a.example",
        "sip:alice@a.example;=1",
        "<sip:a@b>;;=x",
    ],
)
def test_invalid_name_addr(text: str) -> None:
    with pytest.raises(UriError):
        NameAddr.parse(text)


@pytest.mark.parametrize(
    "text",
    [
        '"A \\"quoted\\" name, with comma" <sips:a@[::1]:5061;transport=tls>;tag=abc;q=0.7',
        "<sip:x@y.example?Route=%3Csip:r.example%3E>;expires=0",
        "<sip:x@y.example>;lr",
    ],
)
def test_name_addr_round_trip(text: str) -> None:
    a = NameAddr.parse(text)
    assert str(a) == text
    assert NameAddr.parse(str(a)) == a


def test_random_input_only_uri_errors() -> None:
    rng = random.Random(3261)
    alphabet = 'sip:@;=?&<>"\\ ,[]:.-_%0123456789abcXYZ*\t\x00\u00b2\u00e9'
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        for candidate in (text, "sip:" + text, "<sip:" + text + ">", '"' + text):
            for cls in (SipUri, NameAddr):
                try:
                    value = cls.parse(candidate)
                except UriError:
                    continue
                assert type(value) is cls
                if cls is SipUri:
                    assert SipUri.parse(str(value)) == value
