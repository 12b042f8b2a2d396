"""SIP over TLS: the sip.tls_* keys checked at start, and SipTransport over real loopback TLS
connections (certificates from a test CA): CA, host name / IP SAN and pin checks, failures
reported at once with their cause, a client certificate when the server asks, requests from the
server over our own connection, and the node's TLS listener (with its TCP limits)."""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor, ssl

from b2bua.config import ConfigError, SipConfig, load_config
from b2bua.sip.tls import TlsSettings, load_tls, parse_pin, spki_sha256
from b2bua.sip.transaction import Target
from b2bua.sip.transport import SipTransport, TcpLimits
from b2bua.wire.sip import Request, Response, make_response, parse_message
from tests.peers.certs import TestCA


@pytest.fixture
def pki(tmp_path):
    ca = TestCA(tmp_path / "pki")
    other = TestCA(tmp_path / "pki", name="other-ca")
    return {
        "ca": ca,
        "other": other,
        "pbx": ca.issue("pbx", ["127.0.0.1", "pbx.test"]),
        "gw": ca.issue("gw", ["gw.test"]),
        "tmp": tmp_path,
    }


def _tls(pki, **keys) -> TlsSettings:
    keys.setdefault("tls_ca_file", str(pki["ca"].cert_path))
    sip = SipConfig(pbx="127.0.0.1:5061", pbx_transport="tls", **keys)
    settings = load_tls(sip)
    assert settings is not None
    return settings


# -- configuration ----------------------------------------------------------------------------------------
def test_pins_hex_or_base64(pki):
    digest = spki_sha256(pki["pbx"].certificate)
    assert parse_pin(digest.hex()) == digest
    assert parse_pin(digest.hex().upper()) == digest
    assert parse_pin(base64.b64encode(digest).decode()) == digest
    with pytest.raises(ValueError):
        parse_pin("abcd")


def test_server_name_defaults_to_the_pbx_host(pki):
    assert _tls(pki).server_name == "127.0.0.1"
    assert _tls(pki, tls_server_name="pbx.test").server_name == "pbx.test"
    assert load_tls(SipConfig(pbx_transport="tcp")) is None  # no TLS: nothing is read


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"tls_ca_file": "missing.pem"}, "sip.tls_ca_file: .*missing.pem: No such file"),
        ({"tls_ca_file": "pki/ca.key"}, "sip.tls_ca_file"),  # a key, not a certificate
        ({"tls_cert_file": "pki/gw.pem"}, "sip.tls_key_file: sip.tls_cert_file and sip.tls_key_file go"),
        ({"tls_cert_file": "pki/gw.pem", "tls_key_file": "pki/pbx.key"}, "sip.tls_key_file: the key does"),
        ({"tls_cert_file": "pki/gw.pem", "tls_key_file": "pki/gw.pem"}, "sip.tls_key_file: not a PEM"),
        ({"tls_pin_sha256": ["nope"]}, "sip.tls_pin_sha256"),
        ({"transports": ["udp", "tls"]}, "sip.tls_cert_file: a TLS listener"),
    ],
)
def test_unusable_tls_files_stop_the_start_naming_the_key(pki, keys, message):
    lines = ["sip:", "  pbx_transport: tls"]
    for key, value in keys.items():
        lines.append(f"  {key}: {value!r}".replace("'", '"'))
    path = pki["tmp"] / "mpb2bua.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_relative_tls_paths_resolve_against_the_config_folder(pki):
    path = pki["tmp"] / "mpb2bua.yaml"
    path.write_text(
        "sip:\n  pbx_transport: tls\n  tls_ca_file: pki/ca.pem\n"
        "  tls_cert_file: pki/gw.pem\n  tls_key_file: pki/gw.key\n  transports: [udp, tcp, tls]\n"
    )
    config = load_config(path)
    assert config.sip.tls_ca_file == str(pki["tmp"] / "pki" / "ca.pem")
    assert load_tls(config.sip).client_cert is not None


