"""HTTP/SIP digest authentication, client side (RFC 2617, RFC 7616, RFC 8760; RFC 3261 §22).

Sans-IO. :func:`parse_challenge` reads one ``WWW-Authenticate``/``Proxy-Authenticate`` value,
:func:`choose_challenge` picks the strongest one a client can answer among several (RFC 8760 §2.4:
SHA-256 before MD5), and :class:`DigestClient` builds the ``Authorization``/``Proxy-Authorization``
value for one user, tracking the nonce count per nonce.

Supported: ``MD5``, ``MD5-sess``, ``SHA-256``, ``SHA-256-sess``, ``SHA-512-256``, ``SHA-512-256-sess``;
``qop=auth`` (preferred), ``qop=auth-int``, and no qop at all (RFC 2069 compatibility); ``userhash``
(RFC 7616 §3.4.4). Bad input raises :class:`DigestError`. :func:`redacted` makes a credentials value
safe to log.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_HEADER_LENGTH = 8192
MAX_TRACKED_NONCES = 4  # nonce counts remembered per client (one 401 and one 407 realm, with margin)

# Canonical spelling (as the RFCs write them) by normalised (upper-case) name; hashlib name.
_ALGORITHMS: dict[str, tuple[str, str]] = {
    "MD5": ("MD5", "md5"),
    "MD5-SESS": ("MD5-sess", "md5"),
    "SHA-256": ("SHA-256", "sha256"),
    "SHA-256-SESS": ("SHA-256-sess", "sha256"),
    "SHA-512-256": ("SHA-512-256", "sha512_256"),
    "SHA-512-256-SESS": ("SHA-512-256-sess", "sha512_256"),
}
if "sha512_256" not in hashlib.algorithms_available:  # pragma: no cover - depends on the OpenSSL build
    del _ALGORITHMS["SHA-512-256"], _ALGORITHMS["SHA-512-256-SESS"]

# Strongest first (RFC 8760 §2.4: a client uses the first challenge whose algorithm it supports,
# servers list the preferred first; we rank by strength so header order cannot downgrade us).
PREFERENCE: tuple[str, ...] = tuple(a for a in (
    "SHA-512-256", "SHA-512-256-SESS", "SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS",
) if a in _ALGORITHMS)
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(_ALGORITHMS)
SUPPORTED_QOP: tuple[str, ...] = ("auth", "auth-int")

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_WS = " \t"
_HA1_RE = re.compile(r"^[0-9a-fA-F]{32}$")


class DigestError(ValueError):
    """A challenge that cannot be parsed or answered, or credentials that cannot be used."""


class DigestRealmError(DigestError):
    """A challenge for a realm the credentials are not meant for (realms are not secret)."""

    def __init__(self, offered: str, expected: frozenset[str]) -> None:
        self.offered = offered
        self.expected = expected
        names = ", ".join(repr(r) for r in sorted(expected))
        which = "one of " if len(expected) > 1 else ""
        super().__init__(f"challenge realm {offered!r} is not the expected {which}{names}")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One parsed ``Digest`` challenge. ``algorithm`` is upper-case (``MD5-SESS``), ``MD5`` if absent."""

    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"
    qop_options: tuple[str, ...] = ()
    stale: bool = False
    userhash: bool = False

    @property
    def supported(self) -> bool:
        """True when some client holding a password can answer it (algorithm and qop known)."""
        return self.algorithm in _ALGORITHMS and (
            not self.qop_options or any(q in SUPPORTED_QOP for q in self.qop_options))


# ---------------------------------------------------------------------------------------------- parsing

