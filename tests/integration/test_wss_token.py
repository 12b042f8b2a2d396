"""wss (TLS) listener, token logins from YAML and FreeSWITCH user sources, disabled password logins,
OPTIONS keepalive → /healthz, and secrets kept out of the logs; all against a real Kamailio."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import secrets
import socket
import time

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, ssl, threads
from twisted.logger import formatEvent, globalLogPublisher

from b2bua.auth.tokens import issue_token
from tests.integration.helpers import http_get, sleep
from tests.peers.freeswitch_directory import write_directory
from tests.peers.ports import free_port
from tests.peers.wsclient import RpcError, WsClient

pytestmark = pytest.mark.integration

USERS_YAML = 'ranges:\n  - {from: 1000, to: 1019, password: "1234"}\n'

# -- helpers -----------------------------------------------------------------------------------------------


def self_signed(tmp_path) -> tuple[str, str, bytes]:
    """(key path, cert path, cert PEM) of a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(cert_pem)
    return str(key_path), str(cert_path), cert_pem


@defer.inlineCallbacks
def healthz(gw):
    """(status, JSON body) of the gateway's /healthz, fetched off the reactor thread."""
    code, body = yield threads.deferToThread(http_get, f"http://127.0.0.1:{gw.http_port}/healthz")
    return code, (json.loads(body) if body else {})


