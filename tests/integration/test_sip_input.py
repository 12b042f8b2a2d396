"""Bad SIP on the gateway's real sockets: clear answers, no crash, other users unharmed."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.integration.gateway import start_gateway
from tests.peers.wsclient import WsClient

pytestmark = pytest.mark.integration
DATA = Path(__file__).parent.parent / "data" / "sip"


def exchange_udp(port: int, payload: bytes, source: str = "127.0.0.1", timeout: float = 2.0) -> bytes | None:
    """Send one datagram from ``source``; the first final (non-1xx) answer, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(payload, ("127.0.0.1", port))
        try:
            while True:
                answer = s.recv(65535)
                if not answer.startswith(b"SIP/2.0 1"):
                    return answer
        except TimeoutError:
            return None


def exchange_tcp(port: int, payload: bytes, timeout: float = 2.0) -> bytes:
    """Send bytes on a fresh TCP connection; everything read until the gateway closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        out = b""
        try:
            while chunk := s.recv(65535):
                out += chunk
        except TimeoutError:
            pass
        return out


def options(port: int, branch: str = "z9hG4bKopt1", extra: str = "") -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:9;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:pbx@127.0.0.1>;tag=a\r\nTo: <sip:mpb2bua@127.0.0.1>\r\n"
        f"Call-ID: {branch}@test\r\nCSeq: 1 OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def run(fn, *args):
    return threads.deferToThread(fn, *args)


@pytest.fixture
def gateway(kamailio):
    # these tests are about the answers: every stranger's request is read (the rate at which they
    # are read is tested in tests/sip/test_transport.py and test_sip_abuse.py)
    gw = start_gateway(kamailio.host, kamailio.port, sip__stranger_messages_per_second_per_address=1000)
    yield gw
    gw.stop()


@pytest_twisted.inlineCallbacks
def test_options_answered_200(gateway):
    answer = yield run(exchange_udp, gateway.sip_port, options(gateway.sip_port))
    assert answer.startswith(b"SIP/2.0 200 OK\r\n")
    assert b"Allow: INVITE" in answer
    # rport (RFC 3581) filled in with the port the request came from
    assert re.search(rb"\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKopt1;rport=\d+\r\n", answer), answer


@pytest_twisted.inlineCallbacks
def test_malformed_requests_get_400_with_reason_and_users_keep_working(gateway, kamailio):
    client = yield WsClient.connect(gateway.ws_url)
    yield client.request("login", {"user": "1000", "password": "1234"})
    port = gateway.sip_port
    cases = {
        "bad Content-Length": options(port, "z9hG4bKb1", "Content-Length: 99\r\n").replace(
            b"Content-Length: 0\r\n", b"", 1
        ),
        "missing Call-ID": options(port, "z9hG4bKb2").replace(b"Call-ID: z9hG4bKb2@test\r\n", b""),
        "CSeq mismatch": options(port, "z9hG4bKb3").replace(b"1 OPTIONS", b"1 INVITE"),
        "bad header line": options(port, "z9hG4bKb4", "this is no header\r\n"),
    }
    for name, payload in cases.items():
        answer = yield run(exchange_udp, port, payload)
        assert answer is not None, name
        assert answer.startswith(b"SIP/2.0 400 Bad Request ("), (name, answer[:80])
    # RFC 4475 torture messages that must be refused: answered 400/505 or dropped, never a crash
    for case in (
        "badinv01",
        "clerr",
        "ncl",
        "scalar02",
        "quotbal",
        "ltgtruri",
        "lwsruri",
        "badvers",
        "mismatch01",
        "multi01",
        "insuf",
    ):
        path = DATA / f"{case}.sip"
        answer = yield run(exchange_udp, port, path.read_bytes(), "127.0.0.1", 0.5)
        assert answer is None or answer.split(b" ")[1] in (b"400", b"505"), (case, answer[:80])
    # truncated, oversized, garbage
    yield run(exchange_udp, port, options(port)[:57], "127.0.0.1", 0.3)
    yield run(exchange_udp, port, b"\xff\xfe" * 30000, "127.0.0.1", 0.3)
    answer = yield run(exchange_tcp, port, b"OPTIONS sip:x SIP/2.0\r\nContent-Length: abc\r\n\r\n")
    assert answer == b""  # stream framing lost: the connection is closed
    answer = yield run(exchange_tcp, port, options(port, "z9hG4bKtcp").replace(b"UDP", b"TCP"))
    assert answer.startswith(b"SIP/2.0 200 OK")
    # the logged-in user is untouched and the gateway still answers
    pong = yield client.request("ping")
    assert "pong" in pong
    assert list(kamailio.registrations()) == ["1000"]
    answer = yield run(exchange_udp, port, options(port, "z9hG4bKafter"))
    assert answer.startswith(b"SIP/2.0 200 OK")
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_requests_from_non_pbx_addresses_are_refused(gateway):
    answers = []
    for i in range(50):  # a small flood from a stranger
        answers.append(
            (
                yield run(
                    exchange_udp, gateway.sip_port, options(gateway.sip_port, f"z9hG4bKf{i}"), "127.0.0.2"
                )
            )
        )
    assert all(a.startswith(b"SIP/2.0 403 Forbidden") for a in answers)
    answer = yield run(exchange_udp, gateway.sip_port, options(gateway.sip_port, "z9hG4bKok"))
    assert answer.startswith(b"SIP/2.0 200 OK")


@pytest_twisted.inlineCallbacks
def test_requests_for_unknown_contacts_are_404(gateway):
    invite = options(gateway.sip_port, "z9hG4bKinv").replace(b"OPTIONS sip:127", b"INVITE sip:mp-nobody@127")
    invite = invite.replace(b"1 OPTIONS", b"1 INVITE")
    answer = yield run(exchange_udp, gateway.sip_port, invite)
    assert answer.startswith(b"SIP/2.0 404")


@pytest_twisted.inlineCallbacks
def test_invite_flood_from_a_stranger_creates_nothing(gateway, kamailio):
    client = yield WsClient.connect(gateway.ws_url)
    yield client.request("login", {"user": "1000", "password": "1234"})
    (contact,) = kamailio.registrations()["1000"]
    user = contact.split(":")[1].split("@")[0]
    for i in range(100):
        invite = (
            options(gateway.sip_port, f"z9hG4bKinv{i}")
            .replace(b"OPTIONS sip:127", f"INVITE sip:{user}@127".encode())
            .replace(b"1 OPTIONS", b"1 INVITE")
        )
        answer = yield run(exchange_udp, gateway.sip_port, invite, "127.0.0.2")
        assert answer.startswith(b"SIP/2.0 403 Forbidden"), answer[:60]
    assert client.events == [("registered", {"user": "1000", "expires": 600})]  # no "incoming"
    assert gateway.node.calls.counts()["calls"] == 0 and gateway.stack.counts()["dialogs"] == 0
    yield client.close()


@pytest_twisted.inlineCallbacks
def test_invite_with_malformed_sdp_is_488(gateway, kamailio):
    client = yield WsClient.connect(gateway.ws_url)
    yield client.request("login", {"user": "1000", "password": "1234"})
    (contact,) = kamailio.registrations()["1000"]
    user = contact.split(":")[1].split("@")[0]
    body = b"v=0\r\no=broken\r\nm=audio notaport RTP/AVP x\r\n"
    invite = (
        options(gateway.sip_port, "z9hG4bKbadsdp")
        .replace(b"OPTIONS sip:127", f"INVITE sip:{user}@127".encode())
        .replace(b"1 OPTIONS", b"1 INVITE")
        .replace(
            b"Content-Length: 0\r\n\r\n",
            b"Contact: <sip:pbx@127.0.0.1:9>\r\nContent-Type: application/sdp\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body,
        )
    )
    answer = yield run(exchange_udp, gateway.sip_port, invite)
    assert answer.startswith(b"SIP/2.0 488 Not Acceptable Here ("), answer[:80]
    assert [n for n, _ in client.events] == ["registered"]
    assert gateway.node.calls.counts() == {"calls": 0, "rtp_ports": 0}
    yield client.close()