def _split_params(text: str, start: int) -> list[tuple[str, str, int, int]]:
    """Parse ``name=value`` pairs separated by commas from ``text[start:]``.

    Returns ``(lower-case name, unquoted value, value start, value end)`` tuples; the span covers the
    value as written (quotes included). Empty list elements (``a=1,,b=2``) are allowed (RFC 7230 §7).
    """
    params: list[tuple[str, str, int, int]] = []
    n = len(text)
    pos = start
    while True:
        while pos < n and (text[pos] in _WS or text[pos] == ","):
            pos += 1
        if pos >= n:
            return params
        name_start = pos
        while pos < n and text[pos] in _TCHAR:
            pos += 1
        name = text[name_start:pos]
        if not name:
            raise DigestError(f"expected a parameter name at offset {pos}, found {text[pos]!r}")
        while pos < n and text[pos] in _WS:
            pos += 1
        if pos >= n or text[pos] != "=":
            raise DigestError(f"expected '=' after parameter name {name!r}")
        pos += 1
        while pos < n and text[pos] in _WS:
            pos += 1
        value_start = pos
        if pos < n and text[pos] == '"':
            pos += 1
            chars: list[str] = []
            while True:
                if pos >= n:
                    raise DigestError(f"unterminated quoted string in parameter {name!r}")
                c = text[pos]
                if c == '"':
                    pos += 1
                    break
                if c == "\\":
                    pos += 1
                    if pos >= n:
                        raise DigestError(f"unterminated quoted string in parameter {name!r}")
                    c = text[pos]
                if (c < " " and c != "\t") or c == "\x7f":
                    raise DigestError(f"control character in parameter {name!r}")
                chars.append(c)
                pos += 1
            value = "".join(chars)
        else:
            while pos < n and text[pos] not in _WS and text[pos] != ",":
                c = text[pos]
                if c == '"' or (c < " ") or c == "\x7f":
                    raise DigestError(f"invalid character {c!r} in value of parameter {name!r}")
                pos += 1
            value = text[value_start:pos]
            if not value:
                raise DigestError(f"empty value for parameter {name!r}")
        value_end = pos
        while pos < n and text[pos] in _WS:
            pos += 1
        if pos < n and text[pos] != ",":
            raise DigestError(f"expected ',' after parameter {name!r}, found {text[pos]!r}")
        params.append((name.lower(), value, value_start, value_end))


def _split_scheme(header_value: str) -> tuple[str, int]:
    if not isinstance(header_value, str):
        raise DigestError(f"challenge must be a str, not {type(header_value).__name__}")
    if len(header_value) > MAX_HEADER_LENGTH:
        raise DigestError(f"challenge longer than {MAX_HEADER_LENGTH} characters")
    text = header_value
    pos = 0
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    start = pos
    while pos < len(text) and text[pos] in _TCHAR:
        pos += 1
    scheme = text[start:pos]
    if not scheme:
        if start >= len(text):
            raise DigestError("empty challenge")
        raise DigestError(f"expected an authentication scheme, found {text[start]!r}")
    if pos < len(text) and text[pos] not in _WS:
        raise DigestError(f"expected whitespace after scheme {scheme!r}, found {text[pos]!r}")
    return scheme, pos


def parse_challenge(header_value: str) -> Challenge:
    """Parse one ``WWW-Authenticate`` or ``Proxy-Authenticate`` value of scheme ``Digest``.

    Parameter names are case-insensitive; values may be quoted (with ``\\`` escapes and commas inside)
    or bare tokens. Unknown parameters (``domain``, ``charset``…) are ignored. Raises
    :class:`DigestError` for another scheme, a syntax error, a duplicated parameter, or a missing
    ``realm``/``nonce``. An unknown algorithm is kept (see :attr:`Challenge.supported`).
    """
    scheme, pos = _split_scheme(header_value)
    if scheme.lower() != "digest":
        raise DigestError(f"unsupported authentication scheme {scheme!r} (only Digest)")
    params: dict[str, str] = {}
    for name, value, _, _ in _split_params(header_value, pos):
        if name in params:
            raise DigestError(f"parameter {name!r} given twice")
        params[name] = value
    if "realm" not in params:
        raise DigestError("Digest challenge has no realm")
    if not params.get("nonce"):
        raise DigestError("Digest challenge has no nonce")
    algorithm = params.get("algorithm", "MD5").upper()
    qop_options: tuple[str, ...] = ()
    if "qop" in params:
        qop_options = tuple(q.strip().lower() for q in params["qop"].split(",") if q.strip())
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        opaque=params.get("opaque"),
        algorithm=algorithm,
        qop_options=qop_options,
        stale=params.get("stale", "").lower() == "true",
        userhash=params.get("userhash", "").lower() == "true",
    )


