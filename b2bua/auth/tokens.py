"""Operator-issued login tokens: HMAC-SHA256, expiry, single-use nonce.

A token lets a mini-program log in as a SIP user without holding the SIP password; the gateway then
takes the user's credentials from a user source (:mod:`b2bua.auth.users`). Format::

    payload_b64 = base64url(json {"u": user, "exp": unix_seconds, "n": nonce})
    token = payload_b64 "." base64url(HMAC-SHA256(secret, payload_b64))

base64url without padding; the MAC covers the payload exactly as transmitted (its base64 text), so it is
checked before any JSON is parsed. :class:`TokenVerifier` accepts a token at most once (the nonce is
remembered until the token's expiry, in a heap so that forgetting costs O(log n) per entry), allows
:data:`CLOCK_SKEW` seconds of clock difference, and refuses tokens living longer than ``max_ttl``.
Every failure is a :class:`TokenError` with a stable ``reason``.

Operators mint tokens with::

    python -m b2bua.auth.tokens --secret-file /etc/mpb2bua/token.secret --user 1000 --ttl 300
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import heapq
import hmac
import json
import re
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

MAX_TOKEN_LENGTH = 1024
MAX_NONCE_LENGTH = 128
MAX_USER_LENGTH = 256
MIN_SECRET_LENGTH = 16
CLOCK_SKEW = 30  # seconds
_MAX_EXP = 2**53  # keeps int/float arithmetic exact and away from OverflowError

MALFORMED = "malformed"
BAD_SIGNATURE = "bad_signature"
EXPIRED = "expired"
REPLAYED = "replayed"
TOO_LONG_LIVED = "too_long_lived"
REASONS = frozenset({MALFORMED, BAD_SIGNATURE, EXPIRED, REPLAYED, TOO_LONG_LIVED})

_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class TokenError(ValueError):
    """A token refused; ``reason`` is one of :data:`REASONS` (safe to show to the client)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload_b64: str) -> str:
    return _b64encode(hmac.new(secret, payload_b64.encode("ascii"), hashlib.sha256).digest())


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes | bytearray):
        raise TypeError("secret must be bytes")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"secret must be at least {MIN_SECRET_LENGTH} bytes")


def load_secret(path: str | Path) -> bytes:
    """Read a token secret file: its bytes with surrounding ASCII whitespace removed.

    Both the CLI and the gateway read the secret with this function, so a file written by
    ``openssl rand -hex 32 >file`` (text, trailing newline) or ``head -c 32 /dev/urandom >file``
    gives the same secret on both sides.
    """
    secret = Path(path).read_bytes().strip(b" \t\r\n\f\v")
    _check_secret(secret)
    return secret


def issue_token(secret: bytes, user: str, ttl: int, now: float, nonce: str | None = None) -> str:
    """A token for ``user`` valid for ``ttl`` seconds from ``now`` (unix time).

    ``nonce`` defaults to 128 random bits; give one only in tests.
    """
    _check_secret(secret)
    if not isinstance(user, str) or not user or len(user) > MAX_USER_LENGTH:
        raise ValueError(f"user must be a non-empty string of at most {MAX_USER_LENGTH} characters")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise ValueError("ttl must be a positive integer")
    if nonce is None:
        nonce = secrets.token_urlsafe(16)
    if not isinstance(nonce, str) or not nonce or len(nonce) > MAX_NONCE_LENGTH:
        raise ValueError(f"nonce must be a non-empty string of at most {MAX_NONCE_LENGTH} characters")
    payload = json.dumps({"u": user, "exp": int(now) + ttl, "n": nonce}, separators=(",", ":"))
    payload_b64 = _b64encode(payload.encode("utf-8"))
    token = f"{payload_b64}.{_mac(secret, payload_b64)}"
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"token would be longer than {MAX_TOKEN_LENGTH} characters")
    return token


