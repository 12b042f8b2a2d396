"""b2bua.http_status: /healthz and /metrics, rendered directly and through a whole HTTP exchange."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from b2bua.http_status import StatusResource, make_site
from b2bua.metrics import Registry


def healthy() -> tuple[bool, dict[str, Any]]:
    return True, {"sessions": 3, "sip": "up"}


def unhealthy() -> tuple[bool, dict[str, Any]]:
    return False, {"sip": "transport down", "status": "ignored"}


def registry() -> Registry:
    r = Registry()
    r.counter("mpb2bua_calls_total", "Calls.").inc(2)
    return r


def render(resource: StatusResource, path: bytes, method: bytes = b"GET") -> DummyRequest:
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = method
    request.render(resource)
    assert request.finished == 1
    return request


def header(request: DummyRequest, name: bytes) -> bytes | None:
    return request.responseHeaders.getRawHeaders(name, [None])[0]


def body(request: DummyRequest) -> bytes:
    return b"".join(request.written)


# ------------------------------------------------------------------------------------------------
# rendering the resource


def test_healthz_ok() -> None:
    request = render(StatusResource(registry(), healthy), b"/healthz")
    assert request.responseCode == 200
    assert header(request, b"content-type") == b"application/json"
    assert header(request, b"cache-control") == b"no-store"
    assert json.loads(body(request)) == {"status": "ok", "sessions": 3, "sip": "up"}
    assert header(request, b"content-length") == b"%d" % len(body(request))


def test_healthz_fail_is_503_and_status_cannot_be_overridden() -> None:
    request = render(StatusResource(registry(), unhealthy), b"/healthz")
    assert request.responseCode == 503
    assert json.loads(body(request)) == {"status": "fail", "sip": "transport down"}


def test_healthz_callback_raising_is_503() -> None:
    def broken() -> tuple[bool, dict[str, Any]]:
        raise RuntimeError("secret details stay in the log")

    request = render(StatusResource(registry(), broken), b"/healthz")
    assert request.responseCode == 503
    doc = json.loads(body(request))
    assert doc["status"] == "fail"
    assert b"secret" not in body(request)


def test_healthz_details_not_json_are_stringified() -> None:
    request = render(StatusResource(registry(), lambda: (True, {"since": object})), b"/healthz")
    assert request.responseCode == 200
    assert json.loads(body(request))["since"] == str(object)


def test_metrics() -> None:
    r = registry()
    request = render(StatusResource(r, healthy), b"/metrics")
    assert request.responseCode == 200
    assert header(request, b"content-type") == b"text/plain; version=0.0.4; charset=utf-8"
    assert body(request) == r.render()
    name, value = body(request).splitlines()[-1].split(b" ")
    assert (name, float(value)) == (b"mpb2bua_calls_total", 2)


def test_metrics_render_failure_is_500() -> None:
    r = registry()

    def boom() -> float:
        raise RuntimeError

    r.gauge_fn("fine", "A broken callback alone does not fail the scrape.", boom)
    assert render(StatusResource(r, healthy), b"/metrics").responseCode == 200

    class Broken(Registry):
        def render(self) -> bytes:
            raise RuntimeError("boom")

    assert render(StatusResource(Broken(), healthy), b"/metrics").responseCode == 500


def test_head_has_headers_and_no_body() -> None:
    r = registry()
    request = render(StatusResource(r, healthy), b"/metrics", b"HEAD")
    assert request.responseCode == 200
    assert body(request) == b""
    assert header(request, b"content-length") == b"%d" % len(r.render())


def test_unknown_paths_are_404() -> None:
    resource = StatusResource(registry(), healthy)
    for path in (b"/", b"/metrics/", b"/healthz/x", b"/favicon.ico", b"/Metrics"):
        request = render(resource, path)
        assert request.responseCode == 404, path
        assert body(request) == b"not found\n"


def test_other_methods_are_405() -> None:
    resource = StatusResource(registry(), healthy)
    for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS"):
        request = render(resource, b"/metrics", method)
        assert request.responseCode == 405, method
        assert header(request, b"allow") == b"GET, HEAD"


# ------------------------------------------------------------------------------------------------
# the Site, over an in-memory transport: real HTTP parsing and framing, no reactor, no socket


def exchange(site: Site, raw: bytes) -> bytes:
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(raw)
    out = transport.value()
    protocol.connectionLost(None)  # type: ignore[arg-type]
    return out


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, payload = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, payload


def make_test_site(health: Any = healthy, r: Registry | None = None) -> Site:
    return make_site(r or registry(), health, reactor=Clock())


def test_make_site_returns_a_quiet_site() -> None:
    site = make_test_site()
    assert isinstance(site, Site)
    assert site.noisy is False
    assert site.displayTracebacks is False


def test_http_get_metrics() -> None:
    r = registry()
    status, headers, payload = split(
        exchange(make_test_site(r=r), b"GET /metrics?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    )
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["content-length"]) == len(payload)
    assert payload == r.render()


def test_http_healthz_ok_and_fail() -> None:
    status, headers, payload = split(exchange(make_test_site(), b"GET /healthz HTTP/1.0\r\n\r\n"))
    assert status == "HTTP/1.0 200 OK"
    assert headers["content-type"] == "application/json"
    assert json.loads(payload)["status"] == "ok"

    status, _, payload = split(exchange(make_test_site(unhealthy), b"GET /healthz HTTP/1.0\r\n\r\n"))
    assert status == "HTTP/1.0 503 Service Unavailable"
    assert json.loads(payload)["status"] == "fail"


def test_http_head_404_405() -> None:
    site = make_test_site()
    status, headers, payload = split(exchange(site, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == "HTTP/1.1 200 OK"
    assert payload == b""
    assert int(headers["content-length"]) > 0

    status, _, payload = split(exchange(site, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == "HTTP/1.1 404 Not Found"
    assert payload == b"not found\n"

    status, headers, _ = split(
        exchange(site, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    )
    assert status == "HTTP/1.1 405 Method Not Allowed"
    assert headers["allow"] == "GET, HEAD"


def test_http_writes_no_access_log_and_logs_nothing() -> None:
    events: list[dict[str, Any]] = []
    site = make_test_site()
    globalLogPublisher.addObserver(events.append)
    site.startFactory()
    try:
        assert site._logFile is None
        for raw in (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        ):
            assert exchange(site, raw).startswith(b"HTTP/1.1 200 ")
    finally:
        site.stopFactory()
        globalLogPublisher.removeObserver(events.append)
    assert events == []
    assert site.reactor.getDelayedCalls() == []  # type: ignore[attr-defined]
