"""User sources: the SIP credentials of users who log in with a token instead of a password.

Two sources, same interface (:class:`UserSource`): :class:`YamlUsers` reads a small YAML file
(``etc/users.yaml``), :class:`FreeSwitchDirectory` reads FreeSWITCH's own directory folder (e.g.
``/etc/freeswitch/directory``), so the gateway knows exactly the accounts FreeSWITCH will accept.
Both load on construction and on :meth:`reload`; a failed reload keeps the previous users.

Secrets never appear in error messages or in ``repr``.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml

MAX_FILE_SIZE = 16 * 1024 * 1024
MAX_RANGE_SIZE = 1_000_000
DEFAULT_FREESWITCH_VARIABLES: Mapping[str, str] = {"default_password": "1234"}

_HA1_RE = re.compile(r"[0-9a-fA-F]{32}")
_DIGITS_RE = re.compile(r"[0-9]{1,18}")
_VARIABLE_RE = re.compile(r"\$\$\{([^}]*)\}")
_UNSAFE_XML_RE = re.compile(r"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)


class UserSourceError(ValueError):
    """A user file that cannot be read or understood; ``path`` names it."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        super().__init__(f"{os.fspath(path)}: {message}")
        self.path = os.fspath(path)


@dataclass(frozen=True)
class Credentials:
    """What a SIP UA needs to answer digest challenges as ``user``: exactly one of password or ha1.

    ``ha1`` is the lower-case MD5 hex of ``user:realm:password`` (FreeSWITCH's ``a1-hash``).
    """

    user: str
    password: str | None = field(default=None, repr=False)
    ha1: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.password is None) == (self.ha1 is None):
            raise ValueError(f"user {self.user!r}: give exactly one of password or ha1")
        if self.ha1 is not None and not _HA1_RE.fullmatch(self.ha1):
            raise ValueError(f"user {self.user!r}: ha1 must be 32 hexadecimal digits")


class UserSource(Protocol):
    """Anything the login path can ask for a user's credentials."""

    def lookup(self, user: str) -> Credentials | None: ...

    def reload(self) -> None: ...


