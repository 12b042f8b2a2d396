import hashlib

import pytest

from b2bua.wire.digest import (
    Challenge,
    DigestClient,
    DigestError,
    DigestRealmError,
    choose_challenge,
    parse_challenge,
    redacted,
)

# RFC 7616 §3.9.1
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_REALM = "http-auth@example.org"


def rfc7616_challenge(algorithm: str) -> str:
    return (f'Digest realm="{RFC7616_REALM}", qop="auth, auth-int", algorithm={algorithm}, '
            f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"')


def params_of(value: str) -> dict[str, str]:
    """Parse our own Authorization output (it has the same syntax as a challenge)."""
    from b2bua.wire.digest import _split_params

    assert value.startswith("Digest ")
    return {name: v for name, v, _, _ in _split_params(value, len("Digest"))}


def md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()


def fixed(cnonce: str):
    return lambda: cnonce


# ---------------------------------------------------------------------------------------------- vectors

@pytest.mark.parametrize("algorithm,expected", [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_vectors(algorithm, expected):
    client = DigestClient("Mufasa", "Circle of Life", cnonce_factory=fixed(RFC7616_CNONCE))
    value = client.authorization(parse_challenge(rfc7616_challenge(algorithm)), "GET", "/dir/index.html")
    p = params_of(value)
    assert p == {
        "username": "Mufasa", "realm": RFC7616_REALM, "nonce": RFC7616_NONCE, "uri": "/dir/index.html",
        "response": expected, "algorithm": algorithm, "cnonce": RFC7616_CNONCE, "opaque": RFC7616_OPAQUE,
        "qop": "auth", "nc": "00000001",
    }


def test_rfc7616_exact_header_format():
    client = DigestClient("Mufasa", "Circle of Life", cnonce_factory=fixed(RFC7616_CNONCE))
    value = client.authorization(parse_challenge(rfc7616_challenge("MD5")), "GET", "/dir/index.html")
    assert value == (
        f'Digest username="Mufasa", realm="{RFC7616_REALM}", nonce="{RFC7616_NONCE}", '
        f'uri="/dir/index.html", response="8ca523f5e9506fed4657c9700eebdbec", algorithm=MD5, '
        f'cnonce="{RFC7616_CNONCE}", opaque="{RFC7616_OPAQUE}", qop=auth, nc=00000001'
    )


def test_rfc2617_example():
    challenge = parse_challenge(
        'Digest\n realm="testrealm@host.com",\n qop="auth,auth-int",\n'
        ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\n opaque="5ccc069c403ebaf9f0171e9517f40e41"'
        .replace("\n", ""))
    client = DigestClient("Mufasa", "Circle Of Life", cnonce_factory=fixed("0a4f113b"))
    p = params_of(client.authorization(challenge, "GET", "/dir/index.html"))
    assert p["response"] == "6629fae49393a05397450978507c4ef1"
    assert p["qop"] == "auth" and p["nc"] == "00000001" and p["cnonce"] == "0a4f113b"
    assert p["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"


def test_rfc2069_no_qop():
    # RFC 2069 §2.4 example, with the response as corrected by its erratum.
    challenge = parse_challenge(
        'Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    client = DigestClient("Mufasa", "CircleOfLife")
    p = params_of(client.authorization(challenge, "GET", "/dir/index.html"))
    assert p["response"] == "1949323746fe6a43ef61f9606e7febea"
    assert "qop" not in p and "nc" not in p and "cnonce" not in p


def test_md5_sess():
    challenge = parse_challenge('Digest realm="example.org", nonce="abc", algorithm=MD5-sess, qop="auth"')
    client = DigestClient("1000", "1234", cnonce_factory=fixed("0123456789abcdef"))
    p = params_of(client.authorization(challenge, "REGISTER", "sip:example.org"))
    ha1 = md5(f"{md5('1000:example.org:1234')}:abc:0123456789abcdef")
    ha2 = md5("REGISTER:sip:example.org")
    assert p["response"] == md5(f"{ha1}:abc:00000001:0123456789abcdef:auth:{ha2}")
    assert p["algorithm"] == "MD5-sess"


def test_sha256_sess_and_sha512_256():
    client = DigestClient("1000", "1234", cnonce_factory=fixed("cn"))
    c = parse_challenge('Digest realm="r", nonce="n", algorithm=sha-256-SESS, qop=auth')
    p = params_of(client.authorization(c, "INVITE", "sip:9196@r"))

    def h(s: str, name: str = "sha256") -> str:
        return hashlib.new(name, s.encode()).hexdigest()

    ha1 = h(f"{h('1000:r:1234')}:n:cn")
    assert p["response"] == h(f"{ha1}:n:00000001:cn:auth:{h('INVITE:sip:9196@r')}")
    assert p["algorithm"] == "SHA-256-sess"

    c = parse_challenge('Digest realm="r", nonce="m", algorithm=SHA-512-256, qop=auth')
    p = params_of(client.authorization(c, "INVITE", "sip:9196@r"))
    s = "sha512_256"
    expected = h(f"{h('1000:r:1234', s)}:m:00000001:cn:auth:{h('INVITE:sip:9196@r', s)}", s)
    assert p["response"] == expected


def test_auth_int_when_only_option():
    client = DigestClient("1000", "1234", cnonce_factory=fixed("cn"))
    c = parse_challenge('Digest realm="r", nonce="n", qop="auth-int"')
    body = b"v=0\r\n"
    p = params_of(client.authorization(c, "INVITE", "sip:x@r", body))
    ha2 = md5(f"INVITE:sip:x@r:{hashlib.md5(body).hexdigest()}")
    assert p["qop"] == "auth-int"
    assert p["response"] == md5(f"{md5('1000:r:1234')}:n:00000001:cn:auth-int:{ha2}")


def test_auth_preferred_over_auth_int():
    client = DigestClient("1000", "1234")
    c = parse_challenge('Digest realm="r", nonce="n", qop="auth-int,auth"')
    assert params_of(client.authorization(c, "REGISTER", "sip:r"))["qop"] == "auth"


def test_unknown_qop_only_refused():
    client = DigestClient("1000", "1234")
    c = parse_challenge('Digest realm="r", nonce="n", qop="auth-conf"')
    with pytest.raises(DigestError, match="qop"):
        client.authorization(c, "REGISTER", "sip:r")


def test_userhash():
    client = DigestClient("Mufasa", "Circle of Life", cnonce_factory=fixed("cn"))
    c = parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-256, qop=auth, userhash=true')
    p = params_of(client.authorization(c, "GET", "/"))
    assert p["username"] == hashlib.sha256(b"Mufasa:r").hexdigest()
    assert p["userhash"] == "true"


# ---------------------------------------------------------------------------------------------- nonce count

def test_nonce_count_increments_and_resets():
    client = DigestClient("1000", "1234", cnonce_factory=fixed("cn"))
    a = parse_challenge('Digest realm="r", nonce="A", qop="auth"')
    b = parse_challenge('Digest realm="r", nonce="B", qop="auth"')
    ncs = [params_of(client.authorization(a, "REGISTER", "sip:r"))["nc"] for _ in range(3)]
    assert ncs == ["00000001", "00000002", "00000003"]
    assert params_of(client.authorization(b, "REGISTER", "sip:r"))["nc"] == "00000001"
    # The count is per nonce: a 401 nonce and a 407 nonce in use at once do not disturb each other.
    assert params_of(client.authorization(a, "REGISTER", "sip:r"))["nc"] == "00000004"
    for i in range(20):  # memory stays bounded
        c = parse_challenge(f'Digest realm="r", nonce="x{i}", qop=auth')
        client.authorization(c, "REGISTER", "sip:r")
    assert len(client._counts) <= 4


def test_nc_is_hex():
    client = DigestClient("1000", "1234")
    c = parse_challenge('Digest realm="r", nonce="A", qop="auth"')
    for _ in range(10):
        value = client.authorization(c, "REGISTER", "sip:r")
    assert params_of(value)["nc"] == "0000000a"


def test_fresh_cnonce_each_time():
    client = DigestClient("1000", "1234")
    c = parse_challenge('Digest realm="r", nonce="A", qop="auth"')
    cnonces = {params_of(client.authorization(c, "REGISTER", "sip:r"))["cnonce"] for _ in range(5)}
    assert len(cnonces) == 5
    assert all(len(x) == 16 for x in cnonces)


# ---------------------------------------------------------------------------------------------- ha1 mode

@pytest.mark.parametrize("algorithm", ["MD5", "MD5-sess"])
@pytest.mark.parametrize("qop", ["", ', qop="auth"', ', qop="auth-int"'])
def test_ha1_equals_password_mode(algorithm, qop):
    c = parse_challenge(f'Digest realm="10.0.0.1", nonce="n0nce", algorithm={algorithm}{qop}')
    with_password = DigestClient("1000", password="1234", cnonce_factory=fixed("cn"))
    with_ha1 = DigestClient("1000", ha1=md5("1000:10.0.0.1:1234").upper(), cnonce_factory=fixed("cn"))
    assert (with_password.authorization(c, "REGISTER", "sip:10.0.0.1", b"x")
            == with_ha1.authorization(c, "REGISTER", "sip:10.0.0.1", b"x"))


def test_ha1_cannot_answer_sha256():
    client = DigestClient("1000", ha1=md5("1000:r:1234"))
    with pytest.raises(DigestError, match="ha1"):
        c = parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-256')
        client.authorization(c, "REGISTER", "sip:r")
    assert client.algorithms == {"MD5", "MD5-SESS"}
    both = ['Digest realm="r", nonce="n1", algorithm=SHA-256', 'Digest realm="r", nonce="n2", algorithm=MD5']
    assert client.choose(both).algorithm == "MD5"
    assert DigestClient("1000", "1234").choose(both).algorithm == "SHA-256"


@pytest.mark.parametrize("kwargs", [
    {}, {"password": "x", "ha1": md5("x")}, {"ha1": "xyz"}, {"ha1": "0" * 31},
])
def test_bad_credentials(kwargs):
    with pytest.raises(DigestError):
        DigestClient("1000", **kwargs)


def test_realm_mismatch_refused_naming_both_realms():
    client = DigestClient("1000", "1234", realms="pbx.example")
    with pytest.raises(DigestRealmError) as err:
        client.authorization(parse_challenge('Digest realm="evil", nonce="n"'), "REGISTER", "sip:x")
    assert err.value.offered == "evil" and err.value.expected == {"pbx.example"}
    assert str(err.value) == "challenge realm 'evil' is not the expected 'pbx.example'"
    assert "1234" not in str(err.value)
    assert isinstance(err.value, DigestError)  # callers that catch DigestError keep working
    client.authorization(parse_challenge('Digest realm="pbx.example", nonce="n"'), "REGISTER", "sip:x")


def test_realm_compared_without_case_and_answered_as_offered():
    client = DigestClient("1000", "1234", realms=["PBX.example", "other"], cnonce_factory=fixed("c"))
    challenge = parse_challenge('Digest realm="pbx.EXAMPLE", nonce="n"')
    value = client.authorization(challenge, "REGISTER", "sip:x")
    params = params_of(value)
    assert params["realm"] == "pbx.EXAMPLE"  # the hash uses the realm exactly as the server wrote it
    ha1 = md5("1000:pbx.EXAMPLE:1234")
    assert params["response"] == md5(f"{ha1}:n:{md5('REGISTER:sip:x')}")
    with pytest.raises(DigestRealmError, match="one of 'other', 'pbx.example'"):
        client.authorization(parse_challenge('Digest realm="third", nonce="n"'), "REGISTER", "sip:x")


def test_no_realms_accepts_any_realm():
    client = DigestClient("1000", "1234")
    assert client.realms is None and client.accepts("anything")
    client.authorization(parse_challenge('Digest realm="anything", nonce="n"'), "REGISTER", "sip:x")


def test_ha1_bound_to_its_realm():
    client = DigestClient("1000", ha1=md5("1000:pbx.example:1234"), realms="pbx.example")
    with pytest.raises(DigestRealmError):
        client.authorization(parse_challenge('Digest realm="evil", nonce="n"'), "REGISTER", "sip:x")


def test_choose_prefers_an_accepted_realm_over_a_stronger_foreign_one():
    client = DigestClient("1000", "1234", realms="pbx.example")
    foreign = 'Digest realm="evil", nonce="a", algorithm=SHA-256'
    ours = 'Digest realm="pbx.example", nonce="b", algorithm=MD5'
    assert client.choose([foreign, ours]).realm == "pbx.example"
    assert client.choose([ours, foreign]).realm == "pbx.example"


def test_choose_with_only_foreign_realms_returns_one_that_authorization_refuses():
    client = DigestClient("1000", "1234", realms="pbx.example")
    challenge = client.choose(['Digest realm="evil", nonce="a"'])
    with pytest.raises(DigestRealmError, match="'evil'"):
        client.authorization(challenge, "REGISTER", "sip:x")


def test_empty_realm_set_is_refused():
    with pytest.raises(DigestError, match="empty set of realms"):
        DigestClient("1000", "1234", realms=[])


def test_realm_set_shared_not_copied():
    realms = frozenset({"pbx.example"})
    assert DigestClient("1000", "1234", realms=realms).realms is realms


def test_repr_hides_secrets():
    assert "1234" not in repr(DigestClient("1000", "1234"))
    assert "deadbeef" not in repr(DigestClient("1000", ha1="deadbeef" * 4))


def test_unsupported_algorithm_refused_on_answer():
    c = parse_challenge('Digest realm="r", nonce="n", algorithm=AKAv1-MD5')
    assert c.algorithm == "AKAV1-MD5" and not c.supported
    with pytest.raises(DigestError, match="unsupported digest algorithm"):
        DigestClient("1000", "1234").authorization(c, "REGISTER", "sip:r")


def test_values_with_quotes_are_escaped():
    client = DigestClient('we"ird\\user', "pw")
    c = parse_challenge(r'Digest realm="a \"quoted\" realm", nonce="n"')
    assert c.realm == 'a "quoted" realm'
    p = params_of(client.authorization(c, "REGISTER", "sip:r"))
    assert p["username"] == 'we"ird\\user' and p["realm"] == 'a "quoted" realm'


def test_header_injection_refused():
    client = DigestClient("1000", "1234")
    c = parse_challenge('Digest realm="r", nonce="n"')
    with pytest.raises(DigestError):
        client.authorization(c, "REGISTER", "sip:r\r\nX-Evil: 1")
    with pytest.raises(DigestError):
        client.authorization(c, "REG ISTER", "sip:r")


# ---------------------------------------------------------------------------------------------- parsing

def test_parse_full():
    c = parse_challenge('Digest realm="asterisk", nonce="1a2b", opaque="o", algorithm=md5-sess, '
                        'qop="auth,auth-int", stale=TRUE')
    assert c == Challenge(realm="asterisk", nonce="1a2b", opaque="o", algorithm="MD5-SESS",
                          qop_options=("auth", "auth-int"), stale=True)


def test_parse_freeswitch_challenge():
    # As sent by FreeSWITCH (sofia-sip) in a 401 to REGISTER.
    c = parse_challenge('Digest realm="192.168.1.10", nonce="5c4f5b2e-8e0f-4a4b-9d9e-3c4b8a1f2e3d", '
                        'algorithm=MD5, qop="auth"')
    assert (c.realm, c.algorithm, c.qop_options, c.opaque, c.stale) == (
        "192.168.1.10", "MD5", ("auth",), None, False)


def test_parse_robustness():
    c = parse_challenge('  dIgEsT   REALM = "a, b, c" ,, NONCE=tok/en= ,Stale = false,qop=auth,'
                        'domain="sip:a sip:b", Opaque="x\\"y"   ')
    assert c.realm == "a, b, c"
    assert c.nonce == "tok/en="
    assert c.stale is False
    assert c.qop_options == ("auth",)
    assert c.opaque == 'x"y'
    assert c.algorithm == "MD5"


def test_parse_tabs_and_empty_realm():
    c = parse_challenge('Digest\trealm=""\t,\tnonce="n"')
    assert c.realm == "" and c.nonce == "n"


@pytest.mark.parametrize("stale,expected", [
    ("TRUE", True), ('"true"', True), ("False", False), ("yes", False),
])
def test_stale(stale, expected):
    assert parse_challenge(f'Digest realm="r", nonce="n", stale={stale}').stale is expected


@pytest.mark.parametrize("value,message", [
    ("", "empty"),
    ("   ", "empty"),
    ('Digest nonce="n"', "no realm"),
    ('Digest realm="r"', "no nonce"),
    ('Digest realm="r", nonce=""', "no nonce"),
    ('Digest realm="r, nonce=n', "unterminated"),
    ('Digest realm="r, nonce="n"', "expected ','"),
    ('Digest realm="r", nonce="n\\', "unterminated"),
    ('Basic realm="r"', "scheme"),
    ('Bearer realm="r", nonce="n"', "scheme"),
    ('Digest realm', "'='"),
    ('Digest realm=', "empty value"),
    ('Digest realm="r" nonce="n"', "','"),
    ('Digest realm="r", realm="s", nonce="n"', "twice"),
    ('Digest realm="r", nonce="n", =x', "parameter name"),
    ('Digest realm="r\x00", nonce="n"', "control"),
    ('Digest realm="r\r\n", nonce="n"', "control"),
    ('Digest realm=r"x, nonce="n"', "invalid character"),
    ('"Digest" realm="r", nonce="n"', "scheme"),
    ('Digest, realm="r", nonce="n"', "whitespace"),
    ('Digest realm="' + "x" * 9000 + '", nonce="n"', "longer"),
])
def test_malformed(value, message):
    with pytest.raises(DigestError, match=message):
        parse_challenge(value)


def test_malformed_not_str():
    with pytest.raises(DigestError):
        parse_challenge(None)  # type: ignore[arg-type]


def test_digest_error_is_value_error():
    assert issubclass(DigestError, ValueError)


# ---------------------------------------------------------------------------------------------- choice

def test_choose_prefers_sha256():
    values = [
        'Digest realm="r", nonce="1", algorithm=MD5, qop="auth"',
        'Digest realm="r", nonce="2", algorithm=SHA-256, qop="auth"',
        'Basic realm="r"',
    ]
    assert choose_challenge(values).nonce == "2"
    assert choose_challenge(values[::-1]).nonce == "2"


def test_choose_order_of_strength():
    values = [
        'Digest realm="r", nonce="md5sess", algorithm=MD5-sess',
        'Digest realm="r", nonce="md5"',
        'Digest realm="r", nonce="sha256sess", algorithm=SHA-256-sess',
        'Digest realm="r", nonce="sha512", algorithm=SHA-512-256',
    ]
    assert choose_challenge(values).nonce == "sha512"
    assert choose_challenge(values[:3]).nonce == "sha256sess"
    assert choose_challenge(values[:2]).nonce == "md5"
    assert choose_challenge(values[:2], algorithms=["md5-sess"]).nonce == "md5sess"


def test_choose_skips_unusable():
    values = [
        'Digest realm="r", nonce="1", algorithm=AKAv1-MD5',
        'Digest realm="r", nonce="2", qop="auth-conf"',
        'garbage "',
        'Digest realm="r", nonce="3", algorithm=MD5',
    ]
    assert choose_challenge(values).nonce == "3"


def test_choose_first_among_equals():
    values = ['Digest realm="a", nonce="1"', 'Digest realm="b", nonce="2"']
    assert choose_challenge(values).realm == "a"


@pytest.mark.parametrize("values", [
    [], ['Basic realm="r"'], ['Digest realm="r", nonce="n", algorithm=SHA-1'],
])
def test_choose_none_usable(values):
    with pytest.raises(DigestError):
        choose_challenge(values)


# ---------------------------------------------------------------------------------------------- redaction

def test_redacted():
    client = DigestClient("Mufasa", "Circle of Life", cnonce_factory=fixed(RFC7616_CNONCE))
    value = client.authorization(parse_challenge(rfc7616_challenge("MD5")), "GET", "/dir/index.html")
    out = redacted(value)
    assert "8ca523f5e9506fed4657c9700eebdbec" not in out
    assert 'response="<redacted>"' in out
    assert out.replace('response="<redacted>"', 'response="8ca523f5e9506fed4657c9700eebdbec"') == value


def test_redacted_tricky():
    # "response=" inside another quoted value is not the parameter.
    value = 'Digest username="response=1", response=abcdef, nonce="n"'
    assert redacted(value) == 'Digest username="response=1", response="<redacted>", nonce="n"'
    assert redacted('Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==') == "Basic <redacted>"
    assert "secret" not in redacted('Digest response="secret')
    assert redacted("") == "<redacted: unparseable credentials>"
