"""Property-based fuzzing of b2bua.wire.digest: challenges, answering them, redaction for logs.

Only :class:`DigestError` may come out of parsing and answering a challenge; :func:`redacted` never
raises and never lets a ``response`` through.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from b2bua.wire.digest import (
    MAX_HEADER_LENGTH,
    SUPPORTED_ALGORITHMS,
    Challenge,
    DigestClient,
    DigestError,
    choose_challenge,
    parse_challenge,
    redacted,
)
from tests.wire.fuzz_support import assert_bounded, fuzz, mutated

_TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
tokens = st.text(_TCHARS, min_size=1, max_size=16)
# quoted-string content: printable, tab allowed; quotes and backslashes get escaped
quoted_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.just("\t"), max_size=24)
algorithms = st.sampled_from(sorted(SUPPORTED_ALGORITHMS) + ["MD5", "SHA-256", "SHA-1", "FOO"])


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def challenges(draw: st.DrawFn) -> tuple[str, Challenge]:
    """A header value and the Challenge it must parse to."""
    realm = draw(quoted_text)
    nonce = draw(quoted_text.filter(bool))
    opaque = draw(st.none() | quoted_text)
    algorithm = draw(st.none() | algorithms)
    qop = draw(st.lists(st.sampled_from(["auth", "auth-int", "token"]), max_size=3, unique=True))
    stale = draw(st.booleans())
    userhash = draw(st.booleans())
    params = [("realm", _quote(realm)), ("nonce", _quote(nonce))]
    if opaque is not None:
        params.append(("opaque", _quote(opaque)))
    if algorithm is not None:
        params.append(("algorithm", draw(st.sampled_from([algorithm, algorithm.lower()]))))
    if qop:
        params.append(("qop", _quote(",".join(qop))))
    if stale:
        params.append(("stale", draw(st.sampled_from(["true", "TRUE", '"true"']))))
    if userhash:
        params.append(("userhash", "true"))
    extensions = draw(st.lists(tokens.map(str.lower), max_size=2, unique=True))
    params += [("x-" + name, draw(tokens)) for name in extensions]
    params = draw(st.permutations(params))
    names = [draw(st.sampled_from([n, n.upper(), n.capitalize()])) for n, _ in params]
    sep = draw(st.sampled_from([",", ", ", " ,\t", ",,"]))
    header = draw(st.sampled_from(["Digest", "digest", "DIGEST"])) + " " + sep.join(
        f"{n}={v}" for n, (_, v) in zip(names, params, strict=True)
    )
    expected = Challenge(
        realm=realm,
        nonce=nonce,
        opaque=opaque,
        algorithm=(algorithm or "MD5").upper(),
        qop_options=tuple(qop),
        stale=stale,
        userhash=userhash,
    )
    return header, expected


def _answer(value: str) -> None:
    try:
        challenge = parse_challenge(value)
    except DigestError:
        return
    for client in (DigestClient("alice", password="secret"), DigestClient("bob", ha1="0" * 32)):
        try:
            auth = client.authorization(challenge, "INVITE", "sip:bob@example.com", b"body")
        except DigestError:
            continue
        assert auth.startswith("Digest ")
        assert "secret" not in redacted(auth).replace(challenge.realm, "").replace(challenge.nonce, "")


# --- (a) arbitrary input ---------------------------------------------------------------------------


@fuzz(240)
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    _answer(text)
    _answer("Digest " + text)
    assert isinstance(redacted(text), str)
    try:
        choose_challenge([text, "Digest " + text])
    except DigestError:
        pass


# --- (b) valid challenges, mutated -----------------------------------------------------------------


@fuzz(60)
@given(st.data())
def test_mutated_challenge(data: st.DataObject) -> None:
    header, _ = data.draw(challenges())
    raw = data.draw(mutated(header.encode("utf-8")))
    text = raw.decode("utf-8", "replace")
    _answer(text)
    redacted(text)


def test_hostile_challenges() -> None:
    for value in (
        "Digest " + "a=b," * 3000,
        "Digest realm=\"" + "\\" * 8000,
        "Digest realm=\"x\", nonce=\"" + "a" * (MAX_HEADER_LENGTH + 1) + "\"",
        "Digest realm=x, realm=y, nonce=n",
        "Digest " + "," * 8000,
    ):
        _answer(value)
        assert_bounded(lambda v: _answer(v), value, factor=8)  # noqa: B023


# --- (c) round trips -------------------------------------------------------------------------------


@fuzz(60)
@given(challenges())
def test_challenge_round_trip(case: tuple[str, Challenge]) -> None:
    header, expected = case
    assert parse_challenge(header) == expected
    _answer(header)


@fuzz(40)
@given(st.lists(challenges(), min_size=1, max_size=4))
def test_choose_is_the_strongest_supported(cases: list[tuple[str, Challenge]]) -> None:
    values = [h for h, _ in cases]
    usable = [c for _, c in cases if c.supported]
    try:
        chosen = choose_challenge(values)
    except DigestError:
        assert not usable
        return
    assert chosen in usable


@fuzz(180)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30), st.data())
def test_redacted_never_shows_the_response(prefix: str, data: st.DataObject) -> None:
    secret = "5ec7e7" + data.draw(st.text("0123456789abcdef", min_size=26, max_size=26))
    quoted = data.draw(st.booleans())
    value = f'Digest username="{prefix}", response={_quote(secret) if quoted else secret}, nc=00000001'
    assert secret not in redacted(value)