def choose_challenge(values: list[str], *, algorithms: Iterable[str] | None = None) -> Challenge:
    """Return the strongest answerable challenge among the values of several authenticate headers.

    Values of other schemes (``Basic``…) and unparseable values are skipped. ``algorithms`` limits the
    choice to what a particular client can answer (:attr:`DigestClient.algorithms`); by default every
    algorithm this module implements. Among equally strong ones the first listed wins. Raises
    :class:`DigestError` when none is usable, naming why each was refused.
    """
    allowed = SUPPORTED_ALGORITHMS if algorithms is None else frozenset(a.upper() for a in algorithms)
    best: Challenge | None = None
    best_rank = len(PREFERENCE)
    refused: list[str] = []
    for value in values:
        try:
            challenge = parse_challenge(value)
        except DigestError as exc:
            refused.append(str(exc))
            continue
        if not challenge.supported or challenge.algorithm not in allowed:
            refused.append(f"algorithm {challenge.algorithm} with qop {list(challenge.qop_options)} "
                           "not supported")
            continue
        rank = PREFERENCE.index(challenge.algorithm)
        if rank < best_rank:
            best, best_rank = challenge, rank
    if best is None:
        if not refused:
            raise DigestError("no challenge given")
        raise DigestError("no usable Digest challenge: " + "; ".join(refused))
    return best


# ---------------------------------------------------------------------------------------------- answering

