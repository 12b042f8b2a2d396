import base64
import hashlib
import hmac
import json
import subprocess
import sys

import pytest

from b2bua.auth.tokens import (
    CLOCK_SKEW,
    MAX_TOKEN_LENGTH,
    REASONS,
    TokenError,
    TokenVerifier,
    issue_token,
    load_secret,
    main,
)

SECRET = b"s" * 32
NOW = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(payload: bytes | str, secret: bytes = SECRET) -> str:
    """A correctly signed token around an arbitrary payload."""
    if isinstance(payload, str):
        payload = payload.encode()
    p = b64(payload)
    return p + "." + b64(hmac.new(secret, p.encode(), hashlib.sha256).digest())


def verifier(clock: Clock | None = None, **kwargs) -> TokenVerifier:
    return TokenVerifier(SECRET, clock=clock or Clock(), **kwargs)


def reason(v: TokenVerifier, token) -> str:
    with pytest.raises(TokenError) as info:
        v.verify(token)
    assert info.value.reason in REASONS
    assert str(info.value) == info.value.reason
    return info.value.reason


def test_round_trip():
    token = issue_token(SECRET, "1000", 300, NOW)
    assert verifier().verify(token) == "1000"
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert payload["u"] == "1000" and payload["exp"] == int(NOW) + 300 and len(payload["n"]) >= 16


def test_format_is_documented_one():
    token = issue_token(SECRET, "1000", 300, NOW, nonce="abc")
    assert token == sign(f'{{"u":"1000","exp":{int(NOW) + 300},"n":"abc"}}')
    assert "=" not in token


def test_unicode_user():
    assert verifier().verify(issue_token(SECRET, "用户", 60, NOW)) == "用户"


def test_distinct_nonces():
    assert issue_token(SECRET, "1000", 60, NOW) != issue_token(SECRET, "1000", 60, NOW)


def test_replay():
    v = verifier()
    token = issue_token(SECRET, "1000", 300, NOW)
    assert v.verify(token) == "1000"
    assert reason(v, token) == "replayed"
    # Same nonce in another token (another user or expiry) is a replay too.
    assert v.verify(issue_token(SECRET, "1000", 300, NOW, nonce="n1")) == "1000"
    assert reason(v, issue_token(SECRET, "1001", 200, NOW, nonce="n1")) == "replayed"


def test_expiry_with_skew():
    clock = Clock()
    v = verifier(clock)
    clock.now = NOW + 300 + CLOCK_SKEW
    assert v.verify(issue_token(SECRET, "1000", 300, NOW)) == "1000"
    clock.now = NOW + 300 + CLOCK_SKEW + 1
    assert reason(v, issue_token(SECRET, "1000", 300, NOW)) == "expired"


def test_too_long_lived():
    v = verifier(max_ttl=600)
    assert v.verify(issue_token(SECRET, "1000", 600 + CLOCK_SKEW, NOW)) == "1000"
    assert reason(v, issue_token(SECRET, "1000", 601 + CLOCK_SKEW, NOW)) == "too_long_lived"
    assert reason(v, sign(f'{{"u":"1000","exp":{2**53 - 1},"n":"x"}}')) == "too_long_lived"


def test_issued_slightly_in_future_accepted():
    # The issuer's clock runs ahead: a 300 s token from its "now" is still within max_ttl + skew.
    v = verifier(max_ttl=300)
    assert v.verify(issue_token(SECRET, "1000", 300, NOW + 20)) == "1000"


def test_nonces_forgotten_after_expiry():
    clock = Clock()
    v = verifier(clock)
    for i in range(100):
        v.verify(issue_token(SECRET, "1000", 10 + i, NOW))
    assert v.remembered == 100
    clock.now = NOW + 60 + CLOCK_SKEW + 0.5
    v.verify(issue_token(SECRET, "1000", 300, clock.now))
    assert v.remembered == 100 - 51 + 1
    clock.now = NOW + 10_000
    with pytest.raises(TokenError):
        v.verify("garbage")  # malformed tokens do not purge, but valid ones do
    v.verify(issue_token(SECRET, "1000", 300, clock.now))
    assert v.remembered == 1


def test_clock_going_back_does_not_revive():
    clock = Clock()
    v = verifier(clock)
    token = issue_token(SECRET, "1000", 10, NOW, nonce="once")
    assert v.verify(token) == "1000"
    clock.now = NOW + 1000
    v.verify(issue_token(SECRET, "1000", 10, clock.now))  # purges "once"
    clock.now = NOW  # the clock steps back
    assert reason(v, token) == "expired"


def test_tamper_payload():
    v = verifier()
    token = issue_token(SECRET, "1000", 300, NOW, nonce="abc")
    payload, sig = token.split(".")
    forged = b64(json.dumps({"u": "1001", "exp": int(NOW) + 300, "n": "abc"}).encode())
    assert reason(v, forged + "." + sig) == "bad_signature"
    for i in range(len(payload)):
        c = "A" if payload[i] != "A" else "B"
        assert reason(v, payload[:i] + c + payload[i + 1:] + "." + sig) in ("bad_signature",)


def test_tamper_signature():
    v = verifier()
    token = issue_token(SECRET, "1000", 300, NOW)
    payload, sig = token.split(".")
    for i in range(len(sig)):
        c = "A" if sig[i] != "A" else "B"
        assert reason(v, payload + "." + sig[:i] + c + sig[i + 1:]) == "bad_signature"
    assert reason(v, payload + "." + sig[:-1]) == "bad_signature"
    assert reason(v, payload + "." + sig + "AA") == "bad_signature"
    assert v.verify(token) == "1000"  # failed attempts did not burn the nonce


