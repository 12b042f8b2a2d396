"""SIP over TLS (RFC 3261 §26) toward the PBX: the TLS settings from ``sip.tls_*``.

Every TLS connection the node opens goes to the PBX (or to a host the PBX names in a dialog)
and is verified the same way: TLS 1.2 or later; the certificate chain against ``sip.tls_ca_file``
(the system's store when unset); the name ``sip.tls_server_name`` (the PBX host when unset; an
IP address must be an IP SAN of the certificate); and, when ``sip.tls_pin_sha256`` is set, the
SHA-256 of the certificate's SubjectPublicKeyInfo must be one of the pins (in addition to the
checks above). ``sip.tls_cert_file``/``tls_key_file`` are shown when the PBX asks for a client
certificate, and are the server certificate of the node's own TLS listener.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure

from b2bua.config import ConfigError, SipConfig
from b2bua.wire.sipuri import UriError, split_hostport

MIN_VERSION = ssl.TLSVersion.TLSv1_2


class PinMismatch(Exception):
    """The PBX's certificate is valid but its public key is not one of ``sip.tls_pin_sha256``."""


def parse_pin(text: str) -> bytes:
    """A SHA-256 pin: 64 hex digits, or 44 characters of base64 (as HPKP's ``pin-sha256``)."""
    value = text.strip()
    if len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 32:
        raise ValueError(f"{text!r} is neither 64 hex digits nor the base64 of 32 bytes")
    return digest


def spki_sha256(certificate: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's SubjectPublicKeyInfo (DER), what ``sip.tls_pin_sha256`` names."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


@dataclass(frozen=True)
class TlsSettings:
    server_name: str
    trust: object | None = None  # IOpenSSLTrustRoot; None: the system's store
    client_cert: ssl.PrivateCertificate | None = None
    chain: tuple[ssl.Certificate, ...] = ()  # intermediates sent after client_cert
    pins: frozenset[bytes] = field(default_factory=frozenset)

    def client_creator(self) -> IOpenSSLClientConnectionCreator:
        extra: dict = {"raiseMinimumTo": MIN_VERSION}
        if self.chain:
            extra["extraCertChain"] = [c.original for c in self.chain]
        return ssl.optionsForClientTLS(
            self.server_name,
            trustRoot=self.trust if self.trust is not None else ssl.platformTrust(),
            clientCertificate=self.client_cert,
            extraCertificateOptions=extra,
        )

    def server_options(self) -> ssl.CertificateOptions:
        """For the node's TLS listener; no client certificate is asked for (requests are
        accepted from PBX addresses only, as over UDP and TCP)."""
        if self.client_cert is None:
            raise ConfigError("sip.tls_cert_file: a TLS listener (sip.transports: tls) needs a certificate")
        return ssl.CertificateOptions(
            privateKey=self.client_cert.privateKey.original,
            certificate=self.client_cert.original,
            extraCertChain=[c.original for c in self.chain],
            raiseMinimumTo=MIN_VERSION,
        )

    def check_pin(self, peer: x509.Certificate | None) -> None:
        """Raise :class:`PinMismatch` when pins are set and ``peer``'s key is not among them."""
        if not self.pins:
            return
        if peer is None or spki_sha256(peer) not in self.pins:
            raise PinMismatch("the certificate's public key is not one of sip.tls_pin_sha256")


def needs_tls(sip: SipConfig) -> bool:
    return sip.pbx_transport == "tls" or "tls" in sip.transports


def load_tls(sip: SipConfig) -> TlsSettings | None:
    """The TLS settings, or None when neither the PBX transport nor a listener is TLS.
    Raises :class:`ConfigError` naming the key of a file that cannot be used."""
    if not needs_tls(sip):
        return None
    if sip.tls_server_name:
        server_name = sip.tls_server_name
    else:
        try:
            server_name = split_hostport(sip.pbx)[0].strip("[]")
        except UriError as e:
            raise ConfigError(f"sip.pbx: {e}") from None
    trust = None
    if sip.tls_ca_file:
        cas = _read_certificates(sip.tls_ca_file, "sip.tls_ca_file")
        trust = ssl.trustRootFromCertificates([ssl.Certificate(c) for c in cas])
    client = None
    chain: tuple[ssl.Certificate, ...] = ()
    if bool(sip.tls_cert_file) != bool(sip.tls_key_file):
        missing = "sip.tls_key_file" if sip.tls_cert_file else "sip.tls_cert_file"
        raise ConfigError(f"{missing}: sip.tls_cert_file and sip.tls_key_file go together")
    if sip.tls_cert_file and sip.tls_key_file:
        certs = _read_certificates(sip.tls_cert_file, "sip.tls_cert_file")
        key_pem = _read(sip.tls_key_file, "sip.tls_key_file")
        try:
            key = ssl.KeyPair.load(key_pem, crypto.FILETYPE_PEM)
        except Exception as e:  # OpenSSL.crypto.Error and friends
            raise ConfigError(f"sip.tls_key_file: not a PEM private key ({_first_line(e)})") from None
        try:
            client = ssl.PrivateCertificate.fromCertificateAndKeyPair(ssl.Certificate(certs[0]), key)
        except VerifyError:
            raise ConfigError("sip.tls_key_file: the key does not match sip.tls_cert_file") from None
        chain = tuple(ssl.Certificate(c) for c in certs[1:])
    pins = []
    for text in sip.tls_pin_sha256:
        try:
            pins.append(parse_pin(text))
        except ValueError as e:
            raise ConfigError(f"sip.tls_pin_sha256: {e}") from None
    return TlsSettings(server_name, trust, client, chain, frozenset(pins))


def describe_failure(reason: Failure | BaseException) -> str:
    """A short, stable text for why a TLS connection failed (logs, /healthz, a local 503)."""
    error = reason.value if isinstance(reason, Failure) else reason
    if isinstance(error, PinMismatch):
        return f"TLS: {error}"
    name = type(error).__name__
    if name == "VerificationError":  # service_identity: the name is not in the certificate
        return "TLS: certificate verify failed: the certificate does not name the PBX (sip.tls_server_name)"
    if isinstance(error, SSL.Error):
        reasons = [r[2] for r in _ssl_reasons(error) if len(r) > 2 and r[2]]
        return "TLS: " + ("; ".join(reasons) if reasons else "handshake failed")
    return str(error) or name


def _ssl_reasons(error: SSL.Error) -> Iterable[tuple]:
    args = error.args[0] if error.args else []
    return [r for r in args if isinstance(r, tuple)] if isinstance(args, list) else []


def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{key}: {path}: {e.strerror or e}") from None


def _read_certificates(path: str, key: str) -> list:
    """The PEM certificates of a file, as pyOpenSSL X509 objects (at least one)."""
    data = _read(path, key)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ConfigError(f"{key}: {path}: no PEM certificate ({_first_line(e)})") from None
    return [crypto.X509.from_cryptography(c) for c in certs]


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:120]