# -- on loopback --------------------------------------------------------------------------------------------
def _options(transport: str = "TLS", method: str = "OPTIONS") -> Request:
    return parse_message(
        (
            f"{method} sip:pbx@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 127.0.0.1:9;branch=z9hG4bKt1;rport\r\n"
            "From: <sip:gw@127.0.0.1>;tag=1\r\nTo: <sip:pbx@127.0.0.1>\r\nCall-ID: t1@t\r\n"
            f"CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )


class _Node:
    """A SipTransport that records what it receives and what it is told."""

    def __init__(self, tls: TlsSettings | None, transports=("UDP",), **kw) -> None:
        self.got: defer.DeferredQueue = defer.DeferredQueue()
        self.failed: defer.DeferredQueue = defer.DeferredQueue()
        self.lost: defer.DeferredQueue = defer.DeferredQueue()
        self.t = SipTransport(
            reactor,
            "127.0.0.1",
            0,
            lambda m, s: self.got.put((m, s)),
            transports,
            is_trusted=lambda host: host == "127.0.0.1",
            tls=tls,
            tls_port=0,
            on_connect_failed=lambda target, why: self.failed.put((target, why)),
            on_connection_lost=self.lost.put,
            **kw,
        )
        self.t.start()


@pytest.fixture
def nodes():
    made: list[_Node] = []

    def make(*args, **kw) -> _Node:
        node = _Node(*args, **kw)
        made.append(node)
        return node

    yield make
    for node in made:
        pytest_twisted.blockon(node.t.stop())


def _pbx(nodes, pki, **kw) -> _Node:
    """A SIP node with a TLS listener and the PBX's certificate (127.0.0.1 and pbx.test)."""
    settings = TlsSettings("unused", client_cert=_private(pki["pbx"]))
    return nodes(settings, ("UDP", "TLS"), **kw)


def _private(issued) -> ssl.PrivateCertificate:
    return ssl.PrivateCertificate.loadPEM(issued.cert.read_text() + issued.key.read_text())


def _timeout(d: defer.Deferred, seconds: float = 5.0) -> defer.Deferred:
    return d.addTimeout(seconds, reactor)


@pytest_twisted.inlineCallbacks
def test_request_and_answer_over_tls_and_the_pbx_sends_back_over_our_connection(nodes, pki):
    pbx = _pbx(nodes, pki)
    gw = nodes(_tls(pki))
    target = Target("TLS", "127.0.0.1", pbx.t.tls_port)
    gw.t.send(_options(), target)
    message, source = yield _timeout(pbx.got.get())
    assert isinstance(message, Request) and source.transport == "TLS"
    assert source.port != target.port  # our side of the connection: an ephemeral port
    # the answer, then a request of the PBX's own, go back over that connection
    pbx.t.send(make_response(message, 200), source)
    answer, from_ = yield _timeout(gw.got.get())
    assert isinstance(answer, Response) and answer.status == 200 and from_ == target
    pbx.t.send(_options(method="INFO"), source)
    request, from_ = yield _timeout(gw.got.get())
    assert request.method == "INFO" and from_ == target
    assert gw.t.tcp_connection_to("127.0.0.1", target.port) == "connected"
    assert gw.t.tcp_counts() == {"pbx": 1, "other": 0} and pbx.t.tcp_counts() == {"pbx": 1, "other": 0}
    # the PBX drops the connection: reported as lost (the stack then re-registers over a new one)
    pbx.t._conns[(source.host, source.port)].transport.loseConnection()
    lost = yield _timeout(gw.lost.get())
    assert lost == target
    gw.t.send(_options(), target)  # a new connection
    message, again = yield _timeout(pbx.got.get())
    assert again.port != source.port


@pytest_twisted.inlineCallbacks
def test_pbx_name_checked_by_dns_name_too(nodes, pki):
    pbx = _pbx(nodes, pki)
    gw = nodes(_tls(pki, tls_server_name="pbx.test"))
    gw.t.send(_options(), Target("TLS", "127.0.0.1", pbx.t.tls_port))
    message, source = yield _timeout(pbx.got.get())
    assert message.method == "OPTIONS"


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        ({"tls_ca_file": "OTHER"}, "TLS: certificate verify failed"),
        ({"tls_server_name": "wrong.test"}, "the certificate does not name the PBX"),
        ({"tls_pin_sha256": [base64.b64encode(b"x" * 32).decode()]}, "not one of sip.tls_pin_sha256"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_certificate_not_trusted_fails_the_connection_at_once_with_its_cause(nodes, pki, keys, why):
    if keys.get("tls_ca_file") == "OTHER":
        keys = {"tls_ca_file": str(pki["other"].cert_path)}
    pbx = _pbx(nodes, pki)
    gw = nodes(_tls(pki, **keys))
    target = Target("TLS", "127.0.0.1", pbx.t.tls_port)
    gw.t.send(_options(), target)
    failed, reason = yield _timeout(gw.failed.get())
    assert failed == target and why in reason
    assert gw.t.connect_errors[("127.0.0.1", target.port)] == reason
    assert gw.t.tcp_connection_to("127.0.0.1", target.port) == "failed"
    assert pbx.got.pending == [] and gw.t.tcp_counts() == {"pbx": 0, "other": 0}


@pytest_twisted.inlineCallbacks
def test_the_right_pin_passes(nodes, pki):
    pin = spki_sha256(pki["pbx"].certificate).hex()
    pbx = _pbx(nodes, pki)
    gw = nodes(_tls(pki, tls_pin_sha256=[base64.b64encode(b"old-key-" * 4).decode(), pin]))
    gw.t.send(_options(), Target("TLS", "127.0.0.1", pbx.t.tls_port))
    message, _ = yield _timeout(pbx.got.get())
    assert message.method == "OPTIONS"


@pytest_twisted.inlineCallbacks
def test_tls_1_1_is_refused(nodes, pki):
    """A server that offers only TLS 1.1: no connection."""
    options = ssl.CertificateOptions(
        privateKey=_private(pki["pbx"]).privateKey.original,
        certificate=_private(pki["pbx"]).original,
        insecurelyLowerMinimumTo=ssl.TLSVersion.TLSv1_1,
        lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_1,
    )
    listener = reactor.listenSSL(0, protocol.ServerFactory.forProtocol(protocol.Protocol), options,
                                 interface="127.0.0.1")
    try:
        gw = nodes(_tls(pki))
        gw.t.send(_options(), Target("TLS", "127.0.0.1", listener.getHost().port))
        _, reason = yield _timeout(gw.failed.get())
        assert reason.startswith("TLS: ")
    finally:
        yield listener.stopListening()


@pytest_twisted.inlineCallbacks
def test_client_certificate_shown_when_the_server_asks(nodes, pki):
    """A server that requires a client certificate from our CA: refused without one, accepted
    with sip.tls_cert_file/tls_key_file."""
    seen: defer.DeferredQueue = defer.DeferredQueue()

    class Server(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:  # noqa: N802
            cert = self.transport.getPeerCertificate()
            seen.put(cert.get_subject().CN if cert is not None else None)

    private = _private(pki["pbx"])
    ca = ssl.Certificate.loadPEM(pki["ca"].cert_path.read_text())
    options = ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        verify=True,
        caCerts=[ca.original],
        requireCertificate=True,
    )
    factory = protocol.ServerFactory.forProtocol(Server)
    listener = reactor.listenSSL(0, factory, options, interface="127.0.0.1")
    target = Target("TLS", "127.0.0.1", listener.getHost().port)
    try:
        anonymous = nodes(_tls(pki))
        anonymous.t.send(_options(), target)
        _, reason = yield _timeout(anonymous.failed.get())
        assert reason.startswith("TLS: ")
        gw = nodes(_tls(pki, tls_cert_file=str(pki["gw"].cert), tls_key_file=str(pki["gw"].key)))
        gw.t.send(_options(), target)
        cn = yield _timeout(seen.get())
        assert cn == "gw.test"
    finally:
        yield listener.stopListening()


@pytest_twisted.inlineCallbacks
def test_tls_listener_keeps_the_tcp_limits_for_strangers(nodes, pki):
    """Connections accepted on the TLS listener count in the same pools: a stranger beyond
    max_per_address is refused; the PBX's address is not."""
    pbx_like = _pbx(nodes, pki, limits=TcpLimits(max_per_address=1, first_message_timeout=30))
    pbx_like.t.is_trusted = lambda host: host == "127.0.0.9"  # nobody here is the PBX
    port = pbx_like.t.tls_port
    ca = ssl.Certificate.loadPEM(pki["ca"].cert_path.read_text())
    client = ssl.optionsForClientTLS("127.0.0.1", trustRoot=ca)
    made = []
    for _ in range(3):
        conn = yield protocol.ClientCreator(reactor, protocol.Protocol).connectSSL(
            "127.0.0.1", port, client, bindAddress=("127.0.0.2", 0)
        )
        made.append(conn)
    yield _sleep(0.3)
    assert pbx_like.t.tcp_counts() == {"pbx": 0, "other": 1}
    for conn in made:
        conn.transport.loseConnection()


def _sleep(seconds: float) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def test_tls_error_text_is_stable():
    from b2bua.sip.tls import describe_failure

    error = SSL.Error([("SSL routines", "", "certificate verify failed")])
    assert describe_failure(error) == "TLS: certificate verify failed"