class TokenVerifier:
    """Verifies tokens signed with ``secret``; each token is accepted once.

    ``max_ttl`` bounds how far in the future a token's expiry may lie (from now, plus the clock skew):
    a mistake on the issuing side cannot mint near-eternal tokens, and the remembered nonces are only
    those of tokens accepted in the last ``max_ttl`` + 2 × skew seconds. ``clock`` returns unix
    seconds; a clock stepping backwards never revives an expired or forgotten token.
    """

    def __init__(self, secret: bytes, max_ttl: int = 3600, clock: Callable[[], float] = time.time) -> None:
        _check_secret(secret)
        if isinstance(max_ttl, bool) or not isinstance(max_ttl, int) or max_ttl <= 0:
            raise ValueError("max_ttl must be a positive integer")
        self._secret = bytes(secret)
        self.max_ttl = max_ttl
        self._clock = clock
        self._now = float("-inf")  # the latest time seen
        self._seen: set[str] = set()
        self._expiries: list[tuple[int, str]] = []  # heap of (forget after, nonce)

    def __repr__(self) -> str:
        return f"<TokenVerifier max_ttl={self.max_ttl} remembered={len(self._seen)}>"

    @property
    def remembered(self) -> int:
        """How many used nonces are currently remembered."""
        return len(self._seen)

    def _decode(self, token: object) -> tuple[str, int, str]:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenError(MALFORMED)
        parts = token.split(".")
        if len(parts) != 2 or not _B64URL.fullmatch(parts[0]) or not _B64URL.fullmatch(parts[1]):
            raise TokenError(MALFORMED)
        payload_b64, signature = parts
        # Both operands are ASCII str (checked above), as compare_digest requires.
        if not hmac.compare_digest(_mac(self._secret, payload_b64), signature):
            raise TokenError(BAD_SIGNATURE)
        try:
            payload = json.loads(_b64decode(payload_b64).decode("utf-8"))
        except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
            raise TokenError(MALFORMED)
        if not isinstance(payload, dict):
            raise TokenError(MALFORMED)
        user, exp, nonce = payload.get("u"), payload.get("exp"), payload.get("n")
        if (not isinstance(user, str) or not user or len(user) > MAX_USER_LENGTH
                or not isinstance(nonce, str) or not nonce or len(nonce) > MAX_NONCE_LENGTH
                or isinstance(exp, bool) or not isinstance(exp, int) or not 0 <= exp < _MAX_EXP):
            raise TokenError(MALFORMED)
        return user, exp, nonce

    def _forget_expired(self, now: float) -> None:
        heap = self._expiries
        while heap and heap[0][0] < now:
            _, nonce = heapq.heappop(heap)
            self._seen.discard(nonce)

    def verify(self, token: str) -> str:
        """The user named by ``token``; raises :class:`TokenError` and nothing else when refused."""
        user, exp, nonce = self._decode(token)
        now = self._now = max(self._now, float(self._clock()))
        self._forget_expired(now)
        if exp + CLOCK_SKEW < now:
            raise TokenError(EXPIRED)
        if exp - now > self.max_ttl + CLOCK_SKEW:
            raise TokenError(TOO_LONG_LIVED)
        if nonce in self._seen:
            raise TokenError(REPLAYED)
        self._seen.add(nonce)
        heapq.heappush(self._expiries, (exp + CLOCK_SKEW, nonce))
        return user


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m b2bua.auth.tokens``: print one token."""
    parser = argparse.ArgumentParser(
        prog="python -m b2bua.auth.tokens",
        description="Issue a single-use mpb2bua login token (HMAC-SHA256) for a SIP user.")
    parser.add_argument("--secret-file", required=True, type=Path,
                        help="file holding the shared secret (at least 16 bytes; surrounding whitespace "
                             "is ignored), e.g. made with: openssl rand -hex 32 >token.secret")
    parser.add_argument("--user", required=True, help="SIP user the token logs in as, e.g. 1000")
    parser.add_argument("--ttl", type=int, default=300, help="seconds the token stays valid (default 300)")
    args = parser.parse_args(argv)
    try:
        secret = load_secret(args.secret_file)
        token = issue_token(secret, args.user, args.ttl, time.time())
    except (OSError, ValueError, TypeError) as exc:
        parser.error(str(exc))
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