def _read_limited(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise UserSourceError(path, f"cannot read: {exc.strerror or exc}")
    if len(data) > MAX_FILE_SIZE:
        raise UserSourceError(path, f"larger than {MAX_FILE_SIZE} bytes")
    return data


# ---------------------------------------------------------------------------------------------- YAML

class _StringLoader(yaml.SafeLoader):
    """SafeLoader whose plain scalars stay strings (only ``~``/empty/``null`` are resolved).

    Passwords like ``0123`` or ``yes`` and user names like ``0100`` must not become the integer 83,
    ``True`` or 64 as YAML 1.1 would have them.
    """


_StringLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag == "tag:yaml.org,2002:null"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_error(exc: yaml.YAMLError) -> str:
    # Never str(exc): PyYAML quotes the offending source line, which may hold a password.
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or "invalid YAML"
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(problem)


@dataclass(frozen=True)
class _Range:
    low: int
    high: int
    width: int
    password: str | None
    ha1: str | None


def _secret_of(path: Path, where: str, entry: object) -> tuple[str | None, str | None]:
    """``(password, ha1)`` from a mapping that must hold exactly one of them."""
    if not isinstance(entry, dict):
        raise UserSourceError(path, f"{where}: expected a mapping with password or ha1")
    unknown = sorted(str(k) for k in entry if k not in ("password", "ha1", "from", "to"))
    if unknown:
        raise UserSourceError(path, f"{where}: unknown keys {unknown}")
    password, ha1 = entry.get("password"), entry.get("ha1")
    if (password is None) == (ha1 is None):
        raise UserSourceError(path, f"{where}: give exactly one of password or ha1")
    if password is not None and (not isinstance(password, str) or not password):
        raise UserSourceError(path, f"{where}: password must be a non-empty string")
    if ha1 is not None:
        if not isinstance(ha1, str) or not _HA1_RE.fullmatch(ha1):
            raise UserSourceError(path, f"{where}: ha1 must be 32 hexadecimal digits")
        ha1 = ha1.lower()
    return password, ha1


class YamlUsers:
    """Users from a YAML file::

        users:
          "1000": {password: "1234"}
          "1001": {ha1: "0123456789abcdef0123456789abcdef"}
        ranges:
          - {from: 1000, to: 1019, password: "1234"}

    ``ranges`` name numeric users from ``from`` to ``to`` inclusive, written with at least as many
    digits as ``from`` (``from: "0100"`` gives ``0100``…; ``from: 1000`` does not match ``01000``).
    Entries under ``users`` take precedence over ranges; the first matching range wins. Plain scalars
    are read as strings (``password: 0123`` is ``"0123"``). Raises :class:`UserSourceError`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._users: dict[str, Credentials] = {}
        self._ranges: list[_Range] = []
        self.reload()

    def __repr__(self) -> str:
        return f"<YamlUsers {str(self.path)!r}: {len(self._users)} users, {len(self._ranges)} ranges>"

    def reload(self) -> None:
        """Read the file again; on error raise and keep the users loaded before."""
        path = self.path
        try:
            document = yaml.load(_read_limited(path), Loader=_StringLoader)
        except yaml.YAMLError as exc:
            raise UserSourceError(path, _yaml_error(exc))
        if document is None:
            document = {}
        if not isinstance(document, dict):
            raise UserSourceError(path, "expected a mapping with 'users' and/or 'ranges' at the top")
        unknown = sorted(str(k) for k in document if k not in ("users", "ranges"))
        if unknown:
            raise UserSourceError(path, f"unknown top-level keys {unknown}")

        users: dict[str, Credentials] = {}
        entries = document.get("users") or {}
        if not isinstance(entries, dict):
            raise UserSourceError(path, "'users' must be a mapping of user name to {password|ha1}")
        for name, entry in entries.items():
            if not isinstance(name, str) or not name:
                raise UserSourceError(path, f"users: invalid user name {name!r}")
            if isinstance(entry, dict) and ("from" in entry or "to" in entry):
                raise UserSourceError(path, f"users: {name}: 'from'/'to' belong under 'ranges'")
            password, ha1 = _secret_of(path, f"users: {name}", entry)
            users[name] = Credentials(name, password, ha1)

        ranges: list[_Range] = []
        items = document.get("ranges") or []
        if not isinstance(items, list):
            raise UserSourceError(path, "'ranges' must be a list of {from, to, password|ha1}")
        for index, item in enumerate(items):
            where = f"ranges[{index}]"
            password, ha1 = _secret_of(path, where, item)
            low_text, high_text = item.get("from"), item.get("to")
            if not isinstance(low_text, str) or not _DIGITS_RE.fullmatch(low_text):
                raise UserSourceError(path, f"{where}: 'from' must be a number")
            if not isinstance(high_text, str) or not _DIGITS_RE.fullmatch(high_text):
                raise UserSourceError(path, f"{where}: 'to' must be a number")
            low, high = int(low_text), int(high_text)
            if high < low:
                raise UserSourceError(path, f"{where}: 'to' ({high}) is below 'from' ({low})")
            if high - low >= MAX_RANGE_SIZE:
                raise UserSourceError(path, f"{where}: more than {MAX_RANGE_SIZE} users")
            ranges.append(_Range(low, high, len(low_text), password, ha1))

        self._users, self._ranges = users, ranges

    def lookup(self, user: str) -> Credentials | None:
        """The credentials of ``user``, or None if this file does not know them."""
        if not isinstance(user, str):
            return None
        found = self._users.get(user)
        if found is not None:
            return found
        if not _DIGITS_RE.fullmatch(user):
            return None
        number = int(user)
        for r in self._ranges:
            if r.low <= number <= r.high and user == str(number).zfill(r.width):
                return Credentials(user, r.password, r.ha1)
        return None


# ---------------------------------------------------------------------------------------------- FreeSWITCH

def _parse_xml(path: Path) -> ET.Element:
    """Parse one FreeSWITCH XML file, refusing DTDs and entity declarations (billion laughs, XXE)."""
    data = _read_limited(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserSourceError(path, "not UTF-8")
    if _UNSAFE_XML_RE.search(text):
        raise UserSourceError(path, "DTDs and entity declarations are not allowed")
    parser = ET.XMLParser()
    try:
        parser.feed(text)
        return parser.close()
    except ET.ParseError as exc:
        raise UserSourceError(path, f"invalid XML: {exc}")


def read_freeswitch_vars(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``$${…}`` variables set by ``<X-PRE-PROCESS cmd="set" data="name=value"/>`` in ``vars.xml``.

    Only ``set`` is honoured (``exec-set``/``stun-set`` run commands or queries: their variables are
    left out); values may use variables set earlier. Raises :class:`UserSourceError`.
    """
    root = _parse_xml(Path(path))
    found: dict[str, str] = {}
    for element in root.iter("X-PRE-PROCESS"):
        if element.get("cmd", "").lower() != "set":
            continue
        name, sep, value = element.get("data", "").partition("=")
        if sep and name.strip():
            found[name.strip()] = _VARIABLE_RE.sub(lambda m: found.get(m.group(1), m.group(0)), value)
    return found


class FreeSwitchDirectory:
    """Users from every ``*.xml`` file under a FreeSWITCH directory folder, recursively.

    A user is a ``<user id="…">`` element with ``<params><param name="password" value="…"/>`` or
    ``<param name="a1-hash" value="…"/>`` (when both are given, FreeSWITCH uses the a1-hash, and so do
    we); other params (``vm-password``…) are ignored, as are users with neither (pointers, gateways).
    ``$${name}`` in ids and these values is replaced from ``variables`` (default
    ``{"default_password": "1234"}``; see :func:`read_freeswitch_vars` to use FreeSWITCH's
    ``vars.xml``). Users live in one flat namespace: a user id seen again in a later file (sorted
    path order) is reported and ignored.

    A file that cannot be used (invalid XML, a DTD, an undefined variable…) is skipped and described in
    :attr:`errors`; with ``strict=True`` it raises :class:`UserSourceError` instead. A missing folder
    always raises.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        variables: Mapping[str, str] | None = None,
        *,
        strict: bool = False,
    ) -> None:
        self.path = Path(path)
        if variables is None:
            variables = DEFAULT_FREESWITCH_VARIABLES
        self.variables: dict[str, str] = dict(variables)
        self.strict = strict
        self.errors: list[str] = []
        self._users: dict[str, Credentials] = {}
        self.reload()

    def __repr__(self) -> str:
        return (f"<FreeSwitchDirectory {str(self.path)!r}: {len(self._users)} users, "
                f"{len(self.errors)} errors>")

    def __len__(self) -> int:
        return len(self._users)

    def _files(self) -> list[Path]:
        if not self.path.is_dir():
            raise UserSourceError(self.path, "not a directory")
        files: list[Path] = []
        for root, dirs, names in os.walk(self.path, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files.extend(Path(root, n) for n in sorted(names) if n.endswith(".xml") and not n.startswith("."))
        return files

    def _substitute(self, path: Path, where: str, value: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.variables:
                raise UserSourceError(path, f"{where}: undefined variable $${{{name}}}")
            return self.variables[name]

        return _VARIABLE_RE.sub(replace, value)

    def _load_file(self, path: Path, users: dict[str, Credentials], errors: list[str]) -> None:
        root = _parse_xml(path)
        found: list[Credentials] = []
        for element in root.iter("user"):  # the root itself included
            raw_id = element.get("id")
            if not raw_id:
                raise UserSourceError(path, "<user> without id")
            user = self._substitute(path, "user id", raw_id)
            params: dict[str, str] = {}
            for param in element.findall("params/param"):
                name = (param.get("name") or "").strip().lower()
                if name in ("password", "a1-hash"):
                    params[name] = param.get("value") or ""
            if "a1-hash" in params:
                ha1 = self._substitute(path, f"user {user}", params["a1-hash"]).strip()
                if not _HA1_RE.fullmatch(ha1):
                    raise UserSourceError(path, f"user {user}: a1-hash must be 32 hexadecimal digits")
                found.append(Credentials(user, None, ha1.lower()))
            elif "password" in params:
                password = self._substitute(path, f"user {user}", params["password"])
                if not password:
                    raise UserSourceError(path, f"user {user}: empty password")
                found.append(Credentials(user, password, None))
        # All of a file or nothing: a broken file never half-loads.
        for credentials in found:
            if credentials.user in users:
                errors.append(f"{path}: user {credentials.user} already defined in another file; ignored")
            else:
                users[credentials.user] = credentials

    def reload(self) -> None:
        """Read the folder again; :attr:`errors` describes the files skipped.

        Raises :class:`UserSourceError` (keeping the users loaded before) if the folder is missing, or,
        with ``strict``, on the first unusable file.
        """
        users: dict[str, Credentials] = {}
        errors: list[str] = []
        for path in self._files():
            try:
                self._load_file(path, users, errors)
            except UserSourceError as exc:
                if self.strict:
                    raise
                errors.append(str(exc))
        self._users, self.errors = users, errors

    def lookup(self, user: str) -> Credentials | None:
        """The credentials of ``user``, or None if the directory does not know them."""
        if not isinstance(user, str):
            return None
        return self._users.get(user)