def _hash(hash_name: str, data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.new(hash_name, data).hexdigest()


def _quote(name: str, value: str) -> str:
    if any((c < " " and c != "\t") or c == "\x7f" for c in value):
        raise DigestError(f"control character in {name}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _default_cnonce() -> str:
    return secrets.token_hex(8)


class DigestClient:
    """Digest credentials of one user, answering challenges and counting nonce uses.

    Give exactly one of ``password`` or ``ha1``; ``ha1`` is the MD5 hex of ``user:realm:password``
    (FreeSWITCH's ``a1-hash``) and can answer only ``MD5`` and ``MD5-sess``. ``realms`` are the
    realms the credentials belong to (one, or several; compared without regard to case): when set, a
    challenge for any other realm is refused with :class:`DigestRealmError`, so the credentials never
    answer a realm (a server) they were not meant for, and an ``ha1``, which is bound to its realm,
    never produces a response that cannot be right. None accepts any realm. ``cnonce_factory`` is
    for tests.
    """

    def __init__(
        self,
        username: str,
        password: str | None = None,
        ha1: str | None = None,
        realms: str | Iterable[str] | None = None,
        *,
        cnonce_factory: Callable[[], str] = _default_cnonce,
    ) -> None:
        if (password is None) == (ha1 is None):
            raise DigestError("give exactly one of password or ha1")
        if ha1 is not None and not _HA1_RE.match(ha1):
            raise DigestError("ha1 must be 32 hexadecimal digits (an MD5 digest)")
        if not username:
            raise DigestError("empty username")
        self.username = username
        self.realms = _realm_set(realms)
        self._password = password
        self._ha1 = ha1.lower() if ha1 is not None else None
        self._cnonce_factory = cnonce_factory
        self._counts: OrderedDict[str, int] = OrderedDict()

    def __repr__(self) -> str:
        kind = "password" if self._password is not None else "ha1"
        return f"<DigestClient {self.username!r} ({kind}) realms={self.realms!r}>"

    @property
    def algorithms(self) -> frozenset[str]:
        """The algorithms (upper-case) these credentials can answer."""
        if self._password is None:
            return frozenset({"MD5", "MD5-SESS"})
        return SUPPORTED_ALGORITHMS

    def accepts(self, realm: str) -> bool:
        return self.realms is None or realm.lower() in self.realms

    def choose(self, values: list[str]) -> Challenge:
        """:func:`choose_challenge` restricted to what these credentials can answer, among the
        challenges for an accepted realm when there are any. When every challenge is for another
        realm the best of them is returned: :meth:`authorization` then refuses it, naming both."""
        if self.realms is not None:
            ours = [v for v in values if self._realm_of(v) in self.realms]
            if ours:
                values = ours
        return choose_challenge(values, algorithms=self.algorithms)

    @staticmethod
    def _realm_of(value: str) -> str | None:
        try:
            return parse_challenge(value).realm.lower()
        except DigestError:
            return None

    def _next_count(self, nonce: str) -> int:
        count = self._counts.pop(nonce, 0) + 1
        self._counts[nonce] = count
        while len(self._counts) > MAX_TRACKED_NONCES:
            self._counts.popitem(last=False)
        return count

    def authorization(self, challenge: Challenge, method: str, uri: str, body: bytes = b"") -> str:
        """The ``Authorization``/``Proxy-Authorization`` value answering ``challenge``.

        ``method`` is the request's method, ``uri`` its Request-URI as sent, ``body`` its body (used
        only for ``qop=auth-int``). Each call with the same nonce increments ``nc``; a new nonce starts
        again at ``00000001``.
        """
        if challenge.algorithm not in _ALGORITHMS:
            raise DigestError(f"unsupported digest algorithm {challenge.algorithm!r}")
        if challenge.algorithm not in self.algorithms:
            raise DigestError(f"cannot answer {challenge.algorithm} with an MD5 ha1 (a password is needed)")
        if self.realms is not None and challenge.realm.lower() not in self.realms:
            raise DigestRealmError(challenge.realm, self.realms)
        if not method or any(c not in _TCHAR for c in method):
            raise DigestError(f"invalid method {method!r}")
        if not uri:
            raise DigestError("empty uri")

        qop: str | None = None
        if challenge.qop_options:
            for candidate in SUPPORTED_QOP:
                if candidate in challenge.qop_options:
                    qop = candidate
                    break
            else:
                raise DigestError(f"no supported qop among {list(challenge.qop_options)}")

        canonical, hash_name = _ALGORITHMS[challenge.algorithm]
        sess = challenge.algorithm.endswith("-SESS")
        # RFC 2617 forbids cnonce without qop, but a -sess A1 cannot be computed without one:
        # send it then too (as curl and pjsip do).
        cnonce = self._cnonce_factory() if (qop or sess) else None

        if self._ha1 is not None:
            ha1 = self._ha1
        else:
            ha1 = _hash(hash_name, f"{self.username}:{challenge.realm}:{self._password}")
        if sess:
            ha1 = _hash(hash_name, f"{ha1}:{challenge.nonce}:{cnonce}")
        if qop == "auth-int":
            ha2 = _hash(hash_name, f"{method}:{uri}:{_hash(hash_name, body)}")
        else:
            ha2 = _hash(hash_name, f"{method}:{uri}")
        nc: str | None = None
        if qop:
            nc = f"{self._next_count(challenge.nonce):08x}"
            response = _hash(hash_name, f"{ha1}:{challenge.nonce}:{nc}:{cnonce}:{qop}:{ha2}")
        else:
            response = _hash(hash_name, f"{ha1}:{challenge.nonce}:{ha2}")

        username = self.username
        if challenge.userhash:
            username = _hash(hash_name, f"{self.username}:{challenge.realm}")
        parts = [
            f"username={_quote('username', username)}",
            f"realm={_quote('realm', challenge.realm)}",
            f"nonce={_quote('nonce', challenge.nonce)}",
            f"uri={_quote('uri', uri)}",
            f'response="{response}"',
            f"algorithm={canonical}",
        ]
        if cnonce is not None:
            parts.append(f"cnonce={_quote('cnonce', cnonce)}")
        if challenge.opaque is not None:
            parts.append(f"opaque={_quote('opaque', challenge.opaque)}")
        if qop:
            parts.append(f"qop={qop}")
            parts.append(f"nc={nc}")
        if challenge.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)


def _realm_set(realms: str | Iterable[str] | None) -> frozenset[str] | None:
    if realms is None:
        return None
    if isinstance(realms, str):
        realms = (realms,)
    if isinstance(realms, frozenset) and realms and all(r == r.lower() for r in realms):
        return realms  # shared by every client of a node, not copied per user
    out = frozenset(r.lower() for r in realms)
    if not out:
        raise DigestError("an empty set of realms accepts nothing (use None for any realm)")
    return out


# ---------------------------------------------------------------------------------------------- logging

def redacted(header_value: str) -> str:
    """``header_value`` with the digest ``response`` replaced by ``"<redacted>"``, safe to log.

    Anything that cannot be parsed as a Digest value (``Basic`` credentials, garbage) is replaced
    entirely, keeping only the scheme, so that no secret ever reaches a log.
    """
    try:
        scheme, pos = _split_scheme(header_value)
        if scheme.lower() != "digest":
            return f"{scheme} <redacted>"
        params = _split_params(header_value, pos)
    except DigestError:
        return "<redacted: unparseable credentials>"
    out = header_value
    for name, _, start, end in reversed(params):
        if name == "response":
            out = out[:start] + '"<redacted>"' + out[end:]
    return out