def test_wrong_secret():
    assert reason(verifier(), issue_token(b"t" * 32, "1000", 300, NOW)) == "bad_signature"


@pytest.mark.parametrize("token", [
    "", ".", "abc", "abc.", ".abc", "a.b.c", "a b.c", "abc.d=f", "abc==.def", "é.x", "a\n.b",
    "x" * (MAX_TOKEN_LENGTH + 1), "a." + "b" * MAX_TOKEN_LENGTH, None, 12, b"a.b", ["a", "b"],
])
def test_garbage_is_malformed(token):
    assert reason(verifier(), token) == "malformed"


@pytest.mark.parametrize("payload", [
    b"", b"\xff\xfe", b"not json", b"[1, 2]", b'"string"', b"42", b"null", b"{}",
    b'{"u": "1000", "exp": 1700000300}',
    b'{"u": "1000", "n": "x"}',
    b'{"exp": 1700000300, "n": "x"}',
    b'{"u": 1000, "exp": 1700000300, "n": "x"}',
    b'{"u": "", "exp": 1700000300, "n": "x"}',
    b'{"u": "1000", "exp": "1700000300", "n": "x"}',
    b'{"u": "1000", "exp": 1700000300.5, "n": "x"}',
    b'{"u": "1000", "exp": true, "n": "x"}',
    b'{"u": "1000", "exp": Infinity, "n": "x"}',
    b'{"u": "1000", "exp": NaN, "n": "x"}',
    b'{"u": "1000", "exp": -1, "n": "x"}',
    b'{"u": "1000", "exp": 1' + b"0" * 400 + b', "n": "x"}',
    b'{"u": "1000", "exp": 1700000300, "n": 5}',
    b'{"u": "1000", "exp": 1700000300, "n": ""}',
    b'{"u": "1000", "exp": 1700000300, "n": null}',
    b'{"u": ["1000"], "exp": 1700000300, "n": "x"}',
    b'{"u": "1000", "exp": 1700000300, "n": "' + b"x" * 200 + b'"}',
    b"[" * 350 + b"]" * 350,
    b'{"u": "1000", "exp": 1700000300, "n": "x"',
])
def test_signed_garbage_is_malformed(payload):
    token = sign(payload)
    if len(token) > MAX_TOKEN_LENGTH:
        pytest.fail("test payload does not fit a token")
    assert reason(verifier(), token) == "malformed"


def test_fuzz_never_raises_other_exceptions():
    import random

    rng = random.Random(1234)
    v = verifier()
    good = issue_token(SECRET, "1000", 300, NOW)
    alphabet = "ABCxyz019-_.=+/ é\x00"
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.3:
            t = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        elif kind < 0.6:
            i = rng.randrange(len(good))
            t = good[:i] + rng.choice(alphabet.replace(good[i], "")) + good[i + 1:]
        else:
            t = sign(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 50))))
        with pytest.raises(TokenError):
            v.verify(t)


def test_issue_rejects_bad_arguments():
    with pytest.raises(ValueError):
        issue_token(b"short", "1000", 60, NOW)
    with pytest.raises(ValueError):
        issue_token(SECRET, "", 60, NOW)
    with pytest.raises(ValueError):
        issue_token(SECRET, "1000", 0, NOW)
    with pytest.raises(ValueError):
        issue_token(SECRET, "1000", True, NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        issue_token(SECRET, "1000", 60, NOW, nonce="")
    with pytest.raises(ValueError):
        issue_token(SECRET, "x" * 1000, 60, NOW)
    with pytest.raises(ValueError):
        TokenVerifier(b"short")
    with pytest.raises(TypeError):
        TokenVerifier("a string secret of some length")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TokenVerifier(SECRET, max_ttl=0)


def test_repr_hides_secret():
    assert "sss" not in repr(verifier())


def test_token_error_is_value_error():
    assert issubclass(TokenError, ValueError)


def test_load_secret(tmp_path):
    f = tmp_path / "secret"
    f.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    assert load_secret(f) == b"0123456789abcdef0123456789abcdef"
    f.write_bytes(b"short\n")
    with pytest.raises(ValueError):
        load_secret(f)


def test_cli(tmp_path, capsys):
    f = tmp_path / "secret"
    f.write_bytes(SECRET + b"\n")
    assert main(["--secret-file", str(f), "--user", "1000", "--ttl", "300"]) == 0
    token = capsys.readouterr().out.strip()
    assert TokenVerifier(SECRET).verify(token) == "1000"


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--secret-file", str(tmp_path / "missing"), "--user", "1000"])
    assert info.value.code == 2
    f = tmp_path / "secret"
    f.write_bytes(SECRET)
    with pytest.raises(SystemExit):
        main(["--secret-file", str(f), "--user", "1000", "--ttl", "-5"])


def test_cli_module_entry_point(tmp_path):
    f = tmp_path / "secret"
    f.write_bytes(SECRET)
    out = subprocess.run(
        [sys.executable, "-m", "b2bua.auth.tokens", "--secret-file", str(f), "--user", "1001", "--ttl", "60"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()
    assert TokenVerifier(SECRET).verify(out) == "1001"