@defer.inlineCallbacks
def wait_health(gw, predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        code, body = yield healthz(gw)
        if predicate(code, body):
            return code, body
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last {code} {body}")
        yield sleep(0.2)


def plain_bytes_to(port: int) -> tuple[bytes, bool]:
    """Speak plain HTTP (a WebSocket upgrade) to a TLS port: (everything received, closed by the peer)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    return received, True
                received += chunk
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            return received, True


def mine(gw, kamailio):
    """AOR → contacts at Kamailio that belong to this gateway."""
    port = f":{gw.sip_port}"
    return {aor: cs for aor, cs in kamailio.registrations().items() if any(port in c for c in cs)}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@defer.inlineCallbacks
def login_error(gw, params, url=None):
    """The RpcError a login with ``params`` fails with, on a fresh socket."""
    client = yield WsClient.connect(url or gw.ws_url)
    try:
        yield client.request("login", params)
    except RpcError as e:
        return e
    finally:
        yield client.close()
    raise AssertionError(f"login {params} succeeded")


# -- 1. wss ------------------------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_wss_login_registers_and_plain_tcp_on_tls_port_gets_nothing(kamailio, gateway_factory, tmp_path):
    key, cert, cert_pem = self_signed(tmp_path)
    port = free_port("tcp")
    gw = gateway_factory(
        kamailio.host,
        kamailio.port,
        websocket__tls_listen=f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
    )
    wss = f"wss://127.0.0.1:{port}/ws"
    trust = ssl.optionsForClientTLS("127.0.0.1", trustRoot=ssl.Certificate.loadPEM(cert_pem))

    client = yield WsClient.connect(wss, context_factory=trust)
    result = yield client.request("login", {"user": "1000", "password": "1234"})
    assert result["user"] == "1000" and result["session"]
    event = yield client.wait_event("registered")
    assert event["user"] == "1000"
    assert list(mine(gw, kamailio)) == ["1000"]
    yield client.request("logout")
    assert kamailio.registrations() == {}
    yield client.close()

    # a certificate the client does not trust: the TLS handshake fails, no WebSocket opens
    (tmp_path / "other").mkdir()
    _, _, other_pem = self_signed(tmp_path / "other")
    distrust = ssl.optionsForClientTLS("127.0.0.1", trustRoot=ssl.Certificate.loadPEM(other_pem))
    with pytest.raises(ConnectionError, match="certificate verify failed"):
        yield WsClient.connect(wss, context_factory=distrust, timeout=10)

    # plain TCP to the TLS port: no HTTP answer (at most a TLS alert), the connection is closed
    received, closed = yield threads.deferToThread(plain_bytes_to, port)
    assert b"HTTP/" not in received and b"101" not in received, received
    assert closed
    # a ws:// client on the TLS port never opens
    with pytest.raises(ConnectionError):
        yield WsClient.connect(f"ws://127.0.0.1:{port}/ws", timeout=10)

    # ... and the gateway keeps serving, on both listeners
    again = yield WsClient.connect(wss, context_factory=trust)
    result = yield again.request("login", {"user": "1001", "password": "1234"})
    assert result["user"] == "1001"
    plain = yield WsClient.connect(gw.ws_url)
    result = yield plain.request("login", {"user": "1002", "password": "1234"})
    assert result["user"] == "1002"
    assert sorted(mine(gw, kamailio)) == ["1001", "1002"]
    yield again.request("logout")
    yield plain.request("logout")
    assert kamailio.registrations() == {}
    yield again.close()
    yield plain.close()


# -- 2. token logins ---------------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_token_login_from_yaml_users(kamailio, gateway_factory, tmp_path):
    secret = secrets.token_hex(16)
    users = tmp_path / "users.yaml"
    users.write_text(USERS_YAML)
    gw = gateway_factory(
        kamailio.host,
        kamailio.port,
        auth__token_secret=secret,
        auth__users_source="yaml",
        auth__users_path=str(users),
    )
    key = secret.encode()
    token = issue_token(key, "1005", ttl=60, now=time.time())

    client = yield WsClient.connect(gw.ws_url)
    result = yield client.request("login", {"token": token})
    assert result["user"] == "1005" and result["session"] and result["expires"] > 0
    event = yield client.wait_event("registered")
    assert event["user"] == "1005"
    assert list(mine(gw, kamailio)) == ["1005"]

    # single use: the same token again, from another socket, while the first session lives
    err = yield login_error(gw, {"token": token})
    assert (err.reason, err.data.get("detail")) == ("token_invalid", "replayed")
    assert err.code == -32009

    expired = issue_token(key, "1006", ttl=60, now=time.time() - 3600)
    err = yield login_error(gw, {"token": expired})
    assert (err.reason, err.data.get("detail")) == ("token_invalid", "expired")

    # tampered: the payload re-encoded for another user, the signature kept
    fresh = issue_token(key, "1007", ttl=60, now=time.time())
    payload_b64, signature = fresh.split(".")
    payload = json.loads(unb64url(payload_b64))
    payload["u"] = "1008"
    tampered = b64url(json.dumps(payload, separators=(",", ":")).encode()) + "." + signature
    err = yield login_error(gw, {"token": tampered})
    assert (err.reason, err.data.get("detail")) == ("token_invalid", "bad_signature")
    # ... and a token signed with another secret
    forged = issue_token(secrets.token_hex(16).encode(), "1007", ttl=60, now=time.time())
    err = yield login_error(gw, {"token": forged})
    assert (err.reason, err.data.get("detail")) == ("token_invalid", "bad_signature")
    # the untampered token was not burnt by the tampered one
    other = yield WsClient.connect(gw.ws_url)
    result = yield other.request("login", {"token": fresh})
    assert result["user"] == "1007"

    # a user Kamailio knows but the user source does not
    err = yield login_error(gw, {"token": issue_token(key, "1500", ttl=60, now=time.time())})
    assert err.reason == "auth_failed"
    assert err.data.get("sip_status") is None  # refused before any REGISTER

    assert sorted(mine(gw, kamailio)) == ["1005", "1007"]
    yield client.request("logout")
    yield other.request("logout")
    assert kamailio.registrations() == {}
    yield client.close()
    yield other.close()


@pytest_twisted.inlineCallbacks
def test_token_login_from_freeswitch_directory(kamailio, gateway_factory, tmp_path):
    secret = secrets.token_hex(16)
    directory = write_directory(tmp_path / "directory", ["1006"])
    gw = gateway_factory(
        kamailio.host,
        kamailio.port,
        auth__token_secret=secret,
        auth__users_source="freeswitch",
        auth__users_path=str(directory),
    )
    client = yield WsClient.connect(gw.ws_url)
    result = yield client.request(
        "login", {"token": issue_token(secret.encode(), "1006", ttl=60, now=time.time())}
    )
    assert result["user"] == "1006"
    yield client.wait_event("registered")
    assert list(mine(gw, kamailio)) == ["1006"]
    # 1000 is only a pointer in default.xml: no credentials for it
    err = yield login_error(gw, {"token": issue_token(secret.encode(), "1000", ttl=60, now=time.time())})
    assert err.reason == "auth_failed"
    yield client.request("logout")
    assert kamailio.registrations() == {}
    yield client.close()


# -- 3. password logins disabled ---------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_password_login_disabled_is_method_not_allowed(kamailio, gateway_factory):
    gw = gateway_factory(kamailio.host, kamailio.port, auth__allow_password=False)
    client = yield WsClient.connect(gw.ws_url)
    with pytest.raises(RpcError) as err:
        yield client.request("login", {"user": "1000", "password": "1234"})
    assert err.value.reason == "method_not_allowed" and err.value.code == -32010
    assert gw.stack.registrations == {}
    assert kamailio.registrations() == {}
    # ha1 logins are still allowed, on the same socket
    ha1 = hashlib.md5(b"1000:127.0.0.1:1234").hexdigest()
    result = yield client.request("login", {"user": "1000", "ha1": ha1})
    assert result["user"] == "1000"
    yield client.request("logout")
    yield client.close()


# -- 4. OPTIONS keepalive and /healthz ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_options_keepalive_drives_healthz(kamailio, gateway_factory):
    gw = gateway_factory(kamailio.host, kamailio.port, sip__options_keepalive=0.5, sip__pbx_down_after=2.0)
    code, body = yield wait_health(gw, lambda c, b: b.get("pbx_reachable") is True, 10, "PBX reachable")
    assert code == 200 and body["status"] == "ok"

    yield threads.deferToThread(kamailio.stop)
    stopped = time.monotonic()
    code, body = yield wait_health(gw, lambda c, b: c == 503, 5, "healthz 503")
    assert body["pbx_reachable"] is False and body["status"] == "fail"
    assert time.monotonic() - stopped < 2.0 + 0.5 + 1.0  # pbx_down_after + a keepalive + slack

    yield threads.deferToThread(kamailio.start)  # same port
    code, body = yield wait_health(gw, lambda c, b: c == 200, 10, "healthz back to 200")
    assert body["pbx_reachable"] is True and body["status"] == "ok"


# -- 5. secrets never logged -------------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_logs_hold_no_password_token_or_digest_response(kamailio_factory, gateway_factory, tmp_path):
    password = "Quokka-" + secrets.token_hex(6)
    kamailio = kamailio_factory(password=password, users=range(1000, 1020))
    users = tmp_path / "users.yaml"
    users.write_text(USERS_YAML.replace('"1234"', json.dumps(password)))
    secret = secrets.token_hex(16)
    lines: list[str] = []

    def observer(event):
        lines.append(formatEvent(event))
        failure = event.get("log_failure")
        if failure is not None:
            lines.append(failure.getTraceback())

    globalLogPublisher.addObserver(observer)
    try:
        gw = gateway_factory(
            kamailio.host,
            kamailio.port,
            auth__token_secret=secret,
            auth__users_source="yaml",
            auth__users_path=str(users),
        )
        token = issue_token(secret.encode(), "1011", ttl=60, now=time.time())
        a = yield WsClient.connect(gw.ws_url)
        b = yield WsClient.connect(gw.ws_url)
        assert (yield a.request("login", {"user": "1010", "password": password}))["user"] == "1010"
        assert (yield b.request("login", {"token": token}))["user"] == "1011"
        assert sorted(mine(gw, kamailio)) == ["1010", "1011"]
        # refusals log too: a wrong password, a replayed token
        c = yield WsClient.connect(gw.ws_url)
        with pytest.raises(RpcError):
            yield c.request("login", {"user": "1012", "password": password + "x"})
        with pytest.raises(RpcError):
            yield c.request("login", {"token": token})
        yield a.request("logout")
        yield b.request("logout")
        yield c.close()
        yield a.close()
        yield b.close()
        yield sleep(0.2)
    finally:
        globalLogPublisher.removeObserver(observer)

    text = "\n".join(lines)
    assert "login: user 1010" in text and "login: user 1011" in text  # the logins were logged ...
    ha1 = hashlib.md5(f"1010:127.0.0.1:{password}".encode()).hexdigest()
    payload_b64, signature = token.split(".")
    for needle in (password, token, payload_b64, signature, secret, ha1, "response="):
        assert needle not in text, needle  # ... without their secrets
